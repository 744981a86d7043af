"""A bounded HTTP/1.1 load generator that notices every failed request.

Integration tests run it while they deploy, kill or drain things, then assert on what the
clients saw: no failure, and after the cutover only the new release answered.

Theory of operation: `concurrency` workers each hold one keep-alive connection (raw asyncio
streams, no client library that would silently retry or pool) and send `GET path` on it,
one request at a time. A response is read completely (Content-Length, chunked, or until
close) and recorded with its status and body. Anything else is a *failure* with a kind:

- `refused`, `connect_timeout`, `connect_error`: could not connect;
- `reset`: the connection was reset (or broke while writing);
- `closed_before_response`: the server closed a fresh connection without answering;
- `closed_idle_keepalive`: the server closed a reused keep-alive connection without
  answering and without having said `Connection: close` (real clients often retry this
  race; Baton must not cause it, so it counts);
- `incomplete_headers`, `incomplete_body`: the response stopped part-way;
- `timeout`: no complete response within `timeout` seconds;
- `protocol_error`: the bytes were not an HTTP/1.x response.

After a failure the worker reconnects (with a short pause if connecting itself failed). A
response with `Connection: close` (or HTTP/1.0 without keep-alive) followed by the close is
*not* a failure: the worker reconnects for the next request.

Every run is bounded twice: `max_requests` in total and `max_seconds` of wall time; it
stops by itself at whichever comes first, or when `stop()` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
MAX_RECORDED_BODY = 4096


class Sample(NamedTuple):
    """One request as the client saw it: `t` when it ended, `sent` when it began.

    A response has `status` and `body`; a failure has `error` (its kind) and `body` None.
    """

    t: float
    body: str | None
    status: int | None = None
    error: str | None = None
    sent: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def value(self) -> str:
        """The body, or `error:<kind>`."""
        return self.body if self.body is not None else f"error:{self.error}"


@dataclass
class LoadResult:
    total: int
    failures: list[tuple[str, str]]
    statuses: Counter[int]
    bodies: Counter[str]
    timeline: list[Sample]
    markers: dict[str, float]
    started: float
    stopped: float

    @property
    def succeeded(self) -> int:
        return self.total - len(self.failures)

    @property
    def duration(self) -> float:
        return self.stopped - self.started

    def sent_after(self, t: float) -> list[Sample]:
        """Requests *sent* at or after `t` (ones in flight at `t` may end either way)."""
        return [s for s in self.timeline if s.sent >= t]

    def bodies_sent_after(self, t: float) -> Counter[str]:
        return Counter(s.body for s in self.sent_after(t) if s.body is not None)

    def failure_kinds(self) -> Counter[str]:
        return Counter(kind for kind, _ in self.failures)

    def summary(self) -> str:
        return (
            f"{self.total} requests in {self.duration:.1f}s, {len(self.failures)} failed "
            f"{dict(self.failure_kinds())}, statuses {dict(self.statuses)}, "
            f"bodies {dict(self.bodies.most_common(5))}"
        )


class _Failure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class _Response:
    status: int
    body: bytes
    keep_alive: bool


# Private test subnets a network-namespace lab of this process made (tests.support.netns
# registers its /24 while the lab exists): the only non-loopback addresses load may target.
LAB_SUBNET = ipaddress.IPv4Network("10.213.0.0/16")
_lab_networks: set[ipaddress.IPv4Network] = set()


def allow_lab_network(network: str) -> None:
    """Let load reach ``network`` (a /24 inside 10.213.0.0/16 that a netns lab created)."""
    net = ipaddress.IPv4Network(network)
    if not net.subnet_of(LAB_SUBNET):
        raise ValueError(f"{net} is not inside the netns labs' {LAB_SUBNET}")
    _lab_networks.add(net)


def forbid_lab_network(network: str) -> None:
    _lab_networks.discard(ipaddress.IPv4Network(network))


def _check_loopback(host: str) -> None:
    """Targets stay on 127/8, or on a live netns lab's own subnet (addresses a test made)."""
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot resolve load target {host!r}: {e}") from e
    if addr.is_loopback:
        return
    if any(addr in net for net in _lab_networks):
        return
    raise ValueError(
        f"load target {host} ({addr}) is not loopback nor in a live netns lab's subnet; "
        "tests stay on 127/8"
    )


