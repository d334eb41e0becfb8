"""writer: the report in Markdown, every claim cited, each sentence in the section it answers best.

The collected passages are cut into units: a sentence, with the sentences after it that lean on it
("This", "Such", "It" ...); a unit that leans on a sentence it was cut from is not used. Units that
repeat another's statement (the same figures, mostly the same words) are dropped. Each unit is
scored against every section's questions and vocabulary (without the subject's own words, which
match everything) and given to the section it answers best, above a minimum score, once in the
whole report; a section fills to its word budget. A section left with too little to say is left
out, and the writer says which and why. The analyst's findings (sentences computed from a table)
open the section their table goes to. The executive summary is written last: the data's headline
figures and the leading finding of each section.

With a model configured (REPORTS_LLM_*), each section is written by the model from that section's
own units (the data section also gets its tables' figures); a sentence of model prose without a
citation to a passage it was given is dropped, and a section the model fails on falls back to the
extractive text. After the model times out or fails on the server's side (its retries spent), it
is not asked again for the rest of the report. The output (and the status document, `writer`)
says which writer was used and which sections fell back, and why.
"""
import math
import re
from collections import Counter

from app import metrics
from app.pipeline import StepOutput
from app.pipeline.relevance import stems
from app.pipeline.text import fingerprint, same_statement, sentences, word_count

MIN_SCORE = 0.06          # cosine similarity a unit needs with a section to be placed there
SECOND_CHOICE = 0.6       # a full section passes a unit on to one it answers at least this well (of its best)
MIN_SECTION_WORDS = 50    # a section with less prose (and no table or chart) is left out
UNIT_SENTENCES = 3        # a sentence and at most two that lean on it
# Openings that lean on the sentence before: quoted alone, they would say something else.
_LEANS_ON_PREVIOUS = re.compile(
    r"^(this|these|that|those|such|it|its|they|their|them|he|she|his|her|both|the latter|the former|"
    r"however|but|yet|also|in addition|moreover|furthermore)\b", re.I)


class Writer:
    name = "writer"

    def run(self, context):
        outline = context.outputs["planner"]
        collected = context.outputs["data_collection"]
        sources = collected["sources"]
        analysis = context.outputs.get("analyst") or {"tables": [], "charts": []}
        datasets = (context.outputs.get("api_research") or {}).get("datasets", [])
        sections = outline["sections"]
        subject = set(collected.get("subject_terms") or stems(outline["subject"]))

        units = material(sources)
        placements = _place(sections, analysis, subject)
        findings = _findings(analysis, sections, placements, len(sources))
        plan = assign(units, sections, subject, placements, findings)

        model = ModelWriter(context.settings, outline["title"])
        written: dict[int, str] = {}
        for position in plan.kept:
            section = sections[position]
            context.progress(f"writing section {len(written) + 1} of {len(plan.kept)}: {section['heading']}")
            extractive = _paragraphs(plan.units[position], findings[position])
            written[position] = model.section(section, plan.units[position], findings[position],
                                              _table_lines(placements[position], datasets, len(sources)),
                                              extractive)

        summary = (model.summary(outline, _summary_material(plan, findings, outline["summary_word_budget"]))
                   or _nothing_found(outline, collected))
        lines = [f"# {outline['title']}", "", "## Executive summary", "", summary, ""]
        section_words = []
        for position in plan.kept:
            section = sections[position]
            body = written[position]
            section_words.append({"heading": section["heading"], "words": word_count(body),
                                  "budget": section["word_budget"]})
            lines += [f"## {section['heading']}", "", body, ""]
            for item in placements[position]:
                lines += _render_item(item, len(sources) + item["dataset"])
        lines += ["## References", ""] + references(sources, datasets)
        markdown = "\n".join(lines).rstrip() + "\n"
        body = markdown.split("\n## References\n", 1)[0]
        cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", body)})
        writer = model.record()
        output = {
            "title": outline["title"],
            "markdown": markdown,
            "word_count": word_count(markdown),
            "body_words": sum(s["words"] for s in section_words) + word_count(summary),
            "word_budget": outline["word_budget"],
            "sections": section_words,
            "left_out": [{"section": sections[p]["heading"], "reason": reason} for p, reason in plan.left_out],
            "unplaced_sentences": plan.unplaced,
            "cited_sources": cited,
            "reference_count": len(sources) + len(datasets),
            "tables": [t["id"] for t in analysis["tables"]],
            "charts": [c["id"] for c in analysis["charts"]],
            "writer": writer,
            "mode": writer["mode"],
            "fallbacks": writer["fallbacks"],
        }
        return StepOutput(output, status={"writer": writer})


