"""Routes: the landing page (the full browser frontend is issue #5)."""
from flask import Blueprint, render_template

from app.extensions import db
from app.models import ReportSession

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


@bp.get("/")
def index():
    total = db.session.execute(db.select(db.func.count()).select_from(ReportSession)).scalar_one()
    return render_template("index.html", total_sessions=total)
