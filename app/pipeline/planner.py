"""planner: turns the requirements into an outline with a word budget per section.

The depth sets how many sections (3, 5 or 7); the sections the request asks about ("what stands
in the way", "prices", "policy support") are always in, whatever the depth, and the rest come in
the order a reader needs them. Each section carries the words its material is found by: its
questions and a vocabulary of what such a section talks about, without the subject's own words.
"""
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

# What each section's material talks about, whatever the subject; the writer scores sentences by it.
SECTION_VOCABULARY = {
    "Background": "history invented first developed definition defined principle works work uses used origin "
                  "early century decades became known type types common heating idea basic description measured",
    "Market size and growth": "sales sold units market share growth grew rose increase demand countries country "
                              "regions region largest leading installed installations capacity million record "
                              "percent year fell decline stock deployment",
    "Costs and prices": "cost costs price prices priced cheaper expensive euro eur usd dollars per unit "
                        "affordable payback savings bills components equipment labour",
    "Technology and infrastructure": "technology technologies efficiency performance design systems system "
                                     "components infrastructure network temperature operate performance "
                                     "innovation manufacturing factories installers workforce engineering",
    "Policy and investment": "policy policies government subsidy subsidies grant grants incentives regulation "
                             "law ban target targets plan investment invested funding acquisition acquired "
                             "billion companies company deal scheme tax",
    "Challenges and risks": "risk risks challenge challenges obstacle obstacles barrier barriers problem problems "
                            "concern concerns shortage shortages environmental emissions leaks refrigerant "
                            "supply chain decline reasons slow uncertainty",
    "Outlook": "outlook future projected projection forecast expected expects scenario scenarios 2030 2035 "
               "2040 2050 will would need needed trend trends next decade targets pathway growth",
}

# Words in a request that ask for a section by name, at any depth.
SECTION_ASKED = {
    "Background": r"\b(background|history|histor\w+|what is|what are|how \w+ works?|definition)",
    "Market size and growth": r"\b(market|sales|sold|demand|countr\w*|region\w*|share|growth|size)",
    "Costs and prices": r"\b(cost\w*|pric\w+|afford\w*|expens\w+|cheap\w*|payback)",
    "Technology and infrastructure": r"\b(technolog\w*|infrastructure|efficien\w+|engineering|installer\w*)",
    "Policy and investment": r"\b(polic\w+|subsid\w+|regulat\w+|incentive\w*|government\w*|invest\w*|grant\w*)",
    "Challenges and risks": r"\b(risk\w*|challenge\w*|obstacle\w*|barrier\w*|threat\w*|in the way|concern\w*"
                            r"|problem\w*)",
    "Outlook": r"\b(outlook|future|forecast\w*|projection\w*|20[3-5]0|trend\w*|where .{0,20}go(es|ing)?)",
}
# Sections kept for fewer-section reports: the essentials first.
PRIORITY = [1, 0, 2, 6, 3, 4, 5]

_REPORT_WORDS = re.compile(r"\b(market analysis|analysis|report|overview|study|outlook|market)\b", re.I)


def subject_of(topic: str) -> str:
    """The subject the questions ask about: 'Electric Vehicle Market Analysis' -> 'electric vehicle'."""
    words = _REPORT_WORDS.sub(" ", topic).split() or topic.split()
    return " ".join(w if w.isupper() else w.lower() for w in words)


def asked_for(text: str) -> set[int]:
    """The sections a request names, as indexes into SECTION_LIBRARY."""
    return {i for i, (heading, _, _) in enumerate(SECTION_LIBRARY) if re.search(SECTION_ASKED[heading], text, re.I)}


def sections_for(asked: set[int], count: int) -> list[int]:
    """The sections asked for, then the essentials, `count` in all (more if more were asked for); in reading order."""
    chosen = set(asked)
    for index in PRIORITY:
        if len(chosen) >= count:
            break
        chosen.add(index)
    return sorted(chosen)


class Planner:
    name = "planner"

    def run(self, context):
        req = context.requirements
        complexity = req.get("complexity", "moderate")
        subject = subject_of(req["topic"])
        asked = asked_for(f"{req['topic']} {context.user_request}")
        chosen = sections_for(asked, SECTIONS_BY_COMPLEXITY[complexity])
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
                # What the material is found by: the questions without the subject (it matches everything).
                "search": " ".join([heading, purpose.format(s=""), *(q.format(s="") for q in questions),
                                    SECTION_VOCABULARY[heading]]),
                "asked": index in asked,
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
