"""SandboxGateway's edges that a healthy sandbox never shows.

Two kinds of stub: a pool whose ``urlopen`` a test scripts (what the adapter sends, how it reads answers and
exceptions), and a scripted TCP server (what urllib3 itself raises when a real connection misbehaves: refused,
closed under a request, cut short, silent, closed while idle in the pool).
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3 import exceptions as u3

from payments.gateways import classification
from payments.gateways import sandbox as sandbox_module
from payments.gateways.base import ChargeRequest, GatewayLookupError, OutcomeKind
from payments.gateways.sandbox import KeepAlivePool, SandboxGateway, charge_body

MakeRequest = Callable[..., ChargeRequest]


# --- a pool whose answers the test scripts ----------------------------------------------------------------------
@dataclass
class Sent:
    method: str
    url: str
    body: bytes | None
    headers: dict[str, str]
    options: dict[str, Any]


Handler = Callable[[Sent], urllib3.BaseHTTPResponse]


class StubPool(urllib3.HTTPConnectionPool):
    def __init__(self, handler: Handler) -> None:
        super().__init__("sandbox.test", 80)
        self.handler = handler
        self.seen: list[Sent] = []

    def urlopen(self, method, url, body=None, headers=None, **options):  # type: ignore[override]
        sent = Sent(method, url, body, dict(headers or {}), options)
        self.seen.append(sent)
        return self.handler(sent)


def reply(
    status: int, payload: Any = None, *, text: str | None = None, headers: dict[str, str] | None = None
) -> urllib3.HTTPResponse:
    body = text.encode() if text is not None else b"" if payload is None else json.dumps(payload).encode()
    return urllib3.HTTPResponse(body=body, status=status, headers=headers or {}, preload_content=True)


def stubbed(handler: Handler, **options: Any) -> tuple[SandboxGateway, StubPool]:
    pool = StubPool(handler)
    return SandboxGateway(base_url="http://sandbox.test", pool_factory=lambda: pool, **options), pool


def _raise(exc: Exception) -> Handler:
    def handler(sent: Sent) -> urllib3.BaseHTTPResponse:
        raise exc

    return handler


def test_it_posts_the_contracts_body_with_the_idempotency_key(make_request: MakeRequest):
    gateway, pool = stubbed(lambda sent: reply(201, {"id": "ch_1", "status": "succeeded"}))
    request = make_request(amount=Decimal("125.5"))

    gateway.charge(request)

    [sent] = pool.seen
    assert sent.method == "POST"
    assert sent.url == "/v1/charges"
    assert sent.headers["Idempotency-Key"] == request.idempotency_key
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.body or b"") == {
        "amount": "125.50",
        "currency": "EUR",
        "payment_method": "pm_card_visa",
        "metadata": {"payment_id": request.payment_id},
    }
    # one call, one request: urllib3 must never retry a POST or follow a redirect on its own
    assert sent.options["retries"] is False
    assert sent.options["redirect"] is False


def test_a_base_url_with_a_path_prefixes_every_request(make_request: MakeRequest):
    pool = StubPool(lambda sent: reply(201, {"id": "ch_1", "status": "succeeded"}))
    gateway = SandboxGateway(base_url="http://sandbox.test/gw/", pool_factory=lambda: pool)

    gateway.charge(make_request())

    assert pool.seen[0].url == "/gw/v1/charges"


@given(
    payment_method=st.text(min_size=1, max_size=40),
    payment_id=st.text(min_size=1, max_size=40),
    currency=st.sampled_from(["EUR", "JPY", "BHD"]),
)
@settings(max_examples=200, deadline=None)
def test_the_body_is_exactly_what_json_dumps_writes(payment_method: str, payment_id: str, currency: str):
    request = ChargeRequest(
        payment_id=payment_id, idempotency_key="k", amount=Decimal(7), currency=currency, payment_method=payment_method
    )
    amount = {"EUR": "7.00", "JPY": "7", "BHD": "7.000"}[currency]

    expected = {"amount": amount, "currency": currency, "payment_method": payment_method}
    expected["metadata"] = {"payment_id": payment_id}  # type: ignore[assignment]
    assert charge_body(request) == json.dumps(expected, separators=(",", ":")).encode()


def test_it_sends_nothing_for_an_amount_it_would_have_to_round(make_request: MakeRequest):
    gateway, pool = stubbed(_raise(AssertionError("nothing may be sent")))

    outcome = gateway.charge(make_request(amount=Decimal("0.5"), currency="JPY"))

    assert outcome.kind is OutcomeKind.DECLINED
    assert outcome.failure_code == "gateway_rejected"
    assert pool.seen == []


def test_a_429_is_retryable_with_retry_after(make_request: MakeRequest):
    gateway, _ = stubbed(lambda sent: reply(429, headers={"Retry-After": "3"}))

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.retry_after_seconds == 3.0


def test_a_503_with_an_empty_body_is_retryable(make_request: MakeRequest):
    gateway, _ = stubbed(lambda sent: reply(503))

    assert gateway.charge(make_request()).kind is OutcomeKind.RETRYABLE


def test_a_2xx_that_is_not_json_is_unknown(make_request: MakeRequest):
    gateway, _ = stubbed(lambda sent: reply(201, text="<html>ok</html>"))

    assert gateway.charge(make_request()).kind is OutcomeKind.UNKNOWN


def test_a_2xx_that_is_not_utf8_is_unknown(make_request: MakeRequest):
    gateway, _ = stubbed(lambda sent: urllib3.HTTPResponse(body=b"\xff\xfe{", status=201))

    assert gateway.charge(make_request()).kind is OutcomeKind.UNKNOWN


def test_a_bug_inside_the_adapter_is_unknown_not_an_exception(make_request: MakeRequest, monkeypatch):
    gateway, _ = stubbed(lambda sent: reply(201, {"id": "ch_1", "status": "succeeded"}))
    monkeypatch.setattr("payments.gateways.classification.classify_http_response", lambda *a: 1 / 0, raising=True)

    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.needs_operator


# Every urllib3 exception that can reach the adapter, and what it must mean. RETRYABLE only where urllib3 raises
# it before a byte of the request is written (connect, or waiting for a pooled connection).
URLLIB3_ERRORS: list[tuple[Exception, OutcomeKind]] = [
    (u3.NewConnectionError(None, "refused"), OutcomeKind.RETRYABLE),  # type: ignore[arg-type]
    (u3.NameResolutionError("sandbox.test", None, socket.gaierror()), OutcomeKind.RETRYABLE),  # type: ignore[arg-type]
    (u3.ConnectTimeoutError("connect timed out"), OutcomeKind.RETRYABLE),
    (u3.EmptyPoolError(None, "pool empty"), OutcomeKind.RETRYABLE),  # type: ignore[arg-type]
    (u3.ClosedPoolError(None, "pool closed"), OutcomeKind.RETRYABLE),  # type: ignore[arg-type]
    (u3.ReadTimeoutError(None, "/v1/charges", "read timed out"), OutcomeKind.UNKNOWN),  # type: ignore[arg-type]
    (u3.ProtocolError("Connection aborted.", ConnectionResetError()), OutcomeKind.UNKNOWN),
    (u3.ProtocolError("Connection aborted.", BrokenPipeError()), OutcomeKind.UNKNOWN),
    (u3.ResponseNotChunked("not chunked"), OutcomeKind.UNKNOWN),
    (u3.IncompleteRead(10, 90), OutcomeKind.UNKNOWN),
    (u3.InvalidChunkLength(urllib3.HTTPResponse(body=b""), b"zz"), OutcomeKind.UNKNOWN),
    (u3.SSLError("handshake or mid-stream: cannot tell"), OutcomeKind.UNKNOWN),
    (u3.ProxyError("proxy", OSError()), OutcomeKind.UNKNOWN),
    (u3.DecodeError("bad gzip"), OutcomeKind.UNKNOWN),
    (u3.MaxRetryError(None, "/v1/charges"), OutcomeKind.UNKNOWN),  # type: ignore[arg-type]
    (u3.HTTPError("anything else"), OutcomeKind.UNKNOWN),
]


@pytest.mark.parametrize(("error", "kind"), URLLIB3_ERRORS, ids=[type(e).__name__ for e, _ in URLLIB3_ERRORS])
def test_each_urllib3_error_maps_to_its_outcome(make_request: MakeRequest, error: Exception, kind: OutcomeKind):
    gateway, _ = stubbed(_raise(error))

    outcome = gateway.charge(make_request())

    assert outcome.kind is kind
    assert outcome.detail.startswith(type(error).__name__)
    assert not outcome.needs_operator


def test_only_urllib3_errors_raised_before_sending_are_retryable():
    rules = classification.URLLIB3_ERROR_RULES
    retryable = {exc_type for exc_type, rule in rules if rule.kind is OutcomeKind.RETRYABLE}

    # each is raised by urllib3 only while connecting or waiting for a pooled connection; a new entry here needs
    # the same proof (a wrong RETRYABLE is a double charge)
    assert retryable == {u3.ConnectTimeoutError, u3.EmptyPoolError, u3.ClosedPoolError}


def test_charge_many_isolates_failures_and_keeps_order(make_request: MakeRequest):
    def handler(sent: Sent) -> urllib3.BaseHTTPResponse:
        amount = json.loads(sent.body or b"")["amount"]
        if amount == "2.00":
            raise u3.ReadTimeoutError(None, sent.url, "lost")  # type: ignore[arg-type]
        if amount == "3.00":
            raise u3.NewConnectionError(None, "refused")  # type: ignore[arg-type]
        return reply(201, {"id": f"ch_{amount}", "status": "succeeded"})

    requests = [make_request(amount=Decimal(f"{i}.00")) for i in range(1, 6)]
    gateway, _ = stubbed(handler, concurrency=4)

    outcomes = gateway.charge_many(requests)

    assert [o.kind for o in outcomes] == [
        OutcomeKind.SUCCEEDED,
        OutcomeKind.UNKNOWN,
        OutcomeKind.RETRYABLE,
        OutcomeKind.SUCCEEDED,
        OutcomeKind.SUCCEEDED,
    ]
    assert outcomes[3].reference == "ch_4.00"
    gateway.close()


@pytest.mark.parametrize("concurrency", [1, 2, 7, 64])
def test_charge_many_returns_one_outcome_per_request_in_order(make_request: MakeRequest, concurrency: int):
    def handler(sent: Sent) -> urllib3.BaseHTTPResponse:
        time.sleep(0.001)
        return reply(201, {"id": "ch_" + sent.headers["Idempotency-Key"], "status": "succeeded"})

    requests = [make_request() for _ in range(50)]
    gateway, pool = stubbed(handler, concurrency=concurrency)

    outcomes = gateway.charge_many(requests)

    assert [o.reference for o in outcomes] == [f"ch_{r.idempotency_key}" for r in requests]
    assert len(pool.seen) == 50  # each request sent exactly once
    gateway.close()


def test_charge_many_of_nothing_is_nothing():
    gateway, _ = stubbed(lambda sent: reply(500))

    assert gateway.charge_many([]) == []


def test_charge_many_without_threads_still_charges_everything(make_request: MakeRequest):
    gateway, _ = stubbed(lambda sent: reply(201, {"id": "ch_1", "status": "succeeded"}), concurrency=4)
    gateway._per_process.executor.get().shutdown()  # submit() now raises RuntimeError: the calling thread does the work

    outcomes = gateway.charge_many([make_request() for _ in range(5)])

    assert [o.kind for o in outcomes] == [OutcomeKind.SUCCEEDED] * 5


@pytest.mark.parametrize(
    "response",
    [
        reply(500),
        reply(200, text="not json"),
        reply(200),
        reply(200, {"unexpected": []}),
        reply(200, {"results": [{"id": "ch_1"}]}),
        reply(
            200,
            {
                "results": [
                    {"id": "ch_1", "status": "succeeded", "idempotency_key": "k", "amount": "x", "currency": "EUR"}
                ]
            },
        ),
    ],
    ids=["500", "not-json", "empty", "no-results", "incomplete-charge", "bad-amount"],
)
def test_find_charge_raises_when_the_answer_proves_nothing(response):
    gateway, _ = stubbed(lambda sent: response)

    with pytest.raises(GatewayLookupError):
        gateway.find_charge("k")


@pytest.mark.parametrize(
    "error",
    [
        u3.ReadTimeoutError(None, "/v1/charges", "slow"),  # type: ignore[arg-type]
        u3.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        u3.ProtocolError("Connection aborted.", ConnectionResetError()),
    ],
    ids=lambda e: type(e).__name__,
)
def test_find_charge_raises_on_a_network_error(error: Exception):
    gateway, _ = stubbed(_raise(error))

    with pytest.raises(GatewayLookupError):
        gateway.find_charge("k")


def test_find_charge_asks_by_idempotency_key():
    gateway, pool = stubbed(lambda sent: reply(200, {"results": []}))

    assert gateway.find_charge("pay_1:2 &x=y#z") is None

    [sent] = pool.seen
    assert sent.method == "GET"
    url = urlsplit(sent.url)
    assert url.path == "/v1/charges"
    assert parse_qs(url.query) == {"idempotency_key": ["pay_1:2 &x=y#z"]}
    assert sent.options["retries"] is False


# --- configuration -----------------------------------------------------------------------------------------------
def test_the_pool_never_retries_and_never_outgrows_the_threads():
    gateway = SandboxGateway(base_url="http://127.0.0.1:8799", timeout=7.0, concurrency=12)
    pool = gateway._per_process.client.get()

    assert isinstance(pool, KeepAlivePool)
    assert pool.retries is False
    assert pool.block is True
    assert pool.pool is not None
    assert pool.pool.maxsize == 12
    assert pool.timeout.connect_timeout == 2.0
    assert pool.timeout.read_timeout == 7.0
    assert (pool.host, pool.port) == ("127.0.0.1", 8799)
    gateway.close()


def test_an_https_url_gets_a_tls_pool():
    gateway = SandboxGateway(base_url="https://gateway.test", timeout=5.0)

    pool = gateway._per_process.client.get()

    assert isinstance(pool, urllib3.HTTPSConnectionPool)
    assert isinstance(pool, KeepAlivePool)
    assert pool.host == "gateway.test"
    gateway.close()


@pytest.mark.parametrize("url", ["ftp://gateway.test", "gateway.test:8700", "http://"])
def test_a_url_it_cannot_speak_to_refuses_to_start(url: str):
    with pytest.raises(ImproperlyConfigured):
        SandboxGateway(base_url=url, timeout=5.0)


# --- one pool per process ---------------------------------------------------------------------------------------
def _child_uses_its_own_pool(gateway: SandboxGateway, parent_pool_id: int, queue: Any) -> None:
    pool = gateway._per_process.client.get()
    queue.put((id(pool) != parent_pool_id, pool.pool is not None))


def test_a_forked_child_builds_its_own_pool():
    # given a gateway whose pool the parent (a Celery prefork master, say) already created
    gateway = SandboxGateway(base_url="http://sandbox.test")
    parent_pool = gateway._per_process.client.get()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    child = context.Process(target=_child_uses_its_own_pool, args=(gateway, id(parent_pool), queue))
    child.start()
    child.join(10)

    assert child.exitcode == 0
    assert queue.get(timeout=5) == (True, True)
    # and the parent's pool is untouched
    assert gateway._per_process.client.get() is parent_pool
    assert parent_pool.pool is not None
    gateway.close()


def test_close_releases_and_a_later_call_reconnects(make_request: MakeRequest):
    gateway = SandboxGateway(base_url="http://sandbox.test", pool_factory=lambda: StubPool(_ok))
    first = gateway._per_process.client.get()

    gateway.close()

    assert first.pool is None  # closed
    assert gateway.charge(make_request()).kind is OutcomeKind.SUCCEEDED
    assert gateway._per_process.client.get() is not first


def _ok(sent: Sent) -> urllib3.BaseHTTPResponse:
    return reply(201, {"id": "ch_1", "status": "succeeded"})


# --- real sockets: what urllib3 raises when a connection misbehaves ---------------------------------------------
@dataclass
class Connection:
    sock: socket.socket
    buffer: bytes = b""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def read_request(self) -> dict[str, Any] | None:
        """The next request on this connection, or None when the client closed it."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        request = {"line": lines[0], "headers": headers, "body": body}
        self.requests.append(request)
        return request

    def answer(self, status: int, payload: Any, *, declared_length: int | None = None) -> None:
        body = json.dumps(payload).encode()
        length = len(body) if declared_length is None else declared_length
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        self.sock.sendall(head.encode() + body)

    def reset(self) -> None:
        """Close with RST rather than FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()


Script = Callable[[int, Connection], None]


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and runs ``script(connection_number, connection)`` for each."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[Connection] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            connection = Connection(sock)
            self.connections.append(connection)
            threading.Thread(target=self._run, args=(len(self.connections), connection), daemon=True).start()

    def _run(self, number: int, connection: Connection) -> None:
        try:
            self.script(number, connection)
        except OSError:
            pass
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            connection.sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
        assert server.errors == []


def _answer_all(number: int, connection: Connection) -> None:
    while connection.read_request() is not None:
        connection.answer(201, {"id": f"ch_{number}_{len(connection.requests)}", "status": "succeeded"})


@pytest.fixture
def adapters() -> Iterator[Callable[..., SandboxGateway]]:
    made: list[SandboxGateway] = []

    def make(url: str, **options: Any) -> SandboxGateway:
        made.append(SandboxGateway(base_url=url, **({"timeout": 2.0} | options)))
        return made[-1]

    yield make
    for gateway in made:
        gateway.close()


def test_a_refused_connection_is_retryable(adapters, make_request: MakeRequest):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    outcome = adapters(f"http://127.0.0.1:{port}").charge(make_request())

    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.detail.startswith("NewConnectionError")


def test_a_connection_closed_under_the_request_is_unknown(serve, adapters, make_request: MakeRequest):
    server = serve(lambda number, connection: connection.read_request())  # read it, then close: a drop

    outcome = adapters(server.url).charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.detail.startswith("ProtocolError")


def test_a_connection_reset_under_the_request_is_unknown(serve, adapters, make_request: MakeRequest):
    def script(number: int, connection: Connection) -> None:
        connection.read_request()
        connection.reset()

    outcome = adapters(serve(script).url).charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.detail.startswith("ProtocolError")


def test_an_answer_cut_short_is_unknown(serve, adapters, make_request: MakeRequest):
    def script(number: int, connection: Connection) -> None:
        connection.read_request()
        connection.answer(201, {"id": "ch_1", "status": "succeeded"}, declared_length=500)

    outcome = adapters(serve(script).url).charge(make_request())

    assert outcome.kind is OutcomeKind.UNKNOWN
    assert outcome.detail.startswith("ProtocolError")  # urllib3 wraps the IncompleteRead


def test_a_late_answer_is_unknown_and_never_read_as_the_next_ones(serve, adapters, make_request: MakeRequest):
    def script(number: int, connection: Connection) -> None:
        if number == 1:  # answers too late, then would answer the next request on the same connection
            connection.read_request()
            time.sleep(0.5)
            connection.answer(201, {"id": "ch_late", "status": "succeeded"})
        _answer_all(number, connection)

    gateway = adapters(serve(script).url, timeout=0.2, concurrency=1)

    first = gateway.charge(make_request())
    second = gateway.charge(make_request())

    assert first.kind is OutcomeKind.UNKNOWN
    assert first.detail.startswith("ReadTimeoutError")
    # the timed-out connection was thrown away: the second request went out on a new one
    assert second.kind is OutcomeKind.SUCCEEDED
    assert second.reference == "ch_2_1"


def test_a_keep_alive_connection_the_server_closed_is_replaced_before_sending(
    serve, adapters, make_request: MakeRequest
):
    def script(number: int, connection: Connection) -> None:
        request = connection.read_request()
        if request is not None:
            connection.answer(201, {"id": f"ch_{number}", "status": "succeeded"})
        # then close the idle keep-alive connection (FIN), as a server restarting or timing it out does

    server = serve(script)
    gateway = adapters(server.url, concurrency=1)
    assert gateway.charge(make_request()).reference == "ch_1"
    time.sleep(0.1)  # the server's FIN has arrived

    outcome = gateway.charge(make_request())

    # urllib3 saw the close when it took the connection from the pool and reconnected before writing a byte:
    # the request provably never went out on the dead connection, so a transparent reconnect is safe
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.reference == "ch_2"
    assert [len(c.requests) for c in server.connections] == [1, 1]


def test_a_connection_idle_past_the_expiry_is_replaced(serve, adapters, make_request: MakeRequest, monkeypatch):
    monkeypatch.setattr(sandbox_module, "KEEPALIVE_EXPIRY_SECONDS", 0.05)
    server = serve(_answer_all)
    gateway = adapters(server.url, concurrency=1)

    gateway.charge(make_request())
    gateway.charge(make_request())  # reused: within the expiry
    time.sleep(0.1)
    outcome = gateway.charge(make_request())

    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert [len(c.requests) for c in server.connections] == [2, 1]
    pool = gateway._per_process.client.get()
    assert isinstance(pool, KeepAlivePool)
    assert pool.expired_connections == 1


def test_keep_alive_connections_are_reused_across_batches(serve, adapters, make_request: MakeRequest):
    server = serve(_answer_all)
    gateway = adapters(server.url, concurrency=4)

    for _ in range(5):
        outcomes = gateway.charge_many([make_request() for _ in range(4)])
        assert all(o.kind is OutcomeKind.SUCCEEDED for o in outcomes)

    assert len(server.connections) <= 4
    assert sum(len(c.requests) for c in server.connections) == 20
