"""publisher: the final report as Markdown, a standalone HTML page (charts embedded) and a PDF.

An appendix after the References says how the report was made: the writer used, the sections
that fell back or were left out, and the reviewer's findings. The HTML embeds each chart as a
data: URI so the file stands alone, links each citation [n] to its reference, keeps a figure
with its caption, gives long reports a table of contents, and carries a print stylesheet;
WeasyPrint renders that same HTML to PDF. The three files are artifacts (report.md,
report.html, report.pdf); the output keeps what the JSON report needs.
"""
import base64
import re
from html import escape, unescape

import markdown as markdown_lib

from app.pipeline import StepOutput

STYLE = """
@page { size: A4; margin: 2cm 2cm 2.2cm; @bottom-center { content: counter(page); font-size: 9pt; color: #666; } }
body { font-family: "DejaVu Serif", Georgia, serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; color: #1a1a1a; }
h1, h2, h3 { font-family: "DejaVu Sans", system-ui, sans-serif; line-height: 1.2; }
h1 { font-size: 1.9rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-top: 1.2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
td, th { border: 1px solid #bbb; padding: .25rem .5rem; text-align: left; } th { background: #f0f0f0; }
img { max-width: 100%; height: auto; } em { color: #444; }
figure { margin: 1rem 0; } figcaption { font-style: italic; color: #444; margin: .3rem 0; }
nav.contents { margin: 1rem 0 1.5rem; } nav.contents p { font-weight: bold; margin-bottom: .2rem; }
a.cite { text-decoration: none; }
@media print { body { margin: 0; max-width: none; font-size: 10.5pt; } h2, h3 { break-after: avoid; }
               table, img, figure { break-inside: avoid; } a { color: inherit; text-decoration: none; } }
"""
APPENDIX = "Appendix: how this report was made"
TOC_MIN_SECTIONS = 5  # below this a reader sees every heading on a page or two anyway
_CHART = re.compile(r'src="charts/([A-Za-z0-9._-]+)"')
_H2 = re.compile(r"<h2>(.*?)</h2>", re.S)
_H2_WITH_ID = re.compile(r'<h2 id="([^"]+)">(.*?)</h2>', re.S)
# The writer's chart: the image paragraph, then its caption paragraph (writer._render_item).
_IN_PARAGRAPH = r"(?:(?!</p>).)*?"  # a caption may hold inline tags but not end its paragraph
_FIGURE = re.compile(rf"<p>(<img [^>]*>)</p>\s*<p><em>({_IN_PARAGRAPH})</em></p>", re.S)
_TABLE = re.compile(rf"<p><em>(Table \d+\b{_IN_PARAGRAPH})</em></p>\s*(<table>.*?</table>)", re.S)
_TAG = re.compile(r"(<[^>]*>)")
_CITATION = re.compile(r"\[(\d+)\]")
_REFERENCE_NUMBER = re.compile(r"^(\d+)\. ", re.M)
_NO_LINKS_IN = {"a", "code", "pre"}  # link text, code: a [n] there is not a citation to link


class Publisher:
    name = "publisher"

    def run(self, context):
        draft = context.outputs["writer"]
        review = context.outputs.get("reviewer")
        analysis = context.outputs.get("analyst") or {"tables": [], "charts": []}
        sources = context.outputs["data_collection"]["sources"]
        text = draft["markdown"].rstrip() + "\n\n" + appendix(draft, review)

        context.progress("rendering HTML")
        html = render_html(draft["title"], text, context.artifact)
        context.progress("rendering PDF")
        pdf = render_pdf(html)
        return StepOutput({
            "title": draft["title"],
            "markdown": text,
            "word_count": draft["word_count"],
            "sections": draft["sections"],
            "sources": [{k: s[k] for k in ("number", "title", "location", "publisher", "retrieved_at",
                                           "content_hash")} for s in sources],
            "tables": analysis["tables"],
            "charts": analysis["charts"],
            "review": review,
            "files": {"md": "report.md", "html": "report.html", "pdf": "report.pdf"},
        }, artifacts={
            "report.md": ("text/markdown; charset=utf-8", text.encode()),
            "report.html": ("text/html; charset=utf-8", html.encode()),
            "report.pdf": ("application/pdf", pdf),
        })


def appendix(draft: dict, review: dict | None) -> str:
    """The Markdown of the appendix: the writer used, what fell back or was left out, the review."""
    lines = [f"## {APPENDIX}", "", "### Writing", "", writer_note(draft), ""]
    left_out = draft.get("left_out") or []
    lines += ["### Sections left out", ""]
    if left_out:
        lines += [f"- {_one_line(s['section'])}: {_one_line(s['reason'])}" for s in left_out]
    else:
        lines.append("No section was left out.")
    lines += ["", "### Checks by the reviewer", ""]
    if review:
        lines += [f"- {'Pass' if f['ok'] else 'Note'}: {_one_line(f['check'])}: {_one_line(f['detail'])}"
                  for f in review["findings"]]
    else:
        lines.append("The report was not reviewed.")
    return "\n".join(lines) + "\n"


