"""The web pages in a real browser: Debian's Chromium, driven by Playwright, against real gunicorn servers.

Each test starts `gunicorn wsgi:app` (tests/servers.py) on a migrated SQLite file in tmp_path and
drives the pages as a person would: the new-report form, a session page that follows its run
(steps, a crash and restart of the server, cancel and retry, the report and its downloads) and
the sessions list. Selectors are the pages' DOM contract (ids such as `#status`, `ol#steps li
[data-step][data-state]`), never layout. Screenshots go to tests/artifacts/ for a person to look
at (a failed test leaves FAILED-<test>.png there too).

Chromium is Debian's (`make browser` installs it; `make test` runs that first). Without it, or
without Playwright, the module is skipped with a message saying so. Waits have generous timeouts:
upper bounds that stop a broken run from hanging, never speed checks.
"""
import re
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest
from agents import DEFAULT_WITH_SLOW_WRITER
from browser import ARTIFACTS, CHROMIUM, SESSION_PATH, Events, csp_directive, launch, screenshot
from servers import Server, request, server_env, status, submit, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: run make install")
expect = sync_api.expect

SLOW = ["agents:First", "agents:Second", "agents:Third"]
STEPS = ["first", "second", "third"]
DEFAULT_STEPS = ["planner", "data_collection", "api_research", "analyst", "writer", "reviewer", "publisher"]
FINISHED = ("completed", "failed", "cancelled")
TOPIC = "Electric Vehicle Market Analysis"
SECOND = 1000  # Playwright timeouts are in milliseconds


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; each test gets its own context (cookies, cache)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `make browser` (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser, request):
    """A fresh browser context and page, with what the page did on its own recorded (Events)."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15 * SECOND)
    page = context.new_page()
    events = Events.attach(page)
    failures_before = request.session.testsfailed
    yield page, events
    if request.session.testsfailed > failures_before:  # the test itself failed: keep what it saw
        try:
            screenshot(page, f"FAILED-{request.node.name}")
        except Exception:  # a page that died must not hide the real failure
            pass
    context.close()
    assert events.page_errors == [], f"the page's scripts raised: {events.page_errors}"
    assert events.csp_violations == [], f"the page broke its own Content-Security-Policy: {events.csp_violations}"


@pytest.fixture
def page(tab):
    return tab[0]


@pytest.fixture
def events(tab):
    return tab[1]


@pytest.fixture
def deploy(tmp_path, db_path):
    """deploy(pipeline, delay, extra) -> env of servers on a migrated SQLite file in tmp_path."""
    def make(pipeline, delay=0.0, extra=None):
        return server_env(db_path, pipeline, tmp_path / "agents.log", delay, extra)
    return make


@pytest.fixture
def servers(tmp_path):
    """launch(env, name, port=None) starts a one-worker server; every one is SIGKILLed at teardown."""
    started = []

    def launch_server(env, name, port=None):
        server = Server(env, tmp_path, workers=1, name=name, port=port)
        started.append(server)
        return server.start()

    yield launch_server
    for server in started:
        server.kill()


# -- helpers --------------------------------------------------------------------------------------

def step_states(page):
    """[(step, state)] of ol#steps, in page order."""
    return page.eval_on_selector_all(
        "ol#steps li[data-step]", "items => items.map(li => [li.dataset.step, li.dataset.state])")


def rows(page):
    return page.locator("table#sessions tbody tr[data-session-id]")


def get(url, etag=None):
    """GET with an optional If-None-Match: (status, headers, body); 304 is returned, not raised."""
    req = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def finished(url, session_id):
    doc = status(url, session_id)
    return doc if doc["status"] in FINISHED else None


def fill_form(page, topic, user_request, page_count, source_count, complexity="simple", urls=""):
    page.fill("input#topic", topic)
    page.fill("textarea#user_request", user_request)
    page.fill("input#page_count", str(page_count))
    page.fill("input#source_count", str(source_count))
    page.select_option("select#complexity", complexity)
    page.fill("textarea#urls", urls)


