"""reviewer: checks the draft against the requirements and says what it finds, and why.

A short report gets its real cause: the library held few documents on the subject, the framing
words that had to be given up to find them, sections left out for want of material, or material
that ran out. Its findings go to the status document (`review`) and the report's appendix.
"""
import re

from app.pipeline import StepOutput
from app.pipeline.text import word_count

_CITATION = re.compile(r"\[(\d+)\]")
_REFERENCE = re.compile(r"^(\d+)\. ", re.M)


class Reviewer:
    name = "reviewer"

    def run(self, context):
        req = context.requirements
        outline = context.outputs["planner"]
        draft = context.outputs["writer"]
        collected = context.outputs["data_collection"]
        sources = collected["sources"]
        markdown = draft["markdown"]
        findings = []

        def finding(check, ok, detail):
            findings.append({"check": check, "ok": ok, "detail": detail})

        finding("documents", bool(sources), _documents(collected, sources))
        left_out = {item["section"]: item["reason"] for item in draft.get("left_out", [])}
        bodies = _sections(markdown)
        for section in outline["sections"]:
            heading = section["heading"]
            if heading in left_out:
                finding(f"section: {heading}", False, f"left out: {left_out[heading]}")
                continue
            present = bool(bodies.get(heading, "").strip())
            finding(f"section: {heading}", present, "present" if present else "missing or empty")

        words, budget = draft["body_words"], outline["word_budget"]
        detail = f"{words} words of {budget} budgeted ({req['page_count']} pages x {outline['words_per_page']})"
        if words < 0.8 * budget:
            detail += f"; short because {_why_short(collected, sources, left_out, draft)}"
        finding("length", 0.8 * budget <= words <= 1.2 * budget, detail)

        body = markdown.split("## References", 1)[0]
        cited = sorted({int(n) for n in _CITATION.findall(body)})
        documents = [n for n in cited if n <= len(sources)]
        detail = f"{len(documents)} distinct sources cited, {len(sources)} collected, {req['source_count']} requested"
        if len(sources) < req["source_count"]:
            detail += "; the library and URLs held no more relevant documents"
        finding("sources cited", bool(documents) and len(documents) >= min(req["source_count"], len(sources)),
                detail)
        references = {int(n) for n in _REFERENCE.findall(markdown.split("## References", 1)[-1])}
        dangling = [n for n in cited if n not in references]
        finding("citations resolve", not dangling,
                "every [n] has a reference" if not dangling else f"no reference for {dangling}")

        for item_id in draft.get("tables", []) + draft.get("charts", []):
            label = item_id.replace("-", " ").capitalize()
            finding(f"{label} referenced", f"{label} " in body,
                    "introduced in the text" if f"{label} " in body else "not mentioned in the text")
        writer = draft.get("writer") or {"mode": draft.get("mode", "extractive"), "fallbacks": []}
        finding("writer", not writer.get("fallbacks"), _writer(writer))
        review = {"passed": all(f["ok"] for f in findings), "findings": findings, "word_count": word_count(markdown)}
        return StepOutput(review, status={"review": review})


def _documents(collected, sources) -> str:
    searched = collected.get("documents_searched", 0)
    about = collected.get("documents_on_subject")
    subject = " ".join(collected.get("subject_words") or []) or "the subject"
    text = f"{len(sources)} sources used"
    if about is not None:
        text += f"; {about} of the {searched} library documents are about {subject}"
    if not sources:
        text += ("; add documents about it to REPORTS_LIBRARY_DIR, name URLs in `urls`, or word the topic as "
                 "the library's documents do")
    if collected.get("relaxed_words"):
        text += (f"; the topic's words {', '.join(repr(w) for w in collected['relaxed_words'])} were not "
                 "required of a document, to find enough of them")
    return text


def _why_short(collected, sources, left_out, draft) -> str:
    causes = []
    if len(sources) < collected.get("requested", len(sources)):
        causes.append(f"the library holds only {collected.get('documents_on_subject', len(sources))} documents "
                      f"about {' '.join(collected.get('subject_words') or []) or 'the subject'} "
                      f"({collected.get('documents_searched', 0)} searched; the others are about something else)")
    if left_out:
        causes.append(f"{len(left_out)} section{'s were' if len(left_out) > 1 else ' was'} left out for want of "
                      f"material ({', '.join(left_out)})")
    causes.append("the sources' sentences that answer the sections' questions ran out (the writer quotes, it does "
                  f"not pad; {draft.get('unplaced_sentences', 0)} sentences answered none of them)")
    return "; ".join(causes)


def _writer(writer) -> str:
    text = f"written by: {writer.get('mode')}" + (f" ({writer['model']})" if writer.get("model") else "")
    fallbacks = writer.get("fallbacks") or []
    if fallbacks:
        text += "; fell back to the sources' sentences in " + "; ".join(
            f"{f['section']} ({f['reason']})" for f in fallbacks)
    return text


def _sections(markdown: str) -> dict[str, str]:
    sections, heading = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading:
            sections[heading] += line + "\n"
    return sections
