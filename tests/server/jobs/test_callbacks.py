"""Job callbacks against a real HTTP receiver on 127.0.0.1: signing, refusals before any
connection, the screened address actually used, timeouts, redirects, and the retry schedule.

Nothing here reaches any address but 127.0.0.1: names other than ``localhost`` resolve only
through fake resolvers, and addresses outside loopback appear only in refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import random
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_contract.errors import ErrorKind, ServiceError, echo
from server.jobs.callbacks import (
    MAX_URL_CHARS,
    AllowList,
    Attempt,
    CallbackPolicy,
    is_public,
    sign,
    verify,
)
from server.settings import JobSettings, Settings

SECRET = b"test-secret"
BODY = b'{"id":"job-1","status":"done"}'
T = TypeVar("T")


@dataclass
class Recorded:
    path: str
    headers: Message
    body: bytes


@dataclass
class Receiver:
    """An HTTP (or https) server on 127.0.0.1 in a thread. Counts every TCP connection it
    accepts (before any TLS handshake) and records every request. Paths: /ok, /flaky (500 once,
    then 200), /redirect (302 to /target), /target, /slow (answers once released), /trickle (a
    header byte every 50 ms)."""

    tls: ssl.SSLContext | None = None
    requests: list[Recorded] = field(default_factory=list)
    connections: int = 0
    server_names: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections open unless the client closes them

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append(Recorded(self.path, self.headers, body))
                    seen = sum(r.path == self.path for r in receiver.requests)
                if self.path == "/slow":
                    receiver.release.wait(timeout=5)
                if self.path == "/trickle":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(40):  # 2 s in all, each byte well within the read timeout
                        if receiver.release.wait(timeout=0.05):
                            return
                        self.wfile.write(b"X")
                        self.wfile.flush()
                    return
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/target")
                elif self.path == "/flaky" and seen == 1:
                    self.send_response(500)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                connection, address = self.socket.accept()
                with receiver._lock:
                    receiver.connections += 1
                if receiver.tls is not None:
                    try:
                        connection = receiver.tls.wrap_socket(connection, server_side=True)
                    except OSError:
                        connection.close()
                        raise
                return connection, address

        if self.tls is not None:
            self.tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    yield server
    server.stop()


def make_policy(hosts: str = "127.0.0.1", secret: bytes | None = SECRET, **jobs: Any) -> CallbackPolicy:
    timeouts = {"callback_connect_timeout_s": 1.0, "callback_read_timeout_s": 1.0, **jobs}
    settings = Settings(
        callback_allowed_hosts=hosts,  # type: ignore[arg-type]  # the comma-separated form, as from the environment
        callback_secret=secret.decode() if secret is not None else None,  # type: ignore[arg-type]
        jobs=JobSettings(**timeouts),
    )
    return CallbackPolicy.from_settings(settings)


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout=10)

    return asyncio.run(bounded())


def deliver_each(policy: CallbackPolicy, urls: list[str], body: bytes = BODY, **options: Any) -> list[Attempt]:
    """Attempts one after another; ``options`` replace the policy's resolver, clock or TLS trust."""
    policy = dataclasses.replace(policy, **options)

    async def attempts() -> list[Attempt]:
        return [await policy.deliver(url, body) for url in urls]

    return run(attempts())


def deliver(policy: CallbackPolicy, url: str, body: bytes = BODY, **options: Any) -> Attempt:
    [attempt] = deliver_each(policy, [url], body, **options)
    return attempt


