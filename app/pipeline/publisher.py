"""publisher: the final report as Markdown, a standalone HTML page (charts embedded) and a PDF.

An appendix after the References says how the report was made: the writer used, the sections
that fell back or were left out, and the reviewer's findings. The HTML embeds each chart as a
data: URI so the file stands alone, links each citation [n] to its reference, keeps a figure
with its caption, gives long reports a table of contents, and carries a print stylesheet;
WeasyPrint renders that same HTML to PDF. The three files are artifacts (report.md,
report.html, report.pdf); the output keeps what the JSON report needs.

The text holds what strangers wrote (the topic, the request, fetched pages, data titles), so the
HTML can run nothing and load nothing: links go only to http(s), mailto and the page's own
anchors, the only images are the analyst's charts, embedded, and an allow-list sanitiser (nh3)
has the last word over every tag and attribute. A link or image the HTML drops is left as
plain text in report.md, so a Markdown viewer does not make it live either.
"""
import base64
import re
from html import escape, unescape

import markdown as markdown_lib
import nh3
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

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
# The report's HTML may hold what Markdown and this module write, and nothing else: no script, no style
# attribute, no form, no frame. Every URL attribute is checked again by sanitised_html.
ALLOWED_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "em", "strong", "code", "pre", "blockquote",
                "ul", "ol", "li", "a", "img", "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption",
                "nav"}
ALLOWED_ATTRIBUTES = {"a": {"href", "class"}, "img": {"src", "alt"}, "h2": {"id"}, "li": {"id"}, "ol": {"start"},
                      "nav": {"class", "aria-label"}, "figure": {"class"},
                      "*": set()}  # not nh3's default title and lang on every tag
