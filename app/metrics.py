"""The service's Prometheus metrics: what each process counts as it runs sessions, steps, models and fetches.

Defined once, at import, with the official client (prometheus_client). Under gunicorn every
worker writes its values to files in PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py) and
GET /metrics sums them; in a single process they live in memory. What is in the database
(sessions by status, the queue) is read at scrape time instead, by app/operations.py.
This module imports only the client, so the pipeline can count its own calls.
"""
from prometheus_client import Counter, Histogram

STEPS_STARTED = Counter("reports_steps_started", "Steps begun, by step name (a re-run after a crash counts again).",
                        ["step"])
STEPS_FINISHED = Counter("reports_steps_finished", "Steps that finished and were recorded, by step name.", ["step"])
STEPS_FAILED = Counter("reports_steps_failed", "Steps that raised, failing their session, by step name.", ["step"])
STEP_SECONDS = Histogram("reports_step_duration_seconds", "How long a step took, finished or failed, by step name.",
                         ["step"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
SESSIONS_FINISHED = Counter("reports_sessions_finished", "Sessions that reached an end, by status "
                            "(completed, failed, cancelled); a retried session can end again.", ["status"])
SESSIONS_CLAIMED = Counter("reports_sessions_claimed", "Sessions a runner took to run (fresh or resumed).")
SESSIONS_RESUMED = Counter("reports_sessions_resumed",
                           "Sessions taken up again after their runner died, stalled or handed them back mid-run.")
LEASE_LOSSES = Counter("reports_lease_losses",
                       "Steps whose result was not recorded because this process no longer held the session's "
                       "lease (it stalled past the lease, or the session was taken over).")
MODEL_CALLS = Counter("reports_model_calls", "Calls to the configured language model, by outcome (ok, error).",
                      ["outcome"])
MODEL_FALLBACKS = Counter("reports_model_fallbacks",
                          "Sections written by the offline writer because the language model failed.")
URL_FETCHES = Counter("reports_url_fetches", "URLs fetched for a session, by outcome.", ["outcome"])
