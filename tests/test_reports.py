"""Reports end to end through the API: a library the test writes, the in-process runner, every download."""
import io
import json
import re

import pytest
from conftest import finished, wait_for
from pypdf import PdfReader
from servers import StandIn, serving

from app.runner import start_runner

REQUEST = {"user_request": "A short market analysis of electric cars",
           "requirements": {"topic": "Electric Car Market", "page_count": 1, "source_count": 2,
                            "complexity": "simple"}}


@pytest.fixture
def app(app, library):
    """The conftest app, pointed at the test's own library, with URLs on loopback allowed."""
    app.config.update(LIBRARY_DIR=str(library), ALLOW_PRIVATE_URLS=True)
    return app


def run_report(app, client, body=REQUEST):
    start_runner(app)
    session_id = client.post("/api/submit-requirements", json=body).get_json()["session_id"]
    status = wait_for(lambda: finished(client, session_id), timeout=120)
    assert status["status"] == "completed", status["error"]
    return session_id, status


def test_report_json_cites_only_the_library_and_every_citation_resolves(app, client):
    session_id, status = run_report(app, client)

    report = client.get(f"/api/reports/{session_id}").get_json()

    assert report["title"] == "Electric Car Market"
    assert {s["location"] for s in report["sources"]} == {"library:ev-sales.md", "library:ev-charging.md"}
    body, references = report["markdown"].split("## References")
    numbers = {int(n) for n in re.findall(r"^(\d+)\. ", references, re.M)}
    assert {int(n) for n in re.findall(r"\[(\d+)\]", body)} <= numbers
    assert report["tables"] and report["charts"] and report["sections"]
    assert report["review"]["findings"] and status["review"] == report["review"]


def test_downloads_have_their_content_type_and_a_file_name(app, client):
    session_id, _ = run_report(app, client)

    pdf = client.get(f"/api/reports/{session_id}.pdf")
    html = client.get(f"/api/reports/{session_id}.html")
    markdown = client.get(f"/api/reports/{session_id}.md")

    assert pdf.content_type == "application/pdf"
    assert pdf.headers["Content-Disposition"] == 'attachment; filename="electric-car-market.pdf"'
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.data)).pages)
    assert "Electric Car Market" in text
    assert html.content_type.startswith("text/html") and "data:image/png;base64," in html.get_data(as_text=True)
    assert markdown.content_type.startswith("text/markdown")
    assert markdown.get_data(as_text=True).startswith("# Electric Car Market")


def test_charts_are_served_at_the_urls_the_report_gives(app, client):
    session_id, _ = run_report(app, client)
    chart = client.get(f"/api/reports/{session_id}").get_json()["charts"][0]

    png = client.get(chart["url"])
    svg = client.get(chart["svg_url"])

    assert chart["url"] == f"/api/reports/{session_id}/charts/figure-1.png"
    assert png.content_type == "image/png" and png.data.startswith(b"\x89PNG")
    assert svg.content_type == "image/svg+xml"
    assert client.get(f"/api/reports/{session_id}/charts/nope.png").status_code == 404


def test_downloads_wait_for_the_report(app, client, store):
    session_id = client.post("/api/submit-requirements", json=REQUEST).get_json()["session_id"]

    for path in (".pdf", ".html", ".md", "/charts/figure-1.png"):
        response = client.get(f"/api/reports/{session_id}{path}")
        assert response.status_code == 409 and response.is_json


def test_unknown_report_downloads_are_404_json(client):
    response = client.get("/api/reports/nope.pdf")

    assert response.status_code == 404 and "Session 'nope' not found" in response.get_json()["detail"]


# -- URLs and a model, through real HTTP on loopback ---------------------------------------------

ARTICLE = """<html><head><title>Electric cars in the city</title></head><body>
<nav>Home | About | Contact</nav>
<article><h1>Electric cars in the city</h1>
<p>City fleets bought more electric cars in 2023 than in any year before, according to the city council.</p>
<p>Electric car owners in the city used public chargers twice as often in 2023 as in 2021.</p>
</article><footer>Copyright the city</footer></body></html>"""

DATA = "year,Buses\n2020,10\n2021,20\n2022,35\n2023,50\n"


