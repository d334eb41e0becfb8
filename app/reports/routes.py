"""Routes: POST /api/submit-requirements, GET /api/reports/<id>."""
from flask import Response, current_app, jsonify, request, url_for
from flask_smorest import abort
from werkzeug.utils import secure_filename

from app.accounts.auth import current_caller
from app.extensions import Blueprint
from app.runner import get_reads, get_store
from app.runner.reads import SessionOverview
from app.runner.store import QuotaExceeded
from app.schemas import ReportSchema, SubmitRequestSchema, SubmitResponseSchema

blp = Blueprint("reports", __name__, url_prefix="/api", description="Submit report requests, read reports")


@blp.before_request
def require_json_body():
    if request.method != "POST":
        return
    if not request.is_json:
        abort(415, message="Send the request body as JSON (Content-Type: application/json).")
    if not request.get_data(cache=True):
        abort(400, message="The request body is empty: send a JSON object.")


@blp.post("/submit-requirements")
@blp.arguments(SubmitRequestSchema)
@blp.response(202, SubmitResponseSchema, description="Accepted: the session is queued",
              headers={"Location": {"description": "the status URL", "schema": {"type": "string"}}})
@blp.alt_response(429, description="A quota is full (the detail says which); try again after Retry-After seconds")
def submit_requirements(payload):
    """Queue a report request; poll status_url until the report is ready."""
    try:
        session_id = get_store(current_app).create(payload["user_request"], payload["requirements"],
                                                   owner=current_caller().owner)
    except QuotaExceeded as exc:
        refuse_over_quota(exc)
    runner = current_app.extensions.get("report_runner")
    if runner is not None:
        runner.wake()
    status_url = url_for("sessions.report_status", session_id=session_id)
    return {"session_id": session_id, "status": "queued", "status_url": status_url}, 202, {"Location": status_url}


@blp.get("/reports/<session_id>")
@blp.response(200, ReportSchema)
@blp.alt_response(404, description="No such session, or no report stored for it")
@blp.alt_response(409, description="The report is not ready yet")
def get_report(session_id):
    """The finished report: the output of the pipeline's last step, with download and chart URLs."""
    completed_session(session_id)
    report = get_reads(current_app).report(session_id)
    if report is None:
        abort(404, message=f"Session '{session_id}' has no stored report (imported from the old JSON store).")
    if isinstance(report.get("files"), dict):
        report["downloads"] = {kind: url_for("reports.download_report", session_id=session_id, kind=kind)
                               for kind in report["files"]}
    for chart in report.get("charts") or []:
        if isinstance(chart, dict) and "png" in chart:
            chart["url"] = url_for("reports.get_chart", session_id=session_id, name=chart["png"])
            chart["svg_url"] = url_for("reports.get_chart", session_id=session_id, name=chart["svg"])
    # Returned as is, not dumped through ReportSchema: a custom pipeline's output keeps all its keys.
    return jsonify(report)


# A report file opened in a browser runs nothing, loads nothing but its own embedded charts, sends
# no form and cannot be framed: the sandbox also gives it an origin of its own, not the service's.
REPORT_FILE_POLICY = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                      "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# A chart is shown as an image, but an SVG opened by itself is a document: it may not run or load anything.
CHART_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
CHART_TYPES = {"image/png", "image/svg+xml"}


@blp.get("/reports/<session_id>.<any(md, html, pdf):kind>")
@blp.doc(responses={"200": {"description": "The report file (text/markdown, text/html or application/pdf)"}})
@blp.alt_response(404, description="No such session or file")
@blp.alt_response(409, description="The report is not ready yet")
def download_report(session_id, kind):
    """The report as a Markdown, HTML or PDF file."""
    session = completed_session(session_id)
    content_type, data = stored_file(session_id, f"report.{kind}")
    filename = f"{secure_filename(session.topic.lower().replace(' ', '-')) or 'report'}.{kind}"
    return Response(data, content_type=content_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "Content-Security-Policy": REPORT_FILE_POLICY})


@blp.get("/reports/<session_id>/charts/<name>")
@blp.doc(responses={"200": {"description": "A chart (image/png or image/svg+xml)"}})
@blp.alt_response(404, description="No such session or chart")
@blp.alt_response(409, description="The report is not ready yet")
def get_chart(session_id, name):
    """A chart of the report, at a stable URL: only the files the report lists as its charts."""
    completed_session(session_id)
    reads = get_reads(current_app)
    found = reads.artifact(session_id, name) if name in chart_names(reads.report(session_id)) else None
    if found is None or found[0] not in CHART_TYPES:
        abort(404, message=f"Session '{session_id}' has no chart '{name}'.")
    response = Response(found[1], content_type=found[0], headers={"Content-Security-Policy": CHART_POLICY})
    response.cache_control.max_age = 86400  # a finished report's charts never change
    return response


def refuse_over_quota(exc: QuotaExceeded):
    abort(429, message=str(exc), headers={"Retry-After": str(exc.retry_after)})


def completed_session(session_id) -> SessionOverview:
    session = get_reads(current_app).session(session_id, scope=current_caller().scope)
    if session is None:
        abort(404, message=not_found_detail(session_id))
    if session.status != "completed":
        abort(409, message=f"Session '{session_id}' is {session.status}; the report is ready when it is completed.")
    return session


def chart_names(report: dict | None) -> set[str]:
    """The files the report (Reads.report) lists as its charts: each chart's png and svg."""
    charts = report.get("charts") if report is not None else None
    if not isinstance(charts, list):  # a custom pipeline's report may list none
        return set()
    return {chart[kind] for chart in charts if isinstance(chart, dict)
            for kind in ("png", "svg") if isinstance(chart.get(kind), str)}


def stored_file(session_id, name):
    found = get_reads(current_app).artifact(session_id, name)
    if found is None:
        abort(404, message=f"Session '{session_id}' has no file '{name}'.")
    return found


def not_found_detail(session_id: str) -> str:
    """The seed's 404 detail; it counts only the sessions the caller can see."""
    total = sum(get_reads(current_app).counts(current_caller().scope).values())
    return f"Session '{session_id}' not found. Available sessions: {total}"
