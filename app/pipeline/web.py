"""Fetching the web pages and files a stranger named in a request, without becoming their proxy.

`requirements.urls` and `requirements.data_urls` are typed by whoever submits a report, so a
fetch is a server-side request forgery waiting to happen: "http://169.254.169.254/" would read
the cloud metadata service, "http://localhost:5432/" would probe our own database. `fetch` is
the one way the pipeline reads such a URL, and it

- accepts only http/https URLs that name a host and carry no user name or password;
- resolves the host once, refuses unless EVERY address is public (`address_problem`), and then
  connects to that vetted address itself, sending the original Host header and, for https,
  SNI and certificate checks against the original name, so a DNS server that answers
  differently the second time (DNS rebinding) is never asked a second time;
- follows redirects itself, running every check again for each Location;
- bounds the whole fetch (DNS, connect, TLS, headers, body, every redirect) by one deadline,
  and the body by `max_bytes`, counted after any decompression and read in chunks, so neither a
  slow server nor a huge or compressed one can hold a worker or fill its memory.

`fetch_each` fetches a session's URLs a few at a time within one time budget, so URLs that never
answer cost the session that budget, not their timeouts one after another.

`extract_document` turns what was fetched into a title and plain text. Refusals are
`FetchRefused`, whose `reason` is a sentence the person who typed the URL can act on. Nothing
here knows about Flask; proxies in the environment are deliberately ignored (a proxy would
connect to whatever it resolves, undoing the pinning).
"""
import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional, Union
from urllib.parse import quote, urljoin, urlsplit

import certifi
import urllib3.exceptions
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_match_hostname import CertificateError

from app import metrics
from app.pipeline.extract import Unreadable, extract_text

# Read at call time, so a test (or a deployment with a private CA) can point it elsewhere.
CA_BUNDLE = certifi.where()
USER_AGENT = "report-service/0.1 (fetches sources named in report requests)"
ACCEPT = "text/html,application/xhtml+xml,text/plain,text/markdown,application/pdf;q=0.9,*/*;q=0.5"
REDIRECTS = {301, 302, 303, 307, 308}
CHUNK = 64 * 1024
# fetch_each does not start a URL with less of its budget left than this: it could not finish.
MIN_FETCH_SECONDS = 0.5
# ... and stops waiting for one this long after the budget ends (each fetch's own deadline should end it first).
RESULT_GRACE_SECONDS = 5.0
OUT_OF_TIME = "the time this report may spend fetching URLs ran out"
# What urllib3 decodes with a bound on each read's output (so a small gzip bomb cannot expand
# past max_bytes in memory); anything else would hand us bytes we cannot read.
CONTENT_ENCODINGS = {"identity", "gzip", "x-gzip", "deflate"}


IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class FetchRefused(Exception):
    """A URL that was not fetched or a response that was not used; `reason` says why, for the user."""

    def __init__(self, reason: str, outcome: str = "failed"):
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome  # for the reports_url_fetches metric: a few fixed words, never the reason


class FetchTimedOut(FetchRefused):
    """The fetch's deadline passed before the response was complete."""

    def __init__(self, reason: str):
        super().__init__(reason, "timeout")


@dataclass(frozen=True)
class Fetched:
    url: str            # as requested
    final_url: str      # after redirects
    status: int
    content_type: str   # media type only, lower case, e.g. "text/html"
    body: bytes         # decoded if the server compressed it anyway
    retrieved_at: str   # ISO 8601 UTC with Z
    content_hash: str   # sha256 hex of body


# -- which addresses a stranger may make us connect to ------------------------------------------

