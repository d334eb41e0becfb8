"""relevance: which library documents are about a report's subject, decided per whole document.

The topic's words are stemmed (Snowball) and weighed by what the library says of them. A word the
documents dwell on wherever they mention it ("hydrogen", "heat pump": many mentions per document)
names the subject; a word spread thinly ("outlook", "market", "future", "Europe") frames the
request. No list of framing words is kept: the library decides, so a word that frames one topic
can be the subject of another.

A document qualifies when it holds every subject word, prominently (in its title, or three times
between them), and at first every framing word too. While fewer documents qualify than the
request wants, framing words are dropped one at a time, the least dwelt-on first; subject words are
never dropped, so an off-topic document never qualifies. A topic whose words the library does not
dwell on at all is not covered, and nothing qualifies; so is one with words the library never
mentions, unless its subject words weigh far more than those. Qualifying documents are ranked by the
strictest step at which they qualified, then by BM25 over the topic (counted twice) and the request.
"""
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field

import snowballstemmer

# Grammar, not meaning: these never name a subject or frame a request.
_FUNCTION_WORDS = frozenset("""a an and are as at be been but by can could did do does for from had has have how
i if in into is it its may me might more most much my no nor not of on or our over per shall should so some such
than that the their them then there these they this those through to under up upon us was we were what when where
which while who whom why will with within without would you your about also between""".split())
_WORD = re.compile(r"[a-z0-9]+")

# A word names the subject when the documents that mention it do so at least this often (per 500
# words) on average, and at least half as often as the topic's most dwelt-on word.
SUBJECT_MENTIONS = 5.0
SUBJECT_SHARE = 0.5
PROMINENT_MENTIONS = 3  # a document is about the subject: its words in the title, or this often
NORMAL_LENGTH = 500     # words; counts are scaled to a document of this length
SHORTEST = 150          # ... but a shorter document counts as this long, so one mention is not ten

_stemmer = snowballstemmer.stemmer("english")
_stem_lock = threading.Lock()  # the Snowball stemmer object keeps state between calls


def stems(text: str) -> list[str]:
    """The text's content words, lower-cased and stemmed ("Heat Pumps in Europe" -> heat, pump, europ)."""
    words = [w for w in _WORD.findall(text.lower()) if w not in _FUNCTION_WORDS and (len(w) > 1 or w.isdigit())]
    with _stem_lock:
        return _stemmer.stemWords(words)


@dataclass(frozen=True)
class Profile:
    """A document's stemmed word counts."""

    counts: Counter
    title: frozenset
    length: int


_profiles: dict[str, Profile] = {}
_profiles_lock = threading.Lock()


def profile(document) -> Profile:
    """The word counts of a library document (cached by its content hash: documents are immutable)."""
    with _profiles_lock:
        cached = _profiles.get(document.content_hash)
    if cached is None:
        words = stems(document.title + " " + " ".join(document.passages))
        cached = Profile(Counter(words), frozenset(stems(document.title)), max(len(words), 1))
        with _profiles_lock:
            if len(_profiles) > 20_000:
                _profiles.clear()
            _profiles[document.content_hash] = cached
    return cached


@dataclass
class Selection:
    """The documents about the subject, best first, and how they were chosen (for the review)."""

    documents: list = field(default_factory=list)
    subject_terms: list[str] = field(default_factory=list)   # stems the documents must dwell on
    subject_words: list[str] = field(default_factory=list)   # the same, as the topic spells them
    required_words: list[str] = field(default_factory=list)  # framing words still required at the end
    dropped_words: list[str] = field(default_factory=list)   # framing words given up to find enough
    on_subject: int = 0                                       # documents that dwell on the subject at all
    searched: int = 0


