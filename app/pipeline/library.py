"""The local document library: Markdown and plain-text files, split into passages.

A document is a file under the library folder (README.md excepted). Its first `# ` heading is
its title; optional `Source:` and `Retrieved:` lines name where its facts come from. Parsed
documents are cached per process and re-read when a file's size or mtime changes.
"""
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SAMPLE_LIBRARY = Path(__file__).resolve().parent / "sample_library"
SUFFIXES = (".md", ".markdown", ".txt")


@dataclass(frozen=True)
class Document:
    path: str          # relative to the library folder
    title: str
    source: Optional[str]
    retrieved: Optional[str]
    content_hash: str  # sha256 of the file's bytes
    passages: tuple[str, ...]


_cache: dict[Path, tuple[tuple, Document]] = {}
_cache_lock = threading.Lock()


def library_folder(setting: Optional[str]) -> Path:
    return Path(setting).expanduser().resolve() if setting else SAMPLE_LIBRARY


def load_library(folder: Path) -> list[Document]:
    if not folder.is_dir():
        raise FileNotFoundError(f"document library {folder} does not exist (REPORTS_LIBRARY_DIR)")
    documents = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
        if path.name.lower() == "readme.md":
            continue
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        with _cache_lock:
            cached = _cache.get(path)
        if cached is None or cached[0] != key:
            cached = (key, parse_document(path.relative_to(folder).as_posix(), path.read_bytes()))
            with _cache_lock:
                _cache[path] = cached
        documents.append(cached[1])
    return documents


def parse_document(relative_path: str, raw: bytes) -> Document:
    text = raw.decode("utf-8", errors="replace")
    title, source, retrieved = None, None, None
    paragraphs, current = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if title is None and stripped.startswith("# "):
            title = stripped[2:].strip()
        elif stripped.lower().startswith("source:") and source is None:
            source = stripped.split(":", 1)[1].strip()
        elif stripped.lower().startswith("retrieved:") and retrieved is None:
            retrieved = stripped.split(":", 1)[1].strip()
        elif not stripped or stripped.startswith("#"):
            if current:
                paragraphs.append(" ".join(current))
                current = []
        else:
            current.append(stripped.lstrip("-* ").strip() if stripped[:2] in ("- ", "* ") else stripped)
    if current:
        paragraphs.append(" ".join(current))
    fallback_title = Path(relative_path).stem.replace("-", " ").replace("_", " ").capitalize()
    return Document(relative_path, title or fallback_title, source, retrieved,
                    hashlib.sha256(raw).hexdigest(), tuple(p for p in paragraphs if len(p.split()) >= 6))
