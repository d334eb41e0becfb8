"""Each agent of the report pipeline on small inputs, without Flask or a database."""
import io
import re
import struct

import pytest
from conftest import EV_SALES

from app.pipeline import Context, StepOutput
from app.pipeline.analyst import Analyst
from app.pipeline.api_research import ApiResearch, DataError, load_dataset
from app.pipeline.data_collection import DataCollection
from app.pipeline.library import LibraryIndex, parse_document
from app.pipeline.planner import WORDS_PER_PAGE, Planner
from app.pipeline.publisher import Publisher
from app.pipeline.relevance import select
from app.pipeline.reviewer import Reviewer
from app.pipeline.text import rank, sentences
from app.pipeline.writer import Writer


def run_pipeline(library, topic="Electric Car Market", pages=1, sources=2, complexity="simple", user_request=None,
                 **extra):
    """Run the default agents in order, as the runner would, keeping artifacts in memory."""
    artifacts = {}
    requirements = {"topic": topic, "page_count": pages, "source_count": sources, "complexity": complexity, **extra}
    context = Context("test-session", user_request or f"A report on the {topic.lower()}", requirements,
                      settings={"LIBRARY_DIR": str(library)}, artifact=lambda name: artifacts[name][1])
    for agent in (Planner(), DataCollection(), ApiResearch(), Analyst(), Writer(), Reviewer(), Publisher()):
        result = agent.run(context)
        if isinstance(result, StepOutput):
            artifacts.update(result.artifacts)
            result = result.output
        context.outputs[agent.name] = result
    return context.outputs, artifacts


# -- planner ----------------------------------------------------------------------------------

@pytest.mark.parametrize("complexity, sections, questions", [("simple", 3, 1), ("moderate", 5, 2), ("complex", 7, 3)])
def test_planner_scales_sections_and_questions_with_complexity(complexity, sections, questions):
    context = Context("s", "r", {"topic": "Hydrogen Market Analysis", "page_count": 10, "source_count": 5,
                                 "complexity": complexity})

    outline = Planner().run(context)

    assert len(outline["sections"]) == sections
    assert all(len(s["questions"]) == questions for s in outline["sections"])
    assert outline["subject"] == "hydrogen"
    assert outline["word_budget"] == 10 * WORDS_PER_PAGE
    assert sum(s["word_budget"] for s in outline["sections"]) + outline["summary_word_budget"] <= 10 * WORDS_PER_PAGE


# -- library and ranking ------------------------------------------------------------------------

def test_ranking_puts_the_on_topic_text_first():
    texts = ["Tea harvests depend on the rain.", "Electric vehicle sales grew fast.", "Vehicles need roads."]

    ranked = rank(texts, "electric vehicles sales")

    assert [i for i, _ in ranked] == [1, 2]  # stemmed: "vehicles" finds "vehicle"; tea does not match


def test_library_index_reads_passages_and_notices_changed_and_removed_files(library):
    index = LibraryIndex(library)

    def passages(path):
        return " ".join(next((d.passages for d in index.refresh() if d.path == path), ()))

    assert {d.path for d in index.refresh()} == {"ev-sales.md", "ev-charging.md", "tea.md"}
    assert "monsoon" in passages("tea.md")

    (library / "tea.md").write_text("# Tea\n\nSource: x\n\nOolong tea is partly oxidised before it is dried.\n")
    assert "monsoon" not in passages("tea.md") and "Oolong" in passages("tea.md")

    (library / "tea.md").unlink()
    assert "tea.md" not in {d.path for d in index.refresh()}


def test_documents_keep_title_source_and_paragraphs():
    document = parse_document("a.md", b"# A title\n\nSource: Somewhere 2024\nRetrieved: 2026-01-01\n\n"
                                      b"One paragraph with enough words to count as a passage.\n\n## Part\n\n"
                                      b"Another paragraph with enough words to count as a passage.\n")

    assert (document.title, document.source, document.retrieved) == ("A title", "Somewhere 2024", "2026-01-01")
    assert len(document.passages) == 2 and len(document.content_hash) == 64


def test_sentences_split_on_full_stops_only():
    assert sentences("Sales rose 3.5% in 2023, e.g. in China. Prices fell. Europe grew by 20% in 2023.") == [
        "Sales rose 3.5% in 2023, e.g. in China.", "Europe grew by 20% in 2023."]


def test_data_collection_keeps_the_relevant_documents_with_traceable_passages(library):
    outputs, _ = run_pipeline(library, sources=2)

    sources = outputs["data_collection"]["sources"]
    assert {s["location"] for s in sources} == {"library:ev-sales.md", "library:ev-charging.md"}  # not the tea
    assert [s["number"] for s in sources] == [1, 2]
    assert all(s["content_hash"] and s["retrieved_at"].endswith("Z") and s["passages"] for s in sources)


def test_a_missing_library_is_an_error_that_says_what_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="REPORTS_LIBRARY_DIR"):
        run_pipeline(tmp_path / "nowhere")


# -- data, tables and charts --------------------------------------------------------------------

def test_data_files_load_with_their_description():
    dataset = load_dataset(EV_SALES.encode(), ".csv", "library:data/ev-sales.csv")

    assert dataset["title"] == "Electric car sales by region" and dataset["unit"] == "million cars"
    assert dataset["columns"] == ["year", "China", "Europe", "United States"]
    assert dataset["rows"][-1] == [2023, 8.1, 3.2, 1.4]


def test_a_table_without_numbers_is_refused():
    with pytest.raises(DataError):
        load_dataset(b"year,name\n2020,a\n", ".csv", "x.csv")


