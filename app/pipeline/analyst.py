"""analyst: turns the research data into tables (levels, growth, shares), charts (PNG and SVG) and findings.

For each dataset: a table of every series' first and latest value, its change and compound
annual growth; when there are several series, their shares of the latest total, ranked; and a
line chart of the series over the first column. Every table and chart carries a caption that
says what it shows and where the numbers come from. Charts are files (StepOutput.artifacts);
the output names them. Findings are the same numbers as sentences (growth, peak, share,
overall), the dataset's headline first, stating only what its table says; the writer cites them.

Each table lists at most MAX_TABLE_SERIES series and each chart draws at most MAX_CHART_SERIES lines,
the largest by latest value, so both stay readable however wide a dataset is; a caption says when
series were left out, and repeats api_research's note when the source table itself was cut. Shares
are not computed for a cut table: the series it left out would be missing from the total.
"""
import io
import re

# Figure, not pyplot: pyplot keeps global state, and sessions run in several threads at once.
# A bare Figure renders with the Agg backend, which needs no display.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from app.pipeline import StepOutput

CHART_SIZE_INCHES = (8, 4.5)
CHART_DPI = 100  # 800 x 450 pixels
MAX_FINDINGS = 4  # per dataset: the headline and what a reader needs next, not every number again
MAX_TABLE_SERIES = 12  # rows of a table, one per series
MAX_CHART_SERIES = 8   # lines of a chart: more and colours repeat and the legend hides the plot
MAX_YEAR_TICKS = 12    # an x axis of more years than this gets matplotlib's own ticks, not one per year
_CURRENCY_SIGNS = ("$", "€", "£", "¥")
_NOT_ADDITIVE = re.compile(r"\b(prices?|costs?|rates?|shares?|averages?|percent(age)?s?|ratios?|index|indices)\b",
                           re.I)
# A series that is the sum of the others: a share of a total that counts it twice would be wrong.
_TOTAL_LIKE = re.compile(r"\b(total|world|worldwide|global|all|overall|sum)\b", re.I)


class Analyst:
    name = "analyst"

    def run(self, context):
        datasets = context.outputs["api_research"]["datasets"]
        tables, charts, findings, artifacts = [], [], [], {}
        for number, dataset in enumerate(datasets, start=1):
            tables += analyse(dataset, number, len(tables))
            findings += findings_of(dataset, number)
            chart = chart_of(dataset, number, len(charts) + 1)
            png, svg = render_chart(dataset)
            artifacts[chart["png"]] = ("image/png", png)
            artifacts[chart["svg"]] = ("image/svg+xml", svg)
            charts.append(chart)
            context.progress(f"analysed {number} of {len(datasets)} data tables")
        return StepOutput({"tables": tables, "charts": charts, "findings": findings}, artifacts=artifacts)


def _source_note(dataset) -> str:
    return f"Source: {dataset['source'] or dataset['location']}."


def _unit(dataset) -> str:
    return f" ({dataset['unit']})" if dataset["unit"] else ""


def analyse(dataset, dataset_number, tables_before):
    columns, rows = dataset["columns"], dataset["rows"]
    series = columns[1:]
    first, last = rows[0], rows[-1]
    periods = _periods(first[0], last[0], len(rows))
    shown = _largest(dataset, MAX_TABLE_SERIES)
    growth_rows = []
    for i in shown:
        start, end = first[i], last[i]
        change = end - start
        cagr = _cagr(start, end, periods)
        growth_rows.append([_label(columns[i]), _round(start), _round(end), _round(change),
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
                    f"{_source_note(dataset)}{_left_out(dataset, len(shown))}"),
    }]
    total = sum(last[1:])
    if len(series) > 1 and total > 0 and all(v >= 0 for v in last[1:]) and not _series_cut(dataset):
        ranked = sorted(zip(series, last[1:]), key=lambda p: -p[1])[:MAX_TABLE_SERIES]
        tables.append({
            "id": f"table-{tables_before + 2}",
            "dataset": dataset_number,
            "title": f"{dataset['title']}: shares in {last[0]}",
            "columns": ["Rank", "Series", f"{last[0]}{_unit(dataset)}", "Share of total"],
            "rows": [[rank, _label(name), _round(value), f"{value / total * 100:.1f}%"]
                     for rank, (name, value) in enumerate(ranked, start=1)],
            "caption": (f"{dataset['title']} in {last[0]}, each series ranked by its share of the total "
                        f"({_round(total)}{_unit(dataset)}). {_source_note(dataset)}"
                        f"{_left_out(dataset, len(ranked))}"),
        })
    return tables


