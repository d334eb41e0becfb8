"""The web pages in a real browser: Debian's Chromium, driven by Playwright, against real gunicorn servers.

Each test starts `gunicorn wsgi:app` (tests/servers.py) on a migrated database of its own and
drives the pages as a person would: the new-report form, a session page that follows its run
(steps, a crash and restart of the server, cancel and retry, the report and its downloads) and
the sessions list. Selectors are the pages' DOM contract (ids such as `#status`, `ol#steps li
[data-step][data-state]`), never layout. Screenshots go to tests/artifacts/ for a person to look
at (a failed test leaves FAILED-<test>.png there too).

The accounts tests (9-11) share one server for the module (`accounts`): a session from before
accounts, then users with passwords and sessions of their own; they sign in through the form as a
person would. Test 11 is the one that measures layout, on purpose: where text was laid out (its
client rectangles, tests/browser.py) at 1280 px and on a phone.

Chromium is Debian's (`make browser` installs it; `make test` runs that first). Without it, or
without Playwright, the module is skipped with a message saying so. Waits have generous timeouts:
upper bounds that stop a broken run from hanging, never speed checks.
"""
import json
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import pytest
from agents import DEFAULT_WITH_SLOW_WRITER
from browser import (ARTIFACTS, CHROMIUM, SESSION_PATH, Events, csp_directive, horizontal_overflow, inside, launch,
                     screenshot, text_layout)
from servers import BIN, PROJECT, Response, Server, request, server_env, status, submit, wait_until

from app import create_app
from app.extensions import db

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
def tabs(browser, request):
    """open_tab(**context_options) -> (page, events): a fresh browser context (cookies, cache) and page.

    What each page did on its own is recorded (Events); at teardown none may have raised a script
    error or broken its Content-Security-Policy, and a failed test leaves a screenshot of each.
    """
    opened = []

    def open_tab(**options):
        context = browser.new_context(**{"accept_downloads": True, "viewport": {"width": 1280, "height": 900},
                                         **options})
        context.set_default_timeout(15 * SECOND)
        page = context.new_page()
        events = Events.attach(page)
        opened.append((context, page, events))
        return page, events

    failures_before = request.session.testsfailed
    yield open_tab
    for number, (context, page, _) in enumerate(opened, 1):
        if request.session.testsfailed > failures_before:  # the test itself failed: keep what it saw
            try:
                screenshot(page, f"FAILED-{request.node.name}" + (f"-{number}" if number > 1 else ""))
            except Exception:  # a page that died must not hide the real failure
                pass
        context.close()
    for _, _, events in opened:
        assert events.page_errors == [], f"the page's scripts raised: {events.page_errors}"
        assert events.csp_violations == [], \
            f"the page broke its own Content-Security-Policy: {events.csp_violations}"


@pytest.fixture
def tab(tabs):
    """A fresh browser context and page, 1280x900, with what the page did on its own recorded (Events)."""
    return tabs()


@pytest.fixture
def page(tab):
    return tab[0]


@pytest.fixture
def events(tab):
    return tab[1]


@pytest.fixture
def deploy(tmp_path, database):
    """deploy(pipeline, delay, extra) -> env of servers on the test's migrated database."""
    def make(pipeline, delay=0.0, extra=None):
        return server_env(database.url, pipeline, tmp_path / "agents.log", delay, extra)
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


# -- accounts: one server for the module, with users and their sessions ---------------------------

PASSWORDS = {"alice": "alice's long passphrase", "bob": "bob's long passphrase", "root": "root's long passphrase",
             "carol": "carol's long passphrase"}
# Long words as well as many: only the topic cell may break a word, and it must, to fit a phone.
LONG_TOPIC = ("Offshore wind, grid storage and interconnectors around the North Sea, a topic long enough to wrap: "
              "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch and its neighbours")
PHONE = {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}


@dataclass
class Accounts:
    server: Server
    tokens: dict    # user name -> API token
    sessions: dict  # what it is ("alice", "bob-cancelled", "before": made while the service was open) -> id


def call(method, url, token=None, body=None):
    """One API request as a user (Authorization: Bearer), or as nobody; HTTP errors are returned."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())


def submit_as(base_url, token, topic):
    """Submit a report request with a user's API token; returns the new session id."""
    answer = call("POST", base_url + "/api/submit-requirements", token, {
        "user_request": f"A report on {topic}",
        "requirements": {"topic": topic, "page_count": 2, "source_count": 2, "complexity": "simple"}})
    assert answer.status == 202, (answer.status, answer.body[:500])
    return answer.json()["session_id"]


