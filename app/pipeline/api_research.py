"""api_research: structured data for the topic, from the library's data files and the request's data URLs.

A data file is any `.csv` or `.json` file under the library folder (hidden folders such as `.git`
excepted). Two layouts are read: wide (an x column, usually `year`, then one numeric column per
series) and long (an x column, category columns and one numeric value column, e.g.
`year,country,sales`), which is pivoted to wide, one series per category. JSON is a list of
records, an object of column lists, or an object with `title`, `unit`, `source` and `retrieved`
keys and its records under `data`, `rows`, `records` or `values`; CSV comment lines `# Title:`,
`# Source:`, `# Retrieved:` and `# Unit:` describe it. Library tables about the subject are ranked
against the outline; data URLs the request names come first, fetched within what is left of the
session's fetch budget (data_collection.py), at most MAX_URL_DATASETS of them. A file that is not
a table, or a URL not fetched, is a skipped source with the reason, never a failed step.

Work per table is bounded whatever a file holds: a table keeps its latest MAX_ROWS rows and at most
MAX_SERIES series, those that matter (named like the topic first, then the most complete and the
largest), and says what it cut in `cut`. A table wider than that is narrowed before pandas reads it
(`_narrow`), as pandas takes seconds over thousands of columns (minutes when the rows are short).
"""
import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pandas as pd

from app.pipeline.data_collection import fetch_budget, fetch_named, now_iso, outline_query
from app.pipeline.library import library_folder, title_from_name
from app.pipeline.relevance import stems
from app.pipeline.text import rank

MAX_DATASETS = 3                   # tables per report: the data URLs' first, then the library's best
MAX_URL_DATASETS = 5               # tables from data URLs; later URLs are not fetched once this many loaded
MAX_ROWS = 200                     # a table's latest rows (after sorting by x)
MAX_SERIES = 12                    # a table's series; a wider one keeps those that matter
NARROW_ABOVE = 200                 # columns; a wider table is narrowed before pandas reads it (pandas is slow there)
NARROW_CELLS = 4_000_000           # ... and so is one whose header and rows would make more cells than this
MAX_DATA_FILES = 500               # library data files read per run; a larger library is cut, with a note
MAX_DATA_FILE_BYTES = 5_000_000    # a table for a report chart is small; a bigger file is an export, not a table
DATA_SUFFIXES = (".csv", ".json")
X_NAMES = ("year", "date", "period", "month", "quarter", "time")
META_KEYS = ("title", "unit", "source", "retrieved")
RECORD_KEYS = ("data", "rows", "records", "values")
# What pandas reads as a missing value by default; _narrow must agree with it on which cells are numbers.
MISSING = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])


