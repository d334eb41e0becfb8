"""Text helpers shared by the agents: tokens, sentences and a small BM25 ranking."""
import math
import re
from collections import Counter

STOPWORDS = frozenset("""
a an and are as at be been but by can could did do does for from had has have how in into is it its
may more most much not of on or our over such than that the their them then there these they this those
through to under up was we were what when where which while who why will with would about also between
report analysis overview market study
""".split())

_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
# A sentence ends at . ! or ? followed by a space and a capital or digit; "e.g." and decimals survive.
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<=[.!?])\s+(?=[A-Z0-9\"(])")


def tokens(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def _stem(word: str) -> str:
    # Enough to match "vehicles" with "vehicle" and "batteries" with "battery"; no more.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if len(s.split()) >= 4]


def word_count(text: str) -> int:
    return len(re.findall(r"\b\w+\b", text))


class BM25:
    """Okapi BM25 over a list of texts (k1=1.5, b=0.75)."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75):
        self.docs = [Counter(tokens(t)) for t in texts]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg_length = (sum(self.lengths) / len(self.lengths)) if self.docs else 0.0
        frequency = Counter(term for d in self.docs for term in d)
        n = len(self.docs)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> list[float]:
        terms = set(tokens(query))
        result = []
        for doc, length in zip(self.docs, self.lengths):
            score = 0.0
            for term in terms & doc.keys():
                tf = doc[term]
                norm = tf + self.k1 * (1 - self.b + self.b * length / (self.avg_length or 1))
                score += self.idf[term] * tf * (self.k1 + 1) / norm
            result.append(score)
        return result

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        """Indexes and scores of the k best texts with a positive score, best first."""
        ranked = sorted(((i, s) for i, s in enumerate(self.scores(query)) if s > 0), key=lambda p: (-p[1], p[0]))
        return ranked[:k]