# Checked before Python's own flags: 100.64/10 is neither private nor global to `ipaddress`, and
# which IPv6 blocks count as private has changed between Python releases.
_EXTRA_BLOCKED = [
    (ipaddress.ip_network("100.64.0.0/10"), "a shared (carrier-grade NAT) address"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "a private address"),  # local-use NAT64 (RFC 8215)
    (ipaddress.ip_network("2001::/32"), "a private address"),       # Teredo tunnels
    (ipaddress.ip_network("fec0::/10"), "a site-local address"),    # deprecated, still routed by some
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_problem(address: Union[str, IPAddress]) -> Optional[str]:
    """Why an address is not a public one ("a loopback address", ...), or None if it is public.

    IPv6 forms that carry an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, 6to4 2002::/16, NAT64
    64:ff9b::/96) are judged by the IPv4 address they lead to.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 6:
        embedded, form = ip.ipv4_mapped, "IPv4-mapped"
        if embedded is None and ip.sixtofour is not None:
            embedded, form = ip.sixtofour, "6to4"
        if embedded is None and ip in _NAT64:
            embedded, form = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} ({form} {embedded})" if problem else None
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    for network, kind in _EXTRA_BLOCKED:
        if ip.version == network.version and ip in network:
            return kind
    if ip.is_reserved:  # before is_private, which on some Pythons also covers 240.0.0.0/4
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


# -- the total deadline --------------------------------------------------------------------------

class _Watchdog:
    """Shuts down the fetch's sockets when the deadline passes.

    A socket timeout bounds each read, not their sum: a server sending one byte every few
    seconds, in the TLS handshake, the headers or the body, would never trip it. Shutting the
    socket down from a timer thread makes whatever read is blocked return at once. It holds a
    duplicate of each socket (shutdown acts on the connection, not the descriptor) so it never
    touches a descriptor number the connection has closed and the process has reused.
    """

    def __init__(self, seconds: float):
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock.dup())
            if self.fired:
                self._shutdown_all()

    def forget(self) -> None:
        """Close the duplicates, so a finished connection really closes now."""
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def cancel(self) -> None:
        self._timer.cancel()
        self.forget()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown_all()

    def _shutdown_all(self) -> None:
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the other end


class _Watched:
    watchdog: Optional[_Watchdog] = None

    # _new_conn is where urllib3 (1.26 and 2.x) creates the TCP socket, before any TLS: the
    # only point from which the handshake can be watched too.
    def _new_conn(self):
        sock = super()._new_conn()
        if self.watchdog is not None:
            self.watchdog.watch(sock)
        return sock


class _PinnedHTTPConnection(_Watched, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_Watched, HTTPSConnection):
    pass


# -- fetching -------------------------------------------------------------------------------------

def fetch(url: str, *, timeout: float = 10.0, max_bytes: int = 2_000_000, allow_private: bool = False,
          max_redirects: int = 5) -> Fetched:
    """GET a URL typed by a stranger, following redirects; raise FetchRefused rather than misbehave.

    `allow_private=True` skips only the public-address rule (for tests and trusted intranets);
    pinning, redirect, time and size limits still apply.
    """
    try:
        fetched = _fetch(url, timeout, max_bytes, allow_private, max_redirects)
    except FetchRefused as exc:
        metrics.URL_FETCHES.labels(exc.outcome).inc()
        raise
    metrics.URL_FETCHES.labels("ok").inc()
    return fetched


def _fetch(url: str, timeout: float, max_bytes: int, allow_private: bool, max_redirects: int) -> Fetched:
    deadline = time.monotonic() + timeout
    watchdog = _Watchdog(timeout)
    timed_out = FetchTimedOut(f"timed out after {timeout:g} s")
    current = url
    try:
        for _ in range(max_redirects + 1):
            target = _check_url(current)
            addresses = _resolve(target, deadline, timed_out)
            if not allow_private:
                _vet(target, addresses)
            status, location, response = _request(target, addresses, deadline, watchdog, timed_out, max_bytes)
            if location is None:
                content_type, body = response
                return Fetched(
                    url=url, final_url=current, status=status, content_type=content_type, body=body,
                    retrieved_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                    content_hash=hashlib.sha256(body).hexdigest())
            current = urljoin(current, location)
        raise FetchRefused(f"too many redirects (more than {max_redirects})")
    finally:
        watchdog.cancel()


def fetch_each(urls: list[str], *, seconds: float, concurrency: int = 4, timeout: float = 10.0,
               **limits) -> Iterator[tuple[str, Union[Fetched, FetchRefused]]]:
    """Fetch URLs, at most `concurrency` at a time and all within `seconds`; yield (url, Fetched or FetchRefused)
    in the order given, each as soon as it and those before it are done.

    Each URL gets `timeout` or what is left of `seconds`, whichever is less; one whose turn comes with less
    than MIN_FETCH_SECONDS left is not started. `limits` go to `fetch`. Closing the generator early (the
    caller has enough) starts no further URL; those already running end by their own deadline, unread.
    """
    deadline = time.monotonic() + seconds

    def fetch_one(url: str) -> Union[Fetched, FetchRefused]:
        left = deadline - time.monotonic()
        if left < MIN_FETCH_SECONDS:
            metrics.URL_FETCHES.labels("skipped").inc()
            return FetchRefused(f"not fetched: {OUT_OF_TIME}", "skipped")
        allowed = min(timeout, left)
        try:
            return fetch(url, timeout=allowed, **limits)
        except FetchTimedOut as exc:
            # Say why a URL got less than the usual timeout (not a few milliseconds less): the person who
            # named it may otherwise blame it.
            return FetchRefused(f"cut off after {allowed:.1f} s: {OUT_OF_TIME}") if allowed < timeout - 0.1 else exc
        except FetchRefused as exc:
            return exc

    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(urls))), thread_name_prefix="fetch")
    try:
        # Submitted in order: the pool starts them in that order, so the first URLs named are tried first.
        futures = [pool.submit(fetch_one, url) for url in urls]
        for url, future in zip(urls, futures):
            try:
                result = future.result(max(deadline - time.monotonic(), 0.0) + RESULT_GRACE_SECONDS)
            except FutureTimeout:
                result = FetchRefused(f"no answer in time: {OUT_OF_TIME}")
            yield url, result
    finally:
        # Nobody waits for a page nobody will read: pending URLs are cancelled, running ones end at their deadline.
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str          # ASCII (IDNA) host name or IP literal, no brackets
    port: int
    host_header: str   # as the server expects it: brackets for IPv6, port unless default
    path: str          # request target: path and query, percent-encoded
    literal: Optional[IPAddress]


_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def _check_url(url: str) -> _Target:
    if not isinstance(url, str) or not url.strip():
        raise FetchRefused("no URL given", "invalid_url")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise FetchRefused(f"not a valid URL: {url}", "invalid_url") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchRefused(f"only http and https URLs can be fetched, not {scheme or 'this'}: {url}", "invalid_url")
    # Credentials in a URL are a phishing trick ("http://bank.com@evil/") and would be sent on
    # to whatever host the URL really names.
    if "@" in parts.netloc:
        raise FetchRefused("URLs with a user name or password are not fetched", "invalid_url")
    host = parts.hostname
    if not host:
        raise FetchRefused(f"the URL names no host: {url}", "invalid_url")
    default_port = 443 if scheme == "https" else 80
    port = default_port if port is None else port
    if not 0 < port < 65536:
        raise FetchRefused(f"not a valid port: {port}", "invalid_url")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise FetchRefused(f"not a valid host name: {host}", "invalid_url") from None
        if not _HOST_NAME.fullmatch(host):
            raise FetchRefused(f"not a valid host name: {host}", "invalid_url")
    shown = f"[{host}]" if literal is not None and literal.version == 6 else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    # http.client refuses spaces and control characters in the request line; encode what a
    # person may have pasted, leaving existing %-escapes and reserved characters alone.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/?%:@!$&'()*+,;=~")
    return _Target(scheme, host, port, host_header, path, literal)


def _resolve(target: _Target, deadline: float, timed_out: FetchRefused) -> list[str]:
    """The host's addresses, each looked up exactly once; a literal IP is not looked up."""
    if target.literal is not None:
        return [str(target.literal)]
    # getaddrinfo cannot be interrupted, so it runs in a thread we stop waiting for at the
    # deadline; a daemon thread, so a hung resolver never holds up the process exiting.
    result: dict = {}

    def lookup():
        try:
            result["infos"] = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            result["error"] = exc

    worker = threading.Thread(target=lookup, name=f"resolve {target.host}", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    if worker.is_alive():
        raise timed_out
    if "error" in result or not result.get("infos"):
        raise FetchRefused(f"cannot find the host {target.host} (DNS lookup failed)")
    addresses = []
    for family, _, _, _, sockaddr in result["infos"]:
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in addresses:
            addresses.append(sockaddr[0])
    if not addresses:
        raise FetchRefused(f"cannot find the host {target.host} (no IP address)")
    return addresses


def _vet(target: _Target, addresses: list[str]) -> None:
    # Every address, not just the first: which one a connection would use is up to the
    # resolver's ordering, and a name answering with one public and one internal address is
    # exactly what a rebinding attacker would serve.
    for address in addresses:
        problem = address_problem(address)
        if problem:
            if target.literal is not None:
                raise FetchRefused(f"blocked: {address} is {problem}", "blocked")
            raise FetchRefused(f"blocked: {target.host} resolves to {address}, which is {problem}", "blocked")


def _request(target: _Target, addresses: list[str], deadline: float, watchdog: _Watchdog,
             timed_out: FetchRefused, max_bytes: int):
    """One GET to the vetted addresses; (status, Location, None) or (status, None, (type, body))."""
    last_error: Optional[BaseException] = None
    for address in addresses:
        ip = ipaddress.ip_address(address)
        # Connect to the IPv4 address an IPv4-mapped one stands for: what was vetted, reachable
        # on hosts without dual-stack sockets.
        connect_to = str(ip.ipv4_mapped) if ip.version == 6 and ip.ipv4_mapped else address
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timed_out
        if target.scheme == "https":
            # The socket goes to the pinned IP; SNI and the certificate check use the name the
            # user typed, so pinning costs no TLS security.
            conn = _PinnedHTTPSConnection(
                connect_to, target.port, timeout=remaining, server_hostname=target.host,
                assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=CA_BUNDLE)
        else:
            conn = _PinnedHTTPConnection(connect_to, target.port, timeout=remaining)
        conn.watchdog = watchdog
        response = None
        try:
            try:
                conn.connect()
            except (ssl.SSLCertVerificationError, CertificateError) as exc:
                reason = getattr(exc, "verify_message", None) or str(exc)
                raise FetchRefused(f"the TLS certificate of {target.host} could not be verified: {reason}") from None
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                if _is_timeout(exc, watchdog, deadline):
                    raise timed_out from None
                if isinstance(exc, ssl.SSLError):
                    raise FetchRefused(f"the TLS handshake with {target.host} failed: {exc.reason or exc}") from None
                last_error = exc
                continue  # this address is down; the host may have another
            try:
                conn.request("GET", target.path, headers={
                    "Host": target.host_header, "User-Agent": USER_AGENT, "Accept": ACCEPT,
                    # Ask for the body as is; a server that compresses anyway is decoded below,
                    # within the size cap.
                    "Accept-Encoding": "identity", "Connection": "close",
                }, preload_content=False, decode_content=True)
                response = conn.getresponse()
                status = response.status
                if status in REDIRECTS and response.headers.get("Location"):
                    return status, response.headers["Location"], None
                if not 200 <= status < 300:
                    raise FetchRefused(f"HTTP {status}", "http_error")
                body = _read_body(response, max_bytes)
            except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException) as exc:
                if _is_timeout(exc, watchdog, deadline):
                    raise timed_out from None
                raise FetchRefused(f"the connection to {target.host} failed: {_describe(exc)}") from None
            if watchdog.fired:  # the shutdown may have looked like a clean end of the body
                raise timed_out
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            return status, None, (media_type or "application/octet-stream", bytes(body))
        finally:
            # Closing now (unread data and all) tells a server streaming a huge body to stop.
            if response is not None:
                response.close()
            conn.close()
            watchdog.forget()
    raise FetchRefused(f"could not connect to {target.host}: {_describe(last_error)}")


def _read_body(response, max_bytes: int) -> bytearray:
    encodings = [e.strip().lower() for e in response.headers.get("Content-Encoding", "").split(",")
                 if e.strip().lower() not in ("", "identity")]
    unknown = [e for e in encodings if e not in CONTENT_ENCODINGS]
    if unknown:
        raise FetchRefused(f"compressed in a way that cannot be read ({', '.join(unknown)})")
    declared = response.headers.get("Content-Length", "")
    if not encodings and declared.isdigit() and int(declared) > max_bytes:
        raise FetchRefused(f"larger than {max_bytes:,} bytes (the server says {int(declared):,})", "too_large")
    body = bytearray()
    while True:
        # read(amt) returns at most amt decoded bytes and, in urllib3 2.x, decompresses no more
        # than that per call, so memory stays near max_bytes + CHUNK whatever the server sends.
        chunk = response.read(CHUNK)
        if not chunk:
            return body
        body += chunk
        if len(body) > max_bytes:
            raise FetchRefused(f"larger than {max_bytes:,} bytes", "too_large")


def _is_timeout(exc: BaseException, watchdog: _Watchdog, deadline: float) -> bool:
    if watchdog.fired or time.monotonic() >= deadline:
        return True
    # urllib3 makes NewConnectionError ("Connection refused") a ConnectTimeoutError for
    # backward compatibility; it is not a timeout.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(exc, (TimeoutError, urllib3.exceptions.TimeoutError))


def _describe(exc: Optional[BaseException]) -> str:
    """The innermost operating-system reason ("Connection refused"), else the error's own words."""
    if exc is None:
        return "no address to connect to"
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:  # urllib3 wraps the interesting error
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


# -- extracting -----------------------------------------------------------------------------------

def extract_document(fetched: Fetched) -> tuple[str, str]:
    """(title, main text) of a fetched web page, text file or PDF; FetchRefused for anything else."""
    try:
        return extract_text(fetched.body, fetched.content_type, fetched.final_url)
    except Unreadable as exc:
        raise FetchRefused(str(exc)) from None