def writer_note(draft: dict) -> str:
    # Older writer outputs have no "writer" record, only top-level "mode" and "fallbacks".
    info = draft.get("writer") or {"mode": draft.get("mode"), "model": None, "fallbacks": draft.get("fallbacks")}
    mode, model, fallbacks = info.get("mode"), info.get("model"), info.get("fallbacks") or []
    who = f"the model {_one_line(model)}" if model else "a language model"
    if not fallbacks:
        if mode == "extractive":
            return "Written extractively from the sources (no model configured)."
        if mode == "model":
            return f"Written by {who}; every section came from the model."
        return "The writer did not record how it wrote this report."
    count = f"{len(fallbacks)} section{'s' if len(fallbacks) != 1 else ''} fell back"
    reasons = ", ".join(f"{_one_line(f['section'])} ({_one_line(f['reason'])})" for f in fallbacks)
    if mode in ("model", "model with fallbacks"):
        return f"Written by {who}; {count} to extractive writing: {reasons}."
    # The model was configured but wrote nothing (the writer's "extractive (the model fell back everywhere)").
    return f"Written extractively from the sources: {who} wrote no section; {count}: {reasons}."


def _one_line(value) -> str:
    # A reason is often an exception message: a newline in it must not start a heading or a list.
    return " ".join(str(value).split())


def render_html(title: str, text: str, load_artifact) -> str:
    # The topic is what a stranger typed and the sources are not ours: escape raw HTML first.
    body = markdown_lib.markdown(escape(text, quote=False), extensions=["tables", "sane_lists"], output_format="html")

    def embed(match):
        name = match.group(1)
        mime = "image/svg+xml" if name.endswith(".svg") else "image/png"
        return f'src="data:{mime};base64,{base64.b64encode(load_artifact(name)).decode()}"'

    body = _CHART.sub(embed, body)
    body = _FIGURE.sub(r"<figure>\1<figcaption>\2</figcaption></figure>", body)
    body = _TABLE.sub(r'<figure class="table"><figcaption>\1</figcaption>\2</figure>', body)
    body = _heading_ids(body)
    body = _link_citations(body, _reference_numbers(text))
    body = _contents(body)
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _text_of(html: str) -> str:
    return unescape(_TAG.sub("", html)).strip()


def _heading_ids(body: str) -> str:
    """Give each <h2> an id; "sec-" keeps them apart from the references' "ref-n"."""
    taken: set[str] = set()

    def add_id(match):
        slug = "sec-" + (re.sub(r"[^a-z0-9]+", "-", _text_of(match.group(1)).lower()).strip("-") or "section")
        unique, n = slug, 2
        while unique in taken:
            unique, n = f"{slug}-{n}", n + 1
        taken.add(unique)
        return f'<h2 id="{unique}">{match.group(1)}</h2>'

    return _H2.sub(add_id, body)


def _references_at(body: str) -> tuple[int, int]:
    """Where the References heading starts and where its section ends (the next <h2>); (-1, -1) if none."""
    starts = [m for m in _H2_WITH_ID.finditer(body) if _text_of(m.group(2)) == "References"]
    if not starts:
        return -1, -1
    start = starts[-1]  # the writer puts its References last; an earlier one would be quoted text
    following = _H2_WITH_ID.search(body, start.end())
    return start.start(), following.start() if following else len(body)


def _reference_numbers(text: str) -> list[int]:
    """The numbers of the writer's reference list ("1. Title ..."), in order, from the Markdown."""
    _, sep, tail = text.rpartition("\n## References\n")
    if not sep:
        return []
    tail = tail.split("\n## ", 1)[0]
    return [int(n) for n in _REFERENCE_NUMBER.findall(tail)]


def _link_citations(body: str, numbers: list[int]) -> str:
    start, end = _references_at(body)
    if start < 0:
        return body
    # Give each reference list item its id: the Markdown's numbers, in the order the list shows them.
    section = body[start:end]
    items = iter(numbers)
    ids: set[int] = set()

    def add_id(match):
        number = next(items, None)
        if number is None or number in ids:
            return match.group(0)
        ids.add(number)
        return f'<li id="ref-{number}">'

    section = re.sub(r"<li>", add_id, section)

    # Link [n] in the text before the References; attributes (an image's alt) are tags, left alone.
    parts, skipping = [], 0
    for part in _TAG.split(body[:start]):
        tag = re.match(r"<(/?)([a-z0-9]+)", part)
        if tag and tag.group(2) in _NO_LINKS_IN:
            skipping = max(0, skipping + (-1 if tag.group(1) else 1))
        elif not tag and not skipping and not part.startswith("<"):
            part = _CITATION.sub(lambda m: (f'<a class="cite" href="#ref-{m.group(1)}">{m.group(0)}</a>'
                                            if int(m.group(1)) in ids else m.group(0)), part)
        parts.append(part)
    return "".join(parts) + section + body[end:]


def _contents(body: str) -> str:
    """A list of links to the <h2> sections, after the title, when the report is long enough to need one."""
    headings = [(m.group(1), _text_of(m.group(2))) for m in _H2_WITH_ID.finditer(body)]
    # Count the report's own sections: the References and this appendix are not what makes it long.
    sections = [h for h in headings if h[1] not in ("References", APPENDIX)]
    if len(sections) < TOC_MIN_SECTIONS:
        return body
    items = "".join(f'<li><a href="#{id_}">{escape(name, quote=False)}</a></li>\n' for id_, name in headings)
    nav = f'\n<nav class="contents" aria-label="Contents">\n<p>Contents</p>\n<ol>\n{items}</ol>\n</nav>'
    title_end = body.find("</h1>")
    at = title_end + len("</h1>") if title_end >= 0 else 0
    return body[:at] + nav + body[at:]


def render_pdf(html: str) -> bytes:
    from weasyprint import HTML, URLFetcher

    # Only the embedded data: URIs: a model-written link must not make the server fetch anything.
    return HTML(string=html, url_fetcher=URLFetcher(allowed_protocols={"data"})).write_pdf()