def assert_no_script_policy_hole(response, path):
    policy = response.headers.get("content-security-policy")
    assert policy, f"{path} has no Content-Security-Policy header"
    scripts = csp_directive(policy, "script-src")
    if scripts is None:
        scripts = csp_directive(policy, "default-src")
    assert scripts is not None, f"{path}: the policy restricts no scripts: {policy}"
    assert "'unsafe-inline'" not in scripts, f"{path}: script-src allows inline scripts: {policy}"


# -- 1. the whole way: form, steps, report, PDF --------------------------------------------------

@pytest.mark.slow
def test_form_submission_follows_the_steps_to_a_report_with_a_chart_and_a_pdf_download(
        page, events, deploy, servers):
    # given: the default pipeline with a writer that takes 2.5 s longer, so a running step can be seen
    server = servers(deploy(DEFAULT_WITH_SLOW_WRITER, delay=2.5), "default")
    page.goto(server.url + "/")
    screenshot(page, "new-report")

    # when: the form is filled in and sent
    fill_form(page, TOPIC, "A market analysis of electric vehicles for investors", 3, 5)
    page.click("button#submit")

    # then: the browser is on the new session's page
    page.wait_for_url(re.compile(r"/sessions/[^/]+$"))
    session_id = SESSION_PATH.search(urlparse(page.url).path).group(1)
    expect(page.locator("#session")).to_have_attribute("data-session-id", session_id)
    assert status(server.url, session_id)["report_requirements"]["topic"] == TOPIC

    # ... one list item per pipeline step, in order; while the writer runs, earlier steps are done
    # and later ones wait
    writer = page.locator('ol#steps li[data-step="writer"]')
    expect(writer).to_have_attribute("data-state", "running", timeout=60 * SECOND)
    seen = step_states(page)
    states = dict(seen)
    assert [step for step, _ in seen] == DEFAULT_STEPS
    assert [states[s] for s in ("planner", "data_collection", "api_research", "analyst")] == ["done"] * 4, states
    assert [states[s] for s in ("reviewer", "publisher")] == ["waiting"] * 2, states
    expect(page.locator("#status")).to_have_text("generating")
    expect(page.locator("#current-agent")).to_contain_text("writer", ignore_case=True)
    expect(page.locator("#elapsed")).to_have_text(re.compile(r"\d"))
    expect(page.locator("button#cancel")).to_be_visible()
    expect(page.locator("section#report")).to_be_hidden()
    assert 0 < float(page.eval_on_selector("progress#progress", "p => p.value / (p.max || 1)")) < 1
    screenshot(page, "session-running")

    # ... then the run completes: every step done, the report shown with its title and a chart
    expect(page.locator("#status")).to_have_text("completed", timeout=90 * SECOND)
    expect(page.locator("section#report")).to_be_visible()
    assert {state for _, state in step_states(page)} == {"done"}, step_states(page)
    expect(page.locator("button#cancel")).to_be_hidden()
    expect(page.locator("button#retry")).to_be_hidden()
    frame = page.frame_locator("iframe#report-frame")
    expect(frame.locator("h1").first).to_have_text(TOPIC)
    chart = frame.locator("img").first
    expect(chart).to_be_visible()
    wait_until(lambda: chart.evaluate("img => img.complete && img.naturalWidth > 0"), 15, "the chart image loaded")
    assert chart.get_attribute("src").startswith("data:image/"), chart.get_attribute("src")[:80]
    screenshot(page, "session-completed")
    ARTIFACTS.mkdir(exist_ok=True)
    chart.screenshot(path=str(ARTIFACTS / "report-chart.png"))

    # ... and the PDF link downloads a PDF
    for link in ("a#download-md", "a#download-html", "a#download-pdf"):
        expect(page.locator(link)).to_be_visible()
    with page.expect_download() as download_info:
        page.click("a#download-pdf")
    download = download_info.value
    pdf = download.path().read_bytes()
    assert pdf.startswith(b"%PDF-"), pdf[:100]
    assert download.suggested_filename.endswith(".pdf"), download.suggested_filename
    download.save_as(str(ARTIFACTS / "report.pdf"))
    assert events.dialogs == [] and len(events.loads) == 2, (events.dialogs, events.loads)  # /, then the session


