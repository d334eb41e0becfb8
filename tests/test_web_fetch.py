"""Fetching URLs from requests through real HTTP on 127.0.0.1: extraction, limits, and the SSRF guard.

A ThreadingHTTPServer in a thread serves every case (pages, files, errors, slow and huge bodies,
redirects). The guard's tests run with the default allow_private=False and assert that no socket
was even connected; an autouse fixture fails any test that tries to reach a host other than
loopback, since this machine has no other network and a test must never depend on one.
"""
import functools
import gzip
import hashlib
import http.server
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from datetime import datetime

import pytest
from conftest import wait_for
from servers import StandIn

from app.pipeline import web
from app.pipeline.web import FetchRefused, Fetched, address_problem, extract_document, fetch

ARTICLE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Heat pumps overtake gas boilers in Nordic homes</title></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/energy">Energy</a></li>
<li><a href="/subscribe">Subscribe to our newsletter</a></li></ul></nav>
<article>
<h1>Heat pumps overtake gas boilers in Nordic homes</h1>
<p>Heat pumps were installed in more than sixty percent of new Nordic homes last year, according to
figures published by the regional energy agencies, overtaking gas boilers for the first time.</p>
<p>Installers say the shift was driven by falling equipment prices and by subsidies that cover up to
a third of the cost, while electricity tariffs that vary by hour made running costs predictable.</p>
<p>Analysts expect the share to keep rising as older buildings are renovated, although shortages of
trained technicians could slow installations in rural districts over the next two winters.</p>
</article>
<footer><p>Copyright 2024 Example Media Group. All rights reserved.</p>
<p><a href="/privacy">Privacy policy</a> | <a href="/cookies">Cookie settings</a></p></footer>
</body>
</html>
"""
PARAGRAPH_FRAGMENTS = ["more than sixty percent of new Nordic homes", "subsidies that cover up to a third",
                       "shortages of trained technicians"]
BOILERPLATE = ["Subscribe to our newsletter", "All rights reserved", "Cookie settings", "Privacy policy"]

TEXT = "Battery prices fell by fourteen percent in 2023.\n\nCell manufacturing capacity doubled in two years.\n"
MARKDOWN = "# Charging networks\n\nPublic chargers grew to four million points worldwide.\n"
CSV = b"year,sales\n2022,10.2\n2023,13.8\n"
PDF_TITLE = "Offshore wind outlook"
PDF_LINES = ["Offshore wind capacity reached 75 gigawatts.", "Auction prices rose in 2023."]
BIG = 100_000_000  # what the huge routes would send, if anyone let them


def make_pdf(title, lines):
    """A minimal valid one-page PDF with a /Title, written by hand (offsets and all)."""
    text = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    stream = f"BT /F1 12 Tf 72 720 Td {text} ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        "/Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        f"<< /Title ({title}) >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 6 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def make_png():
    """A valid 1x1 grey PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


PDF = make_pdf(PDF_TITLE, PDF_LINES)
PNG = make_png()


@functools.cache
def gzip_bomb():
    return gzip.compress(b"\0" * 20_000_000)  # about 20 KB on the wire


