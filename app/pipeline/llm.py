"""llm: writes one report section with an OpenAI-compatible chat model, from numbered passages only.

The extractive writer never says anything a source did not say. A model can write better prose,
but it can also invent facts and cite sources that do not exist, so this module holds the model
to the writer's contract: it sees only the passages of the section, each prefixed with its source
number, and its answer is accepted only if it is non-empty and every citation [n] names one of
those numbers; a sentence that cites nothing is removed before anyone reads it. Anything else,
including every failure of the HTTP call, is an LLMError whose message says what happened, and
the writer falls back to its extractive text for that section.

The server is anything that speaks POST {base_url}/chat/completions: OpenAI, vLLM, llama.cpp,
Ollama (base_url http://localhost:11434/v1). Settings come from the deployment settings dict
(`context.settings`), never from Flask, so this runs and is tested on its own.
"""
import math
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import openai


class LLMError(Exception):
    """The model could not write the section, or wrote one that breaks the citation contract.

    `unavailable` is true when the server itself failed (a timeout, no connection, an HTTP error,
    retries spent): asking it again for the next section would most likely cost the same wait.
    """

    def __init__(self, message: str, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class LLMSettings:
    base_url: str
    api_key: str = field(repr=False)  # kept out of repr: settings end up in logs and tracebacks
    model: str
    timeout: float = 30.0   # seconds, per attempt (the client applies it to each try, not to the whole call)
    max_retries: int = 2    # extra attempts after a timeout, a refused connection, 408/409/429 or 5xx


# Local servers (Ollama, llama.cpp, vLLM without --api-key) ignore the key, but the client refuses
# to start without one; a placeholder also keeps it from falling back to $OPENAI_API_KEY, which
# would send the deployment's real OpenAI key to whatever server LLM_BASE_URL names.
NO_API_KEY = "not-needed"

TEMPERATURE = 0.2  # low: the section should restate the passages, not improvise around them


def llm_settings(settings: dict) -> LLMSettings | None:
    """The model settings from the deployment settings, or None when no model is configured.

    Keys: LLM_BASE_URL, LLM_MODEL (both needed, else None: the writer stays extractive),
    LLM_API_KEY (optional), LLM_TIMEOUT (seconds), LLM_MAX_RETRIES. Values may be strings, as
    they come from the environment. A value that is set but unusable raises ValueError naming the
    key, so a typo stops start-up instead of silently disabling the model.
    """
    base_url = _text(settings.get("LLM_BASE_URL"))
    model = _text(settings.get("LLM_MODEL"))
    if not base_url or not model:
        return None
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"LLM_BASE_URL must be an http:// or https:// URL, got {base_url!r}")
    timeout = _number(settings, "LLM_TIMEOUT", 30.0)
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"LLM_TIMEOUT must be a positive number of seconds, got {settings.get('LLM_TIMEOUT')!r}")
    retries = _number(settings, "LLM_MAX_RETRIES", 2)
    if retries != int(retries) or retries < 0:
        raise ValueError(f"LLM_MAX_RETRIES must be a whole number >= 0, got {settings.get('LLM_MAX_RETRIES')!r}")
    return LLMSettings(base_url=base_url, api_key=_text(settings.get("LLM_API_KEY")) or NO_API_KEY, model=model,
                       timeout=float(timeout), max_retries=int(retries))


def _text(value) -> str:
    # Settings from the environment are JSON-parsed when they parse, so a numeric key or model
    # name may arrive as a number; None and "" both mean unset.
    return "" if value is None else str(value).strip()


def _number(settings: dict, key: str, default: float) -> float:
    value = settings.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):  # a JSON true/false is not a count of seconds
        raise ValueError(f"{key} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {value!r}") from None


