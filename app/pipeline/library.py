"""The local document library: Markdown, text, HTML and PDF files, indexed for BM25 search with FTS5.

A document is a file under the library folder (README files and the data/ folder excepted). A
Markdown or text file's first `# ` heading is its title; optional `Source:` and `Retrieved:`
lines name where its facts come from. HTML goes through trafilatura, PDF through pypdf. Each
process keeps one in-memory FTS5 index per folder and re-indexes a file when its size or
modification time changes, so editing the library needs no restart.
"""
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from app.pipeline.extract import Unreadable, extract_text
from app.pipeline.text import match_query, open_index

SAMPLE_LIBRARY = Path(__file__).resolve().parent / "sample_library"
SUFFIXES = {".md": "text/markdown", ".markdown": "text/markdown", ".txt": "text/markdown", ".html": "text/html",
            ".htm": "text/html", ".pdf": "application/pdf"}


@dataclass(frozen=True)
class Document:
    path: str          # relative to the library folder
    title: str
    source: Optional[str]
    retrieved: Optional[str]
    content_hash: str  # sha256 of the file's bytes
    passages: tuple[str, ...]


def library_folder(setting: Optional[str]) -> Path:
    return Path(setting).expanduser().resolve() if setting else SAMPLE_LIBRARY


class LibraryIndex:
    """An FTS5 index of one folder's passages, refreshed from the files on every search."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        self._conn = open_index()
        self._documents: dict[str, tuple[tuple, int, Document]] = {}  # path -> (stat key, doc number, doc)
        self._next_number = 1

    def refresh(self) -> list[Document]:
        """Re-read new and changed files, forget removed ones; returns the library's documents."""
        if not self.folder.is_dir():
            raise FileNotFoundError(f"the document library {self.folder} does not exist: "
                                    "set REPORTS_LIBRARY_DIR to a folder of Markdown, text, HTML or PDF files")
        seen = set()
        with self._lock:
            for path in sorted(self.folder.rglob("*")):
                relative = path.relative_to(self.folder).as_posix()
                if (path.suffix.lower() not in SUFFIXES or not path.is_file() or relative.startswith("data/")
                        or path.stem.lower() == "readme"):
                    continue
                seen.add(relative)
                stat = path.stat()
                key = (stat.st_size, stat.st_mtime_ns)
                if relative in self._documents and self._documents[relative][0] == key:
                    continue
                self._forget(relative)
                document = parse_document(relative, path.read_bytes())
                number = self._next_number
                self._next_number += 1
                # rowid = document number * 100000 + passage position: the hit says where it came from.
                self._conn.executemany("INSERT INTO texts(rowid, body) VALUES (?, ?)",
                                       [(number * 100_000 + i, p) for i, p in enumerate(document.passages)])
                self._documents[relative] = (key, number, document)
            for relative in set(self._documents) - seen:
                self._forget(relative)
            return [doc for _, _, doc in sorted(self._documents.values(), key=lambda entry: entry[1])]

    def search(self, query: str, limit: int = 1000, about: str = "") -> list[tuple[Document, str, float]]:
        """Passages matching the query, best first: (document, passage, relevance).

        With `about`, only passages that mention every meaningful word of it (the report's subject)
        count: an outline's generic questions ("how have costs changed?") would otherwise rank a
        battery-price document high in a report on hydrogen.
        """
        expression = match_query(query)
        if expression and match_query(about, every=True):
            expression = f"({match_query(about, every=True)}) AND ({expression})"
        if not expression:
            return []
        with self._lock:
            by_number = {number: doc for _, number, doc in self._documents.values()}
            rows = self._conn.execute("SELECT rowid, -bm25(texts) FROM texts WHERE texts MATCH ? "
                                      "ORDER BY bm25(texts) LIMIT ?", (expression, limit)).fetchall()
        hits = []
        for rowid, score in rows:
            document = by_number[rowid // 100_000]
            hits.append((document, document.passages[rowid % 100_000], score))
        return hits

    def _forget(self, relative: str) -> None:
        if relative in self._documents:
            _, number, _ = self._documents.pop(relative)
            self._conn.execute("DELETE FROM texts WHERE rowid >= ? AND rowid < ?",
                               (number * 100_000, (number + 1) * 100_000))


_indexes: dict[Path, LibraryIndex] = {}
_indexes_lock = threading.Lock()


def library_index(folder: Path) -> LibraryIndex:
    """This process's index of a folder (created on first use)."""
    with _indexes_lock:
        if folder not in _indexes:
            _indexes[folder] = LibraryIndex(folder)
        return _indexes[folder]


def parse_document(relative_path: str, raw: bytes) -> Document:
    content_type = SUFFIXES[Path(relative_path).suffix.lower()]
    source = retrieved = None
    if content_type == "text/markdown":
        title, source, retrieved, text = _markdown_parts(raw.decode("utf-8", errors="replace"))
    else:
        try:
            title, text = extract_text(raw, content_type, relative_path)
        except Unreadable:
            title, text = None, ""  # an empty or scanned file: a document with nothing to quote
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if paragraphs and not title and _is_heading(paragraphs[0]):
        title = paragraphs[0]  # a plain-text file's first line, standing alone, is its title
    paragraphs = [p for p in paragraphs if p != title]
    fallback_title = Path(relative_path).stem.replace("-", " ").replace("_", " ").capitalize()
    return Document(relative_path, title or fallback_title, source, retrieved, hashlib.sha256(raw).hexdigest(),
                    tuple(p for p in paragraphs if len(p.split()) >= 6)[:99_999])


def _is_heading(paragraph: str) -> bool:
    return len(paragraph.split()) <= 15 and paragraph[-1:] not in ".!?:;,"


def _markdown_parts(text: str) -> tuple[Optional[str], Optional[str], Optional[str], str]:
    """Title, Source:, Retrieved: and the body as paragraphs separated by blank lines."""
    title = source = retrieved = None
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        lowered = stripped.lower()
        if title is None and stripped.startswith("# "):
            title = stripped[2:].strip()
        elif source is None and lowered.startswith("source:"):
            source = stripped.split(":", 1)[1].strip()
        elif retrieved is None and lowered.startswith("retrieved:"):
            retrieved = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("#"):
            lines.append("")  # a heading ends a paragraph
        else:
            lines.append(stripped[2:] if stripped[:2] in ("- ", "* ") else stripped)
    return title, source, retrieved, "\n".join(lines)