class Handler(StandIn):
    protocol_version = "HTTP/1.0"  # the body ends when the connection does, as for a plain stream

    def do_GET(self):
        state = self.server.state
        state.hosts.append(self.headers.get("Host"))
        try:
            self.route(state, self.path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up, which is what several tests want it to do

    def redirect(self, location, status=302):
        self.reply(b"", "text/plain", status, [("Location", location)])

    def route(self, state, path):
        pages = {
            "/article": (ARTICLE.encode(), "text/html; charset=utf-8"),
            "/text": (TEXT.encode(), "text/plain; charset=utf-8"),
            "/notes.md": (MARKDOWN.encode(), "text/markdown"),
            "/report.pdf": (PDF, "application/pdf"),
            "/data.csv": (CSV, "text/csv"),
            "/pixel.png": (PNG, "image/png"),
            "/echo-host": (self.headers.get("Host", "").encode(), "text/plain"),
        }
        if path in pages:
            self.reply(*pages[path])
        elif path == "/error":
            self.reply(b"oops", "text/plain", 500)
        elif path == "/missing":
            self.reply(b"not here", "text/plain", 404)
        elif path == "/gzip-text":
            self.reply(gzip.compress(TEXT.encode()), "text/plain", headers=[("Content-Encoding", "gzip")])
        elif path == "/odd-encoding":
            self.reply(b"\x1f\x9d\x90", "text/plain", headers=[("Content-Encoding", "compress")])
        elif path == "/gzip-bomb":
            self.reply(gzip_bomb(), "text/plain", headers=[("Content-Encoding", "gzip")])
        elif path == "/slow":
            state.stop.wait(5)
            self.reply(TEXT.encode(), "text/plain")
        elif path == "/drip-body":
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            for _ in range(200):  # each byte well inside any read timeout; all of them far outside
                self.wfile.write(b"x")
                if state.stop.wait(0.05):
                    break
        elif path == "/drip-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Padding: ")
            for _ in range(200):
                self.wfile.write(b"a")
                if state.stop.wait(0.05):
                    break
        elif path in ("/huge", "/huge-declared"):
            self.stream_huge(state, path)
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            self.redirect(f"/hop/{left - 1}" if left else f"http://127.0.0.1:{self.server.server_port}/text")
        elif path == "/to-private":
            self.redirect("http://10.0.0.1/secret")
        elif path == "/to-file":
            self.redirect("file:///etc/passwd", 301)
        else:
            self.reply(b"no such page", "text/plain", 404)

    def stream_huge(self, state, path):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if path == "/huge-declared":
            self.send_header("Content-Length", str(BIG))
        self.end_headers()
        sent, chunk = 0, b"x" * 65536
        try:
            while sent < BIG and not state.stop.is_set():
                self.wfile.write(chunk)
                sent += len(chunk)
        finally:
            state.sent[path] = sent


class ServerState:
    def __init__(self):
        self.stop = threading.Event()
        self.hosts = []
        self.sent = {}


class LocalServer:
    def __init__(self, wrap=None):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state = ServerState()
        if wrap:
            self.httpd.socket = wrap(self.httpd.socket)
        self.port = self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path, scheme="http", host="127.0.0.1"):
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self):
        self.state.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def server():
    local = LocalServer()
    yield local
    local.close()