CHART_TYPES = {"png": "image/png", "svg": "image/svg+xml"}  # by file extension; nothing else is embedded
_SAFE_LINK = re.compile(r"(?:https?:|mailto:|#)", re.I)
_URL_PADDING = "".join(map(chr, range(0x21)))  # what a browser strips around a URL: controls and space
_DESTINATION = re.compile(r"\]\(\s*<?([^\s<>)]*)")  # "](" and the target of a Markdown link or image
# "[label]: target" defines a link target, also inside a quote or a list item.
_DEFINITION = re.compile(r"^((?:[ \t]*(?:>|[*+-]|\d{1,9}[.)]))*[ \t]*)\[(?=[^\[\]\n]*\]:)", re.M)
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")  # raw HTML, a comment or an autolink
_ESCAPED_PUNCTUATION = re.compile(r"\\([!-/:-@\[-`{-~])")
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
        # The analyst's charts are the only files the report may show; any other name stays text.
        chart_names = {c[kind] for c in analysis["charts"] for kind in ("png", "svg") if isinstance(c.get(kind), str)}

        context.progress("rendering HTML")
        html = render_html(draft["title"], text, chart_names, context.artifact)
        markdown = markdown_for_viewers(text, chart_names)
        context.progress("rendering PDF")
        pdf = render_pdf(html)
        return StepOutput({
            "title": draft["title"],
            "markdown": markdown,
            "word_count": draft["word_count"],
            "sections": draft["sections"],
            "sources": [{k: s[k] for k in ("number", "title", "location", "publisher", "retrieved_at",
                                           "content_hash")} for s in sources],
            "tables": analysis["tables"],
            "charts": analysis["charts"],
            "review": review,
            "files": {"md": "report.md", "html": "report.html", "pdf": "report.pdf"},
        }, artifacts={
            "report.md": ("text/markdown; charset=utf-8", markdown.encode()),
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


def render_html(title: str, text: str, chart_names: set[str], load_artifact) -> str:
    # The topic is what a stranger typed and the sources are not ours: escape raw HTML first.
    embedded: set[str] = set()

    def embed(src: str) -> str | None:
        uri = chart_uri(src, chart_names, load_artifact)
        if uri:
            embedded.add(uri)
        return uri

    body = markdown_lib.markdown(escape(text, quote=False), output_format="html",
                                 extensions=["tables", "sane_lists", _UntrustedLinks(embed)])
    body = _FIGURE.sub(r"<figure>\1<figcaption>\2</figcaption></figure>", body)
    body = _TABLE.sub(r'<figure class="table"><figcaption>\1</figcaption>\2</figure>', body)
    body = _heading_ids(body)
    body = _link_citations(body, _reference_numbers(text))
    body = _contents(body)
    body = sanitised_html(body, embedded)
    # no-referrer: following a link does not tell the site where the reader came from.
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<meta name=\"referrer\" content=\"no-referrer\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def safe_link(url: str) -> bool:
    """Whether a browser following this href goes to an http(s) or mailto URL or an anchor of the page."""
    # As a browser reads it: controls and spaces around it ignored, tabs and newlines inside removed.
    return bool(_SAFE_LINK.match(re.sub(r"[\t\n\r]", "", url.strip(_URL_PADDING))))


def chart_uri(src: str, chart_names: set[str], load_artifact) -> str | None:
    """The data: URI of "charts/<name>" when the analyst made that chart; None for any other image."""
    folder, _, name = src.partition("/")
    mime = CHART_TYPES.get(name.rpartition(".")[2])
    if folder != "charts" or name not in chart_names or mime is None:
        return None
    try:
        data = load_artifact(name)
    except KeyError:  # named in the charts list but never stored: the report goes without it
        return None
    looks_right = data.startswith(b"\x89PNG\r\n\x1a\n") if mime == "image/png" else b"<svg" in data[:4096]
    return f"data:{mime};base64,{base64.b64encode(data).decode()}" if looks_right else None


class _UntrustedLinks(Extension):
    """Markdown's links and images, as the report may show them (see _CheckLinks)."""

    def __init__(self, embed):
        super().__init__()
        self.embed = embed

    def extendMarkdown(self, md):
        # After the inline patterns (20) have made the links and images, before prettify (10).
        md.treeprocessors.register(_CheckLinks(md, self.embed), "untrusted_links", 15)


class _CheckLinks(Treeprocessor):
    """A link keeps its href only if it is safe_link; an image is a chart, embedded, or else its alt text."""

    def __init__(self, md, embed):
        super().__init__(md)
        self.embed = embed

    def run(self, root):
        parents = {child: parent for parent in root.iter() for child in parent}
        for element in list(root.iter()):
            # Markdown writes the href as it will appear in the page; the browser decodes it once.
            if element.tag == "a" and not safe_link(unescape(element.get("href", ""))):
                element.attrib.pop("href", None)
            elif element.tag == "img":
                uri = self.embed(element.get("src", ""))
                if uri:
                    element.attrib = {"alt": element.get("alt", ""), "src": uri}
                else:
                    _replace_with_text(element, parents[element], element.get("alt", ""))


def _replace_with_text(element, parent, text: str):
    at = list(parent).index(element)
    text += element.tail or ""
    if at == 0:
        parent.text = (parent.text or "") + text
    else:
        parent[at - 1].tail = (parent[at - 1].tail or "") + text
    parent.remove(element)


def sanitised_html(body: str, embedded: set[str]) -> str:
    """The allow-list's last word: only ALLOWED_TAGS and ALLOWED_ATTRIBUTES, safe links, our own charts."""

    def check(tag, attribute, value):
        if attribute == "href":
            return value if safe_link(value) else None
        if attribute == "src":
            return value if value in embedded else None
        return value

    # data: passes the scheme list only to reach check(), which keeps exactly the charts embedded above.
    return nh3.clean(body, tags=ALLOWED_TAGS, clean_content_tags={"script", "style"}, attributes=ALLOWED_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto", "data"}, attribute_filter=check, link_rel=None,
                     strip_comments=True)


def markdown_for_viewers(text: str, chart_names: set[str]) -> str:
    """The Markdown as report.md: a link or image the HTML drops, raw HTML and autolinks left as plain text.

    A Markdown viewer renders what it is given, so each is escaped where it starts; the HTML is
    rendered from the unescaped text, where _CheckLinks and sanitised_html do the same job.
    """
    def target(match):
        url = _ESCAPED_PUNCTUATION.sub(r"\1", unescape(match.group(1)))
        if url.startswith("charts/") and url[len("charts/"):] in chart_names:
            keep = _closes_image(text, match.start())  # the writer's figure; a link to it would lead to a file
        else:
            keep = safe_link(url) and not _may_be_image(text, match.start())
        return match.group(0) if keep else "]\\(" + match.group(0)[2:]

    escaped = _DESTINATION.sub(target, text)
    escaped = _DEFINITION.sub(r"\1\\[", escaped)  # the writer defines no link targets: any is a stranger's
    return _HTML_START.sub(r"\\<", escaped)


def _may_be_image(text: str, close: int) -> bool:
    """Whether the "](" at `close` may end an image: there is an "![" earlier in its paragraph.

    Brackets nest and code spans hide some, so any "![" counts: the stricter rule holds whenever a viewer could
    read an image there.
    """
    paragraph_start = text.rfind("\n\n", 0, close)
    return "![" in text[paragraph_start + 1:close]


def _closes_image(text: str, close: int) -> bool:
    """Whether the "]" at `close` pairs, nested brackets counted, with the "[" of an "![" in its paragraph."""
    depth = 0
    for at in range(close, text.rfind("\n\n", 0, close), -1):
        if text[at] in "[]" and not _escaped(text, at):
            depth += 1 if text[at] == "]" else -1
            if depth == 0:
                return text[at - 1:at] == "!" and not _escaped(text, at - 1)
    return False


def _escaped(text: str, at: int) -> bool:
    backslashes = 0
    while at - backslashes > 0 and text[at - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


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