# -- material -----------------------------------------------------------------------------------

class Unit:
    """A sentence and those that lean on it, from one passage of one source."""

    def __init__(self, source: int, position: int, text: str):
        self.source, self.position, self.texts = source, position, [text]

    @property
    def text(self) -> str:
        return " ".join(self.texts)

    @property
    def words(self) -> int:
        return word_count(self.text)

    def cited(self) -> str:
        return " ".join(_cite(t, self.source) for t in self.texts)


def material(sources) -> list[Unit]:
    """Every source's passages as units, in source and document order, without repeated statements."""
    units: list[Unit] = []
    position = 0
    for source in sources:
        for passage in source["passages"]:
            current = None
            for sentence in sentences(passage):
                position += 1
                if sentence[-1:] not in ".!?\"')”":
                    current = None  # a heading or a caption, not a statement: nothing may lean on it
                    continue
                if _LEANS_ON_PREVIOUS.match(sentence):
                    if current is not None and len(current.texts) < UNIT_SENTENCES:
                        current.texts.append(sentence)
                    continue  # leaning on a sentence that is not here (or a unit already long enough)
                current = Unit(source["number"], position, sentence)
                units.append(current)
    kept: list[tuple[Unit, tuple]] = []
    for unit in units:
        key = fingerprint(unit.text)
        # The last 400 kept units: a bound on the comparisons, as a library of repeats clusters anyway.
        if not any(same_statement(key, other) for _, other in kept[-400:]):
            kept.append((unit, key))
    return [unit for unit, _ in kept]


# -- placing the material -------------------------------------------------------------------------

class Plan:
    def __init__(self, sections):
        self.units: dict[int, list[Unit]] = {i: [] for i in range(len(sections))}
        self.scores: dict[int, dict[int, float]] = {i: {} for i in range(len(sections))}  # id(unit) -> score
        self.kept: list[int] = []
        self.left_out: list[tuple[int, str]] = []
        self.unplaced = 0


def assign(units: list[Unit], sections, subject: set, placements, findings) -> Plan:
    """Give each unit to the section it answers best, fill sections to budget, leave out the empty ones."""
    documents = [Counter(t for t in stems(u.text) if t not in subject) for u in units]
    df = Counter(t for terms in documents for t in terms)
    idf = {t: math.log((1 + len(units)) / (1 + n)) + 1 for t, n in df.items()}
    vectors = [_vector(terms, idf) for terms in documents]
    section_vectors = [_vector(Counter(t for t in stems(s["search"]) if t not in subject), idf) for s in sections]
    scores = [[_cosine(v, s) for s in section_vectors] for v in vectors]

    # Best over every section: a unit whose own section was left out does not drift to one it barely answers.
    best = [max(row, default=0.0) for row in scores]
    finding_words = [sum(word_count(_cite(text, number)) for number, text in f) for f in findings]
    open_sections = set(range(len(sections)))
    while True:
        plan = Plan(sections)
        room = {i: sections[i]["word_budget"] - finding_words[i] for i in open_sections}
        pairs = sorted(((scores[u][s], u, s) for u in range(len(units)) for s in open_sections
                        if scores[u][s] >= MIN_SCORE), key=lambda p: (-p[0], p[1], p[2]))
        placed = set()
        for score, u, s in pairs:
            if u in placed or room[s] <= 0 or score < SECOND_CHOICE * best[u]:
                continue
            placed.add(u)
            plan.units[s].append(units[u])
            plan.scores[s][id(units[u])] = score
            room[s] -= units[u].words
        thin = [s for s in open_sections if not placements[s]
                and sum(u.words for u in plan.units[s]) + finding_words[s] < MIN_SECTION_WORDS]
        if not thin or len(thin) == len(open_sections):
            break
        open_sections -= set(thin)
    plan.kept = sorted(open_sections)
    for s in range(len(sections)):
        if s not in open_sections or (not plan.units[s] and not findings[s] and not placements[s]):
            words = sum(u.words for u in plan.units[s])
            plan.left_out.append((s, f"the sources hold too little on it ({words} words of material, "
                                     f"{MIN_SECTION_WORDS} needed)"
                                  if words else "nothing in the sources answers its questions"))
    plan.kept = [s for s in plan.kept if s not in {p for p, _ in plan.left_out}]
    for s in plan.kept:  # in document order: _paragraphs groups each source's units in the order they came
        plan.units[s].sort(key=lambda u: u.position)
    plan.unplaced = len(units) - sum(len(plan.units[s]) for s in plan.kept)
    return plan


