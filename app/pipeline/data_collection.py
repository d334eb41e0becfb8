"""data_collection: up to source_count sources, from the URLs the request names and the local library.

URLs the request names come first (the user asked for them), fetched through the SSRF guard
in web.py, a few at a time; one that fails, is blocked or is cut off by the session's fetch
budget is a skipped source with its reason, never a failed session. The budget (FETCH_BUDGET
seconds) covers these page URLs and the data URLs api_research fetches next: this step takes at
most the pages' share of it, by count, and records the seconds it spent for api_research. The
rest are the library documents about the report's subject, decided per whole document
(relevance.py); once a document is in, all its passages are the writer's to place.
Every source keeps its title, location, its own source line and date, retrieval time, content
hash and the passages the writer may quote, so each citation can be traced back. A subject the
library does not cover gets no library source at all, rather than unrelated ones.
"""
import time
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


def fetch_budget(context) -> float:
    """Seconds one session may spend fetching the URLs its request names, pages and data together."""
    return float(context.settings.get("FETCH_BUDGET", 20))


def fetch_named(context, urls: list[str], seconds: float):
    """Fetch URLs the request names within `seconds` and the deployment's limits: web.fetch_each's generator."""
    from app.pipeline.web import fetch_each

    return fetch_each(urls, seconds=seconds, concurrency=int(context.settings.get("FETCH_CONCURRENCY", 4)),
                      timeout=float(context.settings.get("FETCH_TIMEOUT", 10)),
                      max_bytes=int(context.settings.get("FETCH_MAX_BYTES", 2_000_000)),
                      allow_private=bool(context.settings.get("ALLOW_PRIVATE_URLS", False)))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class DataCollection:
    name = "data_collection"

    def run(self, context):
        wanted = context.requirements["source_count"]
        query = outline_query(context)
        sources, skipped, fetch_seconds = self._from_urls(context, query, wanted)
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
            "fetch_seconds": fetch_seconds,  # of the session's fetch budget; api_research gets the rest
        }

    def _from_urls(self, context, query, wanted):
        from app.pipeline.web import FetchRefused, extract_document

        sources, skipped = [], []
        urls = list(dict.fromkeys(context.requirements.get("urls") or []))
        data_urls = list(dict.fromkeys(context.requirements.get("data_urls") or []))
        if not urls:
            return sources, skipped, 0.0
        # The data URLs are fetched later from what is left; a share by count keeps pages that never
        # answer from leaving them nothing, and whatever the pages do not use passes on to them.
        share = fetch_budget(context) * len(urls) / (len(urls) + len(data_urls))
        started, done = time.monotonic(), 0
        results = fetch_named(context, urls, share)
        try:
            for url, fetched in results if wanted > 0 else ():
                done += 1
                context.progress(f"fetched URL {done} of {len(urls)}")
                if isinstance(fetched, FetchRefused):
                    skipped.append({"url": url, "reason": fetched.reason})
                    continue
                try:
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
                if len(sources) >= wanted:
                    break
        finally:
            results.close()  # enough sources: the URLs not started yet never are
        skipped += [{"url": url, "reason": f"source_count ({wanted}) already reached"} for url in urls[done:]]
        return sources, skipped, round(time.monotonic() - started, 2)


def _passages(paragraphs: list[str], query: str) -> list[str]:
    """A source's passages in document order: all of them, or its best PASSAGES_PER_SOURCE when it is long."""
    if len(paragraphs) <= PASSAGES_PER_SOURCE:
        return paragraphs
    best = {i for i, _ in rank(paragraphs, query, PASSAGES_PER_SOURCE)} or set(range(PASSAGES_PER_SOURCE))
    return [p for i, p in enumerate(paragraphs) if i in best]