def select(documents: list, topic: str, request: str, wanted: int) -> Selection:
    """The library documents about the topic, at most `wanted`, strictest match first."""
    profiles = {d.path: profile(d) for d in documents}
    selection = Selection(searched=len(documents))
    topic_terms = list(dict.fromkeys(stems(topic)))
    subject, framing, weight = _split_terms(topic_terms, profiles)
    if not subject:  # the topic's own words say nothing the library dwells on: try the request's
        subject, _, weight = _split_terms(list(dict.fromkeys(stems(request))), profiles)
        framing = [t for t in topic_terms if t not in subject]
    # A topic word the library never mentions may be the very subject ("quantum" in "Quantum computing
    # outlook"): only a subject the documents dwell on far more than usual outweighs it.
    absent = [t for t in topic_terms if not any(p.counts[t] for p in profiles.values())]
    if weight < 2 * SUBJECT_MENTIONS * len(absent):
        subject = []
    if not subject:
        return selection
    selection.subject_terms = subject
    selection.subject_words = _spellings(subject, f"{topic} {request}")

    about = [d for d in documents if _dwells_on(profiles[d.path], subject)]
    selection.on_subject = len(about)
    tier: dict[str, int] = {}
    required = list(framing)
    for level in range(len(framing) + 1):
        for document in about:
            if document.path not in tier and all(profiles[document.path].counts[t] for t in required):
                tier[document.path] = level
        if len(tier) >= wanted or not required:
            break
        required.pop(0)
    selection.required_words = _spellings(required, topic)
    selection.dropped_words = _spellings([t for t in framing if t not in required], topic)

    query = stems(f"{topic} {topic} {request}")
    scores = dict(zip((d.path for d in about), _bm25([profiles[d.path] for d in about], query)))
    ranked = sorted((d for d in about if d.path in tier), key=lambda d: (tier[d.path], -scores[d.path], d.path))
    selection.documents = ranked[:wanted]
    return selection


def _split_terms(terms: list[str], profiles: dict[str, Profile]) -> tuple[list[str], list[str], float]:
    """(subject stems, framing stems least dwelt-on first, the subject's mentions) of some stems, judged by
    the library."""
    mentions = {t: _mentions(t, profiles.values()) for t in terms}
    top = max(mentions.values(), default=0.0)
    if top < SUBJECT_MENTIONS:
        return [], terms, 0.0
    subject = [t for t in terms if mentions[t] >= SUBJECT_SHARE * top]
    framing = sorted((t for t in terms if t not in subject),
                     key=lambda t: (mentions[t], sum(1 for p in profiles.values() if p.counts[t])))
    return subject, framing, sum(mentions[t] for t in subject)


def _mentions(term: str, profiles) -> float:
    """How often the documents that mention a term do so, on average, per NORMAL_LENGTH words."""
    counts = [p.counts[term] * NORMAL_LENGTH / max(p.length, SHORTEST) for p in profiles if p.counts[term]]
    return sum(counts) / len(counts) if counts else 0.0


def _dwells_on(document: Profile, subject: list[str]) -> bool:
    if not all(document.counts[t] for t in subject):
        return False
    return bool(document.title & set(subject)) or sum(document.counts[t] for t in subject) >= PROMINENT_MENTIONS


def _bm25(documents: list[Profile], query: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    if not documents:
        return []
    average = sum(p.length for p in documents) / len(documents)
    weights = Counter(query)
    idf = {}
    for term in weights:
        df = sum(1 for p in documents if p.counts[term])
        idf[term] = math.log(1 + (len(documents) - df + 0.5) / (df + 0.5))
    scores = []
    for p in documents:
        score = 0.0
        for term, times in weights.items():
            tf = p.counts[term]
            if tf:
                score += times * idf[term] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * p.length / average))
        scores.append(score)
    return scores


def _spellings(terms: list[str], text: str) -> list[str]:
    """Each stem as the text spells it ("pump" -> "pumps"), in the stems' order."""
    spelled = {}
    for word in _WORD.findall(text.lower()):
        stem = stems(word)
        if stem and stem[0] in terms:
            spelled.setdefault(stem[0], word)
    return [spelled.get(t, t) for t in terms]
