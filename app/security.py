"""HTTP-level protections that apply to every request, whichever code answers it.

ResponseGuard is the outermost WSGI middleware, so it also covers the status and listing fast
paths that answer before Flask dispatches: it refuses a Host the service does not serve (DNS
rebinding) and gives every response, errors and downloads included, nosniff, a referrer policy
and a Content-Security-Policy when the view set none. refuse_cross_site() is a request hook:
state-changing requests must be JSON (or bodiless) and must not come from another site.
"""
import json
from functools import lru_cache

from flask import current_app, request
from werkzeug.exceptions import Forbidden, UnsupportedMediaType
from werkzeug.sansio.utils import host_is_trusted

# What an API answer, an error page or a download may do when a browser opens it: nothing.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Sec-Fetch-Site values a browser sends for a request the user or our own pages made.
OWN_SITE = frozenset({"same-origin", "none"})


def trusted_hosts(setting) -> list[str] | None:
    """REPORTS_TRUSTED_HOSTS as a list: JSON list or comma-separated names; "*" trusts any Host."""
    names = setting.split(",") if isinstance(setting, str) else list(setting or [])
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    return None if "*" in names else names


class ResponseGuard:
    """WSGI middleware: refuse untrusted Host headers; add the security headers every response needs."""

    def __init__(self, wsgi_app, hosts: list[str] | None, any_host_paths: frozenset[str] = frozenset()):
        self.wsgi_app = wsgi_app
        # A few names per deployment; the cache is bounded because the header is the client's to choose.
        self.host_ok = lru_cache(maxsize=256)(lambda host: host_is_trusted(host, hosts)) if hosts else None
        # Paths that answer any Host: they carry no user's data and change nothing, so a rebinding
        # page gains nothing there (the operators' probes, called by IP address).
        self.any_host_paths = any_host_paths

    def __call__(self, environ, start_response):
        if self.host_ok is not None and not self.host_ok(environ.get("HTTP_HOST") or "") \
                and environ.get("PATH_INFO") not in self.any_host_paths:
            return self.refuse_host(environ, start_response)

        def start_with_headers(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            if "x-content-type-options" not in present:
                headers.append(("X-Content-Type-Options", "nosniff"))
            if "content-security-policy" not in present:
                headers.append(("Content-Security-Policy", API_POLICY))
            if "referrer-policy" not in present:
                headers.append(("Referrer-Policy", "same-origin"))
            if "cross-origin-resource-policy" not in present:
                headers.append(("Cross-Origin-Resource-Policy", "same-origin"))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start_with_headers)

    @staticmethod
    def refuse_host(environ, start_response):
        # Answered here, before Flask: the fast paths must not serve a rebinding page either.
        body = json.dumps({"detail": "This server does not serve the host named in the Host header; "
                                     "an operator can add it to REPORTS_TRUSTED_HOSTS."}).encode()
        start_response("400 BAD REQUEST", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", API_POLICY),
            ("Referrer-Policy", "same-origin"), ("Connection", "close")])
        return [body]


def refuse_cross_site():
    """Before every request: a state-changing one must be JSON (or bodiless) and from this site.

    Browsers let any page send a form or text/plain POST to any origin without asking; only a
    JSON body forces a CORS preflight, which this service never grants. The site check follows
    the Fetch Metadata rule (Sec-Fetch-Site), falling back to comparing Origin with Host for
    older browsers; a request with neither header is not from a browser, so it is not forged.
    """
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is not None:
        cross_site = site not in OWN_SITE
    else:
        cross_site = origin is not None and origin_host(origin) != (request.host or "").lower()
    if cross_site:
        raise Forbidden("Cross-site requests cannot change anything here: "
                        "send the request from this service's own pages or from a non-browser client.")
    has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if has_body and not request.is_json and not _takes_forms():
        raise UnsupportedMediaType("Send the request body as JSON (Content-Type: application/json).")


def accepts_form(view):
    """Mark a page view that takes an HTML form post (sign-in, sign-out): it carries its own CSRF token."""
    view.accepts_form = True
    return view


def _takes_forms() -> bool:
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    return getattr(view, "accepts_form", False) and request.mimetype == "application/x-www-form-urlencoded"


def origin_host(origin: str) -> str:
    """The host[:port] of an Origin header ("null" and garbage give "", which matches no Host)."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    return rest.rstrip("/") if sep and scheme in ("http", "https") and "/" not in rest.rstrip("/") else ""
