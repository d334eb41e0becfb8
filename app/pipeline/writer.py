"""writer: composes the report in Markdown from the collected passages, every sentence cited.

Offline the writer is extractive: for each section of the outline it ranks the sentences of
the sources against the section's purpose and questions, and keeps the best ones, in source
order, each followed by its source number [n]. Nothing is written that a source did not say;
when the sources run out before the word budget does, the section is shorter, and says so.
"""
from app.pipeline.text import BM25, sentences, word_count


class Writer:
    name = "writer"

    def run(self, context):
        outline = context.outputs["planner"]
        sources = context.outputs["data_collection"]["sources"]
        pool = [(s["number"], sentence) for s in sources for p in s["passages"] for sentence in sentences(p)]
        index = BM25([text for _, text in pool]) if pool else None
        used: set[int] = set()

        def compose(query: str, budget: int) -> tuple[str, set[int]]:
            if index is None:
                return "", set()
            chosen, words = [], 0
            for i, _score in index.top(query, len(pool)):
                if i in used or _near_duplicate(pool[i][1], [pool[j][1] for j in chosen]):
                    continue
                chosen.append(i)
                used.add(i)
                words += word_count(pool[i][1])
                if words >= budget:
                    break
            chosen.sort(key=lambda i: (pool[i][0], i))  # group by source, keep each source's order
            return " ".join(_cite(pool[i][1], pool[i][0]) for i in chosen), {pool[i][0] for i in chosen}

        title = outline["title"]
        lines = [f"# {title}", ""]
        cited: set[int] = set()
        summary, numbers = compose(f"{title} {context.user_request}", outline["summary_word_budget"])
        cited |= numbers
        lines += ["## Executive summary", "", summary or _NO_MATERIAL, ""]
        section_words = []
        for section in outline["sections"]:
            body, numbers = compose(f"{section['purpose']} {' '.join(section['questions'])}",
                                    section["word_budget"])
            cited |= numbers
            words = word_count(body)
            section_words.append({"heading": section["heading"], "words": words, "budget": section["word_budget"]})
            lines += [f"## {section['heading']}", "", body or _NO_MATERIAL, ""]
        lines += ["## References", ""]
        for source in sources:
            origin = f" {source['publisher']}." if source.get("publisher") else ""
            lines.append(f"{source['number']}. {source['title']}.{origin} ({source['location']}, "
                         f"retrieved {source['retrieved_at']})")
        markdown = "\n".join(lines).rstrip() + "\n"
        return {
            "title": title,
            "markdown": markdown,
            "word_count": word_count(markdown),
            "body_words": sum(s["words"] for s in section_words) + word_count(summary),
            "word_budget": outline["word_budget"],
            "sections": section_words,
            "cited_sources": sorted(cited),
        }


_NO_MATERIAL = "_The collected sources hold nothing on this section._"


def _cite(sentence: str, number: int) -> str:
    """'Sales rose.' -> 'Sales rose [3].'"""
    if sentence[-1:] in ".!?":
        return f"{sentence[:-1]} [{number}]{sentence[-1]}"
    return f"{sentence} [{number}]"


def _near_duplicate(sentence: str, chosen: list[str]) -> bool:
    words = set(sentence.lower().split())
    return any(len(words & set(c.lower().split())) > 0.8 * min(len(words), len(c.split())) for c in chosen)
