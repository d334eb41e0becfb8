"""The baseline app of bench/status_poll.py: a bare Flask JSON endpoint, no database, no extensions.

Run it from bench/ so the project's gunicorn.conf.py (and its hooks) do not apply:
    cd bench && ../.venv/bin/gunicorn -w 2 bare_app:app
It answers GET /api/report-status/<id> with a constant document the size and shape of a finished
session's status document, through Flask's routing and jsonify.
"""
from flask import Flask, jsonify

app = Flask(__name__)

DOCUMENT = {
    "status": "completed", "user_request": "bench: the session that is polled",
    "report_requirements": {"topic": "Electric Vehicle Market Analysis", "page_count": 5, "source_count": 5,
                            "complexity": "moderate"},
    "current_agent": None, "message": None, "completed_tasks": ["first", "second", "third"], "progress": 1.0,
    "pipeline": ["first", "second", "third"], "started_at": "2026-11-25T14:44:28.123Z",
    "updated_at": "2026-11-25T14:44:29.456Z", "finished_at": "2026-11-25T14:44:29.456Z", "error": None,
    "failed_step": None, "cancel_requested": False, "attempts": 0,
}


@app.get("/api/report-status/<session_id>")
def report_status(session_id):
    return jsonify({"session_id": session_id, **DOCUMENT, "report_url": f"/api/reports/{session_id}"})
