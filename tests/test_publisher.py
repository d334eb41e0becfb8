"""The publisher on a hand-made draft: the appendix, linked citations, contents, figures, the PDF."""
import io
import re
from html.parser import HTMLParser

import pytest

from app.pipeline import Context
from app.pipeline.publisher import Publisher

HEADINGS = ["Market size", "Prices", "Policy", "Supply chains", "Outlook"]


@pytest.fixture(scope="module")
def png():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1), dpi=20)
    figure.add_subplot().plot([1, 2], [2, 1])
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def draft_markdown(sections):
    lines = ["# Heat Pump Market", "", "## Executive summary", "",
             "Sales rose in 2022 [1]. Installers waited months [1] [2]. A box to tick: [x].", ""]
    for heading in sections:
        lines += [f"## {heading}", "", f"{heading} is covered by a source [2].", ""]
    lines += ["Figure 1 shows sales by year [2].", "", "![Figure 1: Sales by year [1]](charts/figure-1.png)", "",
              "*Figure 1: Sales by year*", "", "*Table 1: Sales by country*", "", "| Country | Sales |",
              "| --- | --- |", "| Germany | 236000 |", "",
              "Code keeps its brackets: `items[1]`. See [the list [2]](https://example.org/list).", "",
              "## References", "",
              "1. Heat pumps in Europe. Test Association. (library/heat.md, retrieved 2024-01-01)",
              "2. Installer survey. (https://example.org/survey, retrieved 2024-01-02)", ""]
    return "\n".join(lines)


def make_context(png, sections=HEADINGS[:3], writer=None, left_out=None, review=None, legacy=None):
    draft = {"title": "Heat Pump Market", "markdown": draft_markdown(sections), "word_count": 80,
             "sections": [{"heading": h, "words": 6, "budget": 100} for h in sections]}
    if writer is not None:
        draft["writer"] = writer
    if left_out is not None:
        draft["left_out"] = left_out
    draft.update(legacy or {})
    sources = [{"number": n, "title": t, "location": loc, "publisher": None, "retrieved_at": "2024-01-01",
                "content_hash": f"h{n}", "passages": []}
               for n, t, loc in [(1, "Heat pumps in Europe", "library/heat.md"),
                                 (2, "Installer survey", "https://example.org/survey")]]
    chart = {"id": "figure-1", "title": "Sales by year", "caption": "Sales by year", "png": "figure-1.png"}
    outputs = {"writer": draft, "reviewer": review, "analyst": {"tables": [], "charts": [chart]},
               "data_collection": {"sources": sources}}
    return Context("s", "A report on heat pumps", {"topic": "Heat pumps"}, outputs=outputs,
                   artifact=lambda name: png)


def publish(context):
    result = Publisher().run(context)
    return result.output, {name: data for name, (_type, data) in result.artifacts.items()}


class Links(HTMLParser):
    """The ids, the in-page links (with their text) and the <code> texts of a page."""

    def __init__(self, html):
        super().__init__()
        self.ids, self.links, self.code, self._open = set(), [], [], None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href", "").startswith("#"):
            self._open = [attrs["href"][1:], ""]
            self.links.append(self._open)
        if tag == "code":
            self.code.append("")

    def handle_endtag(self, tag):
        if tag == "a":
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data


REVIEW = {"passed": False, "word_count": 80, "findings": [
    {"check": "section: Prices", "ok": True, "detail": "present"},
    {"check": "length", "ok": False, "detail": "80 words of 500 budgeted"}]}


def test_citations_link_to_their_references(png):
    _, files = publish(make_context(png))
    html = files["report.html"].decode()
    page = Links(html)

    citations = [(target, text) for target, text in page.links if target.startswith("ref-")]
    assert {"ref-1", "ref-2"} <= page.ids
    assert citations and all(target in page.ids for target, _ in citations)
    assert ("ref-1", "[1]") in citations and ("ref-2", "[2]") in citations
    assert '<a class="cite" href="#ref-1">[1]</a> <a class="cite" href="#ref-2">[2]</a>' in html  # a run
    assert "[x]." in html and "#ref-x" not in html  # not a citation
    assert "<code>items[1]</code>" in html  # code, link text and alt text keep their brackets
    assert '<a href="https://example.org/list">the list [2]</a>' in html
    assert 'alt="Figure 1: Sales by year [1]"' in html
    references = html.split('id="sec-references"')[1]
    assert 'href="#ref-' not in references  # the list itself and the appendix are not linked


