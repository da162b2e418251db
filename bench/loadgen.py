"""The load generator: a small asyncio HTTP/1.1 keep-alive client and closed/open-loop drivers.

The client is written on ``asyncio`` streams rather than ``httpx`` because the
load generator shares the machine's two cores with the server it measures:
per request it spends a fraction of what ``httpx.AsyncClient`` does (the JSON
report records the generator's own CPU next to every API figure). It speaks
only what the benchmark needs: one request at a time per connection,
``Content-Length`` or chunked responses, reconnecting when the server closed an
idle keep-alive connection.

Latencies are measured from the instant a request was *due* (open loop) or
sent (closed loop), so a slow server is never hidden by a slow generator
(coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .stats import summarize


class HttpError(Exception):
    pass


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection, used by one coroutine at a time."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._host_header = f"{host}:{port}".encode()

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def request(
        self, method: str, path: str, *, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> HttpResponse:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host_header]
        head += [f"{name}: {value}".encode() for name, value in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}".encode())
        payload = b"\r\n".join(head) + b"\r\n\r\n" + body
        reused = self._writer is not None
        try:
            return await asyncio.wait_for(self._exchange(payload), self.timeout)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            await self.close()
            if not reused:
                raise
            # The server closed an idle keep-alive connection under us: once more on a new one.
            return await asyncio.wait_for(self._exchange(payload), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def _exchange(self, payload: bytes) -> HttpResponse:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(payload)
        await self._writer.drain()
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self._reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return HttpResponse(status, headers, body)

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        chunks: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)


# --- drivers ----------------------------------------------------------------------------------------

# A request factory: (index) → (method, path, headers, body).
RequestFactory = Callable[[int], tuple[str, str, list[tuple[str, str]], bytes]]


@dataclass
class LoadResult:
    name: str
    mode: str  # "closed" or "open"
    seconds: float
    requests: int
    ok: int
    statuses: dict[str, int]
    errors: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    offered_rate: float | None = None
    late_starts: int = 0  # open loop: requests that could not start on time (no free connection)
    not_sent: int = 0  # open loop: requests never sent (the server had fallen too far behind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "statuses": self.statuses,
            "throughput_rps": round(self.ok / self.seconds, 1) if self.seconds > 0 else 0.0,
            "offered_rps": self.offered_rate,
            "late_starts": self.late_starts,
            "not_sent": self.not_sent,
            "latency_ms": summarize(self.latencies_ms),
        }


def _count(statuses: dict[str, int], key: str) -> None:
    statuses[key] = statuses.get(key, 0) + 1


async def closed_loop(
    host: str,
    port: int,
    *,
    name: str,
    factory: RequestFactory,
    concurrency: int,
    seconds: float,
    ok_status: int = 200,
    max_requests: int | None = None,
) -> LoadResult:
    """``concurrency`` connections, each sending its next request as soon as the last one answered."""
    counter = iter(range(max_requests if max_requests is not None else 10**12))
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def run_one() -> None:
        nonlocal errors
        connection = Connection(host, port)
        try:
            while time.perf_counter() < deadline:
                index = next(counter, None)
                if index is None:
                    return
                method, path, headers, body = factory(index)
                started = time.perf_counter()
                try:
                    response = await connection.request(method, path, headers=headers, body=body)
                except (TimeoutError, OSError, HttpError, asyncio.IncompleteReadError) as exc:
                    errors += 1
                    _count(statuses, type(exc).__name__)
                    continue
                _count(statuses, str(response.status))
                if response.status == ok_status:
                    latencies.append((time.perf_counter() - started) * 1000)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(run_one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return LoadResult(name, "closed", elapsed, sum(statuses.values()), len(latencies), statuses, errors, latencies)


async def open_loop(
    host: str,
    port: int,
    *,
    name: str,
    factory: RequestFactory,
    rate: float,
    seconds: float,
    max_in_flight: int = 128,
    ok_status: int = 200,
    grace: float = 5.0,
) -> LoadResult:
    """Requests due at a constant ``rate`` whether or not earlier ones have answered.

    Bounded even when the server cannot keep up: nothing is sent after ``seconds`` (those requests
    count as ``not_sent``), and requests still unanswered ``grace`` seconds later are abandoned; their
    latency is recorded as the time they had waited (a lower bound), so an overload shows in the
    percentiles instead of hiding in a shorter sample.
    """
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    errors = 0
    late = 0
    idle: list[Connection] = []
    in_flight = asyncio.Semaphore(max_in_flight)
    total = max(1, int(rate * seconds))
    start = time.perf_counter() + 0.05
    stop_sending = start + seconds + 0.5

    async def one(index: int, due: float) -> None:
        nonlocal errors
        connection = idle.pop() if idle else Connection(host, port)
        method, path, headers, body = factory(index)
        try:
            response = await connection.request(method, path, headers=headers, body=body)
        except (TimeoutError, OSError, HttpError, asyncio.IncompleteReadError) as exc:
            errors += 1
            _count(statuses, type(exc).__name__)
            await connection.close()
            return
        finally:
            in_flight.release()
        idle.append(connection)
        _count(statuses, str(response.status))
        if response.status == ok_status:
            latencies.append((time.perf_counter() - due) * 1000)

    tasks: dict[asyncio.Task[None], float] = {}
    sent = 0
    for index in range(total):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight.locked():
            late += 1
        try:
            await asyncio.wait_for(in_flight.acquire(), max(0.001, stop_sending - time.perf_counter()))
        except TimeoutError:
            break
        tasks[asyncio.create_task(one(index, due))] = due
        sent += 1
    pending: set[asyncio.Task[None]] = set()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_sending + grace - time.perf_counter()))
    now = time.perf_counter()
    for task in pending:
        task.cancel()
        _count(statuses, "abandoned")
        latencies.append((now - tasks[task]) * 1000)
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - start
    for connection in idle:
        await connection.close()
    ok = statuses.get(str(ok_status), 0)
    result = LoadResult(name, "open", elapsed, sum(statuses.values()), ok, statuses, errors, latencies)
    result.offered_rate = round(rate, 1)
    result.late_starts = late
    result.not_sent = total - sent
    return result


# --- creating payments -------------------------------------------------------------------------------


@dataclass
class CreateResult:
    requested: int
    created: list[str]  # payment ids, in request order of success
    by_index: dict[int, str]  # request index → payment id (index % len(tokens) is its owner)
    seconds: float
    statuses: dict[str, int]
    retries: int
    rejected: dict[str, int]  # problem code → count (requests that will never succeed)
    stopped_early: bool = False

    @property
    def rate(self) -> float:
        return len(self.created) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "created": len(self.created),
            "seconds": round(self.seconds, 3),
            "rate_per_s": round(self.rate, 1),
            "statuses": self.statuses,
            "retries": self.retries,
            "rejected": self.rejected,
            "stopped_early": self.stopped_early,
        }


async def create_payments(
    host: str,
    port: int,
    *,
    count: int,
    body_for: Callable[[int], bytes],
    key_for: Callable[[int], str],
    tokens: Sequence[str],
    concurrency: int,
    stop_at: float | None = None,
) -> CreateResult:
    """POST ``count`` payments (each with its own Idempotency-Key; retried with the same key)."""
    counter = iter(range(count))
    created: list[str] = []
    by_index: dict[int, str] = {}
    statuses: dict[str, int] = {}
    rejected: dict[str, int] = {}
    retries = 0
    stopped = False

    async def run_one() -> None:
        nonlocal retries, stopped
        connection = Connection(host, port)
        try:
            for index in counter:
                if stop_at is not None and time.time() >= stop_at:
                    stopped = True
                    return
                headers = [
                    ("Authorization", f"Bearer {tokens[index % len(tokens)]}"),
                    ("Idempotency-Key", key_for(index)),
                    ("Content-Type", "application/json"),
                ]
                body = body_for(index)
                for attempt in range(8):
                    try:
                        response = await connection.request("POST", "/api/v1/payments", headers=headers, body=body)
                    except (TimeoutError, OSError, HttpError, asyncio.IncompleteReadError) as exc:
                        _count(statuses, type(exc).__name__)
                        retries += 1
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    _count(statuses, str(response.status))
                    if response.status == 201:
                        created.append(response.json()["id"])
                        by_index[index] = created[-1]
                        break
                    if response.status in (409, 429) or response.status >= 500:
                        retries += 1
                        wait = float(response.headers.get("retry-after", "0") or 0)
                        await asyncio.sleep(max(0.05 * (attempt + 1), min(wait, 2.0)))
                        continue
                    try:
                        code = str(response.json().get("code", response.status))
                    except ValueError:
                        code = str(response.status)
                    _count(rejected, code)
                    break
                else:
                    _count(rejected, "gave_up")
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(run_one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return CreateResult(count, created, by_index, elapsed, statuses, retries, rejected, stopped)
