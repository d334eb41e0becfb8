"""What a reader of a report notices: the library used whatever the topic's wording, each sentence in the
section it answers, nothing said twice, a summary of the findings, an honest review, and a model held to
its sources. Each test writes its own library and runs the default agents (tests/test_pipeline.py).
"""
import re

import pytest
from test_pipeline import run_pipeline


def write(folder, name, title, *paragraphs, source="Test Wind Council 2024", retrieved="2025-01-15"):
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"# {title}\n\nSource: {source}\nRetrieved: {retrieved}\n\n" + "\n\n".join(paragraphs))


@pytest.fixture
def wind(tmp_path):
    """Five offshore wind documents, one on knitting, and a long-form sales table at the root."""
    folder = tmp_path / "wind"
    folder.mkdir()
    write(folder, "capacity.md", "Offshore wind capacity",
          "Offshore wind capacity in Europe reached 32 gigawatts in 2023, led by the United Kingdom and Germany. "
          "Offshore wind farms were built in the North Sea and the Baltic Sea. "
          "Installed offshore wind capacity grew by 3.8 gigawatts in 2023 across the region.",
          "The offshore wind market share of new power capacity rose to 12 percent in 2023 in Europe. "
          "Offshore wind sales of turbines reached a record number of units in 2023.")
    write(folder, "costs.md", "Offshore wind costs",
          "The levelised cost of offshore wind electricity fell from EUR 160 per megawatt-hour in 2012 to "
          "EUR 60 in 2021. Offshore wind costs rose again after 2022 as steel prices and interest rates climbed. "
          "Turbine prices for offshore wind projects increased by about 40 percent between 2020 and 2023.",
          "Offshore wind developers cancelled contracts because the agreed prices no longer covered costs. "
          "Operating costs of offshore wind farms average EUR 70 per kilowatt a year, twice those on land.")
    write(folder, "history.md", "A short history of offshore wind",
          "The first offshore wind farm was built at Vindeby in Denmark in 1991 with eleven small turbines. "
          "Offshore wind developed slowly in the 1990s as engineers learned how turbines work at sea. "
          "It took until 2010 for offshore wind to become known as a mainstream source of power. "
          "This history explains why the early offshore wind projects were small.")
    write(folder, "risks.md", "Offshore wind risks",
          "Offshore wind faces supply chain shortages of vessels, cables and foundations, a risk for 2030 targets. "
          "Offshore wind projects also face obstacles from slow permits and grid connection queues. "
          "Environmental concerns about offshore wind include effects on seabirds and fishing grounds. "
          "Rising interest rates are a further risk, because offshore wind farms are financed with debt.")
    write(folder, "policy.md", "Offshore wind policy",
          "Governments set offshore wind targets: the European Union aims for 60 gigawatts of offshore wind by "
          "2030. Offshore wind auctions and subsidies are the main policy instruments in Europe. "
          "Offshore wind investment reached EUR 30 billion in 2023 according to the council. "
          "Germany and the Netherlands grant subsidies through contracts for difference for offshore wind.")
    write(folder, "knitting.md", "Knitting basics",
          "Knitting uses two needles and a ball of wool to make warm clothes for winter power cuts. "
          "Knitting patterns in Europe are older than the wind of change in fashion.", source="Craft Weekly")
    (folder / "offshore_wind_sales.csv").write_text(
        "year,country,units\n2021,Denmark,10\n2021,Germany,20\n2022,Denmark,12\n2022,Germany,30\n"
        "2023,Denmark,15\n2023,Germany,45\n")
    return folder


ON_TOPIC = {"library:capacity.md", "library:costs.md", "library:history.md", "library:risks.md", "library:policy.md"}