# -- 2. invalid input -------------------------------------------------------------------------------

@pytest.mark.slow
def test_invalid_form_shows_the_servers_messages_per_field_and_creates_no_session(page, deploy, servers):
    # given: the server's own messages for an empty topic and a page count of 0
    server = servers(deploy(SLOW), "invalid")
    answer = request("POST", server.url + "/api/submit-requirements", {
        "user_request": "A report nobody can write",
        "requirements": {"topic": "", "page_count": 0, "source_count": 5, "complexity": "simple"}})
    assert answer.status == 422
    expected = answer.json()["errors"]["requirements"]
    page.goto(server.url + "/")

    # when: the form is sent with those values
    fill_form(page, "", "A report nobody can write", 0, 5)
    blocked = page.eval_on_selector("form#new-report", "f => !f.noValidate && !f.checkValidity()")
    assert not blocked, ("the browser's own form validation (required/min attributes without novalidate) "
                         "stops the submission, so the server's messages can never show")
    page.click("button#submit")

    # then: each field shows the server's message, the page stays on /, and no session exists
    expect(page.locator("#topic-error")).to_contain_text(expected["topic"][0])
    expect(page.locator("#page_count-error")).to_contain_text(expected["page_count"][0])
    expect(page.locator("#source_count-error")).to_have_text(re.compile(r"^\s*$"))
    screenshot(page, "new-report-errors")
    assert urlparse(page.url).path == "/"
    assert request("GET", server.url + "/api/sessions").json()["total_sessions"] == 0

    # when: the form is corrected but the server is down
    page.fill("input#topic", TOPIC)
    page.fill("input#page_count", "2")
    server.kill()
    page.click("button#submit")

    # then: the form says so as a whole, the field messages are gone, and the page stays
    expect(page.locator("#form-error")).to_be_visible()
    expect(page.locator("#form-error")).not_to_have_text(re.compile(r"^\s*$"))
    expect(page.locator("#topic-error")).to_be_hidden()
    assert urlparse(page.url).path == "/"

    # ... and once the server is back the same form goes through
    server = servers(server.env, "invalid-again", port=server.port)
    page.click("button#submit")
    page.wait_for_url(re.compile(r"/sessions/[^/]+$"))
    assert request("GET", server.url + "/api/sessions").json()["total_sessions"] == 1


# -- 3. the server dies under an open page ----------------------------------------------------------

@pytest.mark.slow
def test_open_session_page_reconnects_after_kill_9_and_restart_and_completes_without_reloading(
        page, events, deploy, servers):
    # given: a session of three 2 s steps, its page open, mid-run
    env = deploy(SLOW, delay=2.0)
    server = servers(env, "before-crash")
    session_id = submit(server.url, "Crash under an open page")
    page.goto(f"{server.url}/sessions/{session_id}")
    expect(page.locator("#status")).to_have_text("generating")
    expect(page.locator("#connection")).to_be_hidden()
    page.evaluate("window.__marker = 1")

    # when: the whole server gets SIGKILL
    server.kill()

    # then: the page says it is reconnecting
    expect(page.locator("#connection")).to_be_visible(timeout=20 * SECOND)
    expect(page.locator("#connection")).to_contain_text("Reconnecting")
    screenshot(page, "session-reconnecting")

    # ... and once a new server runs on the same port and database, the page follows the resumed
    # run to the end by itself, in the same document
    servers(env, "after-crash", port=server.port)
    expect(page.locator("#status")).to_have_text("completed", timeout=60 * SECOND)
    expect(page.locator("#connection")).to_be_hidden()
    assert [state for _, state in step_states(page)] == ["done"] * 3
    assert page.evaluate("window.__marker") == 1, "the page reloaded itself"
    assert len(events.loads) == 1, events.loads


# -- 4. cancel, retry, delete ---------------------------------------------------------------------

