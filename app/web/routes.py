"""Routes: the browser pages. They are shells: the data comes from the JSON API, like any client's."""
from flask import Blueprint, Response, abort, current_app, render_template

from app.extensions import db
from app.models import ReportSession
from app.schemas import COMPLEXITIES, LIMITS

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
    return render_template("sessions.html", page_size=current_app.config["SESSIONS_PAGE_SIZE"])


@bp.get("/sessions/<session_id>")
def session(session_id):
    found = db.session.get(ReportSession, session_id)
    if found is None:
        abort(404)
    return render_template("session.html", session=found)


@bp.get("/sessions/<session_id>/report")
def report_page(session_id):
    """The finished report's HTML, shown in the session page's frame (the .html download is an attachment)."""
    found = current_app.extensions["report_store"].artifact(session_id, "report.html")
    if found is None:
        abort(404)
    return Response(found[1], content_type=found[0], headers={"Content-Security-Policy": REPORT_POLICY})
