"""publisher: the final report as Markdown, a standalone HTML page (charts embedded) and a PDF.

The review is appended to the report. The HTML embeds each chart as a data: URI so the file
stands alone, and carries a print stylesheet; WeasyPrint renders that same HTML to PDF. The
three files are artifacts (report.md, report.html, report.pdf); the output keeps what the JSON
report needs.
"""
import base64
import re
from html import escape

import markdown as markdown_lib

from app.pipeline import StepOutput

STYLE = """
@page { size: A4; margin: 2cm 2cm 2.2cm; @bottom-center { content: counter(page); font-size: 9pt; color: #666; } }
body { font-family: "DejaVu Serif", Georgia, serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; color: #1a1a1a; }
h1, h2 { font-family: "DejaVu Sans", system-ui, sans-serif; line-height: 1.2; }
h1 { font-size: 1.9rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
td, th { border: 1px solid #bbb; padding: .25rem .5rem; text-align: left; } th { background: #f0f0f0; }
img { max-width: 100%; height: auto; } em { color: #444; }
@media print { body { margin: 0; max-width: none; font-size: 10.5pt; } h2 { break-after: avoid; }
               table, img { break-inside: avoid; } a { color: inherit; text-decoration: none; } }
"""
_CHART = re.compile(r'src="charts/([A-Za-z0-9._-]+)"')


class Publisher:
    name = "publisher"

    def run(self, context):
        draft = context.outputs["writer"]
        review = context.outputs.get("reviewer")
        analysis = context.outputs.get("analyst") or {"tables": [], "charts": []}
        sources = context.outputs["data_collection"]["sources"]
        text = draft["markdown"]
        if review:
            lines = ["", "## Review", ""]
            lines += [f"- {'Pass' if f['ok'] else 'Note'}: {f['check']}: {f['detail']}" for f in review["findings"]]
            text = text.rstrip() + "\n" + "\n".join(lines) + "\n"

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


def render_html(title: str, text: str, load_artifact) -> str:
    # The topic is what a stranger typed and the sources are not ours: escape raw HTML first.
    body = markdown_lib.markdown(escape(text, quote=False), extensions=["tables", "sane_lists"], output_format="html")

    def embed(match):
        name = match.group(1)
        mime = "image/svg+xml" if name.endswith(".svg") else "image/png"
        return f'src="data:{mime};base64,{base64.b64encode(load_artifact(name)).decode()}"'

    body = _CHART.sub(embed, body)
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def render_pdf(html: str) -> bytes:
    from weasyprint import HTML, URLFetcher

    # Only the embedded data: URIs: a model-written link must not make the server fetch anything.
    return HTML(string=html, url_fetcher=URLFetcher(allowed_protocols={"data"})).write_pdf()