def parse_target(target: str | tuple[str, int], path: str | None) -> tuple[str, int, str]:
    if isinstance(target, tuple):
        host, port = target
        return host, port, path or "/"
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"load target must be http://host:port/..., got {target!r}")
    url_path = parts.path or "/"
    if parts.query:
        url_path += "?" + parts.query
    return parts.hostname, parts.port or 80, path or url_path


class Load:
    """Start with `await load.start(...)`, do things, `await load.stop()` for the result."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._issued = 0
        self._max_requests = 0
        self._deadline = 0.0
        self.failures: list[tuple[str, str]] = []
        self.statuses: Counter[int] = Counter()
        self.bodies: Counter[str] = Counter()
        self.timeline: list[Sample] = []
        self.markers: dict[str, float] = {}
        self.started = 0.0
        self._stopped: float | None = None
        self._tls: ssl.SSLContext | None = None
        self._sni: str | None = None

    async def start(
        self,
        target: str | tuple[str, int],
        *,
        path: str | None = None,
        concurrency: int = 8,
        max_requests: int = 20_000,
        max_seconds: float = 30.0,
        host_header: str | None = None,
        timeout: float = 10.0,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Load:
        """Begin sending. `delay` is a pause between one worker's requests (0 = flat out).

        With `tls`, every connection is HTTPS (SNI `server_hostname`, else the Host name).
        """
        if self._tasks:
            raise RuntimeError("Load already started")
        if max_requests <= 0 or max_seconds <= 0:
            raise ValueError("max_requests and max_seconds must both be positive")
        host, port, req_path = parse_target(target, path)
        _check_loopback(host)
        host_value = host_header or (host if port == 80 else f"{host}:{port}")
        head = f"GET {req_path} HTTP/1.1\r\nHost: {host_value}\r\nUser-Agent: baton-load\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        request = (head + "\r\n").encode("latin-1")
        self._max_requests = max_requests
        self._tls = tls
        self._sni = server_hostname or (host_header or host).partition(":")[0]
        self.started = time.monotonic()
        self._deadline = self.started + max_seconds
        self._tasks = [
            asyncio.create_task(self._worker(host, port, request, timeout, delay))
            for _ in range(concurrency)
        ]
        return self

    def marker(self, name: str = "mark") -> float:
        """Record 'now' under `name` (e.g. the cutover) and return it."""
        t = time.monotonic()
        self.markers[name] = t
        return t

    @property
    def done(self) -> bool:
        return bool(self._tasks) and all(t.done() for t in self._tasks)

    async def wait(self) -> LoadResult:
        """Wait until the load stops by itself (request or time budget spent)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._raise_crashed()
        return self._result()

    async def stop(self, grace: float = 15.0) -> LoadResult:
        """Stop sending; in-flight requests finish (up to `grace` s, then are cancelled)."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._raise_crashed()
        return self._result()

    def _raise_crashed(self) -> None:
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                raise RuntimeError("a load worker crashed (bug in the load generator)") from (
                    task.exception()
                )

    async def run(self, target: str | tuple[str, int], **kwargs: object) -> LoadResult:
        """Start and wait until the budget is spent."""
        await self.start(target, **kwargs)  # type: ignore[arg-type]
        return await self.wait()

    def _result(self) -> LoadResult:
        if self._stopped is None:
            self._stopped = time.monotonic()
        return LoadResult(
            total=len(self.timeline),
            failures=list(self.failures),
            statuses=Counter(self.statuses),
            bodies=Counter(self.bodies),
            timeline=sorted(self.timeline, key=lambda s: s.t),
            markers=dict(self.markers),
            started=self.started,
            stopped=self._stopped,
        )

    # -- workers ---------------------------------------------------------------------------

    def _claim(self) -> bool:
        if self._stopping.is_set() or time.monotonic() >= self._deadline:
            return False
        if self._issued >= self._max_requests:
            return False
        self._issued += 1
        return True

    def _record(self, status: int, body: str, sent: float) -> None:
        self.timeline.append(Sample(time.monotonic(), body, status, sent=sent))
        self.statuses[status] += 1
        self.bodies[body] += 1

    def _fail(self, kind: str, detail: str, sent: float) -> None:
        self.timeline.append(Sample(time.monotonic(), None, error=kind, sent=sent))
        self.failures.append((kind, detail))

    async def _worker(
        self, host: str, port: int, request: bytes, timeout: float, delay: float
    ) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        reused = False
        try:
            while self._claim():
                sent = time.monotonic()
                try:
                    if writer is not None:
                        # Let a FIN that already arrived be seen before reusing the connection.
                        await asyncio.sleep(0)
                        assert reader is not None
                        if reader.at_eof():
                            _close(writer)
                            writer = None
                    if writer is None:
                        reader, writer = await _connect(host, port, timeout, self._tls, self._sni)
                        reused = False
                    assert reader is not None
                    response = await asyncio.wait_for(
                        _exchange(reader, writer, request, reused), timeout
                    )
                except _Failure as f:
                    self._fail(f.kind, f.detail, sent)
                    if writer is not None:
                        _close(writer)
                    writer = None
                    if f.kind in ("refused", "connect_timeout", "connect_error"):
                        await self._pause(0.05)
                    continue
                except TimeoutError:
                    self._fail("timeout", f"no complete response in {timeout:g}s", sent)
                    if writer is not None:
                        _close(writer)
                    writer = None
                    continue
                body = response.body
                text = (
                    body.decode("utf-8", "replace")
                    if len(body) <= MAX_RECORDED_BODY
                    else f"<{len(body)} bytes>"
                )
                self._record(response.status, text, sent)
                if response.keep_alive:
                    reused = True
                else:
                    assert writer is not None
                    _close(writer)
                    writer = None
                if delay > 0:
                    await self._pause(delay)
        finally:
            if writer is not None:
                _close(writer)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def _connect(
    host: str,
    port: int,
    timeout: float,
    tls: ssl.SSLContext | None = None,
    sni: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                limit=MAX_HEADER_BYTES,
                ssl=tls,
                server_hostname=sni if tls is not None else None,
            ),
            timeout,
        )
    except ConnectionRefusedError as e:
        raise _Failure("refused", str(e)) from None
    except TimeoutError:
        raise _Failure("connect_timeout", f"{host}:{port}") from None
    except OSError as e:
        raise _Failure("connect_error", repr(e)) from None


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, reused: bool
) -> _Response:
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader, reused=reused)
    except OSError as e:  # ConnectionResetError, BrokenPipeError, ...
        raise _Failure("reset", repr(e)) from None
    except (asyncio.LimitOverrunError, ValueError) as e:
        raise _Failure("protocol_error", repr(e)) from None


async def read_response(
    reader: asyncio.StreamReader, *, reused: bool = False, head_request: bool = False
) -> _Response:
    """Read one complete HTTP/1.x response (skipping 1xx interim ones) or raise `_Failure`."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                kind = "closed_idle_keepalive" if reused else "closed_before_response"
                raise _Failure(kind, "connection closed before any response byte") from None
            raise _Failure("incomplete_headers", repr(e.partial[:200])) from None
        except asyncio.LimitOverrunError:
            raise _Failure("protocol_error", "response headers too large") from None
        status, version, headers = _parse_head(raw)
        if 100 <= status < 200 and status != 101:
            continue
        break
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when asked.
    keep_alive = (
        ("keep-alive" in connection) if version == "HTTP/1.0" else ("close" not in connection)
    )
    if head_request or status in (204, 304) or 100 <= status < 200:
        return _Response(status, b"", keep_alive)
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise _Failure("protocol_error", "bad Content-Length") from None
            body = await reader.readexactly(length)
        else:
            body = await reader.read()  # delimited by the close
            keep_alive = False
    except asyncio.IncompleteReadError as e:
        raise _Failure("incomplete_body", f"got {len(e.partial)} bytes, status {status}") from None
    return _Response(status, body, keep_alive)


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise _Failure("protocol_error", f"bad status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _Failure("protocol_error", f"bad header line {line[:100]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), parts[0], headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Failure("protocol_error", f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise _Failure("protocol_error", "chunk not followed by CRLF")
