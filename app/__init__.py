"""The report service: create_app() assembles configuration, database, API and CLI."""
import os
from pathlib import Path

from flask import Flask

from app.pipeline import PipelineError, load_pipeline
from app.security import trusted_hosts
from app.startup import ConfigError, instance_secret_key

__all__ = ["create_app", "ConfigError"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    load_config(app, test_config)
    configure_logging(app)
    register_extensions(app)
    register_pipeline(app)
    register_reads(app)
    register_accounts(app)
    register_blueprints(app)
    register_request_checks(app)
    register_error_handlers(app)
    register_commands(app)
    register_fast_paths(app)
    register_operations(app)
    register_middleware(app)
    return app


def load_config(app: Flask, test_config: dict | None) -> None:
    """Defaults, then instance/config.py, then the environment (then a test's overrides)."""
    app.config.from_object("app.config")
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("REPORTS")
    if os.environ.get("DATABASE_URL"):
        app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    if test_config:
        app.config.update(test_config)
    # Flask checks request.host against TRUSTED_HOSTS; ResponseGuard checks it before the fast paths too.
    app.config["TRUSTED_HOSTS"] = trusted_hosts(app.config["TRUSTED_HOSTS"])
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        os.makedirs(app.instance_path, exist_ok=True)
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(app.instance_path, "app.db")
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = instance_secret_key(app.instance_path)


def configure_logging(app: Flask) -> None:
    """Our package's log lines, text or JSON (REPORTS_LOG_FORMAT): through gunicorn's log under gunicorn."""
    from app.logs import LOG_FORMATS, send_package_logs

    if app.config["LOG_FORMAT"] not in LOG_FORMATS:
        raise ConfigError(f"REPORTS_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, "
                          f"not {app.config['LOG_FORMAT']!r}")
    send_package_logs(app.config["LOG_FORMAT"])


def register_extensions(app: Flask) -> None:
    from app.database import configure_engine, engine_options, render_migration_item
    from app.extensions import api, csrf, db, login_manager, migrate

    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    # The runner's loop thread and each of its threads keep a connection (Store.pinned_connection).
    options = engine_options(uri, app.config["SQLITE_BUSY_TIMEOUT_MS"], app.config["RUNNER_THREADS"] + 1)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options | app.config.get("SQLALCHEMY_ENGINE_OPTIONS", {})
    db.init_app(app)
    # render_as_batch: SQLite can only ALTER tables by copying them; Alembic's batch mode does that.
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"), render_as_batch=True,
                     compare_type=True, render_item=render_migration_item)
    api.init_app(app)
    login_manager.init_app(app)
    csrf.init_app(app)
    with app.app_context():
        configure_engine(db.engine, app.config["SQLITE_BUSY_TIMEOUT_MS"])


def register_pipeline(app: Flask) -> None:
    from app.extensions import db
    from app.runner.store import Store

    try:
        agents = load_pipeline(app.config["PIPELINE"])
    except PipelineError as exc:
        raise ConfigError(f"REPORTS_PIPELINE: {exc}") from None
    app.extensions["report_pipeline"] = agents
    with app.app_context():
        engine = db.engine
    app.extensions["report_store"] = Store(engine, [a.name for a in agents],
                                           lease_seconds=app.config["LEASE_SECONDS"],
                                           max_attempts=app.config["MAX_ATTEMPTS"],
                                           max_active_per_user=app.config["MAX_ACTIVE_PER_USER"],
                                           max_queued=app.config["MAX_QUEUED"])


def register_reads(app: Flask) -> None:
    """Every read of execution state (app/runner/reads.py), for the views, the fast paths and the CLI."""
    from app.extensions import db
    from app.runner.reads import Reads

    with app.app_context():
        app.extensions["report_reads"] = Reads(db.engine)


def register_accounts(app: Flask) -> None:
    """Users, the pages' sign-in cookie (Flask-Login), and who is signed in for the templates."""
    from flask import g

    from app.accounts.auth import SignInCookies, load_page_user
    from app.accounts.users import Users
    from app.extensions import db, login_manager

    with app.app_context():
        app.extensions["report_users"] = Users(db.engine)
    app.session_interface = SignInCookies()
    login_manager.user_loader(load_page_user)
    app.context_processor(lambda: {"caller": g.get("caller")})


def register_blueprints(app: Flask) -> None:
    from app.extensions import api
    from app.reports.routes import blp as reports_blp
    from app.sessions.routes import blp as sessions_blp
    from app.web.routes import bp as web_bp

    api.register_blueprint(reports_blp)
    api.register_blueprint(sessions_blp)
    app.register_blueprint(web_bp)


def register_request_checks(app: Flask) -> None:
    """Before every view, in order: refuse cross-site writes, then find out who is calling."""
    from app.accounts.auth import identify_caller
    from app.security import refuse_cross_site

    app.before_request(refuse_cross_site)
    app.before_request(identify_caller)


def register_error_handlers(app: Flask) -> None:
    from app.errors import handle_unexpected

    app.register_error_handler(Exception, handle_unexpected)


def register_commands(app: Flask) -> None:
    from app.cli import sessions_cli, users_cli
    from app.worker import worker_command

    app.cli.add_command(sessions_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(worker_command)


def register_fast_paths(app: Flask) -> None:
    """WSGI front doors to Reads that answer the commonest requests before Flask dispatches.

    The status poll is the one request every open page repeats every second or two, and most of its
    cost would otherwise be the framework's; the sessions page and operators' scripts list often too.
    Both answer only callers they can name without Flask (open service, bearer token) and, for the
    listing, arguments its schema accepts; the Flask views answer everything else, the same way.
    """
    from app.schemas import SessionListArgsSchema
    from app.sessions.listing import ListingFastPath
    from app.sessions.status import StatusFastPath

    reads, users = app.extensions["report_reads"], app.extensions["report_users"]
    app.wsgi_app = StatusFastPath(app.wsgi_app, reads, users)
    app.wsgi_app = ListingFastPath(app.wsgi_app, reads, users, SessionListArgsSchema(),
                                   app.config["SESSIONS_PAGE_SIZE"])


def register_operations(app: Flask) -> None:
    """GET /healthz, /readyz and /metrics for load balancers and Prometheus, before Flask (app/operations.py)."""
    from app.operations import OperationsEndpoints, Readiness
    from app.startup import migration_heads

    reads = app.extensions["report_reads"]
    readiness = Readiness(reads.engine, lambda: migration_heads(app), app.config["RUNNER_THREADS"],
                          lambda: app.extensions.get("report_runner"))
    app.extensions["report_readiness"] = readiness
    app.wsgi_app = OperationsEndpoints(app.wsgi_app, readiness, reads)


def register_middleware(app: Flask) -> None:
    """WSGI layers around Flask and the fast paths; ResponseGuard must stay outermost."""
    from app.operations import PATHS
    from app.security import ResponseGuard

    # Host check and security headers for every answer, the fast paths' included. Probes and
    # scrapers call the operators' paths by IP address, so those answer whatever the Host.
    app.wsgi_app = ResponseGuard(app.wsgi_app, app.config["TRUSTED_HOSTS"], any_host_paths=PATHS)