def _vector(terms: Counter, idf) -> dict[str, float]:
    vector = {t: (1 + math.log(n)) * idf.get(t, 1.0) for t, n in terms.items()}
    norm = math.sqrt(sum(v * v for v in vector.values())) or 1.0
    return {t: v / norm for t, v in vector.items()}


def _cosine(a: dict, b: dict) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(t, 0.0) for t, v in a.items())


def _paragraphs(units: list[Unit], findings: list[tuple[int, str]]) -> str:
    """The findings first, then one paragraph per source, the sources in order of their first unit."""
    by_source: dict[int, list[Unit]] = {}
    for unit in units:
        by_source.setdefault(unit.source, []).append(unit)
    paragraphs = [" ".join(_cite(text, number) for number, text in findings)] if findings else []
    paragraphs += [" ".join(u.cited() for u in group) for group in by_source.values()]
    return "\n\n".join(paragraphs)


def _summary_material(plan: Plan, findings, budget: int) -> list[tuple[int, str]]:
    """The data's headline figures, then the leading finding of each section (other sources first): (source, text)."""
    lines = [f[0] for f in (findings[s] for s in plan.kept) if f]
    used = set()
    for s in plan.kept:
        ranked = sorted(plan.units[s], key=lambda u: -plan.scores[s][id(u)])
        if not ranked:
            continue
        lead = next((u for u in ranked if u.source not in used), ranked[0])
        used.add(lead.source)
        lines.append((lead.source, lead.texts[0]))
    kept, words = [], 0
    for number, text in lines:
        if kept and words >= budget and len(kept) >= 4:
            break
        kept.append((number, text))
        words += word_count(_cite(text, number))
    return kept


def _nothing_found(outline, collected) -> str:
    """What the report says when no source had anything for it: not a claim about the subject, so uncited."""
    return (f"_None of the {collected.get('documents_searched', 0)} documents in the library, and no URL the "
            f"request named, holds material on {outline['subject']}: this report has no findings to give._")


# -- data ----------------------------------------------------------------------------------------

def _place(sections, analysis, subject: set):
    """Each table and chart goes to the section its dataset is about best, else the one marked for data."""
    placements = [[] for _ in sections]
    marked = next((i for i, s in enumerate(sections) if s.get("holds_data")), 0)
    idf: dict = {}
    section_vectors = [_vector(Counter(t for t in stems(s["search"]) if t not in subject), idf) for s in sections]
    items = [dict(t, kind="table") for t in analysis["tables"]] + [dict(c, kind="chart") for c in analysis["charts"]]
    homes: dict[int, int] = {}
    for item in items:
        if item["dataset"] not in homes:
            about = _vector(Counter(t for t in stems(f"{item['title']} {item.get('caption', '')}")
                                    if t not in subject), idf)
            scored = sorted(((_cosine(about, v), i) for i, v in enumerate(section_vectors)), reverse=True)
            homes[item["dataset"]] = scored[0][1] if scored and scored[0][0] > 0.05 else marked
        placements[homes[item["dataset"]]].append(item)
    return placements


def _findings(analysis, sections, placements, source_count: int) -> list[list[tuple[int, str]]]:
    """The analyst's findings as (the table's reference number, sentence), in the section that shows the table."""
    home = {item["dataset"]: i for i, items in enumerate(placements) for item in items}
    out: list[list[tuple[int, str]]] = [[] for _ in sections]
    for finding in analysis.get("findings", []):
        if finding["dataset"] in home:
            section = home[finding["dataset"]]
            reference = source_count + finding["dataset"]
            # Headlines first; the rest only while they leave the documents half the section's words.
            if out[section] and sum(word_count(_cite(t, n)) for n, t in out[section]) + \
                    word_count(_cite(finding["text"], reference)) > sections[section]["word_budget"] / 2:
                continue
            out[section].append((reference, finding["text"]))
    return out


