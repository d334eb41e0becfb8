"""One state update: the step commit now, against the old states.json store at the same number of sessions.

The old store (shared/seed, "Session Persistence Fix") kept every session in a dict of session id
-> state and, on every create_state / update_state / delete_state, rewrote data/sessions/states.json
whole with json.dump(states, f, indent=2, default=str). It is rebuilt here from that description:
states shaped like the seed's example states.json entry (times as the ISO strings the example
shows, which is the cheaper case for it: default=str is never called), one update = change the
state's fields and rewrite the file. Ours is Store.commit_step on a database of the same size
(bench/step_commit.py's rounds, timed alone).
"""
import json
import uuid
from datetime import datetime, timezone

from bench.common import Result, fill_sessions, median, temporary_folder, timed
from bench.step_commit import ROUND, checkpoint, close_rig, open_rig, session_total

NAME = "json_store"
WHAT = "one state update: Store.commit_step vs the old states.json rewrite, at 1,000 to 100,000 sessions"

SIZES = [1_000, 10_000, 100_000]
QUICK_SIZES = [100, 1_000, 10_000]
GOAL_AT = 10_000
GOAL = 100.0
OURS_ROUNDS = 6                  # x ROUND sessions x 5 steps = 300 commits per size
QUICK_OURS_ROUNDS = 2
JSON_REPEATS = {100: 30, 1_000: 20, 10_000: 8, 100_000: 3}


class OldStateManager:
    """The seed's StateManager, persistence part: the whole dict rewritten on every update."""

    def __init__(self, persistence_file):
        self.persistence_file = persistence_file
        self.states: dict[str, dict] = {}

    def _save_states(self):
        with open(self.persistence_file, "w") as f:
            json.dump(self.states, f, indent=2, default=str)

    def create_state(self, session_id, user_request, requirements):
        now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
        self.states[session_id] = {
            "session_id": session_id, "status": "generating", "user_request": user_request,
            "report_requirements": requirements, "current_agent": "analyst",
            "completed_tasks": ["data_collection", "api_research"], "started_at": now, "updated_at": now}

    def update_state(self, session_id, **updates):
        state = self.states[session_id]
        state.update(updates)
        state["updated_at"] = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")
        self._save_states()


def old_store(path, count) -> OldStateManager:
    manager = OldStateManager(path)
    requirements = {"topic": "Electric Vehicle Market Analysis", "page_count": 20, "source_count": 10}
    for _ in range(count):
        manager.create_state(str(uuid.uuid4()), "Electric Vehicle Market Analysis", dict(requirements))
    manager._save_states()
    return manager


def time_old_store(folder, size, repeats):
    manager = old_store(folder / "states.json", size)
    ids = list(manager.states)
    steps = ["data_collection", "api_research", "analyst", "writer", "reviewer"]
    counter = iter(range(10 ** 9))

    def update():
        i = next(counter)
        sid = ids[(i * 7919) % len(ids)]
        done = manager.states[sid]["completed_tasks"]
        manager.update_state(sid, current_agent=steps[i % len(steps)], completed_tasks=done[:4] + [steps[i % 5]])

    update()  # warm-up
    times = timed(update, repeats)
    megabytes = (folder / "states.json").stat().st_size / 1e6
    (folder / "states.json").unlink()
    return median(times), megabytes


def run(quick: bool) -> list[Result]:
    sizes = QUICK_SIZES if quick else SIZES
    rounds = QUICK_OURS_ROUNDS if quick else OURS_ROUNDS
    measured = []  # (size, ours s, old s, file MB)
    with temporary_folder("bench-json-store-") as folder:
        rig = open_rig(folder)
        try:
            filled = 0
            for size in sizes:
                fill_sessions(rig.store, size - ROUND - filled)
                filled = size - ROUND
                checkpoint(rig.raw)
                rig.round(2, raw_side=False)  # warm-up
                ours = []
                for _ in range(rounds):
                    ours += rig.round(ROUND, raw_side=False)[0]
                if session_total(rig.raw) != filled:
                    raise RuntimeError("the round's sessions were not cleaned up")
                old, megabytes = time_old_store(folder, size, JSON_REPEATS.get(size, 3))
                measured.append((size, median(ours), old, megabytes))
                print(f"   .. {size:>7,} sessions: commit_step {median(ours) * 1e6:7.1f} us, states.json rewrite "
                      f"{old * 1e3:8.1f} ms ({megabytes:.1f} MB)", flush=True)
        finally:
            close_rig(rig)

    results = []
    speedups = [old / ours for _, ours, old, _ in measured]
    grows = all(b > a for a, b in zip(speedups, speedups[1:]))
    for i, (size, ours, old, megabytes) in enumerate(measured):
        speedup = old / ours
        if size == GOAL_AT and i == len(measured) - 1:
            goal, holds = f">= {GOAL:g}x faster; gap grows with N", speedup >= GOAL and grows
        elif size == GOAL_AT:
            goal, holds = f">= {GOAL:g}x faster", speedup >= GOAL
        elif i == len(measured) - 1:
            goal, holds = "gap grows with N", grows
        else:
            goal, holds = "-", None
        results.append(Result(
            NAME, f"{size:,} sessions", ours * 1e6, old * 1e6, "us", speedup, goal, holds,
            baseline_name="old states.json store",
            note=(f"states.json of {megabytes:.1f} MB rewritten per update (no fsync, like the old store); ratio = "
                  f"old / ours; speedups by size: " + ", ".join(f"{s:,.0f}x" for s in speedups))
            if i == len(measured) - 1 else ""))
    return results
