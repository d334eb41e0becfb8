"""Routes: status, listing, cancel, retry and delete of sessions."""
from flask import Response, current_app, jsonify, request
from flask_smorest import abort

from app.accounts.auth import current_caller
from app.extensions import Blueprint
from app.reports.routes import not_found_detail, refuse_over_quota
from app.runner import get_reads, get_store
from app.runner.store import Conflict, QuotaExceeded
from app.schemas import SessionListArgsSchema, SessionListSchema, StatusSchema
from app.sessions.listing import listing_document
from app.sessions.status import etag_for

blp = Blueprint("sessions", __name__, url_prefix="/api", description="Session status and management")


@blp.get("/report-status/<session_id>")
@blp.doc(responses={"304": {"description": "Not modified since the ETag given in If-None-Match"}})
@blp.response(200, StatusSchema)
@blp.alt_response(404, description="No such session")
def report_status(session_id):
    """A session's status. Send If-None-Match with the last ETag: 304 while nothing changed.

    Polls of existing sessions are answered by StatusFastPath before reaching this view;
    it answers the same way for any request that does get here.
    """
    return status_response(session_id).make_conditional(request)


@blp.get("/sessions")
@blp.arguments(SessionListArgsSchema, location="query")
@blp.response(200, SessionListSchema)
def list_sessions(args):
    """Your sessions (an admin: everyone's), newest first, a page at a time (follow next_cursor).

    Filter with ?status=, and (admins) with ?owner=NAME; ?owner= alone lists the sessions no one owns.
    """
    limit = args.get("limit", current_app.config["SESSIONS_PAGE_SIZE"])
    return jsonify(listing_document(get_reads(current_app), current_caller(), limit, args.get("status"),
                                    args.get("cursor"), args.get("owner")))


@blp.delete("/sessions/<session_id>")
@blp.response(204)
@blp.alt_response(404, description="No such session")
def delete_session(session_id):
    """Delete a session and its steps; a running one stops at its next step boundary."""
    if not get_store(current_app).delete(session_id, scope=current_caller().scope):
        abort(404, message=not_found_detail(session_id))


@blp.post("/sessions/<session_id>/cancel")
@blp.response(200, StatusSchema, description="Cancelled")
@blp.alt_response(202, schema=StatusSchema, description="Cancel requested: it stops at the next step boundary")
@blp.alt_response(404, description="No such session")
@blp.alt_response(409, description="The session already completed or failed")
def cancel_session(session_id):
    """Cancel a session: at once if nobody is running it, else when its current step ends."""
    status = _apply(get_store(current_app).cancel, session_id)
    return status_response(session_id, 200 if status == "cancelled" else 202)


@blp.post("/sessions/<session_id>/retry")
@blp.response(202, StatusSchema, description="Queued again")
@blp.alt_response(404, description="No such session")
@blp.alt_response(409, description="Only failed or cancelled sessions can be retried")
@blp.alt_response(429, description="A quota is full (the detail says which); try again after Retry-After seconds")
def retry_session(session_id):
    """Queue a failed or cancelled session again; it resumes from its first unfinished step."""
    _apply(get_store(current_app).retry, session_id)
    runner = current_app.extensions.get("report_runner")
    if runner is not None:
        runner.wake()
    return status_response(session_id, 202)


def _apply(operation, session_id):
    try:
        result = operation(session_id, scope=current_caller().scope)
    except Conflict as exc:
        abort(409, message=str(exc))
    except QuotaExceeded as exc:
        refuse_over_quota(exc)
    if result is None:
        abort(404, message=not_found_detail(session_id))
    return result


def status_response(session_id, code: int = 200) -> Response:
    """The stored status document, exactly as polls get it (cancel and retry answer with it too)."""
    found = get_reads(current_app).status(session_id)
    if found is None or not current_caller().sees(found.owner):
        abort(404, message=not_found_detail(session_id))
    response = Response(found.document, status=code, mimetype="application/json")
    response.set_etag(etag_for(found.version).strip('"'))
    response.headers["Cache-Control"] = "no-cache"
    return response