class LocalSite(StandIn):
    """A page, a CSV, a broken page, and an OpenAI-compatible chat endpoint that records what it was sent."""

    prompts: list = []

    def do_GET(self):
        pages = {"/article.html": ("text/html", ARTICLE), "/buses.csv": ("text/csv", DATA)}
        if self.path not in pages:
            return self.reply(b"broken", "text/plain", 500)
        content_type, text = pages[self.path]
        self.reply(text.encode(), content_type)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        LocalSite.prompts.append(body)
        numbers = re.findall(r"^\[(\d+)\]", body["messages"][-1]["content"], re.M) or ["1"]
        # A cited sentence, then one that cites nothing: the writer must not publish the second.
        answer = f"The model summarised the passages for this section [{numbers[0]}]. An uncited model claim."
        self.reply(json.dumps({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}]}).encode(), "application/json")


@pytest.fixture
def site():
    LocalSite.prompts = []
    with serving(LocalSite) as base:
        yield base


def test_named_urls_and_data_urls_become_sources_and_a_broken_one_is_skipped(app, client, site):
    body = json.loads(json.dumps(REQUEST))
    body["requirements"] |= {"source_count": 3, "urls": [f"{site}/article.html", f"{site}/missing"],
                             "data_urls": [f"{site}/buses.csv"]}

    session_id, _ = run_report(app, client, body)

    report = client.get(f"/api/reports/{session_id}").get_json()
    locations = [s["location"] for s in report["sources"]]
    assert locations[0] == f"{site}/article.html" and report["sources"][0]["title"] == "Electric cars in the city"
    assert "Buses" in json.dumps(report["tables"])
    assert f"{site}/buses.csv" in report["markdown"]
    skipped = step_output(app, session_id, "data_collection")["skipped"]
    assert skipped == [{"url": f"{site}/missing", "reason": "HTTP 500"}]


def step_output(app, session_id, name):
    from app.extensions import db
    from app.models import Step

    with app.app_context():
        return db.session.execute(db.select(Step.output).filter_by(session_id=session_id, name=name)).scalar_one()


def test_private_urls_are_refused_by_default_and_the_session_still_completes(app, client, site):
    app.config["ALLOW_PRIVATE_URLS"] = False
    body = json.loads(json.dumps(REQUEST))
    body["requirements"]["urls"] = [f"{site}/article.html"]

    session_id, _ = run_report(app, client, body)

    report = client.get(f"/api/reports/{session_id}").get_json()
    assert all(s["location"].startswith("library:") for s in report["sources"])


def test_with_a_model_configured_the_writer_uses_it_and_keeps_citations(app, client, site):
    app.config.update(LLM_BASE_URL=f"{site}/v1", LLM_MODEL="local-model", LLM_API_KEY="k", LLM_MAX_RETRIES=0)

    session_id, _ = run_report(app, client)

    markdown = client.get(f"/api/reports/{session_id}").get_json()["markdown"]
    assert re.search(r"The model summarised the passages for this section \[[12]\]\.", markdown)
    assert LocalSite.prompts and LocalSite.prompts[0]["model"] == "local-model"
    status = client.get(f"/api/report-status/{session_id}").get_json()
    assert status["writer"]["mode"] == "model" and status["writer"]["model"] == "local-model"


def test_the_model_gets_each_sections_own_passages_and_the_tables_figures_and_no_uncited_sentence_is_published(
        app, client, site):
    app.config.update(LLM_BASE_URL=f"{site}/v1", LLM_MODEL="local-model", LLM_API_KEY="k", LLM_MAX_RETRIES=0)
    body = json.loads(json.dumps(REQUEST))
    body["requirements"] |= {"page_count": 3, "complexity": "moderate"}

    session_id, _ = run_report(app, client, body)

    report = client.get(f"/api/reports/{session_id}").get_json()
    prompts = {re.search(r"^Section: (.*)$", p["messages"][-1]["content"], re.M).group(1): p["messages"][-1]["content"]
               for p in LocalSite.prompts}
    # Every section written, and the summary, was asked for once; a section without passages was not sent.
    assert sorted(prompts) == sorted([s["heading"] for s in report["sections"]] + ["Executive summary"])
    assert len(LocalSite.prompts) == len(prompts)
    passages = {heading: frozenset(re.findall(r"^\[\d+\] .*$", prompt, re.M)) for heading, prompt in prompts.items()}
    assert len(set(passages.values())) == len(passages)  # each section its own passages
    assert "2023, 8.1, 3.2, 1.4" in prompts["Market size and growth"]  # the data section sees the table's figures
    assert "An uncited model claim" not in report["markdown"]


