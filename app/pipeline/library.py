"""The local document library: Markdown, text, HTML and PDF files, parsed into titled passages.

A document is a file under the library folder (README files and the data/ folder excepted). A
Markdown or text file's first `# ` heading (or a plain-text file's standalone first line) is its
title; optional `Source:` and `Retrieved:` lines name where its facts come from. HTML goes
through trafilatura, PDF through pypdf. Each process keeps one folder's parsed documents and
re-reads a file when its size or modification time changes, so editing the library needs no
restart. Which documents a report uses is decided in relevance.py.
"""
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from app.pipeline.extract import Unreadable, extract_text

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
    """One folder's parsed documents, refreshed from the files on every report."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._lock = threading.Lock()
        # path -> (stat key, document), in the order the documents were (re)read
        self._documents: dict[str, tuple[tuple, Document]] = {}

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
                self._documents.pop(relative, None)  # a changed file goes to the end, as a new one does
                self._documents[relative] = (key, parse_document(relative, path.read_bytes()))
            for relative in set(self._documents) - seen:
                del self._documents[relative]
            return [document for _, document in self._documents.values()]


_indexes: dict[Path, LibraryIndex] = {}
_indexes_lock = threading.Lock()


def library_index(folder: Path) -> LibraryIndex:
    """This process's documents of a folder (read on first use)."""
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
    return Document(relative_path, title or title_from_name(relative_path), source, retrieved,
                    hashlib.sha256(raw).hexdigest(), tuple(p for p in paragraphs if len(p.split()) >= 6)[:99_999])


def title_from_name(path: str) -> str:
    """A title for a file that names none: "reports/heat_pump-sales.csv" -> "Heat pump sales"."""
    return " ".join(Path(path).stem.replace("-", " ").replace("_", " ").split()).capitalize()


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
