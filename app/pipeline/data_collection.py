"""data_collection: picks up to source_count sources from the local library, ranked for the outline."""
from datetime import datetime, timezone

from app.pipeline.library import library_folder, load_library
from app.pipeline.text import BM25

PASSAGES_PER_SOURCE = 8


class DataCollection:
    name = "data_collection"

    def run(self, context):
        req = context.requirements
        outline = context.outputs["planner"]
        folder = library_folder(context.settings.get("LIBRARY_DIR"))
        documents = load_library(folder)
        questions = " ".join(q for s in outline["sections"] for q in s["questions"])
        query = f"{req['topic']} {req['topic']} {context.user_request} {questions}"

        # Rank passages, then documents by their best passages: a long document with one
        # relevant paragraph should not beat a short one about the topic.
        passages = [(d, p) for d in documents for p in d.passages]
        scores = BM25([p for _, p in passages]).scores(query) if passages else []
        by_document: dict[str, list[tuple[float, str]]] = {}
        for (document, passage), score in zip(passages, scores):
            if score > 0:
                by_document.setdefault(document.path, []).append((score, passage))
        ranked = sorted(by_document.items(), key=lambda item: -sum(s for s, _ in sorted(item[1])[-3:]))
        retrieved_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        documents_by_path = {d.path: d for d in documents}
        sources = []
        for path, scored in ranked[:req["source_count"]]:
            document = documents_by_path[path]
            best = sorted(scored, key=lambda sp: -sp[0])[:PASSAGES_PER_SOURCE]
            sources.append({
                "number": len(sources) + 1,
                "title": document.title,
                "location": f"library:{document.path}",
                "publisher": document.source,
                "published_retrieved": document.retrieved,
                "retrieved_at": retrieved_at,
                "content_hash": document.content_hash,
                "relevance": round(sum(s for s, _ in best[:3]), 3),
                # Passages in document order, so quoted sentences keep their original sense.
                "passages": [p for p in document.passages if p in {text for _, text in best}],
            })
        return {
            "library": str(folder),
            "documents_searched": len(documents),
            "requested": req["source_count"],
            "sources": sources,
            "skipped": [],
        }
