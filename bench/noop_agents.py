"""Five agents that do nothing, for measuring the runner itself: "noop_agents:N1" .. "noop_agents:N5".

Importable by a server started with bench/ on PYTHONPATH (bench/executor.py does that). Each step
returns {} at once, so a run measures claim -> step -> commit and nothing else.
"""


class _Noop:
    name = "noop"

    def run(self, context):
        return {}


class N1(_Noop):
    name = "n1"


class N2(_Noop):
    name = "n2"


class N3(_Noop):
    name = "n3"


class N4(_Noop):
    name = "n4"


class N5(_Noop):
    name = "n5"


PIPELINE = [f"noop_agents:N{i}" for i in range(1, 6)]
