"""kill -9 of the whole server with 20 sessions mid-step, restart: how soon every one is running again."""
import http.client
import signal
import threading
import time
import urllib.parse

from bench.common import Result, temporary_folder

NAME = "recovery"
WHAT = "kill -9 of gunicorn (whole group) with 20 sessions mid-step: restart to all 20 running again vs lease TTL"

FAST = ["agents:First", "agents:Second", "agents:Third"]
SESSIONS = 20
LEASE_SECONDS = 15
AGENT_DELAY = 60  # seconds each step sleeps: every session is surely mid-step when the server dies


def agent_log(path) -> list[tuple[str, str, int, float]]:
    """(session, step, pid, unix time) of each step start the test agents recorded."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.append((parts[0], parts[1], int(parts[2]), float(parts[3])))
    return out


def first_answer(url: str, stop: threading.Event, found: list) -> None:
    """Try GET /api/sessions every 10 ms; record the wall-clock time of the first 200."""
    from servers import BROKEN_EXCHANGE

    parsed = urllib.parse.urlsplit(url)
    while not stop.is_set():
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=1)
        try:
            conn.request("GET", "/api/sessions?limit=1")
            if conn.getresponse().status == 200:
                found.append(time.time())
                return
        except BROKEN_EXCHANGE:  # not listening yet
            pass
        finally:
            conn.close()
        time.sleep(0.01)


def run(quick: bool) -> list[Result]:
    from servers import Server, migrate, server_env, status, submit, wait_until

    from bench.listing import worker_pids

    with temporary_folder() as tmp:
        log_path = tmp / "agents.log"
        env = server_env(f"sqlite:///{tmp / 'recovery.db'}", FAST, log_path, AGENT_DELAY,
                         {"REPORTS_RUNNER_THREADS": SESSIONS // 2, "REPORTS_LEASE_SECONDS": LEASE_SECONDS})
        migrate(env)
        before = Server(env, tmp, workers=2, name="before")
        after = Server(env, tmp, workers=2, name="after")
        stop = threading.Event()
        try:
            before.start()
            ids = [submit(before.url, f"Recovery {i}") for i in range(SESSIONS)]

            def all_mid_step():
                started = {sid for sid, step, _, _ in agent_log(log_path) if step == "first"}
                return set(ids) <= started

            wait_until(all_mid_step, 60, f"all {SESSIONS} sessions running their first step", interval=0.05)
            old_pids = set(worker_pids(before))
            killed_at = time.time()
            before.kill(signal.SIGKILL)  # master and workers at once, as a crash of the machine would

            answered: list = []
            watcher = threading.Thread(target=first_answer, args=(after.url, stop, answered), daemon=True)
            watcher.start()
            process_start = time.time()
            after.start()
            watcher.join(timeout=10)

            def resumed():
                new = {}
                for sid, _, pid, at in agent_log(log_path):
                    if at > killed_at and pid not in old_pids and sid in ids:
                        new.setdefault(sid, at)
                return new if len(new) == len(ids) else None

            restarts = wait_until(resumed, LEASE_SECONDS + 30, f"all {SESSIONS} sessions re-started a step",
                                  interval=0.05)
            documents = [status(after.url, sid) for sid in ids]
        finally:
            stop.set()
            for server in (before, after):
                if server.running:
                    server.kill(signal.SIGKILL)  # its steps sleep AGENT_DELAY: no graceful stop to wait for

    ready = answered[0] if answered else float("nan")
    last = max(restarts.values())
    from_ready, from_start = last - ready, last - process_start
    running = sum(1 for d in documents if d["status"] == "generating")
    attempts = sorted({d["attempts"] for d in documents})
    note = (f"{SESSIONS} sessions (agents:First/Second/Third, each step sleeping {AGENT_DELAY} s; 2 workers x "
            f"REPORTS_RUNNER_THREADS={SESSIONS // 2}) killed mid-step with SIGKILL to the whole process group; "
            f"the new server answered HTTP {ready - process_start:.2f} s after its process started; the first "
            f"re-started step {min(restarts.values()) - ready:+.2f} s and the last {from_ready:+.2f} s from then "
            f"(negative: before it answered HTTP, the runner starts in post_worker_init); after: {running} "
            f"generating, attempts {attempts}.")
    return [
        Result(NAME, f"all {SESSIONS} resumed, from HTTP ready", from_ready * 1000, LEASE_SECONDS * 1000, "ms",
               from_ready / LEASE_SECONDS, "<= 1 s (dead owner provable)", from_ready <= 1.0,
               "REPORTS_LEASE_SECONDS", note=note),
        Result(NAME, f"all {SESSIONS} resumed, from process start", from_start * 1000, LEASE_SECONDS * 1000, "ms",
               from_start / LEASE_SECONDS, "-", None, "REPORTS_LEASE_SECONDS"),
    ]
