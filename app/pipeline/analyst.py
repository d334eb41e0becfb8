"""analyst: turns the research data into tables (levels, growth, shares) and charts (PNG and SVG).

For each dataset: a table of every series' first and latest value, its change and compound
annual growth; when there are several series, their shares of the latest total, ranked; and a
line chart of the series over the first column. Every table and chart carries a caption that
says what it shows and where the numbers come from. Charts are files (StepOutput.artifacts);
the output names them.
"""
import io

# Figure, not pyplot: pyplot keeps global state, and sessions run in several threads at once.
# A bare Figure renders with the Agg backend, which needs no display.
from matplotlib.figure import Figure

from app.pipeline import StepOutput

CHART_SIZE_INCHES = (8, 4.5)
CHART_DPI = 100  # 800 x 450 pixels


class Analyst:
    name = "analyst"

    def run(self, context):
        datasets = context.outputs["api_research"]["datasets"]
        tables, charts, artifacts = [], [], {}
        for number, dataset in enumerate(datasets, start=1):
            tables += analyse(dataset, number, len(tables))
            chart = chart_of(dataset, number, len(charts) + 1)
            png, svg = render_chart(dataset)
            artifacts[chart["png"]] = ("image/png", png)
            artifacts[chart["svg"]] = ("image/svg+xml", svg)
            charts.append(chart)
            context.progress(f"analysed {number} of {len(datasets)} data tables")
        return StepOutput({"tables": tables, "charts": charts}, artifacts=artifacts)


def _source_note(dataset) -> str:
    return f"Source: {dataset['source'] or dataset['location']}."


def _unit(dataset) -> str:
    return f" ({dataset['unit']})" if dataset["unit"] else ""


def analyse(dataset, dataset_number, tables_before):
    columns, rows = dataset["columns"], dataset["rows"]
    series = columns[1:]
    first, last = rows[0], rows[-1]
    periods = _periods(first[0], last[0], len(rows))
    growth_rows = []
    for i, name in enumerate(series, start=1):
        start, end = first[i], last[i]
        change = end - start
        cagr = ((end / start) ** (1 / periods) - 1) * 100 if start > 0 and end > 0 and periods > 0 else None
        growth_rows.append([_label(name), _round(start), _round(end), _round(change),
                            f"{cagr:+.1f}%" if cagr is not None else "n/a"])
    tables = [{
        "id": f"table-{tables_before + 1}",
        "dataset": dataset_number,
        "title": f"{dataset['title']}: change from {first[0]} to {last[0]}",
        "columns": ["Series", f"{first[0]}{_unit(dataset)}", f"{last[0]}{_unit(dataset)}", "Change",
                    "Compound annual growth"],
        "rows": growth_rows,
        "caption": (f"{dataset['title']}, first and latest value of each series, the change between them and the "
                    f"compound annual growth rate over {periods} {'year' if periods == 1 else 'years'}. "
                    f"{_source_note(dataset)}"),
    }]
    total = sum(last[1:])
    if len(series) > 1 and total > 0 and all(v >= 0 for v in last[1:]):
        ranked = sorted(zip(series, last[1:]), key=lambda p: -p[1])
        tables.append({
            "id": f"table-{tables_before + 2}",
            "dataset": dataset_number,
            "title": f"{dataset['title']}: shares in {last[0]}",
            "columns": ["Rank", "Series", f"{last[0]}{_unit(dataset)}", "Share of total"],
            "rows": [[rank, _label(name), _round(value), f"{value / total * 100:.1f}%"]
                     for rank, (name, value) in enumerate(ranked, start=1)],
            "caption": (f"{dataset['title']} in {last[0]}, each series ranked by its share of the total "
                        f"({_round(total)}{_unit(dataset)}). {_source_note(dataset)}"),
        })
    return tables


def chart_of(dataset, dataset_number, number):
    columns, rows = dataset["columns"], dataset["rows"]
    return {
        "id": f"figure-{number}",
        "dataset": dataset_number,
        "title": dataset["title"],
        "png": f"figure-{number}.png",
        "svg": f"figure-{number}.svg",
        "caption": (f"{dataset['title']}{_unit(dataset)}, {rows[0][0]} to {rows[-1][0]}, by "
                    f"{', '.join(map(_label, columns[1:]))}. {_source_note(dataset)}"),
    }


def render_chart(dataset) -> tuple[bytes, bytes]:
    columns, rows = dataset["columns"], dataset["rows"]
    xs = [row[0] for row in rows]
    figure = Figure(figsize=CHART_SIZE_INCHES, dpi=CHART_DPI)
    axes = figure.subplots()
    for i, name in enumerate(columns[1:], start=1):
        axes.plot(xs, [row[i] for row in rows], marker="o", linewidth=2, label=_label(name))
    axes.set_title(dataset["title"])
    axes.set_xlabel(columns[0])
    axes.set_ylabel(dataset["unit"] or "value")
    if all(isinstance(x, int) for x in xs):
        axes.set_xticks(xs)
    axes.grid(True, alpha=0.3)
    if len(columns) > 2:
        axes.legend()
    figure.tight_layout()
    png, svg = io.BytesIO(), io.BytesIO()
    figure.savefig(png, format="png")
    figure.savefig(svg, format="svg", metadata={"Date": None})  # no timestamp: same data, same file
    return png.getvalue(), svg.getvalue()


def _periods(first_x, last_x, count) -> int:
    if isinstance(first_x, (int, float)) and isinstance(last_x, (int, float)):
        return int(last_x - first_x)
    return count - 1


def _label(column: str) -> str:
    """A column name as a reader sees it: "average_pack_price" -> "average pack price"."""
    return column.replace("_", " ")


def _round(value):
    return round(value, 2) if isinstance(value, float) else value
