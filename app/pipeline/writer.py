"""writer: the report in Markdown, every claim cited, tables and charts where they belong.

Offline the writer is extractive: for each section of the outline it ranks the sentences of the
collected passages against the section's purpose and questions (BM25) and keeps the best, each
followed by its source number [n]. Nothing is written that a source did not say; when the
sources run out before the word budget does, the section is shorter, and the reviewer says so.

With a model configured (REPORTS_LLM_BASE_URL, REPORTS_LLM_MODEL, REPORTS_LLM_API_KEY) each
section is written by the model from the same numbered passages, keeping the citations; a
section the model fails on (timeout, error, a citation to nothing) falls back to extraction.

Tables and charts from the analyst go into the section they match best, each introduced by a
sentence naming it and citing its data source; data sources are numbered after the documents.
"""
import re

from app.pipeline.text import rank, sentences, word_count

PASSAGES_PER_SECTION = 8


class Writer:
    name = "writer"

    def run(self, context):
        outline = context.outputs["planner"]
        sources = context.outputs["data_collection"]["sources"]
        analysis = context.outputs.get("analyst") or {"tables": [], "charts": []}
        datasets = (context.outputs.get("api_research") or {}).get("datasets", [])
        model = _section_writer(context.settings)
        composer = Composer(sources)
        fallbacks = []

        def write(heading, purpose, questions, budget):
            query = f"{heading} {purpose} {' '.join(questions)}"
            if model is not None:
                from app.pipeline.llm import LLMError

                passages = composer.passages_for(query, PASSAGES_PER_SECTION)
                try:
                    text = model.write_section(report_title=outline["title"], heading=heading, purpose=purpose,
                                               questions=questions, passages=passages, word_budget=budget)
                    return text, composer.cited_in(text)
                except LLMError as exc:
                    fallbacks.append({"section": heading, "reason": str(exc)})
            return composer.extract(query, budget)

        title = outline["title"]
        sections = outline["sections"]
        placements = _place(sections, analysis)
        cited: set[int] = set()
        summary, numbers = write("Executive summary", f"the main findings about {outline['subject']}",
                                 [context.user_request], outline["summary_word_budget"])
        cited |= numbers
        lines = [f"# {title}", "", "## Executive summary", "", summary or NO_MATERIAL, ""]
        section_words = []
        for position, section in enumerate(sections):
            context.progress(f"writing section {position + 1} of {len(sections)}: {section['heading']}")
            body, numbers = write(section["heading"], section["purpose"], section["questions"],
                                  section["word_budget"])
            cited |= numbers
            section_words.append({"heading": section["heading"], "words": word_count(body),
                                  "budget": section["word_budget"]})
            lines += [f"## {section['heading']}", "", body or NO_MATERIAL, ""]
            for item in placements[position]:
                reference = len(sources) + item["dataset"]
                cited.add(reference)
                lines += _render_item(item, reference)
        lines += ["## References", ""]
        for source in sources:
            origin = f" {source['publisher']}." if source.get("publisher") else ""
            lines.append(f"{source['number']}. {source['title']}.{origin} ({source['location']}, "
                         f"retrieved {source['retrieved_at']})")
        for number, dataset in enumerate(datasets, start=len(sources) + 1):
            origin = f" {dataset['source']}." if dataset.get("source") else ""
            lines.append(f"{number}. {dataset['title']} (data).{origin} ({dataset['location']}, "
                         f"retrieved {dataset['retrieved_at']})")
        markdown = "\n".join(lines).rstrip() + "\n"
        return {
            "title": title,
            "markdown": markdown,
            "word_count": word_count(markdown),
            "body_words": sum(s["words"] for s in section_words) + word_count(summary),
            "word_budget": outline["word_budget"],
            "sections": section_words,
            "cited_sources": sorted(cited),
            "reference_count": len(sources) + len(datasets),
            "tables": [t["id"] for t in analysis["tables"]],
            "charts": [c["id"] for c in analysis["charts"]],
            "mode": "extractive" if model is None else ("model" if not fallbacks else "model with fallbacks"),
            "fallbacks": fallbacks,
        }