def _largest(dataset, limit) -> list[int]:
    """Column positions of the series to show: all of them, or the `limit` largest by latest value, in table order."""
    columns, last = dataset["columns"], dataset["rows"][-1]
    positions = list(range(1, len(columns)))
    if len(positions) <= limit:
        return positions
    return sorted(sorted(positions, key=lambda i: -abs(last[i]))[:limit])


def _series_cut(dataset) -> bool:
    """Whether the source table had series the dataset left out (api_research's `cut`)."""
    cut = dataset.get("cut") or {}
    return cut.get("series_total", 0) > len(dataset["columns"]) - 1


def _left_out(dataset, shown: int) -> str:
    """What a caption adds when series are not shown: those left out here, and the source table's own cut."""
    notes, count = [], len(dataset["columns"]) - 1
    if shown < count:
        notes.append(f"The {shown} largest of its {count} series in {dataset['rows'][-1][0]} are shown.")
    if (dataset.get("cut") or {}).get("note"):
        notes.append(dataset["cut"]["note"])
    return "".join(f" {note}" for note in notes)


def findings_of(dataset, dataset_number) -> list[dict]:
    """What the table says, as sentences without citations: the headline first, at most MAX_FINDINGS.

    The headline is the largest series' growth from the first to the latest row, or, for a table of
    one row, the overall level. Then the largest share, the peaks that came before the latest value,
    and the other series' growth. Numbers are the table's (rounded as the analyst's tables round them).
    """
    columns, rows = dataset["columns"], dataset["rows"]
    series, last = columns[1:], rows[-1]
    # Largest first, by the latest value: the series a reader looks at first.
    order = sorted(range(1, len(columns)), key=lambda i: -abs(last[i]))
    base = _topic(dataset["title"], series)

    def about(i):
        return f"{base} in {_label(columns[i])}" if len(series) > 1 else base

    total = sum(last[1:])
    shares = (len(series) > 1 and total > 0 and all(v >= 0 for v in last[1:]) and _additive(dataset)
              and not any(_TOTAL_LIKE.search(_label(name)) for name in series) and not _series_cut(dataset))
    found = []
    if len(rows) > 1:
        found.append(("growth", _growth_sentence(dataset, about(order[0]), order[0])))
    elif shares:
        names = [_label(columns[i]) for i in order]
        across = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) <= 4 else f"{len(names)} series"
        found.append(("overall", f"In {last[0]} {_lower_first(base)} totalled "
                                 f"{_amount(_round(total), dataset['unit'])} across {across}."))
    else:
        found.append(("overall", f"{about(order[0])} stood at {_amount(_round(last[order[0]]), dataset['unit'])} "
                                 f"in {last[0]}."))
    if shares:
        top = order[0]
        found.append(("share", f"In {last[0]} {_label(columns[top])} held the largest share of {_lower_first(base)}, "
                               f"{last[top] / total * 100:.1f}% of the {_total(_round(total), dataset['unit'])}."))
    for i in order:
        peak = _peak_sentence(dataset, about(i), i)
        if peak:
            found.append(("peak", peak))
    if len(rows) > 1:
        found += [("growth", _growth_sentence(dataset, about(i), i)) for i in order[1:]]
    return [{"dataset": dataset_number, "kind": kind, "text": text} for kind, text in found[:MAX_FINDINGS]]


def _additive(dataset) -> bool:
    """Whether the series add up to a meaningful total: sales do, prices, rates and percentages do not."""
    unit = dataset["unit"].lower()
    return not (unit.startswith("%") or " per " in f" {unit} " or "/" in unit or _NOT_ADDITIVE.search(dataset["title"]))


def _growth_sentence(dataset, subject, i) -> str:
    rows, unit = dataset["rows"], dataset["unit"]
    (x0, start), (x1, end) = (rows[0][0], rows[0][i]), (rows[-1][0], rows[-1][i])
    start_r, end_r = _round(start), _round(end)
    if start_r == end_r:
        return f"{subject} stood at {_amount(end_r, unit)} in both {x0} and {x1}."
    verb = "rose" if end_r > start_r else "fell"
    text = f"{subject} {verb} from {_amount(start_r, unit)} in {x0} to {_amount(end_r, unit)} in {x1}"
    cagr = _cagr(start, end, _periods(x0, x1, len(rows))) if _is_number(x0) and _is_number(x1) else None
    # The rate as the growth table prints it ("+11.2%"), without its sign: the verb says which way.
    if cagr is not None and f"{abs(cagr):.1f}" != "0.0":
        text += f", {abs(cagr):.1f}% a year"
    return text + "."


