"""planner: turns the requirements into an outline with a word budget per section."""
import re

WORDS_PER_PAGE = 300  # a printed page of report prose with headings, at 11pt
SECTIONS_BY_COMPLEXITY = {"simple": 3, "moderate": 5, "complex": 7}
QUESTIONS_BY_COMPLEXITY = {"simple": 1, "moderate": 2, "complex": 3}

# Report sections in the order a reader needs them; `{s}` is the subject of the report.
SECTION_LIBRARY = [
    ("Background", "what {s} is and why it matters now",
     ["What is {s} and how has it developed?", "Which definitions and units does the data use for {s}?",
      "What drives interest in {s} today?"]),
    ("Market size and growth", "how large {s} is and how fast it grows",
     ["How large is {s} and how fast has it grown?", "Which countries or regions lead {s}?",
      "What share of the wider market does {s} hold?"]),
    ("Costs and prices", "what {s} costs and how that has changed",
     ["How have costs and prices for {s} changed?", "Which components drive the cost of {s}?",
      "How does {s} compare on cost with the alternatives?"]),
    ("Technology and infrastructure", "the technology and infrastructure {s} depends on",
     ["Which technologies does {s} rely on?", "How much infrastructure supports {s}?",
      "Which technical limits does {s} face?"]),
    ("Policy and investment", "the policies and investment shaping {s}",
     ["Which policies support {s}?", "How much investment goes into {s}?",
      "Which targets have governments set for {s}?"]),
    ("Challenges and risks", "what could slow {s} down",
     ["What are the main obstacles for {s}?", "Which supply-chain risks affect {s}?",
      "What are the environmental concerns around {s}?"]),
    ("Outlook", "where {s} is heading",
     ["What growth is projected for {s}?", "Which trends will shape {s} over the next decade?",
      "What would change the outlook for {s}?"]),
]
DATA_SECTION = "Market size and growth"
# Sections kept for fewer-section reports: the essentials first.
PRIORITY = [1, 0, 2, 6, 3, 4, 5]

_REPORT_WORDS = re.compile(r"\b(market analysis|analysis|report|overview|study|outlook|market)\b", re.I)


def subject_of(topic: str) -> str:
    """The subject the questions ask about: 'Electric Vehicle Market Analysis' -> 'electric vehicle'."""
    words = _REPORT_WORDS.sub(" ", topic).split() or topic.split()
    return " ".join(w if w.isupper() else w.lower() for w in words)


class Planner:
    name = "planner"

    def run(self, context):
        req = context.requirements
        complexity = req.get("complexity", "moderate")
        subject = subject_of(req["topic"])
        chosen = sorted(PRIORITY[:SECTIONS_BY_COMPLEXITY[complexity]])
        word_budget = req["page_count"] * WORDS_PER_PAGE
        summary_words = max(60, word_budget // 12)
        per_section = (word_budget - summary_words) // len(chosen)
        sections = []
        for index in chosen:
            heading, purpose, questions = SECTION_LIBRARY[index]
            sections.append({
                "heading": heading,
                "holds_data": heading == DATA_SECTION,  # where the analyst's tables and charts go
                "purpose": purpose.format(s=subject),
                "questions": [q.format(s=subject) for q in questions[:QUESTIONS_BY_COMPLEXITY[complexity]]],
                "word_budget": per_section,
            })
        return {
            "title": req["topic"],
            "subject": subject,
            "complexity": complexity,
            "words_per_page": WORDS_PER_PAGE,
            "word_budget": word_budget,
            "summary_word_budget": summary_words,
            "sections": sections,
        }