NO_MATERIAL = "_The collected sources hold nothing on this section._"


class Composer:
    """Extractive writing from the sources' passages; each sentence is used at most once per report."""

    def __init__(self, sources):
        self.pool = [(s["number"], sentence) for s in sources for p in s["passages"] for sentence in sentences(p)]
        self.passages = [(s["number"], p) for s in sources for p in s["passages"]]
        self.used: set[int] = set()

    def extract(self, query: str, budget: int) -> tuple[str, set[int]]:
        chosen, words = [], 0
        for i, _score in rank([text for _, text in self.pool], query):
            if i in self.used or _near_duplicate(self.pool[i][1], [self.pool[j][1] for j in chosen]):
                continue
            chosen.append(i)
            self.used.add(i)
            words += word_count(self.pool[i][1])
            if words >= budget:
                break
        chosen.sort(key=lambda i: (self.pool[i][0], i))  # grouped by source, in each source's order
        paragraphs: dict[int, list[str]] = {}  # one paragraph per source
        for i in chosen:
            number, sentence = self.pool[i]
            paragraphs.setdefault(number, []).append(_cite(sentence, number))
        return "\n\n".join(" ".join(p) for p in paragraphs.values()), set(paragraphs)

    def passages_for(self, query: str, limit: int) -> list[tuple[int, str]]:
        return [self.passages[i] for i, _ in rank([text for _, text in self.passages], query, limit)]

    def cited_in(self, text: str) -> set[int]:
        return {int(n) for n in re.findall(r"\[(\d+)\]", text)}


def _section_writer(settings):
    from app.pipeline.llm import SectionWriter, llm_settings

    configured = llm_settings(settings)
    return SectionWriter(configured) if configured else None


def _place(sections, analysis):
    """Tables and charts go to the section the planner marked for data, else the one they match best."""
    placements = [[] for _ in sections]
    marked = [i for i, s in enumerate(sections) if s.get("holds_data")]
    texts = [f"{s['heading']} {s['purpose']} {' '.join(s['questions'])}" for s in sections]
    items = [dict(t, kind="table") for t in analysis["tables"]] + [dict(c, kind="chart") for c in analysis["charts"]]
    for item in items:
        best = marked or [i for i, _ in rank(texts, f"{item['title']} {item['caption']}", 1)] or [0]
        placements[best[0]].append(item)
    return placements


def _render_item(item, reference):
    label = item["id"].replace("-", " ").capitalize()  # "Table 1", "Figure 2"
    if item["kind"] == "chart":
        return [f"{label} shows {item['title'][0].lower() + item['title'][1:]} [{reference}].", "",
                f"![{label}: {item['caption']}](charts/{item['png']})", "", f"*{label}: {item['caption']}*", ""]
    header = "| " + " | ".join(_cell(c) for c in item["columns"]) + " |"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in item["rows"]]
    return [f"{label} sets out {item['title'][0].lower() + item['title'][1:]} [{reference}].", "",
            f"*{label}: {item['caption']}*", "", header, "|" + " --- |" * len(item["columns"]), *rows, ""]


def _cell(value) -> str:
    return str(value).replace("|", "\\|")


def _cite(sentence: str, number: int) -> str:
    """'Sales rose.' -> 'Sales rose [3].'"""
    if sentence[-1:] in ".!?":
        return f"{sentence[:-1]} [{number}]{sentence[-1]}"
    return f"{sentence} [{number}]"


def _near_duplicate(sentence: str, chosen: list[str]) -> bool:
    words = set(sentence.lower().split())
    return any(len(words & set(c.lower().split())) > 0.8 * min(len(words), len(c.split())) for c in chosen)