class ApiResearch:
    name = "api_research"

    def run(self, context):
        query = outline_query(context)
        topic = context.requirements["topic"]
        datasets, skipped = self._from_urls(context, topic)

        # data_collection knows which words the library dwells on; with none, the library does not
        # cover the subject, and a table that shares a framing word ("market") would only mislead.
        subject_words = (context.outputs.get("data_collection") or {}).get("subject_words")
        if subject_words is not None and not subject_words:
            context.progress(f"loaded {len(datasets)} data tables; the library does not cover the subject")
            return {"datasets": datasets, "skipped": skipped, "data_files_searched": 0}
        subject = " ".join(subject_words) if subject_words else context.outputs["planner"]["subject"]

        files = data_files(library_folder(context.settings.get("LIBRARY_DIR")))
        if len(files) > MAX_DATA_FILES:
            skipped.append({"url": f"library:{files[MAX_DATA_FILES][0]}",
                            "reason": f"{len(files) - MAX_DATA_FILES} data files from here on were not read: "
                                      f"at most {MAX_DATA_FILES} are read per report"})
            files = files[:MAX_DATA_FILES]
        candidates = []
        for relative, path in files:
            location = f"library:{relative}"
            try:
                size = path.stat().st_size
                if size > MAX_DATA_FILE_BYTES:
                    raise DataError(f"the file is {size / 1_000_000:.1f} MB; a data table may be at most "
                                    f"{MAX_DATA_FILE_BYTES // 1_000_000} MB")
                candidates.append(load_dataset(path.read_bytes(), path.suffix.lower(), location, topic))
            except (DataError, ValueError) as exc:
                skipped.append({"url": location, "reason": str(exc)})
            except OSError as exc:
                skipped.append({"url": location, "reason": f"the file could not be read: {exc.strerror or exc}"})
        described = [f"{d['title']} {d['title']} {d['unit']} {_words(d['location'])} {' '.join(d['columns'])}"
                     for d in candidates]
        # Only tables about the subject, ranked by the whole outline. About means matching the subject at
        # least a tenth as well as the best table: "Electric car sales" is about electric vehicles, but
        # "wind power capacity" is not about solar power, as "power" is in most titles and weighs nothing.
        by_subject = rank(described, subject)
        best = by_subject[0][1] if by_subject else 0.0
        on_subject = {index for index, score in by_subject if score >= best / 10}
        for index, _score in rank(described, query):
            if index in on_subject and len(datasets) < MAX_DATASETS:
                datasets.append(candidates[index])
        context.progress(f"loaded {len(datasets)} data tables")
        return {"datasets": datasets, "skipped": skipped, "data_files_searched": len(files)}

    def _from_urls(self, context, topic):
        from app.pipeline.web import FetchRefused

        datasets, skipped = [], []
        urls = list(dict.fromkeys(context.requirements.get("data_urls") or []))
        if not urls:
            return datasets, skipped
        # What data_collection left of the session's budget, also when this step re-runs after a crash.
        spent = (context.outputs.get("data_collection") or {}).get("fetch_seconds") or 0.0
        done = 0
        results = fetch_named(context, urls, max(0.0, fetch_budget(context) - float(spent)))
        try:
            for url, fetched in results:
                done += 1
                context.progress(f"fetched data URL {done} of {len(urls)}")
                if isinstance(fetched, FetchRefused):
                    skipped.append({"url": url, "reason": fetched.reason})
                    continue
                kind = ".json" if "json" in fetched.content_type or url.lower().endswith(".json") else ".csv"
                try:
                    dataset = load_dataset(fetched.body, kind, fetched.final_url, topic)
                except (DataError, ValueError) as exc:
                    skipped.append({"url": url, "reason": str(exc)})
                    continue
                dataset["retrieved_at"] = fetched.retrieved_at
                datasets.append(dataset)
                if len(datasets) >= MAX_URL_DATASETS:
                    break
        finally:
            results.close()  # enough tables: the URLs not started yet never are
        skipped += [{"url": url, "reason": f"not fetched: at most {MAX_URL_DATASETS} data tables from URLs are "
                                           "used per report"} for url in urls[done:]]
        return datasets, skipped


class DataError(ValueError):
    """A data file that is not a table of numeric series over an x column."""


