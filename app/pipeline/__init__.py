"""The agent pipeline: the contract every agent keeps, and loading agents from import paths.

An agent is a small class with a `name` and `run(context) -> output`, where the output is
JSON-serialisable (it is stored in the step's row), or a StepOutput that adds files (charts, a
PDF) and fields for the status document. Agents are plain Python: nothing here knows about
Flask or the database, so an agent runs and is tested on its own.
"""
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


class Agent(Protocol):
    name: str

    def run(self, context: "Context") -> Any: ...


@dataclass
class Context:
    """What an agent sees: the request, and the outputs of the steps finished before it."""

    session_id: str
    user_request: str
    requirements: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)  # finished steps' outputs, by step name
    settings: dict[str, Any] = field(default_factory=dict)  # deployment settings (LIBRARY_DIR, ...)
    # Tell the user how a long step is going ("collected 6 of 10 sources"); cheap to call often.
    progress: Callable[[str], None] = lambda message: None
    # The bytes of a file an earlier step stored (StepOutput.artifacts), by name.
    artifact: Callable[[str], bytes] = lambda name: _no_artifacts(name)


@dataclass
class StepOutput:
    """An agent's output with extras: files too large for the output, and public status fields."""

    output: Any
    artifacts: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # name -> (content type, data)
    status: dict[str, Any] = field(default_factory=dict)  # merged into the session's status document


def _no_artifacts(name: str) -> bytes:
    raise KeyError(f"no artifact {name!r}: this context has no store")


class PipelineError(ValueError):
    """The configured pipeline cannot be loaded."""


def load_pipeline(paths: list[str]) -> list[Agent]:
    """Instantiate the agents named by "module:Class" (or "module.Class") paths, in order."""
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise PipelineError(f"PIPELINE must be a non-empty JSON list of \"module:Class\" paths, got {paths!r}")
    agents = []
    for path in paths:
        module_name, sep, class_name = path.partition(":") if ":" in path else path.rpartition(".")
        if not sep or not module_name or not class_name:
            raise PipelineError(f"pipeline entry {path!r} is not a \"module:Class\" path")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise PipelineError(f"cannot import pipeline agent {path!r}: {exc}") from None
        agent = cls()
        if not isinstance(getattr(agent, "name", None), str) or not callable(getattr(agent, "run", None)):
            raise PipelineError(f"pipeline agent {path!r} needs a `name` string and a `run(context)` method")
        agents.append(agent)
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise PipelineError(f"pipeline step names must be unique, got {names}")
    return agents
