"""reviewer: checks the draft against the requirements and records what it finds.

Its findings go to the status document (`review`) as well as to the end of the report.
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
        sources = context.outputs["data_collection"]["sources"]
        markdown = draft["markdown"]
        findings = []

        def finding(check, ok, detail):
            findings.append({"check": check, "ok": ok, "detail": detail})

        bodies = _sections(markdown)
        for section in outline["sections"]:
            body = bodies.get(section["heading"], "")
            empty = not body.strip() or body.strip().startswith("_The collected sources hold nothing")
            finding(f"section: {section['heading']}", not empty,
                    "present" if not empty else "missing or empty: the sources say nothing on it")

        words, budget = draft["body_words"], outline["word_budget"]
        within = 0.8 * budget <= words <= 1.2 * budget
        detail = f"{words} words of {budget} budgeted ({req['page_count']} pages x {outline['words_per_page']})"
        if words < 0.8 * budget:
            detail += (f"; short because the {len(sources)} collected sources ran out of relevant sentences "
                       "(the writer quotes, it does not pad)")
        finding("length", within, detail)

        cited = sorted({int(n) for n in _CITATION.findall(markdown)})
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
            finding(f"{label} referenced", f"{label} " in markdown.split("## References", 1)[0],
                    "introduced in the text" if f"{label} " in markdown else "not mentioned in the text")
        review = {"passed": all(f["ok"] for f in findings), "findings": findings, "word_count": word_count(markdown)}
        return StepOutput(review, status={"review": review})


def _sections(markdown: str) -> dict[str, str]:
    sections, heading = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading:
            sections[heading] += line + "\n"
    return sections