def fake_resolver(answers: dict[str, list[str]], calls: list[str] | None = None) -> Callable[..., Any]:
    async def resolve(name: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(name)
        return answers[name]

    return resolve


def refusal(policy: CallbackPolicy, url: str) -> str:
    with pytest.raises(ServiceError) as caught:
        policy.check(url)
    assert caught.value.kind is ErrorKind.INVALID_PARAMETER
    return caught.value.message


# Signing.


def test_a_delivery_is_signed_and_the_receiver_verifies_it(receiver: Receiver) -> None:
    now = 1_700_000_000.7
    attempt = deliver(make_policy(), receiver.url("/ok"), clock=lambda: now)
    assert attempt == Attempt(ok=True, status=200, error=None)
    [request] = receiver.requests
    headers = request.headers
    assert request.body == BODY
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "imgserve"
    assert headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert headers["X-Imgserve-Timestamp"] == "1700000000"
    assert headers["X-Imgserve-Signature"].startswith("sha256=")
    assert verify(SECRET, headers["X-Imgserve-Timestamp"], headers["X-Imgserve-Signature"], request.body, now=now)


def test_verification_refuses_a_tampered_body_an_old_timestamp_or_another_key() -> None:
    timestamp = 1_700_000_000
    signature = sign(SECRET, timestamp, BODY)
    assert verify(SECRET, str(timestamp), signature, BODY, now=timestamp + 299)
    assert not verify(SECRET, str(timestamp), signature, BODY + b" ", now=timestamp)
    assert not verify(SECRET, str(timestamp), signature, BODY, now=timestamp + 301)  # a replay
    assert not verify(SECRET, str(timestamp), signature, BODY, now=timestamp - 301)  # from the future
    assert not verify(b"another key", str(timestamp), signature, BODY, now=timestamp)
    # The timestamp is signed: moving it makes the signature wrong.
    assert not verify(SECRET, str(timestamp + 1), signature, BODY, now=timestamp)
    for stamp, sig in [
        ("", signature),
        (str(timestamp), ""),
        ("1e9", signature),
        ("\u0661\u0667\u0660\u0660", signature),
        (None, None),
    ]:
        assert not verify(SECRET, stamp, sig, BODY, now=timestamp)
    assert not verify(SECRET, str(timestamp), signature.replace("sha256=", "sha1="), BODY, now=timestamp)
    assert not verify(SECRET, str(timestamp), "sha256=é", BODY, now=timestamp)


# Delivery outcomes.


def test_a_failing_receiver_gets_a_failure_then_a_success(receiver: Receiver) -> None:
    first, second = deliver_each(make_policy(), [receiver.url("/flaky")] * 2)
    assert (first.ok, first.status) == (False, 500) and first.error and "500" in first.error
    assert second == Attempt(ok=True, status=200, error=None)
    assert receiver.connections == 2  # each attempt its own connection: none is reused


def test_retry_delays_back_off_with_full_jitter_and_end() -> None:
    policy = make_policy(callback_max_attempts=6, callback_retry_base_s=1.0, callback_retry_max_s=10.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)]:
        delays = [policy.retry_delay(attempt, rng) for _ in range(300)]
        assert all(d is not None and 0.0 <= d <= ceiling for d in delays), attempt
        assert max(d for d in delays if d is not None) > 0.9 * ceiling  # the jitter spans the range
        assert min(d for d in delays if d is not None) < 0.1 * ceiling
    assert policy.retry_delay(6, rng) is None  # the sixth attempt was the last
    assert policy.retry_delay(60, rng) is None
    with pytest.raises(ValueError):
        policy.retry_delay(0, rng)


def test_a_redirect_is_a_failure_and_its_target_receives_nothing(receiver: Receiver) -> None:
    attempt = deliver(make_policy(), receiver.url("/redirect"))
    assert (attempt.ok, attempt.status) == (False, 302) and attempt.error and "redirect" in attempt.error
    assert [r.path for r in receiver.requests] == ["/redirect"]


def test_a_slow_receiver_hits_the_read_timeout(receiver: Receiver) -> None:
    started = time.monotonic()
    attempt = deliver(make_policy(callback_read_timeout_s=0.2), receiver.url("/slow"))
    assert time.monotonic() - started < 2
    assert (attempt.ok, attempt.status) == (False, None)
    assert attempt.error and "did not answer within 0.2s" in attempt.error


def test_a_receiver_that_trickles_its_answer_hits_the_attempts_bound(receiver: Receiver) -> None:
    started = time.monotonic()
    policy = make_policy(callback_connect_timeout_s=0.2, callback_read_timeout_s=0.3)
    attempt = deliver(policy, receiver.url("/trickle"))
    assert time.monotonic() - started < 1.5
    assert attempt.ok is False and attempt.error == "no answer within 0.5s"