def body_sentences(markdown):
    """(section, sentence) of every prose sentence between the summary and the references."""
    body = markdown.split("## References")[0]
    out = []
    for section in re.split(r"^## ", body, flags=re.M)[2:]:  # after the title and the summary
        heading, _, text = section.partition("\n")
        for line in text.splitlines():
            if line and not line.startswith(("|", "*", "!", "#", "Table ", "Figure ")):
                out += [(heading, s) for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", line)]
    return out


@pytest.mark.parametrize("topic", ["Offshore wind", "Offshore Wind Energy Outlook",
                                   "The future of offshore wind power in Europe"])
def test_every_wording_of_the_topic_finds_the_on_topic_documents_and_never_the_off_topic_one(wind, topic):
    outputs, _ = run_pipeline(wind, topic=topic, pages=3, sources=6, complexity="moderate")

    used = {s["location"] for s in outputs["data_collection"]["sources"]}
    assert used == ON_TOPIC
    assert outputs["data_collection"]["subject_words"] == ["offshore", "wind"]
    assert "Knitting" not in outputs["writer"]["markdown"]


def test_a_topic_the_library_does_not_cover_uses_none_of_it_and_says_what_to_do(wind):
    outputs, _ = run_pipeline(wind, topic="Quantum Computing Industry", pages=3, sources=5)

    assert outputs["data_collection"]["sources"] == [] and outputs["api_research"]["datasets"] == []
    markdown = outputs["publisher"]["markdown"]
    body = markdown.split("## References")[0]
    assert "## Executive summary" in body and "has no findings to give" in body
    assert re.findall(r"\[\d+\]", body) == [] and "library:" not in markdown
    documents = next(f for f in outputs["reviewer"]["findings"] if f["check"] == "documents")
    assert documents["ok"] is False and "REPORTS_LIBRARY_DIR" in documents["detail"]


def test_a_long_form_table_at_the_library_root_becomes_a_table_a_chart_and_cited_findings(wind):
    outputs, artifacts = run_pipeline(wind, topic="Offshore wind", pages=3, sources=6, complexity="moderate")

    markdown = outputs["writer"]["markdown"]
    data_reference = len(outputs["data_collection"]["sources"]) + 1
    assert "| Germany | 20 | 45 |" in markdown  # first and latest year of the pivoted series
    assert re.search(rf"Germany rose from 20 in 2021 to 45 in 2023, [^[]*\[{data_reference}\]\.", markdown)
    assert outputs["analyst"]["charts"] and artifacts["figure-1.png"][1].startswith(b"\x89PNG")


def test_sentences_go_to_the_section_they_answer_once_and_a_leaning_sentence_never_alone(wind):
    outputs, _ = run_pipeline(wind, topic="Offshore wind", pages=3, sources=6, complexity="complex")

    placed = body_sentences(outputs["writer"]["markdown"])
    where = {re.sub(r" \[\d+\]", "", s): h for h, s in placed}
    assert where["Offshore wind projects also face obstacles from slow permits and grid connection queues."] == \
        "Challenges and risks"
    assert where["Turbine prices for offshore wind projects increased by about 40 percent between 2020 and 2023."] \
        == "Costs and prices"
    assert where["The first offshore wind farm was built at Vindeby in Denmark in 1991 with eleven small turbines."] \
        == "Background"
    texts = [s for _, s in placed]
    assert len(texts) == len(set(texts)), "a sentence appears twice"
    # "This history ..." leans on the sentence before it: where it appears, its predecessor comes first.
    for position, text in enumerate(texts):
        if text.startswith("This history"):
            assert texts[position - 1].startswith("It took until 2010")


def test_a_statement_repeated_in_another_document_appears_once(wind):
    write(wind, "copy.md", "Offshore wind capacity notes",
          "Offshore wind capacity in Europe reached 32 gigawatts in 2023, led by the United Kingdom and Germany, "
          "the council said. Offshore wind is growing in Europe, offshore wind farms are larger than ever.")

    outputs, _ = run_pipeline(wind, topic="Offshore wind", pages=4, sources=7, complexity="moderate")

    body = outputs["writer"]["markdown"].split("## Executive summary")[1].split("\n## ", 1)[1]
    assert body.count("reached 32 gigawatts in 2023") == 1


def test_the_summary_comes_last_with_the_data_headline_and_each_sections_lead(wind):
    outputs, _ = run_pipeline(wind, topic="Offshore wind", pages=3, sources=6, complexity="moderate")

    markdown = outputs["writer"]["markdown"]
    summary = markdown.split("## Executive summary")[1].split("\n## ")[0]
    assert re.search(r"rose from \d+ in 2021 to \d+ in 2023", summary)  # a figure from the table
    assert len(set(re.findall(r"\[(\d+)\]", summary))) >= 3
    assert len(summary.split()) <= len(markdown.split("## References")[0].split()) / 3


def test_a_request_about_risks_gets_the_risks_section_at_the_simplest_depth(wind):
    outputs, _ = run_pipeline(wind, topic="Offshore wind", pages=3, sources=6, complexity="simple",
                              user_request="What stands in the way of offshore wind?")

    headings = [s["heading"] for s in outputs["planner"]["sections"]]
    assert "Challenges and risks" in headings
    assert "## Challenges and risks" in outputs["writer"]["markdown"]


def test_a_section_without_material_is_left_out_and_the_review_says_why(wind):
    outputs, _ = run_pipeline(wind, topic="Offshore wind", pages=3, sources=6, complexity="complex")

    left_out = {item["section"]: item["reason"] for item in outputs["writer"]["left_out"]}
    markdown = outputs["publisher"]["markdown"]
    assert "Technology and infrastructure" in left_out  # no document says anything about it
    assert "## Technology and infrastructure" not in markdown
    assert "_The collected sources hold nothing" not in markdown
    review = {f["check"]: f["detail"] for f in outputs["reviewer"]["findings"]}
    assert review["section: Technology and infrastructure"].startswith("left out:")
    assert "left out" in review["length"] and "ran out" not in review["documents"]
    assert markdown.index("## References") < markdown.index("## Appendix: how this report was made")


def test_references_give_each_documents_own_source_and_date(wind):
    outputs, _ = run_pipeline(wind, topic="Offshore wind", pages=3, sources=6, complexity="moderate")

    references = outputs["writer"]["markdown"].split("## References")[1]
    assert re.search(r"^\d+\. Offshore wind costs\. Test Wind Council 2024, retrieved 2025-01-15\. "
                     r"\(library:costs\.md\)$", references, re.M)
