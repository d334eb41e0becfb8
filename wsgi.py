"""WSGI entry point (gunicorn wsgi:app), and the development server (python wsgi.py)."""
import argparse

from app import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    raise SystemExit(f"report-service: {exc}")


if __name__ == "__main__":
    from app.runner import start_runner
    from app.startup import check_not_open

    parser = argparse.ArgumentParser(description="Flask's development server, with the background runner")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    options = parser.parse_args()
    try:
        host = f"[{options.host}]" if ":" in options.host else options.host  # an IPv6 address
        check_not_open(app, [f"{host}:{options.port}"])
        runner = start_runner(app)
    except ConfigError as exc:
        raise SystemExit(f"report-service: {exc}")
    try:
        # No reloader: it would run the app (and a second runner) in a child process.
        app.run(host=options.host, port=options.port, use_reloader=False, threaded=True)
    finally:
        if runner is not None:
            runner.stop()