def test_analyst_computes_growth_and_shares_and_draws_the_chart(library):
    outputs, artifacts = run_pipeline(library)

    growth, shares = outputs["analyst"]["tables"]
    china = next(row for row in growth["rows"] if row[0] == "China")
    assert china[1:4] == [1.2, 8.1, 6.9]
    assert china[4] == f"{((8.1 / 1.2) ** (1 / 3) - 1) * 100:+.1f}%"
    assert [row[1] for row in shares["rows"]] == ["China", "Europe", "United States"]
    assert shares["rows"][0][3] == f"{8.1 / 12.7 * 100:.1f}%"
    assert "Test Agency Outlook 2024" in growth["caption"]

    chart = outputs["analyst"]["charts"][0]
    png = artifacts[chart["png"]][1]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (800, 450)  # width, height from the IHDR chunk
    assert artifacts[chart["svg"]][1].lstrip().startswith(b"<?xml")


# -- writer, reviewer, publisher ------------------------------------------------------------------

def test_writer_cites_every_sentence_and_numbers_references_in_order(library):
    outputs, _ = run_pipeline(library, sources=2)
    markdown = outputs["writer"]["markdown"]
    body, references = markdown.split("## References")

    prose = [line for line in body.splitlines() if line and not line.startswith(("#", "|", "*", "!", "_"))]
    assert prose and all(re.search(r"\[\d+\]\.$", s) for line in prose for s in sentences(line))
    assert "| China |" in body.split("## Market size and growth")[1]  # the data goes where the plan put it
    assert re.findall(r"^(\d+)\. ", references, re.M) == ["1", "2", "3"]  # two documents, then the data
    assert "(data). Test Agency Outlook 2024" in references
    assert "| China |" in body and "![Figure 1: " in body
    assert "Tea" not in markdown


def test_reviewer_flags_a_broken_citation_and_a_missing_section(library):
    outputs, _ = run_pipeline(library)
    context = Context("s", "r", {"topic": "Electric Car Market", "page_count": 1, "source_count": 2,
                                 "complexity": "simple"}, outputs=dict(outputs))
    first_section = outputs["planner"]["sections"][0]["heading"]
    broken = outputs["writer"]["markdown"].replace(f"## {first_section}", "## Something else")
    broken = broken.replace("## References", "A claim with no source [9].\n\n## References")
    context.outputs["writer"] = dict(outputs["writer"], markdown=broken)

    review = Reviewer().run(context)

    failed = {f["check"]: f["detail"] for f in review.output["findings"] if not f["ok"]}
    assert f"section: {first_section}" in failed
    assert failed["citations resolve"] == "no reference for [9]"
    assert review.status == {"review": review.output} and review.output["passed"] is False


def test_publisher_embeds_charts_in_html_and_renders_a_pdf(library):
    from pypdf import PdfReader

    outputs, artifacts = run_pipeline(library)

    html = artifacts["report.html"][1].decode()
    assert html.count('src="data:image/png;base64,') == len(outputs["analyst"]["charts"])
    assert "<table>" in html and "@media print" in html
    pdf = artifacts["report.pdf"][1]
    assert pdf.startswith(b"%PDF-")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "Electric Car Market" in text and "References" in text
    assert artifacts["report.md"][1].decode() == outputs["publisher"]["markdown"]
    assert "## Appendix: how this report was made" in outputs["publisher"]["markdown"]


def test_html_in_a_topic_is_shown_as_text(library):
    _, artifacts = run_pipeline(library, topic="<b>Electric car</b> <i>sales</i>")

    html = artifacts["report.html"][1].decode()
    assert "<b>Electric" not in html and "&lt;b&gt;Electric car&lt;/b&gt;" in html


def test_html_and_pdf_files_in_the_library_are_read_and_found_by_their_subject(tmp_path):
    from weasyprint import HTML

    (tmp_path / "page.html").write_text(
        "<html><head><title>Heat pumps</title></head><body><nav>Home | Shop</nav><article>"
        "<p>Heat pump sales in Europe rose by 40 percent in 2022 according to the test association.</p>"
        "<p>Installers reported waiting lists of several months for heat pumps in 2022.</p></article></body></html>")
    HTML(string="<title>Geothermal notes</title><p>Geothermal plants supplied steady baseload power "
                "in Iceland throughout 2023 according to the test utility.</p>").write_pdf(tmp_path / "notes.pdf")
    index = LibraryIndex(tmp_path)

    documents = {d.path: d for d in index.refresh()}

    assert documents["page.html"].title == "Heat pumps"
    assert len(documents["page.html"].passages) == 2 and "Shop" not in " ".join(documents["page.html"].passages)
    assert documents["notes.pdf"].title == "Geothermal notes"
    assert "steady baseload power" in " ".join(documents["notes.pdf"].passages)
    assert [d.path for d in select(list(documents.values()), "Geothermal", "", 2).documents] == ["notes.pdf"]
    assert [d.path for d in select(list(documents.values()), "Heat pumps", "", 2).documents] == ["page.html"]


def test_sources_must_mention_the_subject_not_just_the_outline_questions(library):
    (library / "heat-pump-prices.md").write_text(
        "# Heat pump prices\n\nSource: Test Heat Council\n\n"
        "Heat pump costs and prices changed sharply between 2021 and 2023 across Europe. "
        "How large the market grew and how fast it grew depended on subsidies and policies.\n")

    outputs, _ = run_pipeline(library, sources=3)

    locations = {s["location"] for s in outputs["data_collection"]["sources"]}
    assert locations == {"library:ev-sales.md", "library:ev-charging.md"}  # fewer than asked, none off-subject
    review = {f["check"]: f for f in outputs["reviewer"]["findings"]}
    assert "held no more relevant documents" in review["sources cited"]["detail"]