def finished_as(base_url, token, session_id):
    answer = call("GET", f"{base_url}/api/report-status/{session_id}", token)
    assert answer.status == 200, (answer.status, answer.body[:500])
    doc = answer.json()
    return doc if doc["status"] in FINISHED else None


def listed_as(base_url, token):
    """The ids of the sessions a user's API token lists."""
    answer = call("GET", base_url + "/api/sessions?limit=100", token)
    assert answer.status == 200, (answer.status, answer.body[:500])
    return {s["session_id"] for s in answer.json()["sessions"]}


def create_users(database_url, users):
    """Create users [(name, is_admin)] with their PASSWORDS through the app's Users on the database.

    Returns {name: API token}. A server on that database sees them at its next request.
    """
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "PIPELINE": ["agents:First"]})
    try:
        return {name: app.extensions["report_users"].create(name, is_admin=admin, password=PASSWORDS[name])
                for name, admin in users}
    finally:
        with app.app_context():
            db.engine.dispose()


def flask_users(env, *args, stdin=None):
    """`flask --app wsgi users ARGS` on a server's database (its env), as an operator runs it; its output."""
    result = subprocess.run([str(BIN / "flask"), "--app", "wsgi", "users", *args], cwd=PROJECT, env=env,
                            input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"flask users {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def accounts(browser, tmp_path_factory, databases, migrated_template):
    """One server for the accounts tests: a session from before accounts, then alice, bob and root (an
    admin), each user's sessions finished (bob's second one cancelled). Tests may add sessions, never
    remove any, sign out or revoke these users."""
    folder = tmp_path_factory.mktemp("accounts")
    database = databases.copy(migrated_template, folder, "accounts")
    server = Server(server_env(database.url, ["agents:First", "agents:Second"], folder / "agents.log", 0.3), folder,
                    workers=1, name="accounts")
    server.start()
    try:
        before = submit(server.url, "Written before accounts")  # the service is still open: no one's
        wait_until(lambda: finished(server.url, before), 30, "the open service's session finished")
        tokens = create_users(database.url, [("alice", False), ("bob", False), ("root", True)])
        sessions = {"before": before,
                    "alice": submit_as(server.url, tokens["alice"], "Alice's heat pump survey"),
                    "alice-long": submit_as(server.url, tokens["alice"], LONG_TOPIC),
                    "bob": submit_as(server.url, tokens["bob"], "Bob's private merger memo"),
                    "bob-cancelled": submit_as(server.url, tokens["bob"], "Bob's cancelled forecast")}
        cancel = call("POST", f"{server.url}/api/sessions/{sessions['bob-cancelled']}/cancel", tokens["bob"])
        assert cancel.status in (200, 202), cancel.body
        docs = {key: wait_until(lambda sid=sid: finished_as(server.url, tokens["root"], sid), 30, f"{key} finished")
                for key, sid in sessions.items()}
        assert {key: doc["status"] for key, doc in docs.items()} == {
            "before": "completed", "alice": "completed", "alice-long": "completed", "bob": "completed",
            "bob-cancelled": "cancelled"}, docs
        yield Accounts(server, tokens, sessions)
    finally:
        server.kill()
        databases.drop(database)


def session_row(page, session_id):
    return page.locator(f'table#sessions tbody tr[data-session-id="{session_id}"]')


def expect_sign_in_page(page, next_path):
    """The page is the sign-in form, which goes to `next_path` once signed in ("": the default page)."""
    expect(page.locator("form#sign-in")).to_be_visible()
    assert urlparse(page.url).path == "/sign-in", page.url
    expect(page.locator("form#sign-in input[name=next]")).to_have_value(next_path)


def send_sign_in(page, name, password):
    page.fill("form#sign-in input#name", name)
    page.fill("form#sign-in input#password", password)
    page.click("form#sign-in button[type=submit]")


def sign_in_at(page, base_url, name, path="/sessions"):
    """Open `path`, which asks to sign in, sign in as `name`, and be back on `path`."""
    page.goto(base_url + path)
    expect_sign_in_page(page, path)
    send_sign_in(page, name, PASSWORDS[name])
    page.wait_for_url(lambda url: urlparse(url).path == urlparse(path).path)


def misaligned_cells(row):
    """The cells of a table row whose box does not span the row's height: [(class, top gap, bottom gap)] in px."""
    return row.evaluate("""tr => {
      const r = tr.getBoundingClientRect();
      return [...tr.cells].map(td => [td.className, td.getBoundingClientRect().top - r.top,
                                      r.bottom - td.getBoundingClientRect().bottom])
                          .filter(([, top, bottom]) => Math.abs(top) > 1 || Math.abs(bottom) > 1);
    }""")


def path_is(path):
    return lambda url: urlparse(url).path == path


# -- 9. sign in, only your own sessions, sign out -------------------------------------------------

@pytest.mark.slow
def test_signing_in_shows_only_your_own_sessions_and_signing_out_asks_again(page, events, accounts):
    url, ids, tokens = accounts.server.url, accounts.sessions, accounts.tokens

    # when: the new-report page is opened without signing in
    page.goto(url + "/")

    # then: the sign-in page, without the site's navigation, which would come back to /
    expect_sign_in_page(page, "/")
    expect(page.locator("header.site nav")).to_have_count(0)
    expect(page.locator("#signed-in-as")).to_have_count(0)

    # when: the sessions list is asked for, and a wrong password sent
    page.goto(url + "/sessions")
    expect_sign_in_page(page, "/sessions")
    send_sign_in(page, "alice", "not alice's passphrase")

    # then: the form says so and still knows where to go
    expect(page.locator("form#sign-in .error[role=alert]")).to_contain_text("do not match")
    expect_sign_in_page(page, "/sessions")
    screenshot(page, "sign-in-error")

    # when: alice signs in
    send_sign_in(page, "alice", PASSWORDS["alice"])

    # then: she is on the list she asked for, the header says who she is, and the list holds her
    # sessions and no one else's
    page.wait_for_url(path_is("/sessions"))
    expect(page.locator("#signed-in-as")).to_have_text("Signed in as alice")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(session_row(page, ids["alice"])).to_be_visible()
    expect(session_row(page, ids["alice-long"])).to_be_visible()
    hers = listed_as(url, tokens["alice"])
    shown = set(rows(page).evaluate_all("trs => trs.map(tr => tr.dataset.sessionId)"))
    assert shown == hers and {ids["bob"], ids["bob-cancelled"], ids["before"]}.isdisjoint(shown), (shown, ids)
    expect(page.locator("#total")).to_have_text(f"{len(hers)} sessions")
    expect(page.locator("table#sessions")).not_to_contain_text("Bob")
    screenshot(page, "sessions-signed-in")

    # when: she writes a new report on the page (a POST with the cookie: it must carry the CSRF token)
    page.get_by_role("link", name="New report").click()
    page.wait_for_url(path_is("/"))
    fill_form(page, "Alice's report from the page", "A report alice asked for on the page", 2, 2)
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/api/submit-requirements")) as sent:
        page.click("button#submit")

    # then: it is accepted and runs, as hers
    page.wait_for_url(SESSION_PATH)
    assert sent.value.all_headers().get("x-csrftoken"), sent.value.all_headers()
    new_id = SESSION_PATH.search(urlparse(page.url).path).group(1)
    expect(page.locator("#topic")).to_have_text("Alice's report from the page")
    expect(page.locator("#status")).to_have_text("completed", timeout=30 * SECOND)
    assert new_id in listed_as(url, tokens["alice"]) and new_id not in listed_as(url, tokens["bob"])

    # ... while the same request with her cookie but without the page's token is refused
    count = len(listed_as(url, tokens["alice"]))
    forged = page.request.post(url + "/api/submit-requirements", headers={"Content-Type": "application/json"},
                               data=json.dumps({"user_request": "Forged", "requirements": {
                                   "topic": "Forged", "page_count": 2, "source_count": 2, "complexity": "simple"}}))
    assert forged.status == 400, (forged.status, forged.text()[:300])
    assert len(listed_as(url, tokens["alice"])) == count

    # when: she opens bob's session page; then: it does not exist for her, nor does its status
    response = page.goto(f"{url}/sessions/{ids['bob']}")
    assert response.status == 404, response.status
    expect(page.get_by_text("Bob's private merger memo")).to_have_count(0)
    assert page.request.get(f"{url}/api/report-status/{ids['bob']}").status == 404

    # when: she signs out
    page.goto(url + "/sessions")
    expect(session_row(page, ids["alice"])).to_be_visible()
    page.get_by_role("button", name="Sign out").click()

    # then: the sign-in page; the list and the API ask her to sign in again
    page.wait_for_url(path_is("/sign-in"))
    expect(page.locator("form#sign-in")).to_be_visible()
    expect(page.locator("#signed-in-as")).to_have_count(0)
    page.goto(url + "/sessions")
    expect_sign_in_page(page, "/sessions")
    assert page.request.get(url + "/api/sessions").status == 401
    assert events.dialogs == [], events.dialogs


# -- 10. owners: an admin's column and filter -----------------------------------------------------

@pytest.mark.slow
def test_an_admin_sees_and_filters_by_owner_and_a_user_sees_no_owner_column(tabs, accounts):
    url, ids = accounts.server.url, accounts.sessions
    owners = {"before": "no one", "alice": "alice", "alice-long": "alice", "bob": "bob", "bob-cancelled": "bob"}

    # when: an admin opens the list
    page, _ = tabs()
    sign_in_at(page, url, "root")

    # then: an Owner column names each session's owner, "no one" for the one made before accounts
    expect(page.locator("#signed-in-as")).to_have_text("Signed in as root (admin)")
    expect(page.locator("table#sessions thead th.owner")).to_have_text("Owner")
    for key, owner in owners.items():
        expect(session_row(page, ids[key]).locator("td.owner")).to_have_text(owner)
    expect(page.locator("table#sessions tbody td.owner")).to_have_count(rows(page).count())
    expect(page.locator("select#owner-filter")).to_have_value("*")
    screenshot(page, "sessions-admin")

    # when: only alice's are asked for; then: only hers are listed
    page.select_option("select#owner-filter", "alice")
    page.wait_for_url(lambda u: parse_qs(urlparse(u).query).get("owner") == ["alice"])
    expect(session_row(page, ids["alice"])).to_be_visible()
    assert set(page.locator("table#sessions tbody td.owner").all_text_contents()) == {"alice"}
    expect(session_row(page, ids["bob"])).to_have_count(0)
    expect(page.locator("select#owner-filter")).to_have_value("alice")

    # when: the sessions of no one are asked for; then: only the one from before accounts
    page.select_option("select#owner-filter", "")
    page.wait_for_url(lambda u: parse_qs(urlparse(u).query, keep_blank_values=True).get("owner") == [""])
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-session-id", ids["before"])
    expect(rows(page).first.locator("td.owner")).to_have_text("no one")

    # when: everyone's again; then: bob's are back
    page.select_option("select#owner-filter", "*")
    page.wait_for_url(lambda u: "owner" not in parse_qs(urlparse(u).query, keep_blank_values=True))
    expect(session_row(page, ids["bob"])).to_be_visible()

    # when: a user who is no admin opens the list
    page, _ = tabs()
    sign_in_at(page, url, "bob")

    # then: their sessions, with no Owner column and no owner filter
    expect(session_row(page, ids["bob"])).to_be_visible()
    expect(page.locator("table#sessions thead th")).to_have_text(["Topic", "Status", "Started", "Actions"])
    expect(page.locator("table#sessions .owner")).to_have_count(0)
    expect(page.locator("select#owner-filter")).to_have_count(0)

    # ... and asking for someone else's in the address lists nothing
    page.goto(url + "/sessions?owner=alice")
    expect(page.locator("#total")).to_have_text("0 sessions")
    expect(rows(page)).to_have_count(0)


# -- 11. layout: whole words in the list on a wide screen, cards on a phone ------------------------

@pytest.mark.slow
def test_sessions_list_keeps_statuses_and_buttons_whole_at_1280_px_and_fits_a_phone(tabs, accounts):
    url, ids = accounts.server.url, accounts.sessions

    # when: an admin (the widest list: it has the Owner column) opens the list on a 1280x800 screen
    page, _ = tabs(viewport={"width": 1280, "height": 800})
    sign_in_at(page, url, "root")
    expect(session_row(page, ids["alice-long"])).to_be_visible()
    screenshot(page, "sessions-1280")

    # then: every status and every Delete button is on one line, whole, and the long topic wraps
    # inside its own cell, with the table no wider than the window
    seen = set(page.locator("table#sessions tbody td.status").all_text_contents())
    assert {"completed", "cancelled"} <= seen, seen
    for row in rows(page).all():
        for part in ("td.status", "button.delete"):
            layout = text_layout(row.locator(part))
            assert layout["lines"] == 1 and not layout["clipped"] and inside(layout["text"], layout["box"]), \
                (row.get_attribute("data-session-id"), part, layout)
        # ... and each cell fills its row, so the line under a row is one straight line
        assert misaligned_cells(row) == [], (row.get_attribute("data-session-id"), misaligned_cells(row))
    topic = text_layout(session_row(page, ids["alice-long"]).locator("td.topic"))
    assert topic["lines"] > 1 and inside(topic["text"], topic["box"]), topic
    table = page.locator("table#sessions").evaluate("t => t.getBoundingClientRect().right")
    wrap = page.locator(".table-wrap").evaluate("w => [w.scrollWidth, w.clientWidth]")
    overflow = horizontal_overflow(page)
    assert table <= overflow["innerWidth"] and wrap[0] <= wrap[1], (table, wrap, overflow)
    assert overflow["scrollWidth"] <= overflow["innerWidth"], overflow

    # when: the list is opened on a phone
    phone, _ = tabs(**PHONE)
    sign_in_at(phone, url, "root")
    expect(session_row(phone, ids["alice-long"])).to_be_visible()
    screenshot(phone, "sessions-phone")

    # then: nothing scrolls sideways, and each session shows its topic, whole status and Delete inside the screen
    overflow = horizontal_overflow(phone)
    assert overflow["innerWidth"] == 375 and overflow["scrollWidth"] <= overflow["innerWidth"], overflow
    wrap = phone.locator(".table-wrap").evaluate("w => [w.scrollWidth, w.clientWidth]")
    assert wrap[0] <= wrap[1], wrap
    expect(rows(phone)).to_have_count(len(listed_as(url, accounts.tokens["root"])))
    screen = {"left": 0, "right": overflow["innerWidth"]}
    for row in rows(phone).all():
        session_id = row.get_attribute("data-session-id")
        for part in ("td.topic", "td.status", "button.delete"):
            expect(row.locator(part)).to_be_visible()
            layout = text_layout(row.locator(part))
            assert inside(layout["box"], screen) and inside(layout["text"], layout["box"]), (session_id, part, layout)
        for part in ("td.status", "button.delete"):
            layout = text_layout(row.locator(part))
            assert layout["lines"] == 1 and not layout["clipped"], (session_id, part, layout)
    topic = text_layout(session_row(phone, ids["alice-long"]).locator("td.topic"))
    assert topic["lines"] > 2, topic
    status = session_row(phone, ids["bob-cancelled"]).locator("td.status")
    expect(status).to_have_text("cancelled")
    assert status.evaluate("td => getComputedStyle(td, '::before').content") == '"Status: "'


# -- 12. a sign-in that ends while its pages are open ---------------------------------------------

@pytest.mark.slow
def test_a_page_whose_sign_in_was_revoked_goes_to_sign_in_on_its_next_api_call(tabs, deploy, servers):
    # given: carol, created by the operator's command, whose one session runs for minutes
    env = deploy(["agents:First"], delay=300)
    server = servers(env, "revoked")
    output = flask_users(env, "create", "carol", "--password-stdin", stdin=PASSWORDS["carol"] + "\n")
    token = re.search(r"^token: (\S+)$", output, re.MULTILINE).group(1)
    session_id = submit_as(server.url, token, "Carol's long-running report")
    page, _ = tabs()
    sign_in_at(page, server.url, "carol", f"/sessions/{session_id}")
    expect(page.locator("#status")).to_have_text("generating")
    sessions_page, events = tabs()
    sign_in_at(sessions_page, server.url, "carol")
    expect(session_row(sessions_page, session_id)).to_be_visible()

    # when: the operator revokes her while both pages are open
    flask_users(env, "revoke", "carol")

    # then: the session page's next status poll is answered 401 and it goes to sign in, to come back
    page.wait_for_url(path_is("/sign-in"), timeout=30 * SECOND)
    expect_sign_in_page(page, f"/sessions/{session_id}")

    # ... the list page, which does not poll, goes there on its next request (a Delete)
    session_row(sessions_page, session_id).locator("button.delete").click()
    sessions_page.wait_for_url(path_is("/sign-in"))
    expect_sign_in_page(sessions_page, "/sessions")
    assert [kind for kind, _ in events.dialogs] == ["confirm"], events.dialogs

    # ... and she cannot sign in again
    send_sign_in(page, "carol", PASSWORDS["carol"])
    expect(page.locator("form#sign-in .error[role=alert]")).to_contain_text("do not match")
    assert call("GET", f"{server.url}/api/report-status/{session_id}", token).status == 401