def test_a_closed_port_is_a_failure_not_an_exception() -> None:
    server = Receiver()
    server.start()
    server.stop()  # the port is free again: nothing listens
    attempt = deliver(make_policy(), server.url("/ok"))
    assert attempt.ok is False and attempt.status is None
    assert attempt.error and "could not connect to 127.0.0.1" in attempt.error


# Refusals: before any connection, and the address actually used.


def test_a_host_outside_the_allow_list_is_refused_at_check_and_delivery_without_a_connection(
    receiver: Receiver,
) -> None:
    dns: list[str] = []
    for hosts, url in [
        ("10.0.0.0/8", receiver.url("/ok")),
        ("hooks.example.com", receiver.url("/ok")),
        ("hooks.example.com", receiver.url("/ok", host="localhost")),
    ]:
        policy = make_policy(hosts)
        assert "not among this server's allowed callback hosts" in refusal(policy, url)
        attempt = deliver(policy, url, resolve=fake_resolver({"localhost": ["127.0.0.1"]}, dns))
        assert attempt.ok is False and attempt.error and "not among" in attempt.error
    assert receiver.connections == 0 and dns == []


def test_a_name_allowed_but_resolving_to_loopback_is_refused_at_delivery(receiver: Receiver) -> None:
    url = receiver.url("/ok", host="localhost")
    by_name_only = make_policy("localhost")
    assert by_name_only.check(url) == url  # no DNS at submission: the name is all check sees
    attempt = deliver(by_name_only, url)
    assert attempt.ok is False and attempt.error and "not a public address" in attempt.error
    assert receiver.connections == 0
    # Listing the loopback addresses themselves allows them (as a sidecar receiver needs).
    attempt = deliver(make_policy("localhost,127.0.0.1,::1"), url)
    assert attempt.ok, attempt.error
    assert receiver.connections == 1 and receiver.requests[0].headers["Host"] == f"localhost:{receiver.port}"


def test_a_name_resolving_to_any_refused_address_is_refused_whole(receiver: Receiver) -> None:
    # Only loopback answers are delivered to: were the screen broken, the connection would reach
    # the receiver (and be counted), never another machine.
    url = receiver.url("/ok", host="hooks.example.com")
    policy = make_policy("hooks.example.com,127.0.0.1")
    for answer in (["127.0.0.2"], ["::ffff:127.0.0.2"], ["127.0.0.1", "127.0.0.2"], ["127.0.0.2", "127.0.0.1"]):
        attempt = deliver(policy, url, resolve=fake_resolver({"hooks.example.com": answer}))
        assert attempt.ok is False and attempt.error and "refused" in attempt.error and "127.0.0.2" in attempt.error
    assert receiver.connections == 0
    nothing = deliver(policy, url, resolve=fake_resolver({"hooks.example.com": []}))
    assert nothing.error and "no address" in nothing.error
    not_an_address = deliver(policy, url, resolve=fake_resolver({"hooks.example.com": ["hooks.example.com"]}))
    assert not_an_address.error and "no IP address" in not_an_address.error
    # Private and public answers together, screened without delivering (nothing is dialled).
    policy = make_policy("hooks.example.com")
    public, private = ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")
    assert policy.screen([public]) is None
    assert "10.0.0.5" in (policy.screen([public, private]) or "")