def _peak_sentence(dataset, subject, i):
    """A peak before the latest value (not the first row: then the growth sentence already says "fell")."""
    rows, unit = dataset["rows"], dataset["unit"]
    values = [row[i] for row in rows]
    top = max(values)
    at = len(values) - 1 - values[::-1].index(top)  # the latest time it was at its highest
    if _round(values[-1]) >= _round(top) or at == 0:
        return None
    return (f"{subject} peaked at {_amount(_round(top), unit)} in {rows[at][0]} before falling to "
            f"{_amount(_round(values[-1]), unit)} in {rows[-1][0]}.")


def chart_of(dataset, dataset_number, number):
    columns, rows = dataset["columns"], dataset["rows"]
    shown = _largest(dataset, MAX_CHART_SERIES)
    return {
        "id": f"figure-{number}",
        "dataset": dataset_number,
        "title": dataset["title"],
        "png": f"figure-{number}.png",
        "svg": f"figure-{number}.svg",
        "caption": (f"{dataset['title']}{_unit(dataset)}, {rows[0][0]} to {rows[-1][0]}, by "
                    f"{', '.join(_label(columns[i]) for i in shown)}. {_source_note(dataset)}"
                    f"{_left_out(dataset, len(shown))}"),
    }


def render_chart(dataset) -> tuple[bytes, bytes]:
    columns, rows = dataset["columns"], dataset["rows"]
    xs = [row[0] for row in rows]
    figure = Figure(figsize=CHART_SIZE_INCHES, dpi=CHART_DPI)
    axes = figure.subplots()
    shown = _largest(dataset, MAX_CHART_SERIES)
    for i in shown:
        axes.plot(xs, [row[i] for row in rows], marker="o", linewidth=2, label=_label(columns[i]))
    axes.set_title(dataset["title"])
    axes.set_xlabel(columns[0])
    axes.set_ylabel(dataset["unit"] or "value")
    if all(isinstance(x, int) for x in xs):
        if len(xs) <= MAX_YEAR_TICKS:
            axes.set_xticks(xs)
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # years, never 2015.5
    axes.grid(True, alpha=0.3)
    if len(shown) > 1:
        axes.legend()
    figure.tight_layout()
    png, svg = io.BytesIO(), io.BytesIO()
    figure.savefig(png, format="png")
    figure.savefig(svg, format="svg", metadata={"Date": None})  # no timestamp: same data, same file
    return png.getvalue(), svg.getvalue()


def _cagr(start, end, periods):
    return ((end / start) ** (1 / periods) - 1) * 100 if start > 0 and end > 0 and periods > 0 else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _periods(first_x, last_x, count) -> int:
    if isinstance(first_x, (int, float)) and isinstance(last_x, (int, float)):
        return int(last_x - first_x)
    return count - 1


def _label(column: str) -> str:
    """A column name as a reader sees it: "average_pack_price" -> "average pack price"."""
    return column.replace("_", " ")


def _round(value):
    return round(value, 2) if isinstance(value, float) else value


def _number(value) -> str:
    """9800 -> "9,800"; 1.25 -> "1.25"; 8.10 -> "8.1"; 470.0 -> "470"."""
    text = f"{value:,.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else f"{value:,}"
    return "0" if text == "-0" else text


def _amount(value, unit: str) -> str:
    """A number with its unit as a reader says it: "8.1 million cars", "38%", "$139"."""
    if not unit:
        return _number(value)
    if unit in _CURRENCY_SIGNS:
        return f"{'-' if value < 0 else ''}{unit}{_number(abs(value))}"
    return f"{_number(value)}{'' if unit.startswith('%') else ' '}{unit}"


def _total(value, unit: str) -> str:
    return f"total of {_amount(value, unit)}" if unit else f"{_number(value)} total"


def _topic(title: str, series: list[str]) -> str:
    """What a sentence is about: the title, without "by region" or "in China and Europe" when series name those."""
    topic = title
    if len(series) > 1:
        labels = [_label(name).lower() for name in series]
        for match in re.finditer(r"\s+(by|in|across|for)\s+", title):
            tail = title[match.start():].lower()
            if match.group(1) == "by" or any(label in tail for label in labels):
                topic = title[:match.start()].strip() or title
                break
    return topic[:1].upper() + topic[1:]


def _lower_first(text: str) -> str:
    """"Heat pump sales" -> "heat pump sales" within a sentence; "EV sales" stays as it is."""
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if first[1:].islower() or len(first) == 1 and first.isupper() else text
