"""GET /api/report-status/<id> under gunicorn -w 2 and wrk, full body and 304, vs a bare Flask JSON endpoint."""
import re
import runpy
import shutil
import signal
import subprocess

from bench.common import ROOT, Result, median, temporary_folder

NAME = "status_poll"
WHAT = ("status poll req/s (wrk -t2 -c16, gunicorn -w 2, the project's gthread workers), full body and 304, "
        "vs a bare Flask JSON endpoint on the same workers")

FAST = ["agents:First", "agents:Second", "agents:Third"]


def ensure_wrk() -> str:
    """Debian's wrk; installed with apt-get when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(install, capture_output=True, check=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and apt-get could not install it")
    return found


def wrk(binary: str, url: str, seconds: int, headers=()) -> tuple[float, str]:
    """(requests/s, anything wrong) of `wrk -t2 -c16 -d<seconds>s url`."""
    command = [binary, "-t2", "-c16", f"-d{seconds}s"]
    for header in headers:
        command += ["-H", header]
    out = subprocess.run(command + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    problems = "; ".join(line.strip() for line in out.splitlines()
                         if line.strip().startswith(("Non-2xx", "Socket errors")))
    return float(match.group(1)), problems


def project_workers() -> tuple[str, ...]:
    """gunicorn.conf.py's worker class and threads as options: the baseline must run the same workers,
    or the ratio would measure the worker class (gthread keeps connections alive; sync closes each)."""
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    return ("--worker-class", config["worker_class"], "--threads", str(config["threads"]))


def start_bare(log_dir, env):
    """`gunicorn -w 2 bare_app:app` from bench/ (the project's hooks do not apply), with the project's workers."""
    from servers import Server, free_port

    class BareServer(Server):
        app = "bare_app:app"
        options = ("--no-control-socket", *project_workers())
        folder = ROOT / "bench"
        ready_path = "/api/report-status/x"

    return BareServer(env, log_dir, workers=2, name="bare", port=free_port())


def run(quick: bool) -> list[Result]:
    from servers import Server, migrate, server_env, status, submit, wait_until

    from bench.listing import Http

    binary = ensure_wrk()
    seconds = 2 if quick else 5
    rounds = 3
    with temporary_folder() as tmp:
        env = server_env(f"sqlite:///{tmp / 'status.db'}", FAST, tmp / "agents.log", 0.0)
        migrate(env)
        project = Server(env, tmp, workers=2, name="project")
        bare = start_bare(tmp, env)
        try:
            project.start()
            bare.start()
            session_id = submit(project.url)  # made through the API and run by the server's own runner
            wait_until(lambda: status(project.url, session_id)["status"] == "completed", 60, "session completed")
            path = f"/api/report-status/{session_id}"
            client = Http(project.url)
            first, _, _, headers = client.get(path)
            etag = headers["ETag"]
            conditional = f"If-None-Match: {etag}"
            second = client.get(path, {"If-None-Match": etag})[0]
            client.close()
            if first != 200 or second != 304:
                raise RuntimeError(f"poll answered {first}, conditional poll {second}; expected 200 and 304")
            measured = {"bare": [], "full": [], "304": []}
            problems = []
            wrk(binary, bare.url + path, 1)  # warm up both
            wrk(binary, project.url + path, 1)
            for round_ in range(rounds):
                # Alternate which app goes first, so a drift of the machine's speed falls on both alike.
                order = ["bare", "full", "304"] if round_ % 2 == 0 else ["304", "full", "bare"]
                for kind in order:
                    url = (bare.url if kind == "bare" else project.url) + path
                    rate, wrong = wrk(binary, url, seconds, [conditional] if kind == "304" else [])
                    measured[kind].append(rate)
                    if wrong:
                        problems.append(f"{kind} round {round_ + 1}: {wrong}")
        finally:
            for server in (project, bare):
                if server.running:
                    server.kill(signal.SIGKILL)

    bare_rate = median(measured["bare"])
    note = (f"wrk -t2 -c16 -d{seconds}s, {rounds} alternating rounds, median of per-round ratios; req/s per round: "
            + ", ".join(f"{k} {[round(v) for v in vs]}" for k, vs in measured.items())
            + (f". wrk reported: {'; '.join(problems)}" if problems else ""))
    results = []
    for kind, case, goal, need in (("full", "full body (200)", ">= 0.8", 0.8),
                                   ("304", "conditional (If-None-Match, 304)", ">= 1.0", 1.0)):
        ratio = median([p / b for p, b in zip(measured[kind], measured["bare"])])
        series = {"x": list(range(1, rounds + 1)), "y": measured[kind], "label": f"status poll, {case}",
                  "xlabel": "round", "ylabel": "requests/s",
                  "title": "GET /api/report-status/<id>, gunicorn -w 2, wrk -t2 -c16"}
        if kind == "full":
            series |= {"baseline": measured["bare"], "baseline_label": "bare Flask JSON endpoint"}
        results.append(Result(NAME, case, median(measured[kind]), bare_rate, "req/s", ratio, goal, ratio >= need,
                              "bare Flask, gunicorn -w 2", note=note if kind == "full" else "", series=series))
    return results
