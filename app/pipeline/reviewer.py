"""reviewer: checks the draft against the requirements and records what it finds."""
import re

from app.pipeline.text import word_count

_CITATION = re.compile(r"\[(\d+)\]")


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
        known = {s["number"] for s in sources}
        finding("sources cited", len(cited) >= min(req["source_count"], len(known)) and bool(cited),
                f"{len(cited)} distinct sources cited, {len(known)} collected, {req['source_count']} requested")
        dangling = [n for n in cited if n not in known]
        finding("citations resolve", not dangling,
                "every [n] has a reference" if not dangling else f"no reference for {dangling}")
        return {
            "passed": all(f["ok"] for f in findings),
            "findings": findings,
            "word_count": word_count(markdown),
        }


def _sections(markdown: str) -> dict[str, str]:
    sections, heading = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading:
            sections[heading] += line + "\n"
    return sections
