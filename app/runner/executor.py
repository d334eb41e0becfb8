"""The background runner: one per server or worker process, created after fork.

A loop thread claims runnable sessions while the thread pool has room, renews this process's
leases every third of their lifetime, and expires the leases of processes that are provably dead
(same kernel boot, same pid namespace, pid gone), so their sessions resume at once instead of
after the lease runs out. Each claimed session runs in a pool thread, one step after another,
committing after each step.
"""
import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from app import metrics
from app.models import utcnow
from app.pipeline import Agent, Context, StepOutput
from app.runner.reads import Reads
from app.runner.store import WAKE_CHANNEL, Claim, StepResult, Store
from app.runner.wakeups import WorkListener

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.0  # seconds between progress writes of one session


def _process_start_time(pid: int) -> Optional[str]:
    """The kernel's start time of a live process (Linux), which tells a reused pid from the original.

    None when there is no such process, or it is a zombie: a process killed by `kill -9` keeps its
    /proc entry until its parent reaps it, but it will never renew a lease again.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def process_space() -> str:
    """This kernel's boot id and this process's pid namespace: pids mean the same thing only within both.

    Two containers on one host share a boot id but not a pid namespace (and often a host name);
    two machines share neither. "-" where Linux does not say (then no owner is ever proven dead).
    """
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = None
    return f"{boot}/{namespace}" if boot and namespace else "-"


def process_owner_id() -> str:
    """host:boot-id/pid-namespace:pid:start-time:nonce, unique per runner, and enough to prove the owner dead later.

    The host name is only for people reading it: it proves nothing (containers share them).
    """
    pid = os.getpid()
    return f"{socket.gethostname()}:{process_space()}:{pid}:{_process_start_time(pid) or '-'}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when the lease owner provably no longer runs: a process of this kernel boot and this pid
    namespace whose pid is gone or now belongs to a process started at another time. Anyone else (another
    machine, another container, an id we cannot read) is left to its lease running out."""
    try:
        _host, space, pid_text, started, _nonce = owner.rsplit(":", 4)
        pid = int(pid_text)
    except ValueError:
        return False
    if space == "-" or space != process_space() or pid == os.getpid():
        return False
    if started != "-":
        return _process_start_time(pid) != started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Runner:
    def __init__(self, store: Store, reads: Reads, agents: list[Agent], settings: dict[str, Any], threads: int = 4,
                 poll_seconds: float = 1.0, stop_timeout: float = 20.0):
        self.store = store
        self.reads = reads
        self.agents = agents
        self.settings = settings
        self.threads = threads
        self.poll_seconds = poll_seconds
        self.stop_timeout = stop_timeout
        self.owner = process_owner_id()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="report-runner")
        self._running: set[str] = set()
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._last_turn = time.monotonic()
        self._loop_thread = threading.Thread(target=self._loop, name="report-runner-loop", daemon=True)
        # PostgreSQL tells every runner at once when work arrives; SQLite's runners share one machine and poll.
        self._listener = (WorkListener(store.engine, WAKE_CHANNEL, self.wake, self._stopping)
                          if store.engine.dialect.name == "postgresql" else None)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "Runner":
        log.info("runner %s: %d threads, lease %ss, pipeline %s", self.owner, self.threads,
                 self.store.lease_seconds, [a.name for a in self.agents])
        if self._listener is not None:
            self._listener.start()
        self._loop_thread.start()
        return self

    def wake(self) -> None:
        """Look for work now (a session was just submitted or retried here)."""
        self._wake.set()

    def stop(self, timeout: Optional[float] = None) -> int:
        """Stop taking work, let running steps finish (bounded), and hand every lease back.

        Returns how many sessions were still mid-step when the time ran out (their leases are kept).
        """
        timeout = self.stop_timeout if timeout is None else timeout
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            still_running = set(self._running)
        self._loop_thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1)
        if self._listener is not None:
            self._listener.join(timeout=2)
        if still_running:
            # Their steps are still going: leave those leases to expire (or to the dead-owner check
            # once this process exits) rather than let another process start the same step now.
            log.warning("runner %s: %d sessions still mid-step after %ss; leaving them to recovery",
                        self.owner, len(still_running), timeout)
        else:
            released = self._safely(self.store.release, self.owner) or 0
            log.info("runner %s stopped; handed back %d leases", self.owner, released)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return len(still_running)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        with self.store.pinned_connection():
            self._loop_turns()

    def problem(self) -> Optional[str]:
        """Why this runner cannot take work now (for GET /readyz), or None when it can."""
        if self._stopping.is_set():
            return "stopping: it takes no new sessions"
        if not self._loop_thread.is_alive():
            return "its loop thread is not running"
        # A loop turn renews the leases: one that has not come round for a lease's length means this
        # process's sessions are being taken over by others (a stall, or a database that does not answer).
        stalled = time.monotonic() - self._last_turn
        if stalled > self.store.lease_seconds:
            return f"its loop has not turned for {stalled:.0f} s (leases last {self.store.lease_seconds:g} s)"
        return None

    def _loop_turns(self) -> None:
        next_heartbeat = next_recovery = 0.0
        while not self._stopping.is_set():
            now = self._last_turn = time.monotonic()
            if now >= next_heartbeat:
                self._safely(self.store.heartbeat, self.owner)
                next_heartbeat = now + self.store.lease_seconds / 3
            if now >= next_recovery:
                self._safely(self._expire_dead_owners)
                next_recovery = now + max(self.poll_seconds * 5, 2.0)
            self._safely(self._fill_pool)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _fill_pool(self) -> None:
        while not self._stopping.is_set() and len(self._running) < self.threads:
            claim = self.store.claim(self.owner)
            if claim is None:
                return
            with self._idle:
                self._running.add(claim.session_id)
            self._pool.submit(self._run_session, claim)

    def _expire_dead_owners(self) -> None:
        for owner in self.reads.lease_owners():
            if owner != self.owner and owner_is_dead(owner):
                expired = self.store.expire_leases_of(owner)
                if expired:
                    log.info("runner %s: owner %s is dead; resuming its %d sessions", self.owner, owner, expired)

    def _progress_reporter(self, claim: Claim):
        """context.progress: at most one status write a second, however often an agent reports."""
        last_write = [0.0]

        def report(message: str) -> None:
            now = time.monotonic()
            if now - last_write[0] >= PROGRESS_INTERVAL:
                last_write[0] = now
                self._safely(self.store.progress, claim, str(message)[:500])

        return report

    def _artifact_loader(self, session_id: str):
        def load(name: str) -> bytes:
            found = self.reads.artifact(session_id, name)
            if found is None:
                raise KeyError(f"session {session_id} has no artifact {name!r}")
            return found[1]

        return load

    def _safely(self, fn, *args):
        try:
            return fn(*args)
        except Exception:
            # A locked or unreachable database must not kill the loop; the next turn retries.
            log.exception("runner %s: %s failed", self.owner, getattr(fn, "__name__", fn))
            time.sleep(self.poll_seconds)
            return None

    # -- one session ------------------------------------------------------------------------

    def _run_session(self, claim: Claim) -> None:
        """Run a claimed session, then claim and run the next one in this thread while there is work.

        Claiming here instead of handing back to the loop thread saves two thread switches a
        session, which with fast steps cost as much as the session's own database work.
        """
        current: Optional[Claim] = claim
        try:
            with self.store.pinned_connection():
                while current is not None:
                    self._run_claim(current)
                    current = self._claim_next(current.session_id)
        except Exception:
            # Only taking or returning the pinned connection gets here: the two calls above never raise.
            log.exception("runner %s: no database connection for this thread", self.owner)
            if current is not None:
                self._safely(self.store.release, self.owner, current.session_id)
                self._hand_over_slot(current.session_id, None)

    def _run_claim(self, claim: Claim) -> None:
        try:
            self._run_steps(claim)
        except Exception:
            # A database error mid-session: hand the lease back so it resumes from its last commit.
            log.exception("session %s: runner error; handing the session back", claim.session_id)
            self._safely(self.store.release, self.owner, claim.session_id)

    def _claim_next(self, finished: str) -> Optional[Claim]:
        """Take the next session for this thread's slot (None when stopping, idle or failing), freeing `finished`'s."""
        claim = None
        if not self._stopping.is_set():
            try:
                claim = self.store.claim(self.owner)
            except Exception:
                log.exception("runner %s: claim failed; the loop will try again", self.owner)
        self._hand_over_slot(finished, claim)
        return claim

    def _hand_over_slot(self, finished: str, claim: Optional[Claim]) -> None:
        """`finished` leaves this thread's slot and `claim` (if any) takes it; an empty slot wakes the loop."""
        with self._idle:
            self._running.discard(finished)
            if claim is not None:
                self._running.add(claim.session_id)
            self._idle.notify_all()
        if claim is None:
            self._wake.set()  # a slot is free: the loop fills it when there is work

    def _run_steps(self, claim: Claim) -> None:
        sid = claim.session_id
        metrics.SESSIONS_CLAIMED.inc()
        if claim.resumed:
            metrics.SESSIONS_RESUMED.inc()
            log.info("session %s: resuming after %s", sid, sorted(claim.outputs) or "no finished steps",
                     extra={"session_id": sid, "event": "resumed", "finished_steps": sorted(claim.outputs)})
        context = Context(sid, claim.user_request, claim.requirements, dict(claim.outputs), self.settings,
                          progress=self._progress_reporter(claim), artifact=self._artifact_loader(sid))
        for agent in self.agents:
            if agent.name in context.outputs:
                continue
            if self._stopping.is_set():
                self.store.release(self.owner, sid)
                return
            if not self._run_step(claim, agent, context):
                return

    def _run_step(self, claim: Claim, agent: Agent, context: Context) -> bool:
        """Run one step and record it; False when the session goes no further here (failed, lost, finished)."""
        sid, step_name = claim.session_id, agent.name
        fields = {"session_id": sid, "step": step_name}
        log.debug("session %s: step %s started", sid, step_name, extra=fields | {"event": "step_started"})
        metrics.STEPS_STARTED.labels(step_name).inc()
        started_at, clock = utcnow(), time.monotonic()
        try:
            result = agent.run(context)
            step = result if isinstance(result, StepOutput) else StepOutput(result)
            json.dumps([step.output, step.status])  # stored as JSON: refuse what cannot be, here
        except Exception as exc:
            seconds = time.monotonic() - clock
            metrics.STEPS_FAILED.labels(step_name).inc()
            metrics.STEP_SECONDS.labels(step_name).observe(seconds)
            log.exception("session %s: step %s failed after %.2f s", sid, step_name, seconds,
                          extra=fields | {"event": "step_failed", "seconds": round(seconds, 3)})
            if not self.store.fail(claim, step_name, f"Step '{step_name}' failed: {type(exc).__name__}: {exc}"):
                metrics.LEASE_LOSSES.inc()
            return False
        seconds = time.monotonic() - clock
        metrics.STEP_SECONDS.labels(step_name).observe(seconds)
        outcome = self.store.commit_step(claim, step_name, step.output, started_at,
                                         artifacts=step.artifacts, status_fields=step.status)
        if outcome is StepResult.LOST:
            metrics.LEASE_LOSSES.inc()
            log.warning("session %s: step %s finished after %.2f s but this process no longer holds the lease; "
                        "not recorded, stopping here", sid, step_name, seconds,
                        extra=fields | {"event": "lease_lost", "seconds": round(seconds, 3)})
            return False
        metrics.STEPS_FINISHED.labels(step_name).inc()
        log.info("session %s: step %s finished in %.2f s", sid, step_name, seconds,
                 extra=fields | {"event": "step_finished", "seconds": round(seconds, 3)})
        context.outputs[step_name] = step.output
        return outcome is StepResult.CONTINUE
