"""publisher: the final report, with the review appended, as Markdown and as a standalone HTML page."""
from html import escape

import markdown as markdown_lib

STYLE = """
body { font-family: Georgia, 'Times New Roman', serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.55; color: #1a1a1a; }
h1, h2 { font-family: system-ui, sans-serif; line-height: 1.2; }
h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .25rem .5rem; }
@media print { body { margin: 0; max-width: none; font-size: 11pt; } h2 { break-after: avoid; }
               a { color: inherit; text-decoration: none; } }
"""


class Publisher:
    name = "publisher"

    def run(self, context):
        draft = context.outputs["writer"]
        review = context.outputs.get("reviewer")
        sources = context.outputs["data_collection"]["sources"]
        text = draft["markdown"]
        if review:
            lines = ["", "## Review", ""]
            lines += [f"- {'Pass' if f['ok'] else 'Note'}: {f['check']}: {f['detail']}" for f in review["findings"]]
            text = text.rstrip() + "\n" + "\n".join(lines) + "\n"
        # Sources are our own text, but a topic is what a stranger typed: escape raw HTML in both.
        body = markdown_lib.markdown(escape(text, quote=False), extensions=["tables", "sane_lists"],
                                     output_format="html")
        html = (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>{escape(draft['title'])}</title>\n<style>{STYLE}</style>\n</head>\n"
                f"<body>\n{body}\n</body>\n</html>\n")
        return {
            "title": draft["title"],
            "markdown": text,
            "html": html,
            "word_count": draft["word_count"],
            "sources": [{k: s[k] for k in ("number", "title", "location", "publisher", "retrieved_at",
                                           "content_hash")} for s in sources],
            "review": review,
        }