def test_when_the_model_fails_the_writer_falls_back_to_the_sources(app, client):
    app.config.update(LLM_BASE_URL="http://127.0.0.1:9/v1", LLM_MODEL="gone", LLM_MAX_RETRIES=0, LLM_TIMEOUT=2)

    session_id, _ = run_report(app, client)

    markdown = client.get(f"/api/reports/{session_id}").get_json()["markdown"]
    assert "[1]" in markdown and "The model summarised" not in markdown
    # The first refused call is the only one: the rest of the report is not made to wait for it again.
    writer = client.get(f"/api/report-status/{session_id}").get_json()["writer"]
    assert writer["mode"].startswith("extractive") and "Connection refused" in writer["fallbacks"][0]["reason"]
    assert all(f["reason"].startswith("not asked: the model failed earlier") for f in writer["fallbacks"][1:])
    assert "fell back" in markdown.split("## Appendix", 1)[1]


def test_progress_messages_reach_the_status_document(app, client, store, monkeypatch):
    messages = []
    original = store.progress
    monkeypatch.setattr(store, "progress", lambda claim, message: messages.append(message) or original(claim, message))

    run_report(app, client)

    assert any(re.fullmatch(r"collected \d+ of 2 sources|searching \d+ library documents", m) for m in messages)


# -- a crash in the middle of the pipeline -------------------------------------------------------

@pytest.mark.slow
def test_kill_9_during_writer_resumes_at_writer_and_gives_the_uninterrupted_report(empty_database, tmp_path, library):
    from agents import DEFAULT_WITH_SLOW_WRITER
    from servers import Server, migrate, request, server_env, status, wait_until

    env = server_env(empty_database.url, DEFAULT_WITH_SLOW_WRITER, tmp_path / "agents.log", 2.0,
                     {"REPORTS_LIBRARY_DIR": str(library)})
    migrate(env)
    first = Server(env, tmp_path, name="first").start()
    second = None
    try:
        crashed = request("POST", f"{first.url}/api/submit-requirements", REQUEST).json()["session_id"]
        log = tmp_path / "agents.log"
        # The agent log, not the status: current_agent names the writer a moment before it starts.
        wait_until(lambda: log.exists() and f"{crashed} writer" in log.read_text(), 60, "writer running")
        before = empty_database.query("select name, output from steps where session_id = ? order by id",
                                      (crashed,))
        first.kill()

        second = Server(env, tmp_path, name="second").start()
        done = wait_until(lambda: status(second.url, crashed)["status"] == "completed" and
                          status(second.url, crashed), 120, "resumed session completed")
        plain = request("POST", f"{second.url}/api/submit-requirements", REQUEST).json()["session_id"]
        wait_until(lambda: status(second.url, plain)["status"] == "completed", 120, "plain session completed")

        after = empty_database.query("select name, output from steps where session_id = ? order by id",
                                     (crashed,))
        assert [name for name, _ in before] == ["planner", "data_collection", "api_research", "analyst"]
        assert after[:4] == before  # the finished steps were not run again
        assert done["attempts"] == 1 and done["completed_tasks"][4] == "writer"
        writer_runs = [line for line in log.read_text().splitlines()
                       if line.split()[:2] == [crashed, "writer"]]
        assert len(writer_runs) == 2  # the interrupted run and the resumed one

        def report(session_id):
            markdown = request("GET", f"{second.url}/api/reports/{session_id}").json()["markdown"]
            return re.sub(r"retrieved \S+Z\)", "retrieved <time>)", markdown)

        assert report(crashed) == report(plain)
    finally:
        for server in (first, second):
            if server is not None:
                server.kill()


def test_a_missing_library_fails_the_step_with_what_to_do_and_retry_resumes_there(app, client, library):
    app.config["LIBRARY_DIR"] = str(library.parent / "moved-away")
    start_runner(app)
    session_id = client.post("/api/submit-requirements", json=REQUEST).get_json()["session_id"]
    status = wait_for(lambda: finished(client, session_id))
    assert status["status"] == "failed" and status["failed_step"] == "data_collection"
    assert "REPORTS_LIBRARY_DIR" in status["error"] and status["completed_tasks"] == ["planner"]

    app.extensions["report_runner"].settings["LIBRARY_DIR"] = str(library)  # the operator fixes it
    client.post(f"/api/sessions/{session_id}/retry")
    status = wait_for(lambda: finished(client, session_id))

    assert status["status"] == "completed"
    assert status["completed_tasks"][0] == "planner" and status["attempts"] == 0
    assert step_output(app, session_id, "data_collection")["sources"]
