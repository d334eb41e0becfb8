"""data_collection: up to source_count sources, from the URLs the request names and the local library.

URLs the request names come first (the user asked for them), fetched through the SSRF guard
in web.py; one that fails or is blocked is a skipped source with its reason, never a failed
session. The rest are the library documents about the report's subject, decided per whole
document (relevance.py); once a document is in, all its passages are the writer's to place.
Every source keeps its title, location, its own source line and date, retrieval time, content
hash and the passages the writer may quote, so each citation can be traced back. A subject the
library does not cover gets no library source at all, rather than unrelated ones.
"""
from datetime import datetime, timezone

from app.pipeline.library import library_folder, library_index
from app.pipeline.relevance import select
from app.pipeline.text import rank

PASSAGES_PER_SOURCE = 60  # a source's best passages the writer may use; most documents have fewer


def outline_query(context) -> str:
    """What the report is about: the topic (weighted), the request and the outline's questions."""
    outline = context.outputs["planner"]
    questions = " ".join(q for section in outline["sections"] for q in section["questions"])
    topic = context.requirements["topic"]
    return f"{topic} {topic} {context.user_request} {questions}"


def fetch_named(context, url: str):
    """Fetch a URL the request names, within the deployment's limits (web.fetch; FetchRefused if not)."""
    from app.pipeline.web import fetch

    return fetch(url, timeout=float(context.settings.get("FETCH_TIMEOUT", 10)),
                 max_bytes=int(context.settings.get("FETCH_MAX_BYTES", 2_000_000)),
                 allow_private=bool(context.settings.get("ALLOW_PRIVATE_URLS", False)))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class DataCollection:
    name = "data_collection"

    def run(self, context):
        wanted = context.requirements["source_count"]
        query = outline_query(context)
        sources, skipped = self._from_urls(context, query, wanted)
        folder = library_folder(context.settings.get("LIBRARY_DIR"))
        documents = library_index(folder).refresh()
        context.progress(f"searching {len(documents)} library documents")

        topic = context.requirements["topic"]
        chosen = select(documents, topic, context.user_request, max(0, wanted - len(sources)))
        for document in chosen.documents:
            sources.append({
                "title": document.title,
                "location": f"library:{document.path}",
                "publisher": document.source,
                "published_retrieved": document.retrieved,
                "retrieved_at": now_iso(),
                "content_hash": document.content_hash,
                "passages": _passages(list(document.passages), query),
            })
            context.progress(f"collected {len(sources)} of {wanted} sources")
        for number, source in enumerate(sources, start=1):
            source["number"] = number
        return {
            "library": str(folder),
            "documents_searched": len(documents),
            "documents_on_subject": chosen.on_subject,
            "requested": wanted,
            "subject_words": chosen.subject_words,
            "subject_terms": chosen.subject_terms,
            # Framing words of the topic kept as a condition, and those given up to find enough documents.
            "required_words": chosen.required_words,
            "relaxed_words": chosen.dropped_words,
            "sources": sources,
            "skipped": skipped,
        }

    def _from_urls(self, context, query, wanted):
        from app.pipeline.web import FetchRefused, extract_document

        sources, skipped = [], []
        urls = list(dict.fromkeys(context.requirements.get("urls") or []))
        for position, url in enumerate(urls, start=1):
            if len(sources) >= wanted:
                skipped.append({"url": url, "reason": f"source_count ({wanted}) already reached"})
                continue
            context.progress(f"fetching URL {position} of {len(urls)}")
            try:
                fetched = fetch_named(context, url)
                title, text = extract_document(fetched)
            except FetchRefused as exc:
                skipped.append({"url": url, "reason": exc.reason})
                continue
            paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) >= 6]
            if not paragraphs:
                skipped.append({"url": url, "reason": "no readable text on the page"})
                continue
            sources.append({
                "title": title or fetched.final_url,
                "location": fetched.final_url,
                "publisher": None,
                "published_retrieved": None,
                "retrieved_at": fetched.retrieved_at,
                "content_hash": fetched.content_hash,
                "passages": _passages(paragraphs, query),
            })
        return sources, skipped


def _passages(paragraphs: list[str], query: str) -> list[str]:
    """A source's passages in document order: all of them, or its best PASSAGES_PER_SOURCE when it is long."""
    if len(paragraphs) <= PASSAGES_PER_SOURCE:
        return paragraphs
    best = {i for i, _ in rank(paragraphs, query, PASSAGES_PER_SOURCE)} or set(range(PASSAGES_PER_SOURCE))
    return [p for i, p in enumerate(paragraphs) if i in best]
