"""api_research: structured data for the topic, from the library's data files and the request's data URLs.

A data file is any `.csv` or `.json` file under the library folder (hidden folders such as `.git`
excepted). Two layouts are read: wide (an x column, usually `year`, then one numeric column per
series) and long (an x column, category columns and one numeric value column, e.g.
`year,country,sales`), which is pivoted to wide, one series per category. JSON is a list of
records, an object of column lists, or an object with `title`, `unit`, `source` and `retrieved`
keys and its records under `data`, `rows`, `records` or `values`; CSV comment lines `# Title:`,
`# Source:`, `# Retrieved:` and `# Unit:` describe it. Library tables about the subject are ranked
against the outline; data URLs the request names are always loaded. A file that is not a table is
a skipped source with the reason, never a failed step.
"""
import csv
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pandas as pd

from app.pipeline.data_collection import fetch_named, now_iso, outline_query
from app.pipeline.library import library_folder, title_from_name
from app.pipeline.text import rank

MAX_DATASETS = 3
MAX_ROWS = 200
MAX_DATA_FILES = 500               # library data files read per run; a larger library is cut, with a note
MAX_DATA_FILE_BYTES = 5_000_000    # a table for a report chart is small; a bigger file is an export, not a table
DATA_SUFFIXES = (".csv", ".json")
X_NAMES = ("year", "date", "period", "month", "quarter", "time")
META_KEYS = ("title", "unit", "source", "retrieved")
RECORD_KEYS = ("data", "rows", "records", "values")


class ApiResearch:
    name = "api_research"

    def run(self, context):
        query = outline_query(context)
        datasets, skipped = [], []
        for url in dict.fromkeys(context.requirements.get("data_urls") or []):
            try:
                datasets.append(self._from_url(context, url))
            except (DataError, ValueError) as exc:
                skipped.append({"url": url, "reason": str(exc)})

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
                candidates.append(load_dataset(path.read_bytes(), path.suffix.lower(), location))
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

    def _from_url(self, context, url):
        from app.pipeline.web import FetchRefused

        try:
            fetched = fetch_named(context, url)
        except FetchRefused as exc:
            raise DataError(exc.reason) from None
        kind = ".json" if "json" in fetched.content_type or url.lower().endswith(".json") else ".csv"
        dataset = load_dataset(fetched.body, kind, fetched.final_url)
        dataset["retrieved_at"] = fetched.retrieved_at
        return dataset


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


def load_dataset(raw: bytes, kind: str, location: str) -> dict:
    """Parse a data file into a small JSON-able table with its description (DataError if it is not one)."""
    if not raw.strip():
        raise DataError("the file is empty")
    text = _text(raw)
    frame, meta = _json_frame(text) if kind == ".json" else _csv_frame(text)
    x, series, frame = wide_table(frame)
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


def _csv_frame(text: str) -> tuple[pd.DataFrame, dict]:
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
    try:
        frame = pd.read_csv(io.StringIO("\n".join(lines)), sep=sep, skipinitialspace=True)
    except (pd.errors.ParserError, csv.Error) as exc:
        raise DataError(f"not a readable CSV table: {str(exc).strip().splitlines()[0]}") from None
    return frame, meta


def _json_frame(text: str) -> tuple[pd.DataFrame, dict]:
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
                return _frame(lambda: pd.DataFrame(data, columns=[str(c) for c in columns])), meta
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return _frame(lambda: pd.DataFrame.from_records(data)), meta
    if isinstance(data, dict):
        lists = {str(k): v for k, v in data.items() if isinstance(v, list)}
        if len(lists) >= 2 and len({len(v) for v in lists.values()}) == 1:
            return _frame(lambda: pd.DataFrame(lists)), meta
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


def wide_table(frame: pd.DataFrame) -> tuple[str, list[str], pd.DataFrame]:
    """(x column, series columns, table) in wide form: long form pivoted, numeric x sorted ascending."""
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
        label = frame[categories].astype(str).apply(lambda r: " ".join(v.strip() for v in r), axis=1)
        keyed = pd.DataFrame({"x": frame[x], "label": label, "value": frame[value]})
        if keyed.duplicated(["x", "label"]).any():
            row = keyed[keyed.duplicated(["x", "label"])].iloc[0]
            raise DataError(f"more than one {value!r} for {x} {_plain(row['x'])} and {row['label']}: "
                            "the table has a dimension besides the category")
        series = list(dict.fromkeys(label))
        frame = keyed.pivot(index="x", columns="label", values="value").reindex(columns=series)
        frame = frame.reindex(list(dict.fromkeys(keyed["x"]))).rename_axis(x).reset_index()
        frame.columns = [x, *series]
    else:
        series = values
        frame = frame[[x, *series]]
    if x_numeric is not None:
        frame = frame.sort_values(x, kind="stable")
    frame = frame.dropna()
    if frame.empty:
        raise DataError("no row has a value in every series")
    # The latest rows: the analysis reads first and latest values, and latest matters more.
    frame = frame.tail(MAX_ROWS).copy()
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]) and (frame[column] % 1 == 0).all():
            frame[column] = frame[column].astype("int64")  # 2020.0 (a pivot's or a gap's float) is 2020
    return x, [str(s) for s in series], frame


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