def data_files(folder: Path) -> list[tuple[str, Path]]:
    """Every CSV and JSON file under the folder as (relative path, path), sorted by relative path."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".")]  # .git, .venv: not the user's tables
        for name in names:
            path = Path(root) / name
            if not name.startswith(".") and path.suffix.lower() in DATA_SUFFIXES and path.is_file():
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def load_dataset(raw: bytes, kind: str, location: str, topic: str = "") -> dict:
    """Parse a data file into a small JSON-able table with its description (DataError if it is not one).

    A table with more than MAX_SERIES series keeps those that matter to the topic, and one with more than
    MAX_ROWS rows its latest; `cut` then says so (None when the whole table is kept).
    """
    if not raw.strip():
        raise DataError("the file is empty")
    text = _text(raw)
    frame, meta, series_total = _json_frame(text, topic) if kind == ".json" else _csv_frame(text, topic)
    x, series, frame, cut = wide_table(frame, topic, series_total)
    return {
        "title": meta.get("title") or default_title(location),
        "source": meta.get("source"),
        "published_retrieved": meta.get("retrieved"),
        "retrieved_at": now_iso(),
        "unit": meta.get("unit") or "",
        "location": location,
        "content_hash": hashlib.sha256(raw).hexdigest(),
        "columns": [x, *series],
        "rows": [[_plain(v) for v in row] for row in frame.itertuples(index=False)],
        "cut": cut,
    }


def default_title(location: str) -> str:
    """"heat_pump_sales.csv" -> "Heat pump sales"."""
    return title_from_name(location.removeprefix("library:").split("?")[0].rstrip("/")) or location


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        if b"\x00" in raw:
            raise DataError("a binary file, not a text table") from None
        return raw.decode("latin-1")  # spreadsheet exports are often Windows-1252; latin-1 never fails


def _csv_frame(text: str, topic: str) -> tuple[pd.DataFrame, dict, int | None]:
    meta, lines = {}, []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            key, colon, value = line.lstrip()[1:].partition(":")
            if colon and key.strip().lower() in META_KEYS and value.strip():
                meta[key.strip().lower()] = value.strip()
        elif line.strip():
            lines.append(line)
    if not lines:
        raise DataError("no table in the file, only comment lines")
    # A comma-separated file is the rule; a semicolon or tab one (spreadsheet exports) is read too.
    counts = {sep: lines[0].count(sep) for sep in (",", ";", "\t")}
    sep = max(counts, key=counts.get) if any(counts.values()) else ","
    series_total = None
    try:
        if _too_wide(counts[sep] + 1, len(lines) - 1):
            text, series_total = _narrow_csv(lines, sep, topic)
            sep = ","
        else:
            text = "\n".join(lines)
        frame = pd.read_csv(io.StringIO(text), sep=sep, skipinitialspace=True)
    except (pd.errors.ParserError, csv.Error) as exc:
        raise DataError(f"not a readable CSV table: {str(exc).strip().splitlines()[0]}") from None
    return frame, meta, series_total


def _too_wide(columns: int, rows: int) -> bool:
    """Whether pandas would take long over a table this wide: one to narrow first. A sparse one counts as
    full, as pandas fills every gap (a wide header over many short rows)."""
    return columns > NARROW_ABOVE or columns * rows > NARROW_CELLS


def _narrow_csv(lines: list[str], sep: str, topic: str) -> tuple[str, int]:
    """A CSV too wide for pandas as a CSV of its x column and the series that matter (`_narrow`), and how
    many series it had. Rewritten rather than read with `usecols`: pandas pads every short row to the
    header's width, which a wide header and many short rows make minutes of work."""
    rows = list(csv.reader(lines, delimiter=sep, skipinitialspace=True))
    columns = [[] for _ in rows[0]]
    for row in rows[1:]:  # cell by cell: a short row costs its own cells, not the header's width
        for column, value in zip(columns, row):
            column.append(value)
    keep, series_total = _narrow(rows[0], columns, topic)
    narrowed = io.StringIO()
    csv.writer(narrowed, lineterminator="\n").writerows([row[i] if i < len(row) else "" for i in keep] for row in rows)
    return narrowed.getvalue(), series_total


def _json_frame(text: str, topic: str) -> tuple[pd.DataFrame, dict, int | None]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    meta = {}
    if isinstance(data, dict):
        meta = {k: str(data[k]).strip() for k in META_KEYS if isinstance(data.get(k), (str, int, float))}
        inner = next((k for k in RECORD_KEYS if _records(data.get(k))), None)
        if inner is not None:
            columns = data.get("columns")
            data = data[inner]
            if isinstance(columns, list) and isinstance(data, list) and all(isinstance(r, list) for r in data):
                names = [str(c) for c in columns]
                if _too_wide(len(names), len(data)) and all(len(r) == len(names) for r in data):
                    keep, total = _narrow(names, [[r[i] for r in data] for i in range(len(names))], topic)
                    names, data = [names[i] for i in keep], [[r[i] for i in keep] for r in data]
                    return _frame(lambda: pd.DataFrame(data, columns=names)), meta, total
                return _frame(lambda: pd.DataFrame(data, columns=names)), meta, None
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        names = list(dict.fromkeys(k for r in data for k in r))
        if _too_wide(len(names), len(data)):
            by_name = {name: [] for name in names}
            for record in data:  # record by record: records with keys of their own cost their own cells
                for name, value in record.items():
                    by_name[name].append(value)
            keep, total = _narrow(names, list(by_name.values()), topic)
            kept = [names[i] for i in keep]
            narrowed = [{k: r[k] for k in kept if k in r} for r in data]
            return _frame(lambda: pd.DataFrame.from_records(narrowed, columns=kept)), meta, total
        return _frame(lambda: pd.DataFrame.from_records(data)), meta, None
    if isinstance(data, dict):
        lists = {str(k): v for k, v in data.items() if isinstance(v, list)}
        if len(lists) >= 2 and len({len(v) for v in lists.values()}) == 1:
            names, total = list(lists), None
            if _too_wide(len(names), len(next(iter(lists.values())))):
                keep, total = _narrow(names, list(lists.values()), topic)
                lists = {names[i]: lists[names[i]] for i in keep}
            return _frame(lambda: pd.DataFrame(lists)), meta, total
        if len(lists) >= 2:
            raise DataError("the JSON object's column lists are not all the same length")
    raise DataError('not a JSON table: expected a list of records, an object of equal-length column lists, or an '
                    'object with its records under "data", "rows", "records" or "values"')