class SectionWriter:
    """One client for one model server; `write_section` per outline section. Thread-safe."""

    def __init__(self, settings: LLMSettings):
        self.settings = settings
        # timeout and max_retries are the client's own: it retries timeouts, connection errors,
        # 408/409/429 and 5xx with exponential backoff (0.5 s, 1 s, ... or the server's
        # Retry-After), and applies `timeout` to every attempt. So the worst case for one section
        # is about (max_retries + 1) * timeout plus the backoff; the writer must budget for that.
        self._client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key,
                                     timeout=settings.timeout, max_retries=settings.max_retries)

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    def write_section(self, *, report_title: str, heading: str, purpose: str, questions: list[str],
                      passages: list[tuple[int, str]], word_budget: int) -> str:
        """The section's body in Markdown, every claim cited [n] with a number from `passages`.

        `passages` are (source number, text) pairs; several may share a number. Raises LLMError
        when the call fails or the answer is empty, uncited, or cites a number not given.
        """
        messages = [
            {"role": "system", "content": _SYSTEM_PROMPT},
            {"role": "user", "content": _user_prompt(report_title, heading, purpose, questions, passages,
                                                     word_budget)},
        ]
        try:
            completion = self._client.chat.completions.create(model=self.settings.model, messages=messages,
                                                              temperature=TEMPERATURE)
        except openai.APITimeoutError as exc:  # before APIConnectionError: it is a subclass
            attempts = self.settings.max_retries + 1
            raise LLMError(f"{_where(exc)} timed out after {self.settings.timeout:g} s"
                           f"{f' ({attempts} attempts)' if attempts > 1 else ''}", unavailable=True) from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__  # the httpx error says why: refused, DNS, TLS...
            why = (str(cause) or type(cause).__name__) if cause else str(exc)
            raise LLMError(f"cannot reach {_where(exc)}: {why}", unavailable=True) from exc
        except openai.APIStatusError as exc:
            raise LLMError(f"HTTP {exc.status_code} from {_where(exc)}{_server_message(exc)}",
                           unavailable=True) from exc
        except openai.OpenAIError as exc:
            raise LLMError(f"the model call failed: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            # A 200 whose body claims to be JSON and is not: the client's json() raises this,
            # not an OpenAIError.
            raise LLMError(f"unreadable answer from {self.settings.base_url}: {exc}") from exc
        return _check(_answer_text(completion), {number for number, _ in passages})


_SYSTEM_PROMPT = """\
You write one section of a research report, using ONLY the numbered source passages the user gives.
Rules:
- Every statement of fact comes from the passages; add nothing from your own knowledge.
- After each claim, cite the number of the source it comes from in square brackets, like [2]; \
for several sources write [2] [5]. Cite only numbers that stand in front of a passage.
- Write plain Markdown prose paragraphs (lists only if the material is a list). No headings, \
no title, no references list, no preamble such as "Here is the section".
- When the passages do not answer one of the questions, say so plainly in one sentence instead of guessing.
"""


def _user_prompt(report_title: str, heading: str, purpose: str, questions: list[str],
                 passages: list[tuple[int, str]], word_budget: int) -> str:
    asked = "\n".join(f"- {q}" for q in questions) or "- (none given)"
    # The source number leads each passage, as it will appear in the citation.
    given = "\n\n".join(f"[{number}] {' '.join(text.split())}" for number, text in passages) or "(no passages)"
    return (f"Report: {report_title}\n"
            f"Section: {heading}\n"
            f"Purpose of the section: {purpose}\n"
            f"Questions it should answer:\n{asked}\n\n"
            f"Write about {word_budget} words.\n\n"
            f"Source passages:\n\n{given}\n")


def _where(exc: openai.APIError) -> str:
    # The request URL without any query string; the key travels in a header, never in the URL.
    url = exc.request.url
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}"


def _server_message(exc: openai.APIStatusError) -> str:
    # OpenAI-style {"error": {"message": ...}}, a bare {"error": "..."} (Ollama, some proxies) or text.
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        body = error.get("message") if isinstance(error, dict) else error
    text = " ".join(str(body).split()) if body else ""
    return f": {text[:200]}" if text else ""


