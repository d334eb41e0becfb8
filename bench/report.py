"""The default 10-page report, offline: the seven agents in process on the sample library.

The baseline, measured in the same run, is the publisher's PDF rendering of that same report
(WeasyPrint): a fixed cost every report pays, so the ratio says how much the rest of the
pipeline (choosing sources, data, charts, writing) adds to it on this machine.
"""
import time

from bench.common import Result, median

NAME = "report"
WHAT = "the default 10-page report (Electric Vehicle Market Analysis, 10 sources, moderate), offline, in process"
GOAL_SECONDS = 3.0


def one_report():
    """(seconds for the whole pipeline, seconds per step, the report's HTML)."""
    from app.pipeline import Context, StepOutput
    from app.pipeline.analyst import Analyst
    from app.pipeline.api_research import ApiResearch
    from app.pipeline.data_collection import DataCollection
    from app.pipeline.planner import Planner
    from app.pipeline.publisher import Publisher
    from app.pipeline.reviewer import Reviewer
    from app.pipeline.writer import Writer

    artifacts = {}
    context = Context("bench", "A market analysis of electric vehicles for investors",
                      {"topic": "Electric Vehicle Market Analysis", "page_count": 10, "source_count": 10,
                       "complexity": "moderate"}, artifact=lambda name: artifacts[name][1])
    steps = {}
    started = time.perf_counter()
    for agent in (Planner(), DataCollection(), ApiResearch(), Analyst(), Writer(), Reviewer(), Publisher()):
        step_started = time.perf_counter()
        result = agent.run(context)
        if isinstance(result, StepOutput):
            artifacts.update(result.artifacts)
            result = result.output
        context.outputs[agent.name] = result
        steps[agent.name] = time.perf_counter() - step_started
    return time.perf_counter() - started, steps, artifacts["report.html"][1].decode()


def run(quick: bool) -> list[Result]:
    from app.pipeline.publisher import render_pdf

    one_report()  # warm-up: imports, fonts, the library's first parse (a server does these once)
    runs = [one_report() for _ in range(2 if quick else 5)]
    html = runs[-1][2]
    pdf = []
    for _ in range(2 if quick else 5):
        started = time.perf_counter()
        render_pdf(html)
        pdf.append(time.perf_counter() - started)
    figure, baseline = median([total for total, _, _ in runs]), median(pdf)
    by_step = ", ".join(f"{name} {median([steps[name] for _, steps, _ in runs]) * 1000:.0f} ms"
                        for name in runs[0][1])
    return [Result(NAME, "whole pipeline, median", figure * 1000, baseline * 1000, "ms", figure / baseline,
                   f"< {GOAL_SECONDS:g} s", figure < GOAL_SECONDS, "its PDF rendering alone",
                   note=f"median of {len(runs)} reports after one warm-up; by step: {by_step}.")]
