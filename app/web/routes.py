"""Routes: the browser pages. They are shells: the data comes from the JSON API, like any client's.

While users exist, every page but the sign-in page needs a signed-in user (app/accounts/auth.py
sends the others here); the pages' own API requests then carry the sign-in cookie and a CSRF token.
"""
from flask import (Blueprint, Response, abort, current_app, redirect, render_template, request, session,
                   url_for)
from flask_login import current_user, login_user, logout_user

from app.accounts.auth import PageUser, current_caller, local_target
from app.accounts.forms import SignInForm, SignOutForm
from app.runner import get_reads
from app.runner.reads import SessionOverview
from app.schemas import COMPLEXITIES, LIMITS
from app.security import accepts_form

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/assets")

# Pages run only our own script files; user text is only ever inserted as text, never as HTML.
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# The report shown inside the session page: its own inline styles and embedded charts, nothing else;
# sandboxed even when opened outside the frame, so it never runs with the service's origin.
REPORT_POLICY = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
                 "form-action 'none'; frame-ancestors 'self'")


@bp.after_request
def page_policy(response):
    # The pages' own policy; app/security.py adds nosniff and the rest to every response.
    response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
    return response


@bp.get("/")
def new_report():
    return render_template("new.html", limits=LIMITS, complexities=COMPLEXITIES)


@bp.get("/sessions")
def sessions():
    caller = current_caller()
    # An admin's list has an owner column and filter; everyone else only ever sees their own.
    owners = [a.name for a in current_app.extensions["report_users"].all()] if caller.is_admin else None
    return render_template("sessions.html", page_size=current_app.config["SESSIONS_PAGE_SIZE"], owners=owners)


@bp.get("/sessions/<session_id>")
def session_page(session_id):
    return render_template("session.html", session=visible_session(session_id))


@bp.get("/sessions/<session_id>/report")
def report_page(session_id):
    """The finished report's HTML, shown in the session page's frame (the .html download is an attachment)."""
    visible_session(session_id)
    found = get_reads(current_app).artifact(session_id, "report.html")
    if found is None:
        abort(404)
    return Response(found[1], content_type=found[0], headers={"Content-Security-Policy": REPORT_POLICY})


def visible_session(session_id) -> SessionOverview:
    found = get_reads(current_app).session(session_id, scope=current_caller().scope)
    if found is None:
        abort(404)
    return found


@bp.route("/sign-in", methods=["GET", "POST"])
@accepts_form
def sign_in():
    """Name and password; on success a sign-in cookie, and back to the page that asked."""
    form = SignInForm()
    target = local_target(form.next.data if request.method == "POST" else request.args.get("next"))
    if request.method == "GET" and current_user.is_authenticated:
        return redirect(target or url_for("web.new_report"))
    error = None
    if form.validate_on_submit():
        account = current_app.extensions["report_users"].check_sign_in(form.name.data, form.password.data)
        if account is not None:
            session.clear()  # nothing from before the sign-in (an old CSRF token included) carries over
            session.permanent = True  # lasts PERMANENT_SESSION_LIFETIME, not until the browser closes
            login_user(PageUser(account))
            return redirect(target or url_for("web.new_report"))
        error = "That name and password do not match an account that may sign in."
    elif request.method == "POST":
        error = "The form expired or was not sent from this page: sign in again."
    form.next.data = target or ""
    return render_template("sign_in.html", form=form, error=error)


@bp.post("/sign-out")
@accepts_form
def sign_out():
    """End this user's page sign-ins, in every browser."""
    if SignOutForm().validate_on_submit() and current_user.is_authenticated:
        current_app.extensions["report_users"].end_sign_ins(current_user.account.id)
        logout_user()
        session.clear()
    return redirect(url_for("web.sign_in"))