def test_proxies_from_the_environment_are_not_used(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Receiver()
    proxy.start()
    try:
        for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")
        for variable in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(variable, raising=False)
        attempt = deliver(make_policy(), receiver.url("/ok"))
        assert attempt.ok, attempt.error
        assert proxy.connections == 0 and receiver.connections == 1
    finally:
        proxy.stop()


def test_the_connection_goes_to_the_screened_address_not_the_name_again(receiver: Receiver) -> None:
    # hooks.test does not exist: had the client resolved the name itself, nothing would arrive.
    calls: list[str] = []
    policy = make_policy("hooks.test,127.0.0.1")
    attempt = deliver(
        policy, receiver.url("/ok", host="hooks.test"), resolve=fake_resolver({"hooks.test": ["127.0.0.1"]}, calls)
    )
    assert attempt.ok, attempt.error
    assert calls == ["hooks.test"]
    assert receiver.requests[0].headers["Host"] == f"hooks.test:{receiver.port}"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for hooks.test, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    command += ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=hooks.test"]
    command += ["-addext", "subjectAltName=DNS:hooks.test"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return key, cert


def test_https_connects_to_the_screened_address_and_checks_the_certificate_against_the_name(
    certificate: tuple[Path, Path],
) -> None:
    key, cert = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = Receiver(tls=tls)
    server.start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        resolve = fake_resolver({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        policy = make_policy("hooks.test,other.test,127.0.0.1")
        attempt = deliver(policy, server.url("/ok", host="hooks.test", scheme="https"), resolve=resolve, tls=trust)
        assert attempt.ok, attempt.error
        assert server.server_names == ["hooks.test"]
        assert server.requests[0].headers["Host"] == f"hooks.test:{server.port}"
        # The same address under a name the certificate does not carry: TLS refuses it.
        wrong = deliver(policy, server.url("/ok", host="other.test", scheme="https"), resolve=resolve, tls=trust)
        assert wrong.ok is False and wrong.error and "certificate" in wrong.error.lower()
        assert len(server.requests) == 1
    finally:
        server.stop()


# What check accepts and refuses, and the allow-list.

ALLOWED = "hooks.example.com,*.example.org,10.1.0.0/16,::1,127.0.0.1"


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("HTTPS://Hooks.Example.COM:8443/p?q=1#frag", "https://hooks.example.com:8443/p?q=1"),
        ("http://hooks.example.com./x", "http://hooks.example.com/x"),
        ("http://a.b.example.org/", "http://a.b.example.org/"),
        ("http://bücher.example.org/", "http://xn--bcher-kva.example.org/"),
        ("http://10.1.2.3:8080/", "http://10.1.2.3:8080/"),
        ("http://[::1]:9000/cb", "http://[::1]:9000/cb"),
        ("http://[::ffff:127.0.0.1]/cb", "http://[::ffff:127.0.0.1]/cb"),
    ],
)
def test_check_accepts_allowed_urls_and_normalizes_them(url: str, normalized: str) -> None:
    assert make_policy(ALLOWED).check(url) == normalized


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/", "http or https"),
        ("//hooks.example.com/", "http or https"),
        ("hooks.example.com/cb", "http or https"),
        ("http://user:pass@hooks.example.com/", "user info"),
        ("http://@hooks.example.com/", "user info"),
        ("http://evil.com\\@hooks.example.com/", "user info"),
        ("http:///cb", "no host"),
        ("http://hooks.example.com:0/", "port"),
        ("http://hooks.example.com:99999/", "port"),
        ("http://a/\x00", "not a valid URL"),
        ("http://01.2.3.4/", "not a valid URL"),
        ("http://2130706433/", "not a valid host name"),
        ("http://127.1/", "not a valid host name"),
        ("http://exa%20mple.com/", "not a valid host name"),
        ("http://hooks.example.com.evil.com/", "not among"),
        ("http://evilexample.org/", "not among"),
        ("http://example.org/", "not among"),  # *.example.org is the names under it
        ("http://10.2.0.1/", "not among"),
        ("http://[::2]/", "not among"),
        ("http://localhost/", "not among"),
        ("http://hooks.example.com/" + "a" * MAX_URL_CHARS, "longer than"),
        ("http://hooks.example.com/" + "é" * 1000, "once encoded"),
    ],
)
def test_check_refuses_with_a_reason(url: str, reason: str) -> None:
    assert reason in refusal(make_policy(ALLOWED), url)


def test_refusals_quote_the_client_only_through_echo() -> None:
    url = "ftp://hooks.example.com/" + "<script>" * 100
    message = refusal(make_policy(ALLOWED), url)
    assert echo(url) in message and "<script>" * 20 not in message
    host = "x" * 300 + ".example.com"
    assert echo(host) in refusal(make_policy(ALLOWED), f"http://{host}/")


def test_callbacks_are_refused_until_configured(receiver: Receiver) -> None:
    url = receiver.url("/ok")
    assert "IMGSERVE_CALLBACK_ALLOWED_HOSTS" in refusal(make_policy(""), url)
    assert "IMGSERVE_CALLBACK_SECRET" in refusal(make_policy(secret=None), url)
    attempt = deliver(make_policy(secret=None), url)
    assert attempt.ok is False and attempt.error and "IMGSERVE_CALLBACK_SECRET" in attempt.error
    assert receiver.connections == 0