def _records(value) -> bool:
    """Records under a key: a list of records or of rows, or an object of columns (not a column named "values")."""
    return isinstance(value, dict) or (isinstance(value, list) and bool(value)
                                       and all(isinstance(r, (dict, list)) for r in value))


def _frame(make) -> pd.DataFrame:
    try:
        return make()
    except (ValueError, TypeError) as exc:
        raise DataError(f"the JSON records do not form a table: {exc}") from None


def wide_table(frame: pd.DataFrame, topic: str = "",
               series_total: int | None = None) -> tuple[str, list[str], pd.DataFrame, dict | None]:
    """(x column, series, table, cut) in wide form: long form pivoted, numeric x sorted ascending.

    At most MAX_SERIES series are kept, those that matter to the topic (`_that_matter`), and the latest
    MAX_ROWS rows; `cut` says what was left out, or is None. `series_total` is how many series the file
    had, when `_narrow` left some out before the frame was read.
    """
    frame = frame.dropna(axis=1, how="all").dropna(axis=0, how="all")
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.shape[1] < 2 or frame.empty:
        raise DataError("a data table needs an x column (such as year) and at least one numeric column")
    if len(set(frame.columns)) < len(frame.columns):
        raise DataError("two columns have the same name")
    x = _x_column(list(frame.columns))
    numbers = {c: _numeric(frame[c]) for c in frame.columns if c != x}
    values = [c for c, v in numbers.items() if v is not None]
    categories = [c for c, v in numbers.items() if v is None]
    if not values:
        raise DataError(f"no numeric column besides {x!r}: a data table needs at least one series of numbers")
    for c in values:
        frame[c] = numbers[c]
    frame = frame.dropna(subset=[x])
    x_numeric = _numeric(frame[x])
    if x_numeric is not None:
        frame[x] = x_numeric

    if categories and len(values) == 1 and frame[x].duplicated().any():
        # Long form (`year,country,sales`): one series per category, in the order the file names them.
        value = values[0]
        frame = frame.dropna(subset=categories)
        labels = frame[categories].astype(str).apply(lambda column: column.str.strip())
        label = labels.iloc[:, 0] if len(categories) == 1 else labels.agg(" ".join, axis=1)
        keyed = pd.DataFrame({"x": frame[x], "label": label, "value": frame[value]})
        if keyed.duplicated(["x", "label"]).any():
            row = keyed[keyed.duplicated(["x", "label"])].iloc[0]
            raise DataError(f"more than one {value!r} for {x} {_plain(row['x'])} and {row['label']}: "
                            "the table has a dimension besides the category")
        series = list(dict.fromkeys(label))
        frame = keyed.pivot(index="x", columns="label", values="value")
        found = len(series)
        series = _that_matter(frame, series, topic)
        frame = frame.reindex(columns=series).reindex(list(dict.fromkeys(keyed["x"]))).rename_axis(x).reset_index()
        frame.columns = [x, *series]
    else:
        found = len(values)
        series = _that_matter(frame, values, topic)
        frame = frame[[x, *series]]
    if x_numeric is not None:
        frame = frame.sort_values(x, kind="stable")
    frame = frame.dropna()
    if frame.empty:
        raise DataError("no row has a value in every series")
    rows_total = len(frame)
    # The latest rows: the analysis reads first and latest values, and latest matters more.
    frame = frame.tail(MAX_ROWS).copy()
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]) and (frame[column] % 1 == 0).all():
            frame[column] = frame[column].astype("int64")  # 2020.0 (a pivot's or a gap's float) is 2020
    series = [str(s) for s in series]
    return x, series, frame, _cut(series, series_total or found, len(frame), rows_total, topic)


def _that_matter(frame: pd.DataFrame, series: list, topic: str) -> list:
    """The series, or when there are more than MAX_SERIES, those that matter, in the table's order."""
    if len(series) <= MAX_SERIES:
        return series
    values = frame[series]
    kept = _rank(series, values.notna().sum().tolist(), values.abs().max().fillna(0).tolist(), topic)
    return [series[i] for i in kept]


def _rank(names: list, present: list[int], largest: list[float], topic: str) -> list[int]:
    """Positions of the MAX_SERIES series that matter, ascending: named like the topic first, then those
    with the most values, then those with the largest; the table's order breaks ties."""
    like = _named_like(topic)
    order = sorted(range(len(names)), key=lambda i: (not like(names[i]), -present[i], -largest[i], i))
    return sorted(order[:MAX_SERIES])


