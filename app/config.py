"""Default settings. Overridden by instance/config.py, then by environment variables.

Every key here can be set from the environment as REPORTS_<KEY> (the value is parsed as JSON
when it parses, so REPORTS_RUNNER_THREADS=8 is an int and REPORTS_PIPELINE='["m:C"]' a list).
The database is the one exception: DATABASE_URL, the name every host and platform uses.
"""

# SQLALCHEMY_DATABASE_URI defaults to sqlite:///<instance>/app.db, set in create_app()
# because the instance folder is only known there.

# The agent pipeline, in order: "module:Class" (or "module.Class") import paths.
PIPELINE = [
    "app.pipeline.planner:Planner",
    "app.pipeline.data_collection:DataCollection",
    "app.pipeline.api_research:ApiResearch",
    "app.pipeline.analyst:Analyst",
    "app.pipeline.writer:Writer",
    "app.pipeline.reviewer:Reviewer",
    "app.pipeline.publisher:Publisher",
]

# Folder of Markdown, text, HTML and PDF documents (and data/*.csv tables) the pipeline uses.
# None means the sample library shipped in app/pipeline/sample_library/.
LIBRARY_DIR = None

# Fetching the URLs a request names: only public addresses unless ALLOW_PRIVATE_URLS (a local
# deployment, or tests), each page within a timeout and a size cap.
ALLOW_PRIVATE_URLS = False
FETCH_TIMEOUT = 10.0
FETCH_MAX_BYTES = 2_000_000
# All of a session's URLs (pages and data) share one budget of seconds, each URL's timeout within it,
# fetched a few at a time, so URLs that never answer cannot hold a runner thread for long.
FETCH_BUDGET = 20.0
FETCH_CONCURRENCY = 4

# An OpenAI-compatible model for the writer (OpenAI, Ollama, vLLM...); unset: the offline writer.
LLM_BASE_URL = None
LLM_API_KEY = None
LLM_MODEL = None
LLM_TIMEOUT = 30.0
LLM_MAX_RETRIES = 2

# Background runner, one per server or `flask worker` process.
RUNNER_THREADS = 4          # sessions a process runs at once; 0: none (a web server beside `flask worker`s)
LEASE_SECONDS = 15          # a claim lasts this long unless renewed (heartbeat every third of it)
MAX_ATTEMPTS = 10           # resumes after a lost lease before a session is failed
# How often an idle process looks for queued or orphaned sessions. New work also wakes runners at
# once: the submitting process's own, and on PostgreSQL every runner (LISTEN/NOTIFY).
POLL_SECONDS = 0.5
STOP_TIMEOUT = 20           # on SIGTERM, wait this long for running steps before leaving them to recovery

# Logs: "text" (one readable line per event) or "json" (one JSON object per line, for log
# collectors; session_id, step and event are fields of their own). Under gunicorn its own lines too.
LOG_FORMAT = "text"

# SQLite: how long a writer waits for the lock before giving up (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 10_000

# Host names this service answers to (the Host header); any other gets 400, which stops DNS
# rebinding. A JSON list or comma-separated names; ".example.com" admits its subdomains; "*" any.
# Set it to the public name when the service is reached by one (behind a proxy, in a container).
TRUSTED_HOSTS = ["localhost", "127.0.0.1"]

# Accounts. While no user exists the service is open, as on a laptop; `flask users create` closes it.
# Serving it open on an address other than loopback needs this, said explicitly.
ALLOW_OPEN_ACCESS = False
# Quotas: a user's queued + running sessions, and the sessions waiting to start, of everyone together.
MAX_ACTIVE_PER_USER = 10
MAX_QUEUED = 1000

# Signs the pages' sign-in cookie. None: a random key kept in instance/secret_key (made on first
# start). Servers that share a database across machines need the same key: set REPORTS_SECRET_KEY.
SECRET_KEY = None
SESSION_COOKIE_NAME = "report_session"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"  # sent when following a link here, never with another site's requests
SESSION_COOKIE_SECURE = False    # also Secure whenever the request came over HTTPS (app/accounts/auth.py)
PERMANENT_SESSION_LIFETIME = 12 * 3600  # seconds a page sign-in lasts
# CSRF tokens: checked where the cookie authenticates (app/accounts/auth.py), valid while the sign-in is.
WTF_CSRF_CHECK_DEFAULT = False
WTF_CSRF_TIME_LIMIT = None

# Requests: submitted bodies larger than this are refused with 413. Above the largest body the
# schema admits (every character of every field written as a JSON escape, about 105 KB), so a
# valid request is never refused for its size.
MAX_CONTENT_LENGTH = 256 * 1024

# Listing: the page size of GET /api/sessions when ?limit= is not given (at most 500).
SESSIONS_PAGE_SIZE = 50

# flask-smorest / OpenAPI
API_TITLE = "Report service"
API_VERSION = "1.0"
OPENAPI_VERSION = "3.1.0"
OPENAPI_URL_PREFIX = "/api"
OPENAPI_JSON_PATH = "openapi.json"
# Once a user exists every operation needs a bearer token (or the pages' cookie); while none does, nothing.
API_SPEC_OPTIONS = {
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "A token from `flask users create` (or `flask users token`); not needed while no user exists"}}},
    "security": [{"bearer": []}, {}],
}

SQLALCHEMY_TRACK_MODIFICATIONS = False