def _answer_text(completion) -> str:
    # The client validates nothing by default: a non-JSON body comes back as a str and a JSON
    # body missing fields as a model missing attributes, so look before reaching in.
    if isinstance(completion, str):
        raise LLMError(f"the model server did not answer with JSON: {completion[:100]!r}")
    choices = getattr(completion, "choices", None)
    if not choices:
        raise LLMError("the model server's answer has no choices")
    choice = choices[0]
    reason = getattr(choice, "finish_reason", None)
    if reason == "length":
        raise LLMError("the answer was cut off at the server's token limit (finish_reason 'length')")
    if reason == "content_filter":
        raise LLMError("the server's content filter withheld the answer")
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if not content and getattr(message, "refusal", None):
        raise LLMError(f"the model refused: {' '.join(message.refusal.split())[:200]}")
    return content if isinstance(content, str) else ""


# A citation group: [3], [1, 3], [1; 3], [2-4], [Source 3]; several groups may follow each other.
_GROUP = r"\[\s*(?:(?:source|passage|ref)s?\.?\s*)?\d+(?:\s*(?:[,;]|[-\u2013])\s*\d+)*\s*\]"
_CITATION_RUN = re.compile(rf"{_GROUP}(?:[ \t]*{_GROUP})*", re.IGNORECASE)
_RANGE = re.compile(r"(\d+)\s*[-\u2013]\s*(\d+)")
_THINKING = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"\A```[a-zA-Z]*\n(.*)\n```\Z", re.DOTALL)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t].*$\n?", re.MULTILINE)


def _check(answer: str, numbers: set[int]) -> str:
    """The answer cleaned and with citations normalised to [1] [3], or LLMError if it breaks the contract."""
    # Reasoning models served locally (DeepSeek-R1, Qwen3 on Ollama) put their thinking in the
    # content; some models wrap the whole answer in a Markdown fence; and a heading would nest a
    # section inside the writer's own. None of that is the section's text.
    text = _THINKING.sub("", answer).strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _HEADING.sub("", text).strip()
    if not text:
        raise LLMError("the model returned an empty answer")

    cited: list[int] = []

    def normalise(match: re.Match) -> str:
        run: list[int] = []
        for group in re.findall(r"\[([^\]]*)\]", match.group(0)):
            group = _RANGE.sub(lambda m: _expand(int(m.group(1)), int(m.group(2))), group)
            run += [int(n) for n in re.findall(r"\d+", group) if int(n) not in run]
        cited.extend(run)
        return " ".join(f"[{n}]" for n in run)

    text = _CITATION_RUN.sub(normalise, text)
    unknown = sorted(set(cited) - numbers)
    if unknown:
        listed = " and ".join(f"[{n}]" for n in unknown)
        raise LLMError(f"the model cited {listed}, which {'is' if len(unknown) == 1 else 'are'} not among the "
                       f"sources ({' '.join(f'[{n}]' for n in sorted(numbers)) or 'none were given'})")
    if numbers and not cited:
        raise LLMError("the model cited none of the sources")
    return _cited_sentences_only(text) if numbers else text


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"(\[*_])")
_CITED = re.compile(r"\[\d+\]")


def _cited_sentences_only(text: str) -> str:
    """The answer without its sentences that cite nothing: a claim no passage backs is not published."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = []
        for line in paragraph.splitlines():
            kept = [s for s in _SENTENCE_BREAK.split(line.strip()) if _CITED.search(s)]
            if kept:
                lines.append(" ".join(kept))
        if lines:
            paragraphs.append("\n".join(lines))
    if not paragraphs:
        raise LLMError("no sentence of the model's answer cites a passage")
    return "\n\n".join(paragraphs)


def _expand(first: int, last: int) -> str:
    # [2-4] means [2] [3] [4]; a reversed or huge range is not a citation anyone meant, so keep
    # its two ends, which then have to be real sources like any other number.
    if first <= last <= first + 20:
        return " ".join(str(n) for n in range(first, last + 1))
    return f"{first} {last}"
