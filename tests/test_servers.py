"""The test helpers' own contract: polling a server that dies under it asks again instead of failing.

A tiny socket server plays a gunicorn worker killed mid-answer: it sends a response's headers,
then closes before the body (http.client.IncompleteRead), or closes before any answer.
"""
import socket
import threading

import pytest
from servers import request, wait_until

FULL = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"ok\": true}"
CUT_AFTER_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 552\r\n\r\n"


@pytest.fixture
def scripted_server():
    """scripted_server(answers) -> URL of a server that sends answers[i] to its i-th connection, then FULL."""
    listeners = []

    def start(answers):
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        script = list(answers)

        def serve():
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:  # closed at teardown
                    return
                with conn:
                    conn.recv(65536)
                    answer = script.pop(0) if script else FULL
                    if answer:
                        conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/api/report-status/x"

    yield start
    for listener in listeners:
        listener.close()


def test_a_response_cut_after_its_headers_is_asked_again(scripted_server):
    url = scripted_server([CUT_AFTER_HEADERS, CUT_AFTER_HEADERS])
    calls = []

    def ok():
        calls.append(1)
        return request("GET", url).json()["ok"]

    assert wait_until(ok, timeout=30, interval=0.01) is True
    assert len(calls) == 3


def test_a_connection_closed_before_any_answer_is_asked_again(scripted_server):
    url = scripted_server([b"", b""])

    assert wait_until(lambda: request("GET", url).json()["ok"], timeout=30, interval=0.01) is True


def test_a_connection_refused_is_asked_again_until_the_timeout_names_it():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"

    with pytest.raises(TimeoutError, match="refused"):
        wait_until(lambda: request("GET", url), timeout=0.3, interval=0.05)


def test_an_error_that_is_not_a_broken_exchange_still_fails_at_once():
    def broken():
        raise KeyError("status")

    with pytest.raises(KeyError):
        wait_until(broken, timeout=30)
