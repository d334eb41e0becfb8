"""Text helpers shared by the agents: sentences, word counts, and BM25 ranking through SQLite FTS5."""
import re

from app.database import sqlite_dbapi

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


def match_query(text: str, every: bool = False) -> str:
    """An FTS5 MATCH expression: any (or every) one of the text's meaningful words, quoted so none is an operator."""
    terms = dict.fromkeys(t.lower() for t in _TERM.findall(text) if t.lower() not in _NOISE and len(t) > 1)
    return (" AND " if every else " OR ").join(f'"{t}"' for t in terms)


def open_index(path: str = ":memory:"):
    """A SQLite connection with an FTS5 table `texts(body)`, porter-stemmed ("vehicles" finds "vehicle")."""
    conn = sqlite_dbapi().connect(path, check_same_thread=False)
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
