"""Who is calling, decided in one place for the Flask views and the fast paths alike.

While no user exists the service is open: every caller is OPEN and sees everything, as before
accounts. Once one exists, a request names its caller with `Authorization: Bearer <token>` (API
clients) or the sign-in cookie (the pages; state-changing requests then also carry the page's CSRF
token). A session that is not the caller's does not exist for them: `Caller.scope` is the one
owner whose sessions a caller may see and touch (None: all of them, for admins and the open service).
"""
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_login import UserMixin, current_user
from flask_smorest import abort

from app.accounts.users import Account, Users
from app.extensions import csrf
from app.models import NO_OWNER
from app.security import SAFE_METHODS

# Answer without a caller: the sign-in page (and its stylesheet), and the API's description.
PUBLIC_ENDPOINTS = frozenset({"web.static", "web.sign_in", "api-docs.openapi_json"})
REALM = "report-service"


@dataclass(frozen=True)
class Caller:
    name: Optional[str]  # None: nobody, the service is open
    is_admin: bool = False

    @property
    def scope(self) -> Optional[str]:
        """The only owner whose sessions this caller may see and touch; None: everyone's."""
        return None if self.name is None or self.is_admin else self.name

    @property
    def owner(self) -> str:
        """Who the sessions this caller submits belong to."""
        return self.name or NO_OWNER

    def sees(self, owner: str) -> bool:
        return self.scope is None or owner == self.scope


OPEN = Caller(None)


def bearer_token(header: str) -> Optional[str]:
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def caller_from_environ(users: Users, environ, users_exist: Optional[bool] = None) -> Optional[Caller]:
    """For the fast paths: the caller when the service is open or the request has a valid bearer token.

    None means "let Flask decide" (a cookie, a bad token, no credentials): it answers the same way.
    `users_exist`: whether a user existed, as read by a query the fast path made anyway.
    """
    if not users.exist(known=users_exist):
        return OPEN
    token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
    found = users.by_token(token) if token else None
    return Caller(*found) if found else None


def current_caller() -> Caller:
    """The caller identify_caller() found for this request."""
    return g.caller


class PageUser(UserMixin):
    """A signed-in account for Flask-Login; its cookie id carries the account's sign-in epoch."""

    def __init__(self, account: Account):
        self.account = account
        self.name = account.name
        self.is_admin = account.is_admin

    def get_id(self) -> str:
        return f"{self.account.id}.{self.account.sign_in_epoch}"


def load_page_user(cookie_id: str) -> Optional[PageUser]:
    """Flask-Login's user loader: the account, if it is active and signed in since its last sign-out."""
    user_id, _, epoch = cookie_id.partition(".")
    if not (user_id.isdigit() and epoch.isdigit()):
        return None
    account = current_app.extensions["report_users"].by_id(int(user_id))
    if account is None or account.revoked_at is not None or account.sign_in_epoch != int(epoch):
        return None
    return PageUser(account)


def identify_caller():
    """Before every request: set g.caller, or answer 401 (API) or send the pages to sign in."""
    users: Users = current_app.extensions["report_users"]
    if not users.exist():
        g.caller = OPEN
        return None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    # Only a Bearer header names an API caller: a proxy's own Basic credentials leave the cookie to decide.
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is not None:
        found = users.by_token(token)
        if found is None:
            return unauthorized("The token is not valid (or has been revoked).", invalid=True)
        g.caller = Caller(*found)
        return None
    if current_user.is_authenticated:
        g.caller = Caller(current_user.name, current_user.is_admin)
        if request.method not in SAFE_METHODS:
            csrf.protect()  # a cookie is sent by the browser whoever made the page: prove it was ours
        return None
    return unauthorized("Sign in: send Authorization: Bearer <token>.")


def unauthorized(detail: str, invalid: bool = False):
    """401 in the API's one error shape (app/errors.py), with its challenge; the pages go to sign in."""
    if request.path.startswith("/api"):
        challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if invalid else "")
        abort(401, message=detail, headers={"WWW-Authenticate": challenge})
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("web.sign_in", next=target))


def local_target(target: Optional[str]) -> Optional[str]:
    """`target` if it is a path on this site (after sign-in we go there), else None: never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


class SignInCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie session, marked Secure whenever the request came over HTTPS.

    Behind a proxy that terminates TLS, gunicorn takes the scheme from X-Forwarded-Proto
    (from the addresses in its forwarded_allow_ips), so the flag follows without a setting.
    """

    def get_cookie_secure(self, app) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure
