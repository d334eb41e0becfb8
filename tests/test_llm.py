"""The model section writer over real HTTP, against an OpenAI-compatible server on 127.0.0.1 the test starts.

The server answers POST /v1/chat/completions with whatever the test sets (an answer, a status, a
delay, a raw body) and records every request it gets, so the tests see what the openai client
really sends and how it really retries and times out. Nothing leaves the loopback interface.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from servers import free_port

from app.pipeline.llm import LLMError, LLMSettings, SectionWriter, llm_settings

PASSAGES = [
    (1, "Battery pack prices fell 14% in 2023 to $139 per kWh."),
    (2, "Lithium carbonate prices dropped by more than 70% over the year."),
    (3, "Analysts expect pack prices to reach $113 per kWh by 2025."),
]
SECTION = dict(report_title="Electric vehicle batteries", heading="Costs",
               purpose="How battery costs changed", questions=["How far did pack prices fall?", "Why?"],
               passages=PASSAGES, word_budget=120)


class FakeModelServer:
    """What the server does next (set by the test) and what it has received."""

    def __init__(self):
        self.answer: str | None = "Pack prices fell 14% [1]. Lithium got cheaper [2]."
        self.finish_reason = "stop"
        self.status = 200
        self.error_body: dict = {"error": {"message": "the model crashed", "type": "server_error"}}
        self.raw_body: bytes | None = None   # sent as is, instead of a chat.completion
        self.headers: dict[str, str] = {}
        self.delay = 0.0
        self.requests: list[dict] = []       # {"path", "headers" (lower-case names), "json"} per request
        self.release = threading.Event()     # ends every pending delay when the test is over
        self.url = ""

    def completion(self, model: str) -> dict:
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "finish_reason": self.finish_reason,
                             "message": {"role": "assistant", "content": self.answer}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


def handler_for(fake: FakeModelServer):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.loads(raw or b"null")
            headers = {name.lower(): value for name, value in self.headers.items()}
            fake.requests.append({"path": self.path, "headers": headers, "json": body})
            if fake.delay:
                fake.release.wait(fake.delay)
            if self.path != "/v1/chat/completions":
                self.reply(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            elif fake.raw_body is not None:
                self.reply(fake.status, fake.raw_body)
            elif fake.status != 200:
                self.reply(fake.status, json.dumps(fake.error_body).encode())
            else:
                self.reply(200, json.dumps(fake.completion(body["model"])).encode())

        def reply(self, status: int, payload: bytes):
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in fake.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first (the timeout tests): nothing to answer

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    # A developer's proxy or OPENAI_* settings would change what the client sends where.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_ADMIN_KEY",
                 "OPENAI_CUSTOM_HEADERS", "OPENAI_LOG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    fake = FakeModelServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def make_writer(server):
    writers = []

    def make(**overrides) -> SectionWriter:
        fields = dict(base_url=f"{server.url}/v1", api_key="test-key", model="test-model", timeout=5.0,
                      max_retries=0) | overrides
        writer = SectionWriter(LLMSettings(**fields))
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close()


# -- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [
    {},
    {"LIBRARY_DIR": "/srv/library"},
    {"LLM_BASE_URL": "http://localhost:11434/v1"},
    {"LLM_MODEL": "llama3.1"},
    {"LLM_BASE_URL": "", "LLM_MODEL": "llama3.1"},
    {"LLM_BASE_URL": "http://localhost:11434/v1", "LLM_MODEL": None, "LLM_API_KEY": "k"},
])
def test_no_settings_without_a_base_url_and_a_model(settings):
    assert llm_settings(settings) is None


def test_settings_defaults_and_a_placeholder_key_for_local_servers():
    settings = llm_settings({"LLM_BASE_URL": "http://localhost:11434/v1", "LLM_MODEL": "llama3.1"})

    assert settings == LLMSettings(base_url="http://localhost:11434/v1", api_key="not-needed", model="llama3.1",
                                   timeout=30.0, max_retries=2)


def test_settings_parse_numbers_from_strings():
    settings = llm_settings({"LLM_BASE_URL": " https://api.example.com/v1 ", "LLM_MODEL": "gpt-test",
                             "LLM_API_KEY": "sk-abc", "LLM_TIMEOUT": "12.5", "LLM_MAX_RETRIES": "0"})

    assert settings.base_url == "https://api.example.com/v1"
    assert settings.api_key == "sk-abc"
    assert settings.timeout == 12.5 and isinstance(settings.timeout, float)
    assert settings.max_retries == 0 and isinstance(settings.max_retries, int)


def test_settings_take_json_parsed_values_from_the_environment():
    # REPORTS_LLM_TIMEOUT=30 arrives as an int, REPORTS_LLM_API_KEY=12345 as one too.
    settings = llm_settings({"LLM_BASE_URL": "http://h/v1", "LLM_MODEL": "m", "LLM_API_KEY": 12345,
                             "LLM_TIMEOUT": 30, "LLM_MAX_RETRIES": 5})

    assert (settings.api_key, settings.timeout, settings.max_retries) == ("12345", 30.0, 5)


@pytest.mark.parametrize("key, value", [
    ("LLM_TIMEOUT", "soon"), ("LLM_TIMEOUT", "0"), ("LLM_TIMEOUT", -1), ("LLM_TIMEOUT", True),
    ("LLM_MAX_RETRIES", "1.5"), ("LLM_MAX_RETRIES", "-1"), ("LLM_MAX_RETRIES", "many"),
    ("LLM_BASE_URL", "localhost:11434/v1"), ("LLM_BASE_URL", "ftp://models.example/v1"),
])
def test_unusable_settings_are_refused_naming_the_key(key, value):
    settings = {"LLM_BASE_URL": "http://localhost:11434/v1", "LLM_MODEL": "m"} | {key: value}

    with pytest.raises(ValueError, match=key):
        llm_settings(settings)


def test_the_api_key_stays_out_of_the_settings_repr():
    settings = LLMSettings(base_url="http://h/v1", api_key="sk-secret", model="m")

    assert "sk-secret" not in repr(settings)


# -- answers ----------------------------------------------------------------------------------

def test_a_good_answer_comes_back_with_its_citations_and_the_request_carries_the_passages(server, make_writer):
    server.answer = "Pack prices fell 14% in 2023 [1, 3]. Lithium carbonate fell by 70% [2][1]."

    text = make_writer().write_section(**SECTION)

    assert text == "Pack prices fell 14% in 2023 [1] [3]. Lithium carbonate fell by 70% [2] [1]."
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer test-key"
    body = request["json"]
    assert body["model"] == "test-model"
    assert body["temperature"] <= 0.3
    assert not body.get("stream")
    prompt = "\n".join(m["content"] for m in body["messages"])
    for number, passage in PASSAGES:
        assert f"[{number}] {passage}" in prompt
    for text in (SECTION["report_title"], SECTION["heading"], SECTION["purpose"], *SECTION["questions"], "120"):
        assert text in prompt


@pytest.mark.parametrize("answer, expected", [
    ("Prices fell [1,3].", "Prices fell [1] [3]."),
    ("Prices fell [1; 3].", "Prices fell [1] [3]."),
    ("Prices fell [1][3].", "Prices fell [1] [3]."),
    ("Prices fell [1] [3] [1].", "Prices fell [1] [3]."),
    ("Prices fell [1-3].", "Prices fell [1] [2] [3]."),
    ("Prices fell [Source 2].", "Prices fell [2]."),
    ("Prices fell [2]. See [the chart](https://example.com/c.png) [2].",
     "Prices fell [2]. See [the chart](https://example.com/c.png) [2]."),
])
def test_citation_forms_are_normalised(server, make_writer, answer, expected):
    server.answer = answer

    assert make_writer().write_section(**SECTION) == expected


def test_thinking_fences_and_headings_are_not_part_of_the_section(server, make_writer):
    server.answer = ("<think>The user wants costs. Passage 1 says...</think>\n```markdown\n## Costs\n\n"
                     "Pack prices fell 14% [1].\n\nLithium fell too [2].\n```")

    assert make_writer().write_section(**SECTION) == "Pack prices fell 14% [1].\n\nLithium fell too [2]."


def test_an_empty_key_sends_the_placeholder(server):
    settings = llm_settings({"LLM_BASE_URL": f"{server.url}/v1", "LLM_MODEL": "llama3.1", "LLM_API_KEY": "",
                             "LLM_MAX_RETRIES": 0})
    writer = SectionWriter(settings)
    try:
        writer.write_section(**SECTION)
    finally:
        writer.close()

    assert server.requests[0]["headers"]["authorization"] == "Bearer not-needed"
    assert server.requests[0]["json"]["model"] == "llama3.1"


def test_a_citation_of_a_source_not_given_is_an_error_naming_it(server, make_writer):
    server.answer = "Pack prices fell 14% [1]. Solid-state cells arrive in 2026 [7]."

    with pytest.raises(LLMError, match=r"the model cited \[7\], which is not among the sources"):
        make_writer().write_section(**SECTION)


def test_several_unknown_citations_are_all_named(server, make_writer):
    server.answer = "Pack prices fell [1, 9]. Cells improved [4]."

    with pytest.raises(LLMError, match=r"cited \[4\] and \[9\], which are not among"):
        make_writer().write_section(**SECTION)


def test_a_sentence_without_a_citation_is_dropped_and_the_cited_ones_are_kept(server, make_writer):
    server.answer = ("Prices fell by half [1]. Analysts expect them to triple by 2030.\n\n"
                     "Factories expanded [3]. Nobody said so.")

    assert make_writer().write_section(**SECTION) == "Prices fell by half [1].\n\nFactories expanded [3]."


def test_an_answer_citing_nothing_is_an_error(server, make_writer):
    server.answer = "Battery prices fell a lot."

    with pytest.raises(LLMError, match="cited none of the sources"):
        make_writer().write_section(**SECTION)


@pytest.mark.parametrize("answer", ["", "   \n ", None, "<think>nothing to say</think>", "## Costs\n"])
def test_an_empty_answer_is_an_error(server, make_writer, answer):
    server.answer = answer

    with pytest.raises(LLMError, match="empty answer"):
        make_writer().write_section(**SECTION)


def test_without_passages_a_plain_uncited_answer_is_accepted(server, make_writer):
    server.answer = "The collected sources do not cover battery costs."

    text = make_writer().write_section(**(SECTION | {"passages": []}))

    assert text == server.answer
    assert "(no passages)" in server.requests[0]["json"]["messages"][1]["content"]


def test_an_answer_cut_off_at_the_token_limit_is_an_error(server, make_writer):
    server.finish_reason = "length"

    with pytest.raises(LLMError, match="cut off"):
        make_writer().write_section(**SECTION)


@pytest.mark.parametrize("raw, message", [
    (b"this is not json", "unreadable answer"),
    (b'{"id": "x", "object": "chat.completion", "choices": []}', "no choices"),
])
def test_a_malformed_answer_is_an_error(server, make_writer, raw, message):
    server.raw_body = raw

    with pytest.raises(LLMError, match=message):
        make_writer().write_section(**SECTION)


# -- HTTP failures ----------------------------------------------------------------------------

def test_http_500_is_an_error_after_the_configured_retries(server, make_writer):
    server.status = 500
    server.headers = {"retry-after-ms": "10"}  # the client honours it; without it, backoff is 0.5 s then 1 s

    with pytest.raises(LLMError) as caught:
        make_writer(max_retries=2).write_section(**SECTION)

    assert str(caught.value) == f"HTTP 500 from {server.url}/v1/chat/completions: the model crashed"
    assert len(server.requests) == 3
    assert [r["headers"]["x-stainless-retry-count"] for r in server.requests] == ["0", "1", "2"]


def test_a_client_error_is_not_retried_and_keeps_the_servers_message(server, make_writer):
    server.status = 404
    server.error_body = {"error": "model \"llama9\" not found, try pulling it first"}  # Ollama's shape

    with pytest.raises(LLMError, match=r'HTTP 404 from .*: model "llama9" not found'):
        make_writer(max_retries=2).write_section(**SECTION)

    assert len(server.requests) == 1


def test_a_slow_server_times_out(server, make_writer):
    server.delay = 10

    started = time.monotonic()
    with pytest.raises(LLMError, match=r"^http://127\.0\.0\.1:\d+/v1/chat/completions timed out after 0\.5 s$"):
        make_writer(timeout=0.5, max_retries=0).write_section(**SECTION)

    assert time.monotonic() - started < 3
    assert len(server.requests) == 1


def test_the_timeout_applies_to_each_attempt_and_timeouts_are_retried(server, make_writer):
    server.delay = 10

    with pytest.raises(LLMError, match=r"timed out after 0\.3 s \(2 attempts\)"):
        make_writer(timeout=0.3, max_retries=1).write_section(**SECTION)

    assert len(server.requests) == 2


def test_a_refused_connection_is_an_error():
    port = free_port()  # bound and released: nothing listens there
    writer = SectionWriter(LLMSettings(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", model="m",
                                       timeout=2, max_retries=0))
    try:
        with pytest.raises(LLMError, match=rf"^cannot reach http://127\.0\.0\.1:{port}/v1/chat/completions"):
            writer.write_section(**SECTION)
    finally:
        writer.close()