@pytest.mark.slow
def test_cancel_then_retry_completes_and_delete_from_the_list_removes_the_session(page, events, deploy, servers):
    # given: a session of three 1.5 s steps, its page open while it runs
    server = servers(deploy(SLOW, delay=1.5), "cancel")
    session_id = submit(server.url, "Cancel and retry")
    page.goto(f"{server.url}/sessions/{session_id}")
    expect(page.locator("button#cancel")).to_be_visible()
    expect(page.locator("button#retry")).to_be_hidden()

    # when: Cancel is pressed
    page.click("button#cancel")

    # then: the session ends cancelled and Retry is offered
    expect(page.locator("#status")).to_have_text("cancelled", timeout=30 * SECOND)
    expect(page.locator("button#retry")).to_be_visible()
    expect(page.locator("button#cancel")).to_be_hidden()
    assert status(server.url, session_id)["status"] == "cancelled"
    screenshot(page, "session-cancelled")

    # when: Retry is pressed
    page.click("button#retry")

    # then: the run resumes and completes
    expect(page.locator("#status")).to_have_text("completed", timeout=60 * SECOND)
    expect(page.locator("button#retry")).to_be_hidden()
    assert status(server.url, session_id)["completed_tasks"] == STEPS

    # when: the session is deleted from the list, confirming the question
    page.goto(server.url + "/sessions")
    row = page.locator(f'table#sessions tbody tr[data-session-id="{session_id}"]')
    expect(row).to_be_visible()
    expect(row.locator(".status")).to_have_text("completed")
    row.locator("button.delete").click()

    # then: it asked first, the row is gone and the API no longer knows the session
    expect(row).to_have_count(0)
    assert [kind for kind, _ in events.dialogs] == ["confirm"], events.dialogs
    assert request("GET", f"{server.url}/api/report-status/{session_id}").status == 404


# -- 5. user text is text; the policy forbids inline scripts ----------------------------------------

@pytest.mark.slow
def test_html_in_a_topic_shows_as_text_and_every_page_has_a_strict_script_policy(page, events, deploy, servers):
    # given: a topic that is an HTML image with a script in its error handler
    topic = "<img src=x onerror=alert(1)>"
    server = servers(deploy(DEFAULT_WITH_SLOW_WRITER, delay=0.5), "xss")
    response = page.goto(server.url + "/")
    assert_no_script_policy_hole(response, "/")

    # when: it is submitted through the form
    fill_form(page, topic, f"A report about {topic}", 2, 2)
    page.click("button#submit")
    page.wait_for_url(re.compile(r"/sessions/[^/]+$"))
    session_id = SESSION_PATH.search(urlparse(page.url).path).group(1)

    # then: the session page shows it as text, and no image element or dialog came of it
    expect(page.get_by_text(topic).first).to_be_visible()
    assert page.locator('img[src="x"]').count() == 0
    response = page.reload()
    assert_no_script_policy_hole(response, f"/sessions/{session_id}")
    expect(page.get_by_text(topic).first).to_be_visible()
    assert page.locator('img[src="x"]').count() == 0

    # ... and so does the finished report in its frame
    expect(page.locator("#status")).to_have_text("completed", timeout=60 * SECOND)
    frame = page.frame_locator("iframe#report-frame")
    expect(frame.locator("h1").first).to_have_text(topic)
    assert frame.locator('img[src="x"]').count() == 0

    # ... and so does the sessions list
    response = page.goto(server.url + "/sessions")
    assert_no_script_policy_hole(response, "/sessions")
    row = page.locator(f'table#sessions tbody tr[data-session-id="{session_id}"]')
    expect(row).to_contain_text(topic)
    assert page.locator('img[src="x"]').count() == 0
    screenshot(page, "sessions-html-topic")
    page.wait_for_timeout(500)  # an onerror handler would have fired by now
    assert events.dialogs == [], events.dialogs


# -- 6. conditional polling ------------------------------------------------------------------------

