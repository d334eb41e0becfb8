"""Test agents, importable as "agents:Name" (tests/ is on PYTHONPATH for server subprocesses).

They do small real work and record each execution (session, step, pid) in the file named by
TEST_AGENT_LOG, so tests can count how often and in which order steps ran. TEST_AGENT_DELAY
stretches each step, standing in for a slow model call, so a test can crash a server mid-step.
"""
import json
import os
import signal
import time


def _record(name, context):
    path = os.environ.get("TEST_AGENT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{context.session_id} {name} {os.getpid()} {time.time():.3f}\n")


class _Step:
    name = "step"

    def run(self, context):
        _record(self.name, context)
        time.sleep(float(os.environ.get("TEST_AGENT_DELAY", "0")))
        return {"step": self.name, "saw": sorted(context.outputs), "topic": context.requirements["topic"]}


class First(_Step):
    name = "first"


class Second(_Step):
    name = "second"


class Third(_Step):
    name = "third"


class Explode(_Step):
    """Raises: the session must fail with this step and message."""

    name = "explode"

    def run(self, context):
        _record(self.name, context)
        raise RuntimeError("the data source refused the request")


class Unserialisable(_Step):
    name = "unserialisable"

    def run(self, context):
        return {"when": object()}


class KillSelf(_Step):
    """Kills its own process, every time: recovery must give up after REPORTS_MAX_ATTEMPTS."""

    name = "killself"

    def run(self, context):
        _record(self.name, context)
        os.kill(os.getpid(), signal.SIGKILL)


class Echo(_Step):
    """Returns what the previous steps produced, to check outputs survive a resume."""

    name = "echo"

    def run(self, context):
        _record(self.name, context)
        return {"outputs": json.loads(json.dumps(context.outputs))}


FAST = ["agents:First", "agents:Second", "agents:Third"]


class SlowWriter:
    """The real writer, slowed down so a test can kill the server while it runs."""

    name = "writer"

    def run(self, context):
        from app.pipeline.writer import Writer

        _record(self.name, context)
        time.sleep(float(os.environ.get("TEST_AGENT_DELAY", "0")))
        return Writer().run(context)


DEFAULT_WITH_SLOW_WRITER = [
    "app.pipeline.planner:Planner", "app.pipeline.data_collection:DataCollection",
    "app.pipeline.api_research:ApiResearch", "app.pipeline.analyst:Analyst", "agents:SlowWriter",
    "app.pipeline.reviewer:Reviewer", "app.pipeline.publisher:Publisher"]
