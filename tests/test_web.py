"""The page routes through the test client: they exist, carry the security headers, and escape."""
from conftest import SUBMISSION


def test_pages_answer_with_a_content_security_policy_without_inline_script(client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]

    for path in ("/", "/sessions", f"/sessions/{session_id}"):
        response = client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]


def test_the_form_shows_the_limits_the_api_enforces(client):
    page = client.get("/").get_data(as_text=True)

    assert "1 to 200, 300 words a page." in page and "1 to 50." in page and 'maxlength="200"' in page


def test_a_topic_with_html_is_escaped_on_the_session_page(client):
    body = dict(SUBMISSION, requirements=dict(SUBMISSION["requirements"], topic="<img src=x onerror=alert(1)>"))
    session_id = client.post("/api/submit-requirements", json=body).get_json()["session_id"]

    page = client.get(f"/sessions/{session_id}").get_data(as_text=True)

    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_an_unknown_session_page_is_404(client):
    assert client.get("/sessions/nope").status_code == 404


def test_the_report_frame_is_404_until_there_is_a_report(client):
    session_id = client.post("/api/submit-requirements", json=SUBMISSION).get_json()["session_id"]

    assert client.get(f"/sessions/{session_id}/report").status_code == 404
