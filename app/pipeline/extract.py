"""Text out of documents: the title and main text of an HTML page, a text or Markdown file, or a PDF.

Used for the library's files and for fetched web pages alike. HTML goes through trafilatura
(boilerplate such as navigation and footers dropped), PDF through pypdf.
"""
import io
import re

HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"text/plain", "text/markdown", "text/x-markdown"}
PDF_TYPE = "application/pdf"


class Unreadable(ValueError):
    """Not a document we can read, or one with no text."""


def extract_text(raw: bytes, content_type: str, location: str) -> tuple[str, str]:
    """(title, main text); the title falls back to the location. Unreadable for other content."""
    if content_type in HTML_TYPES:
        title, text = _html(raw, location)
    elif content_type in TEXT_TYPES:
        text = _decode(raw)
        heading = re.search(r"^# +(.+?)\s*$", text, re.MULTILINE) if "markdown" in content_type else None
        title = heading.group(1) if heading else location
    elif content_type == PDF_TYPE:
        title, text = _pdf(raw, location)
    else:
        raise Unreadable(f"not a web page or text document ({content_type})")
    if not text.strip():
        raise Unreadable(f"no readable text in {location}")
    return title, text


def _html(raw: bytes, location: str) -> tuple[str, str]:
    import trafilatura  # heavy import, only for pipelines that read the web
    import lxml.html

    # Decoded here rather than by trafilatura, which would also try to decompress the bytes.
    html = _decode(raw, html=True)
    document = trafilatura.bare_extraction(html, url=location, with_metadata=True,
                                           include_comments=False, include_tables=True)
    title = document.title if document is not None else None
    if not title:
        try:
            title = lxml.html.document_fromstring(html).findtext(".//title")
        except (ValueError, lxml.etree.LxmlError):
            title = None
    title = " ".join((title or "").split()) or location
    text = (document.text or "") if document is not None else ""
    # trafilatura puts one paragraph per line; the rest of the pipeline separates them by blank lines.
    return title, "\n\n".join(line.strip() for line in text.splitlines() if line.strip())


def _pdf(raw: bytes, location: str) -> tuple[str, str]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise Unreadable("the PDF is password-protected")
        title = (reader.metadata.title if reader.metadata else None) or ""
        pages = [page.extract_text() or "" for page in reader.pages]
    except Unreadable:
        raise
    except Exception as exc:  # pypdf raises many kinds of error on a damaged file
        raise Unreadable(f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    return " ".join(title.split()) or location, "\n\n".join(p.strip() for p in pages if p.strip())


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)


def _decode(body: bytes, html: bool = False) -> str:
    """UTF-8 if it is (most of the web), else the charset a page declares, else Windows-1252."""
    if body.startswith((b"\xff\xfe", b"\xfe\xff")):
        return body.decode("utf-16", errors="replace")
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    declared = _META_CHARSET.search(body[:4096]) if html else None
    if declared:
        try:
            return body.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            pass
    return body.decode("cp1252", errors="replace")