def _table_lines(items, datasets, source_count: int) -> list[tuple[int, str]]:
    """The figures of the tables a section shows, as passages for a model: one line per dataset."""
    lines = []
    for number in dict.fromkeys(item["dataset"] for item in items):
        if 0 < number <= len(datasets):
            data = datasets[number - 1]
            rows = "; ".join(", ".join(str(v) for v in row) for row in data["rows"][:40])
            unit = f" ({data['unit']})" if data.get("unit") else ""
            columns = ", ".join(data["columns"])
            lines.append((source_count + number, f"{data['title']}{unit}, columns {columns}: {rows}"))
    return lines


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


def references(sources, datasets) -> list[str]:
    """Each source with its own origin and date: the document's Source:/Retrieved: lines, or when a URL was fetched."""
    lines = []
    for source in sources:
        lines.append(f"{source['number']}. {source['title']}.{_origin(source.get('publisher'), source)} "
                     f"({source['location']})")
    for number, dataset in enumerate(datasets, start=len(sources) + 1):
        lines.append(f"{number}. {dataset['title']} (data).{_origin(dataset.get('source'), dataset)} "
                     f"({dataset['location']})")
    return lines


def _origin(publisher, item) -> str:
    dated = item.get("published_retrieved")
    if not dated and not str(item.get("location", "")).startswith("library:"):
        dated = item.get("retrieved_at")  # a URL: the day it was fetched is the day it was read
    parts = [p for p in (publisher, f"retrieved {dated}" if dated else None) if p]
    return f" {', '.join(parts)}." if parts else ""


def _cite(sentence: str, number: int) -> str:
    """'Sales rose.' -> 'Sales rose [3].'"""
    if sentence[-1:] in ".!?":
        return f"{sentence[:-1]} [{number}]{sentence[-1]}"
    return f"{sentence} [{number}]"


# -- the model -------------------------------------------------------------------------------------

class ModelWriter:
    """Writes sections with the configured model, or returns the extractive text; remembers what it did."""

    def __init__(self, settings, title: str):
        from app.pipeline.llm import SectionWriter, llm_settings

        configured = llm_settings(settings)
        self.client = SectionWriter(configured) if configured else None
        self.model = configured.model if configured else None
        self.title = title
        self.fallbacks: list[dict] = []
        self.used = 0
        self.down = None  # why the model is not asked again in this report

    def section(self, section, units: list[Unit], findings: list[tuple[int, str]], tables, extractive: str) -> str:
        passages = [(u.source, u.text) for u in units] + findings + tables
        return self._ask(section["heading"], section["purpose"], section["questions"], passages,
                         section["word_budget"], extractive)

    def summary(self, outline, passages: list[tuple[int, str]]) -> str:
        extractive = " ".join(_cite(text, number) for number, text in passages)
        return self._ask("Executive summary", f"the main findings about {outline['subject']}, from the sections",
                         ["What are the headline figures and the main finding of each section?"], passages,
                         outline["summary_word_budget"], extractive)

    def _ask(self, heading, purpose, questions, passages, budget, extractive: str) -> str:
        if self.client is None or not passages:
            return extractive
        from app.pipeline.llm import LLMError

        if self.down:
            self._fall_back(heading, f"not asked: {self.down}")
            return extractive
        try:
            text = self.client.write_section(report_title=self.title, heading=heading, purpose=purpose,
                                             questions=questions, passages=passages, word_budget=budget)
        except LLMError as exc:
            metrics.MODEL_CALLS.labels("error").inc()
            if exc.unavailable:
                self.down = f"the model failed earlier in this report ({exc})"
            self._fall_back(heading, f"{exc}; fell back to the sources' sentences")
            return extractive
        metrics.MODEL_CALLS.labels("ok").inc()
        self.used += 1
        return text

    def _fall_back(self, heading: str, reason: str) -> None:
        metrics.MODEL_FALLBACKS.inc()
        self.fallbacks.append({"section": heading, "reason": reason})

    def record(self) -> dict:
        if self.client is None:
            mode = "extractive"
        elif not self.used:
            mode = "extractive (the model fell back everywhere)"
        else:
            mode = "model" if not self.fallbacks else "model with fallbacks"
        return {"mode": mode, "model": self.model, "fallbacks": self.fallbacks}
