"""make bench: run the benchmarks, print one table, write docs/benchmarks.md and its plots.

    python -m bench                 # everything (about 13 minutes on 2 cores; pg_* start their own PostgreSQL)
    python -m bench --only status_poll,step_commit
    python -m bench --quick         # smaller sizes, for trying a change; does not write docs/
"""
import argparse
import importlib
import math
import platform
import sys
import time
import traceback
from datetime import datetime, timezone

from bench.common import ROOT, Result, cpu_count

# In the order the table shows them; each is bench/<name>.py.
# The pg_* ones run on a throwaway PostgreSQL cluster the run starts (bench/postgres.py) and stops at exit.
BENCHMARKS = ["status_poll", "step_commit", "claim", "json_store", "executor", "peer_dbos", "listing", "cleanup",
              "backup", "recovery", "memory", "report", "pg_step_commit", "pg_executor", "pg_peer_dbos"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--quick", action="store_true", help="smaller sizes; docs/ is left alone")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")

    results: list[Result] = []
    failures = []
    for name in names:
        if not (ROOT / "bench" / f"{name}.py").exists():
            print(f"== {name}: not written yet")
            continue
        module = importlib.import_module(f"bench.{name}")
        started = time.monotonic()
        print(f"== {name}: {module.WHAT}", flush=True)
        try:
            found = module.run(args.quick)
        except Exception:
            traceback.print_exc()
            failures.append(name)
            continue
        for result in found:
            print(f"   {row(result)}", flush=True)
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
        results += found

    print()
    print(table(results))
    if failures:
        print(f"\nbenchmarks that crashed: {', '.join(failures)}")
    if not args.quick and not args.only:
        write_docs(results)
    return 1 if failures else 0


def verdict(result: Result) -> str:
    return "-" if result.holds is None else ("holds" if result.holds else "DOES NOT HOLD")


def row(result: Result) -> str:
    return (f"{result.benchmark:<12} {result.case:<34} {result.figure:>12,.1f} {result.unit:<8} "
            f"vs {result.baseline:>12,.1f} ({result.baseline_name}) ratio {result.ratio:6.2f} "
            f"goal {result.goal:<10} {verdict(result)}")


def table(results: list[Result]) -> str:
    lines = ["| benchmark | case | measured | baseline (same run) | ratio | goal | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        baseline = "-" if math.isnan(r.baseline) else f"{r.baseline:,.1f} {r.unit} ({r.baseline_name})"
        ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}"
        lines.append(f"| {r.benchmark} | {r.case} | {r.figure:,.1f} {r.unit} | {baseline} | {ratio} | {r.goal} "
                     f"| {verdict(r)} |")
    return "\n".join(lines)


def write_docs(results: list[Result]) -> None:
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    plots = plot(results, docs)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = [f"- **{r.benchmark}, {r.case}**: {r.note}" for r in results if r.note]
    text = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {now}: {platform.machine()}, {cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}. Every figure stands next to a baseline measured "
        "in the same run on the same machine; the ratio is what to compare between runs.",
        "",
        table(results),
        "",
        *(["## Notes", "", *notes, ""] if notes else []),
        # Diagnoses of the goals that do not hold, kept by hand beside the code that measures them.
        *([(ROOT / "bench" / "findings.md").read_text()] if (ROOT / "bench" / "findings.md").exists() else []),
        *[f"![{title}]({path})\n" for title, path in plots],
    ]
    (docs / "benchmarks.md").write_text("\n".join(text) + "\n")
    print(f"\nwrote {docs / 'benchmarks.md'} and {len(plots)} plots")


def plot(results: list[Result], docs) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure

    written = []
    by_benchmark: dict[str, list[Result]] = {}
    for r in results:
        if r.series:
            by_benchmark.setdefault(r.benchmark, []).append(r)
    for benchmark, rows in by_benchmark.items():
        figure = Figure(figsize=(7, 4), dpi=100)
        axes = figure.subplots()
        for r in rows:
            s = r.series
            axes.plot(s["x"], s["y"], marker="o", label=s.get("label", r.case))
            if "baseline" in s:
                axes.plot(s["x"], s["baseline"], marker="s", linestyle="--", label=s.get("baseline_label", "baseline"))
        first = rows[0].series
        axes.set_xlabel(first.get("xlabel", ""))
        axes.set_ylabel(first.get("ylabel", rows[0].unit))
        if first.get("logx"):
            axes.set_xscale("log")
        if first.get("logy"):
            axes.set_yscale("log")
        axes.set_title(first.get("title", benchmark))
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = f"benchmark-{benchmark}.png"
        figure.savefig(docs / path)
        written.append((first.get("title", benchmark), path))
    return written


if __name__ == "__main__":
    sys.exit(main())