def _named_like(topic: str):
    """A test of whether a series name has a word starting with one of the topic's stems ("Heat pumps" and
    heat_pump_sales); one pattern, as a wide table has hundreds of thousands of names to test."""
    topic_stems = [re.escape(stem) for stem in stems(topic) if len(stem) >= 3]  # "ev", "uk": too short a prefix
    if not topic_stems:
        return lambda name: False
    pattern = re.compile(rf"(?<![a-z0-9])(?:{'|'.join(topic_stems)})", re.IGNORECASE)
    return lambda name: pattern.search(str(name)) is not None


def _cut(series: list[str], series_total: int, rows: int, rows_total: int, topic: str) -> dict | None:
    """What a table left out, for the reader: None, or the totals and a sentence for captions."""
    parts = []
    if len(series) < series_total:
        basis = ("named like the topic first, then the most complete and largest"
                 if any(map(_named_like(topic), series)) else "the most complete and largest")
        parts.append(f"{len(series)} of its {series_total:,} series ({basis})")
    if rows < rows_total:
        parts.append(f"the latest {rows} of its {rows_total:,} rows")
    if not parts:
        return None
    return {"series_total": series_total, "rows_total": rows_total,
            "note": f"The source table was cut to {' and '.join(parts)}."}


def _narrow(names: list[str], columns: list[list], topic: str) -> tuple[list[int], int]:
    """For a table too wide for pandas (`_too_wide`), before pandas reads it: the positions of its x column
    and of the series that matter, and how many series it has. `columns[i]` is column i's values (a
    missing value may be left out).

    A column is a series when every value it has is a number (as `_numeric` decides), so the choice is
    the one wide_table would make, at a fraction of pandas' cost over thousands of columns. Text columns
    are left out: a long table (one value column, the rest categories) is never this wide.
    """
    names = [str(name).strip() for name in names]
    x = names.index(_x_column(names))
    positions, present, largest = [], [], []
    for i in range(len(names)):
        if i != x:
            counted = _numbers_in(columns[i])
            if counted is not None:
                positions.append(i)
                present.append(counted[0])
                largest.append(counted[1])
    kept = _rank([names[i] for i in positions], present, largest, topic)
    return sorted([x, *(positions[k] for k in kept)]), len(positions)


def _numbers_in(values) -> tuple[int, float] | None:
    """(how many values, the largest magnitude) of a column of numbers; None if some value is not a number."""
    count, largest = 0, 0.0
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return None
        try:
            number = abs(float(value))
        except ValueError:  # "1,234", " NA ", or text
            if value.strip() in MISSING:
                continue
            try:
                number = abs(float(value.replace(",", "")))
            except ValueError:
                return None
        except OverflowError:
            return None
        if number == number:  # NaN is a missing value
            count += 1
            largest = max(largest, number)
    return (count, largest) if count else None


def _x_column(columns: list[str]) -> str:
    """The column named like a time axis (year, date, ...), else the first."""
    for exact in (True, False):
        for column in columns:
            words = re.findall(r"[a-z]+", column.lower())
            # "fiscal_year" is an x axis; "sales_per_month" is a series.
            if (column.lower() in X_NAMES) if exact else (len(words) <= 2
                                                          and any(w.rstrip("s") in X_NAMES for w in words)):
                return column
    return columns[0]


def _numeric(column: pd.Series):
    """The column as numbers, or None when some value is not a number ("1,234" and " 12 " are numbers)."""
    if pd.api.types.is_bool_dtype(column):
        return None
    if pd.api.types.is_numeric_dtype(column):
        return column
    present = column.dropna()
    if present.empty or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in present):
        return None
    converted = pd.to_numeric(column.map(lambda v: v.replace(",", "").strip() if isinstance(v, str) else v),
                              errors="coerce")
    return converted if converted.notna().sum() == len(present) else None


def _words(location: str) -> str:
    """A location's path as words: "library:heat-pumps/prices.json" -> "heat pumps prices"."""
    return " ".join(re.findall(r"[A-Za-z0-9]+", location.removeprefix("library:").rsplit(".", 1)[0]))


def _plain(value):
    """numpy scalars to plain Python, so the table is JSON."""
    return value.item() if hasattr(value, "item") else value
