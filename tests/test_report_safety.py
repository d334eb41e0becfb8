"""Reports built from hostile text: no file the service serves can run script, load a remote image or link out
anywhere but http(s), mailto and its own anchors; /charts/ serves the analyst's images and nothing else."""
import io
import re
import zlib
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
from conftest import finished, wait_for
from markdown_it import MarkdownIt  # a CommonMark renderer, as a Markdown viewer would read report.md
from pypdf import PdfReader
from servers import StandIn, serving

from app.pipeline import Context
from app.pipeline.publisher import Publisher, render_pdf, safe_link, sanitised_html
from app.runner import start_runner

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>'
URL_ATTRIBUTES = {"href", "src", "srcset", "action", "formaction", "xlink:href", "poster", "background", "data"}
SAFE_URLS = {("a", "href"): ("http://", "https://", "mailto:", "#"),
             ("img", "src"): ("data:image/png;base64,", "data:image/svg+xml;base64,")}
LIVE_TAGS = {"script", "iframe", "frame", "object", "embed", "form", "base", "link", "svg", "math", "video", "audio"}


class LiveParts(HTMLParser):
    """What in a page could run, load or lead somewhere: script, handlers, URLs other than safe links and charts."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.found = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag in LIVE_TAGS:
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            plain = re.sub(r"[\x00-\x20]+", "", value or "").lower()
            if name.startswith("on"):
                self.found.append(f"{tag} {name}")
            elif name in URL_ATTRIBUTES and not plain.startswith(SAFE_URLS.get((tag, name), ())):
                self.found.append(f"{tag} {name}={value[:60]}")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)


def live_parts(html: str) -> list[str]:
    return LiveParts(html).found


def viewer_live_parts(markdown: str, chart_names=("figure-1.png",)) -> list[str]:
    """What a CommonMark viewer would make live of report.md (raw HTML on, as many viewers have it)."""
    html = MarkdownIt("commonmark", {"html": True}).render(markdown)
    charts = {f"charts/{name}" for name in chart_names}
    return [part for part in live_parts(html) if not any(part == f"img src={c}" for c in charts)]


def pdf_bad_actions(pdf: bytes) -> list[str]:
    """javascript:/data: link targets and JavaScript actions, in the objects and inside compressed streams."""
    reader = PdfReader(io.BytesIO(pdf))
    found = []
    for page in reader.pages:
        for annotation in page.get("/Annots") or []:
            action = annotation.get_object().get("/A")
            action = action.get_object() if action is not None else {}
            uri = re.sub(r"[\x00-\x20]+", "", str(action.get("/URI", ""))).lower()
            if uri and not uri.startswith(("http://", "https://", "mailto:")):
                found.append(f"/URI {uri[:40]}")
            if action.get("/S") == "/JavaScript":
                found.append("/S /JavaScript")
    chunks = [pdf]
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            chunks.append(zlib.decompress(match.group(1)))
        except zlib.error:
            pass
    for chunk in chunks:
        found += [m.decode("latin-1") for m in re.findall(rb"/URI\s*\((?:javascript|vbscript|data):[^)]{0,40}",
                                                          chunk, re.I)]
        # /JS only as an action's script (a string follows): three bytes alone turn up in font data by chance.
        found += [m.decode("latin-1") for m in re.findall(rb"/JavaScript\b|/JS\s*[(<]", chunk)]
    return found


# -- the publisher on its own: links, images, the sanitiser, report.md, the PDF ------------------------

def publish(markdown, charts=({"id": "figure-1", "png": "figure-1.png", "svg": "figure-1.svg"},), stored=None):
    stored = {"figure-1.png": PNG, "figure-1.svg": SVG} if stored is None else stored

    def load(name):
        return stored[name]  # KeyError for anything not stored, as the runner's loader raises

    draft = {"title": "Tidal power", "markdown": markdown, "word_count": 10, "sections": []}
    outputs = {"writer": draft, "reviewer": None, "analyst": {"tables": [], "charts": list(charts)},
               "data_collection": {"sources": []}}
    result = Publisher().run(Context("s", "request", {"topic": "Tidal power"}, outputs=outputs, artifact=load))
    return result.output, {name: data for name, (_type, data) in result.artifacts.items()}


UNSAFE_LINKS = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "&#106;avascript:alert(1)", "&#x6A;avascript:alert(1)",
                "java&#x09;script:alert(1)", "java&#10;script:alert(1)", "&#0;javascript:alert(1)",
                "<javascript:alert(1)>", "javascript\\:alert(1)", " javascript:alert(1)", "vbscript:msgbox(1)",
                "data:text/html,<script>alert(1)</script>", "data:text/html;base64,PHNjcmlwdD4=",
                "//evil.example/x", "evil.html", "charts/figure-1.png", "file:///etc/passwd"]


@pytest.mark.parametrize("target", UNSAFE_LINKS)
def test_a_link_to_anything_but_http_mailto_or_an_anchor_loses_its_target_and_keeps_its_text(target):
    output, files = publish(f"# Tidal power\n\nRead [the operator's page]({target}) now.\n")
    html = files["report.html"].decode()

    assert live_parts(html) == []
    assert re.search(r"Read <a>the operator's page</a> now\.|Read the operator's page now\.", html), html
    assert viewer_live_parts(output["markdown"]) == []  # report.md: a viewer shows it as text too
    assert pdf_bad_actions(files["report.pdf"]) == []


@pytest.mark.parametrize("target", ["https://example.org/a?b=1&c=2", "http://example.org/", "mailto:desk@example.org",
                                    "#sec-references"])
def test_http_mailto_and_anchor_links_keep_their_target(target):
    output, files = publish(f"# Tidal power\n\nRead [the page]({target}) now.\n\n## References\n")
    html = files["report.html"].decode()

    assert re.search(rf'<a href="{re.escape(target.replace("&", "&amp;"))}">the page</a>', html), html
    assert f"[the page]({target})" in output["markdown"]


UNSAFE_IMAGES = ["http://127.0.0.1:9/beacon.png", "https://evil.example/x.png", "//evil.example/x.png",
                 "charts/nonexistent.png", "charts/../report.html", "charts/report.html", "figure-1.png",
                 "data:image/png;base64,iVBORw0KGgo=", "data:image/svg+xml,<svg onload=alert(1)>",
                 "javascript:alert(1)", "&#104;ttp://evil.example/x.png"]


@pytest.mark.parametrize("target", UNSAFE_IMAGES)
def test_an_image_that_is_not_one_of_the_analysts_charts_becomes_its_alt_text(target):
    output, files = publish(f"# Tidal power\n\nSee ![a tracking pixel]({target}) here.\n")
    html = files["report.html"].decode()

    assert "<img" not in html and "See a tracking pixel here." in html
    assert viewer_live_parts(output["markdown"]) == []


def test_the_analysts_charts_are_embedded_and_one_named_but_not_stored_or_not_an_image_is_left_out():
    charts = [{"id": "figure-1", "png": "figure-1.png", "svg": "figure-1.svg"},
              {"id": "figure-2", "png": "figure-2.png", "svg": "figure-2.svg"},
              {"id": "figure-3", "png": "figure-3.png", "svg": "figure-3.svg"}]
    stored = {"figure-1.png": PNG, "figure-1.svg": SVG, "figure-3.png": b"<html><script>alert(1)</script>"}
    output, files = publish("# Tidal power\n\n![One](charts/figure-1.png)\n\n![One as SVG](charts/figure-1.svg)\n\n"
                            "![Two](charts/figure-2.png)\n\n![Three](charts/figure-3.png)\n", charts, stored)
    html = files["report.html"].decode()

    images = re.findall(r'<img alt="([^"]*)" src="data:(image/[a-z+]+);base64,', html)
    assert images == [("One", "image/png"), ("One as SVG", "image/svg+xml")]
    assert "<p>Two</p>" in html and "<p>Three</p>" in html and "alert" not in html
    assert live_parts(html) == []
    assert "![One](charts/figure-1.png)" in output["markdown"]  # the analyst's own charts stay images in report.md


def test_hostile_markdown_in_a_data_title_and_in_a_figure_caption_comes_out_inert():
    title = "Tidal output ![t](http://evil.example/t.png) [y](javascript:alert(4)) x](http://evil.example/u.png) ["
    markdown = (f"# Tidal power\n\nFigure 1 shows {title} [1].\n\n![Figure 1: {title}](charts/figure-1.png)\n\n"
                f"*Figure 1: {title}*\n\n| year | Output [z](&#106;avascript:alert(5)) |\n| --- | --- |\n"
                "| 2020 | 1 |\n")
    output, files = publish(markdown)
    html = files["report.html"].decode()

    assert live_parts(html) == [] and "Output" in html and "Tidal output" in html
    assert viewer_live_parts(output["markdown"]) == []


def test_raw_html_and_autolinks_are_text_in_the_html_and_in_report_md():
    markdown = ("# Tidal power <img src=x onerror=alert(2)>\n\n<script>alert('inline')</script> Tides "
                "<a href=\"javascript:alert(3)\">here</a> <javascript:alert(4)> <!-- hidden -->\n\n"
                "[ref]: javascript:alert(5)\n\n> [quoted]: javascript:alert(6)\n\nSee [ref] and [quoted].\n")
    output, files = publish(markdown)
    html = files["report.html"].decode()

    assert live_parts(html) == []
    assert "&lt;script&gt;alert('inline')&lt;/script&gt;" in html
    assert viewer_live_parts(output["markdown"]) == []
    assert "<script>" not in MarkdownIt("commonmark", {"html": True}).render(output["markdown"])


VIEWER_TRICKS = ["![a `[`](http://evil.example/x.png)", "[z] ![a\\\\](http://evil.example/x.png)",
                 "[![a](http://evil.example/x.png)](https://ok.example)", "![a][r]\n\n[r]: http://evil.example/x.png",
                 "- ![a][r]\n- [r]: http://evil.example/x.png", "[a](javascript&colon;alert(1))",
                 "<img src=http://evil.example/x.png>", "<svg><script>alert(1)</script></svg>",
                 "<a href='javascript:alert(1)'>a</a>", "<vbscript:msgbox(1)>", "[a](\tjavascript:alert(1))",
                 "\\![a](charts/figure-1.png)", "![a []](charts/figure-1.png)", "![a [](charts/figure-1.png)"]


@pytest.mark.parametrize("markdown", VIEWER_TRICKS)
def test_neither_report_md_nor_the_html_gives_a_reader_anything_live(markdown):
    output, files = publish(f"# Tidal power\n\nText before. {markdown} Text after.\n")

    assert viewer_live_parts(output["markdown"]) == []
    assert live_parts(files["report.html"].decode()) == []
    assert "Text before." in output["markdown"] and "Text after." in output["markdown"]


@pytest.mark.parametrize("url, safe", [
    ("https://example.org", True), ("HTTP://example.org", True), ("mailto:a@example.org", True), ("#ref-1", True),
    ("\x00\x1f https://example.org", True), ("javascript:alert(1)", False), ("java\tscript:alert(1)", False),
    ("java\nscript:alert(1)", False), ("\x01javascript:alert(1)", False), ("jav\u0430script:x", False),
    ("data:text/html,x", False), ("//evil.example", False), ("/api/reports", False), ("", False),
    ("https\x00://example.org", False)])
def test_safe_link_reads_a_url_as_a_browser_does(url, safe):
    assert safe_link(url) is safe


def test_the_sanitiser_keeps_only_its_allow_list_whatever_html_reaches_it():
    chart = "data:image/png;base64,iVBORw0KGgo="
    dirty = (f'<h2 id="sec-a" onclick="x()">A</h2><p style="background:url(http://evil.example/s)">p</p>'
             f'<a href="java&#x0A;script:alert(1)">j</a><a href="https://example.org" target="_top">k</a>'
             f'<img src="{chart}" alt="chart"><img src="data:image/png;base64,AAAA" alt="other">'
             f'<img src="http://evil.example/i.png"><svg onload="alert(1)"><a xlink:href="javascript:x">s</a></svg>'
             f'<script>alert(1)</script><iframe src="https://evil.example"></iframe><form action="/x"><button>b'
             f'</button></form><math><mi xlink:href="javascript:alert(1)">m</mi></math>'
             f'<a href="#ref-1" class="cite">[1]</a><!-- note -->')
    clean = sanitised_html(dirty, {chart})

    assert live_parts(clean) == []
    assert '<h2 id="sec-a">A</h2>' in clean and '<a href="https://example.org">k</a>' in clean
    assert f'<img src="{chart}" alt="chart">' in clean and clean.count("<img src=") == 1
    assert '<a href="#ref-1" class="cite">[1]</a>' in clean
    assert "alert" not in clean and "style=" not in clean and "note" not in clean


class Recorder(StandIn):
    """Answers everything with a tiny PNG and remembers the paths it was asked for."""

    hits: list = []

    def do_GET(self):
        Recorder.hits.append(self.path)
        self.reply(PNG, "image/png")


@pytest.fixture
def recorder():
    Recorder.hits = []
    with serving(Recorder) as base:
        yield base


def test_the_pdf_renderer_fetches_nothing_but_data_uris(recorder):
    html = (f'<html><head><link rel="stylesheet" href="{recorder}/style.css">'
            f'<style>@import url("{recorder}/import.css"); body {{ background: url("{recorder}/bg.png") }}</style>'
            f'</head><body><img src="{recorder}/img.png"><img src="data:image/png;base64,'
            'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==">'
            '<a href="https://example.org/">out</a></body></html>')

    pdf = render_pdf(html)

    assert pdf.startswith(b"%PDF-") and Recorder.hits == []


# -- end to end: a session built from hostile text, through the API --------------------------------

PAGE = """<!doctype html><html><head><title>Tidal power in practice</title></head><body>
<article><h1>Tidal power in practice</h1>
<p>Tidal power plants turn the rise and fall of the sea into electricity, and the largest tidal power plant, at
Sihwa Lake in South Korea, has a capacity of 254 megawatts. <a href="javascript:alert('page')">Read more</a>.</p>
<p>Tidal stream turbines sit on the seabed where tidal currents are fast. <img src="{site}/page.png" alt="x">
The MeyGen tidal power project in Scotland has run four turbines since 2017, and [its operator](javascript:alert(6))
plans to expand the tidal power array. <a href="data:text/html,<script>alert('data')</script>">A data link</a>.</p>
<p>Tidal range power plants need a [barrage](javascript:alert('md')) or lagoon ![lagoon]({site}/lagoon.png), which
changes the estuary behind the tidal power plant. <script>alert('inline')</script> Supporters answer that tidal
power is predictable decades ahead, unlike wind, which makes tidal power valuable to grid operators
![tidal chart](charts/nonexistent.png) at any hour.</p>
</article></body></html>"""

CSV = """# Title: Tidal power output ![t]({site}/csv-title.png) [y](JaVaScRiPt:alert(4))
year,Tidal power [z](&#106;avascript:alert(5))
2019,480
2020,510
2021,530
2022,560
"""


class HostileSite(StandIn):
    """A page and a table carrying live links and remote images; records every path it is asked for."""

    hits: list = []

    def do_GET(self):
        HostileSite.hits.append(self.path)
        site = f"http://127.0.0.1:{self.server.server_address[1]}"
        pages = {"/page.html": ("text/html; charset=utf-8", PAGE), "/tidal.csv": ("text/csv", CSV)}
        content_type, text = pages.get(self.path, ("image/png", ""))
        self.reply(text.replace("{site}", site).encode() if text else PNG, content_type)


@pytest.fixture
def site():
    HostileSite.hits = []
    with serving(HostileSite) as base:
        yield base


@pytest.fixture
def app(app, library):
    app.config.update(LIBRARY_DIR=str(library), ALLOW_PRIVATE_URLS=True)
    return app


def run_report(app, client, topic, user_request, **requirements):
    start_runner(app)
    body = {"user_request": user_request, "requirements": {"topic": topic, "page_count": 1, "source_count": 3,
                                                           "complexity": "simple", **requirements}}
    session_id = client.post("/api/submit-requirements", json=body).get_json()["session_id"]
    status = wait_for(lambda: finished(client, session_id), timeout=120)
    assert status["status"] == "completed", status["error"]
    return session_id


def test_a_report_from_hostile_text_serves_nothing_live(app, client, site):
    session_id = run_report(
        app, client, f"Tidal power [click me](javascript:alert(1)) ![b]({site}/topic.png)",
        f"Tidal power <img src=x onerror=alert(2)> [x](javascript:alert(3)) ![c]({site}/request.png)",
        urls=[f"{site}/page.html"], data_urls=[f"{site}/tidal.csv"])

    report = client.get(f"/api/reports/{session_id}").get_json()
    download = client.get(f"/api/reports/{session_id}.html")
    frame = client.get(f"/sessions/{session_id}/report")
    html = download.get_data(as_text=True)
    # The hostile text did reach the report: the test checks what became of it, not an empty report.
    assert "javascript:alert('md')" in report["markdown"] and "lagoon.png" in report["markdown"]
    assert "<a>barrage</a>" in html and "JaVaScRiPt:alert(4)" in report["markdown"]
    assert "click me" in html and report["charts"] and "data:image/png;base64," in html

    assert live_parts(html) == [] and live_parts(report.get("html") or "") == []
    assert frame.get_data() == download.get_data()
    for response in (download, frame):
        policy = response.headers["Content-Security-Policy"]
        assert re.search(r"(^|;)\s*sandbox\s*(;|$)", policy) and "script-src" not in policy, policy
        assert "default-src 'none'" in policy and response.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Content-Disposition"].startswith("attachment;")

    assert viewer_live_parts(client.get(f"/api/reports/{session_id}.md").get_data(as_text=True)) == []
    pdf = client.get(f"/api/reports/{session_id}.pdf").data
    assert pdf_bad_actions(pdf) == []
    assert not [path for path in HostileSite.hits if path.endswith(".png")]


def test_charts_serves_the_reports_charts_only_under_a_policy_of_their_own(app, client):
    session_id = run_report(app, client, "Electric Car Market", "A short market analysis of electric cars")
    charts = client.get(f"/api/reports/{session_id}").get_json()["charts"]

    for url, content_type in [(charts[0]["url"], "image/png"), (charts[0]["svg_url"], "image/svg+xml")]:
        response = client.get(url)
        assert response.status_code == 200 and response.content_type == content_type
        assert re.search(r"(^|;)\s*sandbox\s*(;|$)", response.headers["Content-Security-Policy"])
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for name in ("report.html", "report.md", "report.pdf", "../report.html", "index.html", "report", "figure-9.png"):
        response = client.get(f"/api/reports/{session_id}/charts/{quote(name, safe='')}")
        assert response.status_code == 404 and response.is_json, name


def test_a_topic_naming_a_chart_that_does_not_exist_completes_with_the_charts_the_analyst_made(app, client, site):
    session_id = run_report(app, client, "Wind ![x](charts/nonexistent.png) power",
                            "Wind power ![y](charts/report.pdf) ![z](charts/figure-9.svg)",
                            data_urls=[f"{site}/tidal.csv"])

    html = client.get(f"/api/reports/{session_id}.html").get_data(as_text=True)
    charts = client.get(f"/api/reports/{session_id}").get_json()["charts"]
    assert [chart["png"] for chart in charts] == ["figure-1.png"]
    assert html.count('src="data:image/png;base64,') == 1 and live_parts(html) == []
