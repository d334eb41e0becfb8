"""Text helpers shared by the agents: sentences, word counts, repeated statements, and BM25 ranking (SQLite FTS5)."""
import re

try:  # the SQLite the service bundles (see app/database.py), so ranking is the same wherever it runs
    from pysqlite3 import dbapi2 as sqlite
except ImportError:  # pragma: no cover - only on platforms without a pysqlite3 wheel
    import sqlite3 as sqlite

# A sentence ends at . ! or ? followed by a space and a capital or digit; "e.g." and decimals survive.
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<=[.!?])\s+(?=[A-Z0-9\"(])")
_TERM = re.compile(r"[A-Za-z0-9]+")
# Words that say what kind of document is wanted, not what it is about.
_NOISE = frozenset("""a an and are as at be by can could did do does for from has have how in into is it its
may more most much not of on or our over such than that the their them then there these they this those to
under up was we were what when where which while who why will with would about also between report analysis
overview market study""".split())


def sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if len(s.split()) >= 4]


def word_count(text: str) -> int:
    return len(re.findall(r"\b\w+\b", text))


def match_query(text: str) -> str:
    """An FTS5 MATCH expression: any one of the text's meaningful words, quoted so none is an operator."""
    terms = dict.fromkeys(t.lower() for t in _TERM.findall(text) if t.lower() not in _NOISE and len(t) > 1)
    return " OR ".join(f'"{t}"' for t in terms)


def open_index(path: str = ":memory:"):
    """A SQLite connection with an FTS5 table `texts(body)`, porter-stemmed ("vehicles" finds "vehicle")."""
    conn = sqlite.connect(path, check_same_thread=False)
    conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS texts USING fts5(body, tokenize='porter unicode61')")
    return conn


def rank(texts: list[str], query: str, limit: int | None = None) -> list[tuple[int, float]]:
    """Indexes of the texts matching the query, best first, with their BM25 relevance (higher is better)."""
    expression = match_query(query)
    if not texts or not expression:
        return []
    conn = open_index()
    try:
        conn.executemany("INSERT INTO texts(rowid, body) VALUES (?, ?)", enumerate(texts, start=1))
        rows = conn.execute("SELECT rowid, -bm25(texts) FROM texts WHERE texts MATCH ? ORDER BY bm25(texts), rowid "
                            "LIMIT ?", (expression, limit or len(texts))).fetchall()
    finally:
        conn.close()
    return [(rowid - 1, score) for rowid, score in rows]


_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?")
_LONG_WORD = re.compile(r"[a-z0-9]{4,}")


def figures(text: str) -> frozenset:
    """The numbers a text states, as values ("3,000" and "3000" are one figure)."""
    return frozenset(float(n.replace(",", "")) for n in _NUMBER.findall(text))


def fingerprint(text: str) -> tuple[frozenset, frozenset, str]:
    """What same_statement compares, worked out once per text: its figures, its long words, the text."""
    return figures(text), frozenset(_LONG_WORD.findall(text.lower())), text.lower()


def same_statement(a: tuple, b: tuple) -> bool:
    """Two fingerprints of the same statement: the same figures and most of the same words (60% with
    figures, 80% without)."""
    (figures_a, words_a, text_a), (figures_b, words_b, text_b) = a, b
    if figures_a != figures_b:
        return False
    if len(words_a) < 5 or len(words_b) < 5:
        return text_a == text_b
    return len(words_a & words_b) / len(words_a | words_b) >= (0.6 if figures_a else 0.8)