def test_the_policy_reads_the_settings_and_keeps_the_secret_out_of_its_repr() -> None:
    policy = make_policy(
        "hooks.example.com",
        callback_max_attempts=3,
        callback_connect_timeout_s=2.0,
        callback_read_timeout_s=7.0,
        callback_retry_base_s=0.5,
        callback_retry_max_s=30.0,
    )
    assert policy.secret == SECRET and policy.allowed.names == {"hooks.example.com"}
    assert (policy.max_attempts, policy.connect_timeout_s, policy.read_timeout_s) == (3, 2.0, 7.0)
    assert (policy.retry_base_s, policy.retry_max_s) == (0.5, 30.0)
    assert SECRET.decode() not in repr(policy)
    assert make_policy(secret=b"").secret is None  # an empty secret is no secret


def test_the_allow_list_reads_names_wildcards_addresses_and_networks() -> None:
    allowed = AllowList.parse([" Hooks.Example.com ", "*.example.org", "10.0.0.0/8", "[::1]", "192.0.2.7", ""])
    assert allowed.names == {"hooks.example.com"} and allowed.suffixes == (".example.org",)
    assert [str(n) for n in allowed.networks] == ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]
    assert allowed.admits_address(ipaddress.ip_address("::ffff:10.9.9.9"))
    assert not allowed.admits_address(ipaddress.ip_address("::a00:1"))  # not 10.0.0.1 in another family
    assert not AllowList.parse([])


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "127.1", "not a host", "*", "*.", "bücher.de", "::g", "-a.com"])
def test_a_bad_allow_list_entry_stops_the_server(entry: str) -> None:
    with pytest.raises(ValueError, match="callback_allowed_hosts"):
        AllowList.parse([entry])


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "64:ff9b::7f00:1",
    ],
)
def test_addresses_that_are_not_public_are_refused_unless_listed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_public(ip)
    assert make_policy("hooks.example.com").screen([ip]) is not None
    network = "::/0" if ip.version == 6 else "0.0.0.0/0"
    assert make_policy(f"hooks.example.com,{network}").screen([ip]) is None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass_the_screen(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert is_public(ip)
    assert make_policy("hooks.example.com").screen([ip]) is None


HOSTS = [
    "hooks.example.com",
    "x.example.org",
    "example.org",
    "localhost",
    "10.1.2.3",
    "[::1]",
    "127.0.0.1",
    "b\u00fccher.example.org",
]
# URLs assembled from likely parts, so that many pass and the normal form is exercised too.
url_parts = st.tuples(
    st.sampled_from(["http", "https", "HTTP", "ftp"]),
    st.sampled_from(["://", "://", "://", "://", ":/"]),
    st.sampled_from(["", "", "", "", "u:p@", "@"]),
    st.one_of(st.sampled_from(HOSTS), st.text(max_size=30)),
    st.one_of(st.just(""), st.integers(-1, 70000).map(lambda p: f":{p}")),
    st.one_of(st.just(""), st.text(max_size=40).map(lambda t: "/" + t), st.text(max_size=40).map(lambda t: "?" + t)),
).map("".join)


def check_returns_a_fixed_point_or_raises_a_client_error(url: str) -> None:
    policy = make_policy(ALLOWED)
    try:
        normalized = policy.check(url)
    except ServiceError as error:
        assert error.kind is ErrorKind.INVALID_PARAMETER
        return
    assert len(normalized) <= MAX_URL_CHARS
    assert policy.check(normalized) == normalized  # normal form is a fixed point


@given(st.text(max_size=300))
def test_check_only_returns_a_url_or_raises_a_client_error_for_any_text(url: str) -> None:
    check_returns_a_fixed_point_or_raises_a_client_error(url)


@given(url_parts)
def test_check_only_returns_a_url_or_raises_a_client_error_for_url_like_text(url: str) -> None:
    check_returns_a_fixed_point_or_raises_a_client_error(url)