@pytest.mark.slow
def test_session_page_polls_with_if_none_match_and_gets_304_while_nothing_changes(page, events, deploy, servers):
    # given: a session whose one step takes 4 s, so its status sits unchanged for a while
    server = servers(deploy(["agents:First"], delay=4.0), "polling")
    session_id = submit(server.url, "Conditional polling")
    wait_until(lambda: status(server.url, session_id)["status"] == "generating", 30, "the step started")
    polls = []
    page.on("response", lambda r: polls.append(r) if "/api/report-status/" in r.url else None)

    # when: its page is open during the step
    with page.expect_response(lambda r: "/api/report-status/" in r.url and r.status == 304, timeout=15 * SECOND):
        page.goto(f"{server.url}/sessions/{session_id}")

    # then: the page sent the last ETag back and was answered 304, without reloading itself
    conditional = [r for r in polls if r.request.headers.get("if-none-match")]
    assert conditional, [(r.status, r.request.headers) for r in polls]
    assert 304 in [r.status for r in conditional]
    expect(page.locator("#status")).to_have_text("completed", timeout=30 * SECOND)
    assert len(events.loads) == 1, events.loads

    # ... and directly: the same request with the first answer's ETag gets 304, with no body
    url = f"{server.url}/api/report-status/{session_id}"
    first_status, first_headers, first_body = get(url)
    assert first_status == 200 and first_headers.get("ETag"), first_headers
    second_status, second_headers, second_body = get(url, first_headers["ETag"])
    assert (second_status, second_body) == (304, b""), (second_status, second_body[:200])
    assert second_headers.get("ETag") == first_headers["ETag"]
    assert get(url, '"not-the-etag"')[0] == 200


# -- 7. the sessions list: filter and pages -------------------------------------------------------

@pytest.mark.slow
def test_sessions_list_filters_by_status_and_pages_with_next(page, deploy, servers):
    # given: three sessions, the middle one cancelled, the others completed
    server = servers(deploy(["agents:First", "agents:Second"], delay=0.5), "list")
    ids = [submit(server.url, f"List topic {i}") for i in range(3)]
    assert request("POST", f"{server.url}/api/sessions/{ids[1]}/cancel").status in (200, 202)
    docs = {sid: wait_until(lambda sid=sid: finished(server.url, sid), 30, f"{sid} finished") for sid in ids}
    assert [docs[sid]["status"] for sid in ids] == ["completed", "cancelled", "completed"], docs

    # when: the list is opened two to a page
    page.goto(server.url + "/sessions?limit=2")

    # then: the newest two, then the oldest on the next page
    expect(rows(page)).to_have_count(2)
    assert [rows(page).nth(i).get_attribute("data-session-id") for i in range(2)] == [ids[2], ids[1]]
    expect(rows(page).nth(1).locator(".status")).to_have_text("cancelled")
    expect(rows(page).nth(0).locator("a.session-link")).to_have_attribute("href", re.compile(f"/sessions/{ids[2]}$"))
    screenshot(page, "sessions")
    page.click("a#next-page")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-session-id", ids[0])
    expect(page.locator("a#next-page")).to_be_hidden()

    # when: only cancelled sessions are asked for
    page.goto(server.url + "/sessions")
    expect(rows(page)).to_have_count(3)
    page.select_option("select#status-filter", "cancelled")

    # then: only the cancelled one is listed; its link opens its page
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-session-id", ids[1])
    rows(page).first.locator("a.session-link").click()
    page.wait_for_url(re.compile(f"/sessions/{ids[1]}$"))
    expect(page.locator("#status")).to_have_text("cancelled")


# -- 8. a failed session --------------------------------------------------------------------------

@pytest.mark.slow
def test_failed_session_shows_its_error_and_the_failed_step_and_offers_retry(page, deploy, servers):
    # given: a pipeline whose second step raises
    server = servers(deploy(["agents:First", "agents:Explode"], delay=0.5), "failed")
    session_id = submit(server.url, "A step that fails")

    # when: its page is open
    page.goto(f"{server.url}/sessions/{session_id}")

    # then: it ends failed, with the step's message, the failed step marked, and Retry offered
    expect(page.locator("#status")).to_have_text("failed", timeout=30 * SECOND)
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error")).to_contain_text("the data source refused the request")
    assert step_states(page) == [["first", "done"], ["explode", "failed"]]
    expect(page.locator("button#retry")).to_be_visible()
    expect(page.locator("button#cancel")).to_be_hidden()
    expect(page.locator("section#report")).to_be_hidden()
    screenshot(page, "session-failed")