@pytest.fixture(autouse=True)
def connections(monkeypatch):
    """Every address a socket connects to; reaching anything but loopback fails the test at once."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        attempts.append(address[0])
        if address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"the test tried to connect to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def fake_dns(monkeypatch):
    """Made-up host names: name -> list of answers, one per lookup (the last one repeats)."""
    answers, lookups = {}, []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        addresses = answers[host][min(lookups.count(host), len(answers[host])) - 1]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, lookups


def treat_loopback_as_public(monkeypatch):
    """Stand-in for a public origin, which cannot be reached offline: 127.0.0.1 passes the check."""
    real = web.address_problem
    monkeypatch.setattr(web, "address_problem", lambda a: None if str(a) == "127.0.0.1" else real(a))


def refusal(url, **kwargs):
    with pytest.raises(FetchRefused) as caught:
        fetch(url, **kwargs)
    return caught.value.reason


# -- fetching and extracting, with the local server allowed ------------------------------------

def test_html_page_is_fetched_with_its_metadata(server):
    fetched = fetch(server.url("/article"), allow_private=True)

    assert fetched.status == 200
    assert fetched.url == fetched.final_url == server.url("/article")
    assert fetched.content_type == "text/html"
    assert fetched.body == ARTICLE.encode()
    assert fetched.content_hash == hashlib.sha256(ARTICLE.encode()).hexdigest()
    assert fetched.retrieved_at.endswith("Z")
    assert abs(datetime.fromisoformat(fetched.retrieved_at.replace("Z", "+00:00")).timestamp() - time.time()) < 60


def test_html_extraction_keeps_the_article_and_drops_the_boilerplate(server):
    fetched = fetch(server.url("/article"), allow_private=True)

    title, text = extract_document(fetched)

    assert title == "Heat pumps overtake gas boilers in Nordic homes"
    for fragment in PARAGRAPH_FRAGMENTS:
        assert fragment in " ".join(text.split())
    for boilerplate in BOILERPLATE:
        assert boilerplate not in text


def test_html_without_a_title_is_named_by_its_url():
    page = b"<html><body><article>" + b"<p>Grid storage projects doubled in size across Europe.</p>" * 5 + \
        b"</article></body></html>"
    fetched = Fetched("http://x.example/a", "http://x.example/b", 200, "text/html", page, "", "")

    title, text = extract_document(fetched)

    assert title == "http://x.example/b"
    assert "Grid storage projects doubled" in text


def test_a_legacy_page_is_read_in_the_charset_it_declares():
    page = ("<html><head><meta charset=\"iso-8859-1\"><title>Caf\u00e9 prices</title></head><body><article>"
            + "<p>Prices at the caf\u00e9 rose for the third year, driven by coffee and dairy costs.</p>" * 4
            + "</article></body></html>").encode("iso-8859-1")
    fetched = Fetched("http://x.example/", "http://x.example/", 200, "text/html", page, "", "")

    title, text = extract_document(fetched)

    assert title == "Caf\u00e9 prices"
    assert "Prices at the caf\u00e9 rose" in text


def test_a_document_without_text_is_refused():
    fetched = Fetched("http://x.example/a.txt", "http://x.example/a.txt", 200, "text/plain", b" \n\n ", "", "")

    with pytest.raises(FetchRefused, match="no readable text in http://x.example/a.txt"):
        extract_document(fetched)


def test_plain_text_is_returned_as_is(server):
    fetched = fetch(server.url("/text"), allow_private=True)

    title, text = extract_document(fetched)

    assert fetched.content_type == "text/plain"
    assert text == TEXT
    assert title == server.url("/text")


def test_markdown_takes_its_title_from_the_first_heading(server):
    title, text = extract_document(fetch(server.url("/notes.md"), allow_private=True))

    assert title == "Charging networks"
    assert text == MARKDOWN


def test_pdf_text_and_title_are_extracted(server):
    fetched = fetch(server.url("/report.pdf"), allow_private=True)

    title, text = extract_document(fetched)

    assert fetched.content_type == "application/pdf"
    assert title == PDF_TITLE
    for line in PDF_LINES:
        assert line in text


def test_a_damaged_pdf_is_refused_by_extraction():
    fetched = Fetched("http://x.example/a.pdf", "http://x.example/a.pdf", 200, "application/pdf",
                      b"%PDF-1.4 not really", "", "")

    with pytest.raises(FetchRefused, match="not a readable PDF"):
        extract_document(fetched)


def test_csv_is_fetched_as_bytes(server):
    fetched = fetch(server.url("/data.csv"), allow_private=True)

    assert fetched.content_type == "text/csv"
    assert fetched.body == CSV
    assert fetched.content_hash == hashlib.sha256(CSV).hexdigest()


def test_an_image_is_fetched_but_not_extracted(server):
    fetched = fetch(server.url("/pixel.png"), allow_private=True)

    with pytest.raises(FetchRefused) as caught:
        extract_document(fetched)

    assert fetched.body == PNG
    assert caught.value.reason == "not a web page or text document (image/png)"


@pytest.mark.parametrize("path, status", [("/error", 500), ("/missing", 404)])
def test_an_error_status_is_refused_with_its_code(server, path, status):
    assert refusal(server.url(path), allow_private=True) == f"HTTP {status}"


def test_a_compressed_response_is_decoded(server):
    fetched = fetch(server.url("/gzip-text"), allow_private=True)

    assert fetched.body == TEXT.encode()


def test_a_body_in_an_unreadable_encoding_is_refused(server):
    assert refusal(server.url("/odd-encoding"), allow_private=True) == \
        "compressed in a way that cannot be read (compress)"


def test_a_closed_port_is_refused_as_unreachable():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    reason = refusal(f"http://127.0.0.1:{port}/", allow_private=True)

    assert reason == "could not connect to 127.0.0.1: Connection refused"


def test_the_next_address_is_tried_when_one_refuses(server, fake_dns, connections):
    answers, _ = fake_dns
    answers["twice.example"] = [["::1", "127.0.0.1"]]  # the server listens on 127.0.0.1 only

    fetched = fetch(server.url("/text", host="twice.example"), allow_private=True)

    assert fetched.body == TEXT.encode()
    assert connections == ["::1", "127.0.0.1"]


# -- time and size limits ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/slow", "/drip-body", "/drip-headers"])
def test_a_slow_server_is_cut_off_at_the_total_timeout(server, path):
    started = time.monotonic()

    reason = refusal(server.url(path), timeout=0.5, allow_private=True)

    assert reason == "timed out after 0.5 s"
    assert time.monotonic() - started < 2.0  # one deadline for everything, not one per read


@pytest.mark.parametrize("path, expected", [
    ("/huge", "larger than 100,000 bytes"),  # streamed: stopped at the cap
    ("/huge-declared", "larger than 100,000 bytes (the server says 100,000,000)"),  # refused from its header
])
def test_a_huge_body_is_refused_without_reading_it_all(server, path, expected):
    server.state.sent.pop(path, None)

    reason = refusal(server.url(path), max_bytes=100_000, allow_private=True)

    assert reason == expected
    sent = wait_for(lambda: server.state.sent.get(path), timeout=10)
    assert sent < BIG * 0.3  # the server gave up once we hung up (socket buffers hold a few MB)


def test_a_gzip_bomb_is_refused_at_the_size_cap(server):
    reason = refusal(server.url("/gzip-bomb"), max_bytes=100_000, allow_private=True)

    assert reason == "larger than 100,000 bytes"


# -- redirects ----------------------------------------------------------------------------------

def test_redirects_are_followed_and_the_final_url_recorded(server):
    fetched = fetch(server.url("/hop/3"), allow_private=True)

    assert fetched.url == server.url("/hop/3")
    assert fetched.final_url == server.url("/text")
    assert fetched.body == TEXT.encode()


def test_too_many_redirects_are_refused(server):
    assert refusal(server.url("/hop/5"), allow_private=True, max_redirects=5) == "too many redirects (more than 5)"
    assert refusal(server.url("/hop/0"), allow_private=True, max_redirects=0) == "too many redirects (more than 0)"


def test_a_redirect_to_another_scheme_is_refused(server):
    assert refusal(server.url("/to-file"), allow_private=True).startswith("only http and https")


def test_a_redirect_from_a_public_origin_to_a_private_address_is_refused(server, monkeypatch, connections):
    treat_loopback_as_public(monkeypatch)

    reason = refusal(server.url("/to-private"))

    assert reason == "blocked: 10.0.0.1 is a private address"
    assert connections == ["127.0.0.1"]  # the first hop only


# -- the address guard --------------------------------------------------------------------------

BLOCKED = [
    ("http://127.0.0.1:{port}/article", "blocked: 127.0.0.1 is a loopback address"),
    ("http://[::1]/", "blocked: ::1 is a loopback address"),
    ("http://10.0.0.1/", "blocked: 10.0.0.1 is a private address"),
    ("http://192.168.1.1:8080/admin", "blocked: 192.168.1.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "blocked: 169.254.169.254 is a link-local address"),
    ("http://[::ffff:127.0.0.1]/", "a loopback address (IPv4-mapped 127.0.0.1)"),
    ("http://[64:ff9b::a00:1]/", "a private address (NAT64 10.0.0.1)"),
    ("http://[2002:a9fe:a9fe::1]/", "a link-local address (6to4 169.254.169.254)"),
    ("http://[fd00::1]/", "a private address"),
    ("http://[fe80::1]/", "a link-local address"),
    ("http://100.64.0.1/", "blocked: 100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("http://0.0.0.0/", "blocked: 0.0.0.0 is an unspecified address"),
    ("http://224.0.0.1/", "blocked: 224.0.0.1 is a multicast address"),
    ("http://2130706433/", "blocked: 2130706433 resolves to 127.0.0.1, which is a loopback address"),
]


@pytest.mark.parametrize("url, expected", BLOCKED, ids=[u for u, _ in BLOCKED])
def test_non_public_addresses_are_refused_before_connecting(server, connections, url, expected):
    started = time.monotonic()

    reason = refusal(url.format(port=server.port))

    assert expected in reason
    assert connections == []
    assert time.monotonic() - started < 2.0


def test_localhost_is_refused_as_loopback(server, connections):
    reason = refusal(f"http://localhost:{server.port}/article")

    assert "which is a loopback address" in reason
    assert connections == []


def test_a_name_is_refused_if_any_of_its_addresses_is_private(fake_dns, connections):
    answers, _ = fake_dns
    answers["mixed.example"] = [["93.184.216.34", "10.1.2.3"]]

    reason = refusal("http://mixed.example/")

    assert reason == "blocked: mixed.example resolves to 10.1.2.3, which is a private address"
    assert connections == []


def test_an_unknown_host_is_refused(fake_dns, connections):
    reason = refusal("http://no-such-host.invalid/")

    assert reason == "cannot find the host no-such-host.invalid (DNS lookup failed)"
    assert connections == []


def test_the_vetted_address_is_pinned_and_the_host_header_kept(server, fake_dns, monkeypatch, connections):
    answers, lookups = fake_dns
    # A rebinding resolver: a public-looking answer first, an internal one on every later lookup.
    answers["news.example"] = [["127.0.0.1"], ["10.0.0.1"]]
    treat_loopback_as_public(monkeypatch)

    fetched = fetch(server.url("/echo-host", host="news.example"))

    assert fetched.body == f"news.example:{server.port}".encode()
    assert lookups == ["news.example"]
    assert connections == ["127.0.0.1"]


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "a loopback address"),
    ("127.255.0.9", "a loopback address"),
    ("::1", "a loopback address"),
    ("10.0.0.5", "a private address"),
    ("172.16.3.4", "a private address"),
    ("192.168.0.1", "a private address"),
    ("fc00::1", "a private address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("100.127.255.254", "a shared (carrier-grade NAT) address"),
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("224.0.0.251", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("::ffff:10.0.0.1", "a private address (IPv4-mapped 10.0.0.1)"),
    ("::ffff:169.254.169.254", "a link-local address (IPv4-mapped 169.254.169.254)"),
    ("2002:7f00:1::", "a loopback address (6to4 127.0.0.1)"),
    ("64:ff9b::7f00:1", "a loopback address (NAT64 127.0.0.1)"),
    ("64:ff9b:1::1", "a private address"),
    ("fec0::1", "a site-local address"),
    ("192.0.2.1", "a private address"),  # documentation range
])
def test_address_check_names_what_is_not_public(address, kind):
    assert address_problem(address) == kind


@pytest.mark.parametrize("address", [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.1",
    "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808",
])
def test_address_check_passes_public_addresses(address):
    assert address_problem(address) is None


# -- URLs that are not fetched at all -------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("ftp://127.0.0.1/file", "only http and https URLs can be fetched, not ftp"),
    ("file:///etc/passwd", "only http and https URLs can be fetched, not file"),
    ("gopher://127.0.0.1:6379/_INFO", "only http and https URLs can be fetched, not gopher"),
    ("javascript:alert(1)", "only http and https URLs can be fetched, not javascript"),
    ("127.0.0.1/article", "only http and https URLs can be fetched"),
    ("http://user:pass@127.0.0.1/", "URLs with a user name or password are not fetched"),
    ("http://public.example@127.0.0.1/", "URLs with a user name or password are not fetched"),
    ("http:///nohost", "the URL names no host"),
    ("http://127.0.0.1:99999/", "not a valid URL"),
    ("http://bad host.example/", "not a valid host name"),
    ("", "no URL given"),
])
def test_urls_that_are_not_plain_web_addresses_are_refused(connections, url, expected):
    assert refusal(url, allow_private=True).startswith(expected)
    assert connections == []


# -- https: connected to the pinned IP, verified against the name --------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A throwaway CA and a certificate for secure.example, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        try:
            subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("the openssl command is not installed")

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "site.key", "-out", "site.csr", "-subj", "/CN=secure.example")
    (folder / "site.ext").write_text("subjectAltName=DNS:secure.example\nbasicConstraints=CA:FALSE\n"
                                     "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
                                     "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "site.pem", "-days", "2", "-extfile", "site.ext")
    return folder


@pytest.fixture(scope="module")
def https_server(tls):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "site.pem", tls / "site.key")
    names = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    local = LocalServer(wrap=lambda sock: context.wrap_socket(sock, server_side=True))
    local.sni = names
    yield local
    local.close()


def test_https_connects_to_the_pinned_address_and_verifies_the_name(https_server, tls, fake_dns, monkeypatch):
    answers, _ = fake_dns
    answers["secure.example"] = [["127.0.0.1"]]
    monkeypatch.setattr(web, "CA_BUNDLE", str(tls / "ca.pem"))
    https_server.sni.clear()

    fetched = fetch(https_server.url("/echo-host", scheme="https", host="secure.example"), allow_private=True)

    assert fetched.body == f"secure.example:{https_server.port}".encode()
    assert https_server.sni == ["secure.example"]


def test_https_with_a_certificate_for_another_name_is_refused(https_server, tls, fake_dns, monkeypatch):
    answers, _ = fake_dns
    answers["other.example"] = [["127.0.0.1"]]
    monkeypatch.setattr(web, "CA_BUNDLE", str(tls / "ca.pem"))

    reason = refusal(https_server.url("/text", scheme="https", host="other.example"), allow_private=True)

    assert reason.startswith("the TLS certificate of other.example could not be verified")
    assert "other.example" in reason.split("verified: ", 1)[1]


def test_https_with_an_untrusted_certificate_is_refused(https_server, fake_dns):
    answers, _ = fake_dns
    answers["secure.example"] = [["127.0.0.1"]]

    reason = refusal(https_server.url("/text", scheme="https", host="secure.example"), allow_private=True)

    assert reason == ("the TLS certificate of secure.example could not be verified: "
                      "unable to get local issuer certificate")
