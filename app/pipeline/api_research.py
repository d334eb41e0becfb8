"""api_research: structured data for the topic, from the library's data files and the request's data URLs.

A data file is a CSV (or JSON records) whose first column is the x axis (usually `year`) and
whose other columns are numeric series; CSV comment lines `# Title:`, `# Source:`,
`# Retrieved:` and `# Unit:` describe it. Library files are ranked against the outline like
documents are; data URLs the request names are always loaded (or skipped with the reason).
"""
import hashlib
import io
from pathlib import Path

import pandas as pd

from app.pipeline.data_collection import fetch_named, now_iso, outline_query
from app.pipeline.library import library_folder
from app.pipeline.text import rank

MAX_DATASETS = 3
MAX_ROWS = 200


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

        folder = library_folder(context.settings.get("LIBRARY_DIR")) / "data"
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".csv", ".json")) if folder.is_dir() else []
        candidates = []
        for path in files:
            try:
                candidates.append(load_dataset(path.read_bytes(), path.suffix.lower(), f"library:data/{path.name}"))
            except (DataError, ValueError) as exc:
                skipped.append({"url": f"library:data/{path.name}", "reason": str(exc)})
        described = [f"{d['title']} {d['title']} {d['unit']} {' '.join(d['columns'])}" for d in candidates]
        # Only tables about the subject, ranked by the whole outline. About means matching the subject at
        # least a tenth as well as the best table: "Electric car sales" is about electric vehicles, but
        # "wind power capacity" is not about solar power, as "power" is in most titles and weighs nothing.
        by_subject = rank(described, context.outputs["planner"]["subject"])
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
    """A data file that is not a table of numeric series over a first column."""


def load_dataset(raw: bytes, kind: str, location: str) -> dict:
    """Parse a data file into a small JSON-able table with its description."""
    meta = {}
    if kind == ".json":
        frame = pd.read_json(io.BytesIO(raw))
    else:
        text = raw.decode("utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith("#") and ":" in line:
                key, _, value = line[1:].partition(":")
                meta[key.strip().lower()] = value.strip()
        frame = pd.read_csv(io.StringIO(text), comment="#")
    if frame.shape[1] < 2 or frame.empty:
        raise DataError("a data table needs a first column and at least one numeric series")
    frame = frame.head(MAX_ROWS)
    x, series = frame.columns[0], [c for c in frame.columns[1:] if pd.api.types.is_numeric_dtype(frame[c])]
    if not series:
        raise DataError("no numeric columns besides the first")
    frame = frame[[x, *series]].dropna()
    return {
        "title": meta.get("title") or Path(location).stem.replace("-", " ").replace("_", " ").capitalize(),
        "source": meta.get("source"),
        "published_retrieved": meta.get("retrieved"),
        "retrieved_at": now_iso(),
        "unit": meta.get("unit", ""),
        "location": location,
        "content_hash": hashlib.sha256(raw).hexdigest(),
        "columns": [str(x), *map(str, series)],
        "rows": [[_plain(v) for v in row] for row in frame.itertuples(index=False)],
    }


def _plain(value):
    """numpy scalars to plain Python, so the table is JSON."""
    return value.item() if hasattr(value, "item") else value