def test_long_reports_get_contents_and_short_ones_do_not(png):
    _, long_files = publish(make_context(png, sections=HEADINGS))
    _, short_files = publish(make_context(png, sections=HEADINGS[:3]))
    html = long_files["report.html"].decode()
    page = Links(html)

    assert "Contents" not in short_files["report.html"].decode()
    title, rest = html.split("</h1>", 1)
    assert rest.lstrip().startswith('<nav class="contents"')
    contents = rest.split("</nav>")[0]
    sections = [text for target, text in Links(contents).links]
    assert sections == ["Executive summary", *HEADINGS, "References", "Appendix: how this report was made"]
    assert all(target in page.ids for target, _ in Links(contents).links)


def test_a_figure_and_a_table_are_wrapped_with_their_captions(png):
    output, files = publish(make_context(png))
    html = files["report.html"].decode()

    figure = re.search(r"<figure>(.*?)</figure>", html, re.S)
    assert figure, html
    assert re.fullmatch(r'<img alt="Figure 1: Sales by year \[1\]" src="data:image/png;base64,[^"]+">'
                        r"<figcaption>Figure 1: Sales by year</figcaption>", figure.group(1))
    assert html.count('src="data:image/png;base64,') == 1
    assert re.search(r'<figure class="table"><figcaption>Table 1: Sales by country</figcaption><table>.*?</table>'
                     r"</figure>", html, re.S)
    print_css = html.split("@media print")[1].split("</style>")[0]
    assert re.search(r"figure[^{}]*\{ break-inside: avoid", print_css)
    assert "charts/figure-1.png" in output["markdown"]  # the Markdown file itself is unchanged


def test_the_appendix_says_how_the_report_was_made(png):
    writer = {"mode": "model with fallbacks", "model": "stand-in",
              "fallbacks": [{"section": "Outlook", "reason": "timed out after 2 s"}]}
    left_out = [{"section": "Recycling", "reason": "the sources say nothing on it"}]
    output, files = publish(make_context(png, writer=writer, left_out=left_out, review=REVIEW))
    markdown = output["markdown"]

    assert files["report.md"].decode() == markdown
    assert "## Review" not in markdown
    references, appendix = markdown.split("## References")[1].split("## Appendix: how this report was made\n")
    assert "Written by the model stand-in; 1 section fell back to extractive writing: " \
           "Outlook (timed out after 2 s)." in appendix
    assert "- Recycling: the sources say nothing on it" in appendix
    assert "- Pass: section: Prices: present" in appendix and "- Note: length: 80 words of 500 budgeted" in appendix
    assert "Appendix" not in references
    html = files["report.html"].decode()
    assert html.index('id="sec-references"') < html.index("Appendix: how this report was made</h2>")


def test_the_appendix_reads_older_writer_outputs_and_no_review(png):
    legacy = {"mode": "model with fallbacks", "fallbacks": [{"section": "Prices", "reason": "HTTP 500"},
                                                            {"section": "Policy", "reason": "cited [9]\n## x"}]}
    extractive, _ = publish(make_context(png, legacy={"mode": "extractive", "fallbacks": []}))
    fallen_back, _ = publish(make_context(png, legacy=legacy))

    assert "Written extractively from the sources (no model configured)." in extractive["markdown"]
    assert "The report was not reviewed." in extractive["markdown"]
    assert ("Written by a language model; 2 sections fell back to extractive writing: Prices (HTTP 500), "
            "Policy (cited [9] ## x).") in fallen_back["markdown"]  # a newline in a reason starts nothing


def test_the_appendix_says_so_when_a_configured_model_wrote_no_section(png):
    writer = {"mode": "extractive (the model fell back everywhere)", "model": "stand-in",
              "fallbacks": [{"section": "Outlook", "reason": "timed out after 2 s"},
                            {"section": "Prices", "reason": "not asked: the model failed earlier"}]}
    output, _ = publish(make_context(png, writer=writer))

    assert ("Written extractively from the sources: the model stand-in wrote no section; 2 sections fell back: "
            "Outlook (timed out after 2 s), Prices (not asked: the model failed earlier).") in output["markdown"]


def test_raw_html_stays_escaped(png):
    context = make_context(png)
    context.outputs["writer"]["markdown"] = context.outputs["writer"]["markdown"].replace(
        "Sales rose", "<script>alert(1)</script> Sales rose")
    _, files = publish(context)
    html = files["report.html"].decode()

    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_pdf_renders_with_the_appendix(png):
    from pypdf import PdfReader

    _, files = publish(make_context(png, sections=HEADINGS, writer={"mode": "extractive", "model": None,
                                                                    "fallbacks": []}, review=REVIEW))
    pdf = files["report.pdf"]

    assert pdf.startswith(b"%PDF-")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "Appendix" in text and "Contents" in text and "References" in text
