"""Readiness probes: is a freshly started instance ready to take traffic?

An instance is ready when its port accepts a TCP connection and then, if the app has a
health path, ``GET <path>`` answers 2xx ``success_threshold`` times in a row (any failure
resets the streak), checks spaced ``interval`` apart and each bounded by ``timeout``.

Two additions for runtimes whose port is not the app's own socket (Docker: docker-proxy
accepts on the published port before the app in the container listens, so an accepted
connection proves nothing): with ``http_on_tcp`` and no health path, the TCP phase also
needs one complete HTTP answer to ``GET /``, whatever its status; and ``runtime_healthy``,
when given, must report healthy at the end (Docker's verdict on the image HEALTHCHECK).
Checks are spaced ``interval`` apart once one succeeded (the streak must span that time),
but while an instance is still coming up the next check comes sooner: ``backoff`` starts at
10 ms and doubles after each failure up to ``interval``, so an app that is ready in 30 ms is
seen ready then, not at the next 100 ms tick, and one that takes seconds is not hammered.
A port that refuses connections (the process runtime: the app is not listening yet) is
retried every 10 ms for the first second instead (``tcp_retry``): a refused connect to
loopback costs microseconds, and the first check after the app listens starts its readiness.
``wait_ready`` gives up with ``DeploymentFailed`` when ``ready_timeout`` passes or, at once,
when the instance's process exits; the message names the instance and the last failed check.

The HTTP client here is deliberately tiny (HTTP/1.1, ``Connection: close``, one request per
connection, plain asyncio streams) so a probe depends on nothing but the instance itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from baton.config import format_duration
from baton.errors import DeploymentFailed

_MAX_BODY = 1 << 20  # a health answer bigger than this is cut, not an error
_MAX_HEAD = 64 * 1024
_TCP_POLL = 0.05  # the TCP phase polls at most this far apart: connects to loopback are cheap
FIRST_RETRY = 0.01  # the first retry after a failed check; doubled up to the interval
FAST_TCP_WINDOW = 1.0  # seconds during which a refused port is retried every FIRST_RETRY


def backoff(failures: int, interval: float, first: float = FIRST_RETRY) -> float:
    """Seconds to wait before the next check after ``failures`` failed ones in a row:
    ``first`` doubled each time, never more than ``interval`` (nor less, if it is shorter)."""
    if failures <= 0 or interval <= first:
        return interval
    return min(interval, first * (1 << min(failures - 1, 30)))


def tcp_retry(failures: int, waited: float, interval: float, fast: bool = True) -> float:
    """Seconds before the next TCP check after ``failures`` in a row, ``waited`` seconds
    after the first: every ``FIRST_RETRY`` during ``FAST_TCP_WINDOW`` when ``fast`` (a port
    whose accepting proves the app listens), else ``backoff`` up to the TCP poll interval.
    Never more than ``interval``."""
    if fast and waited < FAST_TCP_WINDOW:
        return min(FIRST_RETRY, interval)
    return backoff(failures, min(interval, _TCP_POLL))


class ProbeError(Exception):
    """One check failed; the message says how ("connection refused", "timed out after 2s")."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return host, int(port)
    except ValueError:
        raise ProbeError(f"not an address: {address!r}") from None


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return exc.strerror or str(exc) or type(exc).__name__


async def tcp_connect(address: str, timeout: float) -> None:
    """Open and close a TCP connection; ``ProbeError`` if that fails within ``timeout``."""
    host, port = _split(address)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise ProbeError(f"TCP connect timed out after {format_duration(timeout)}") from None
    except OSError as exc:
        raise ProbeError(f"TCP connect: {_describe_os_error(exc)}") from None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def http_get(address: str, path: str, timeout: float) -> tuple[int, bytes]:
    """``GET path`` over HTTP/1.1 with ``Connection: close``: (status, body).

    The whole exchange is bounded by ``timeout``; any failure (refused, reset, time-out, a
    malformed answer) raises ``ProbeError``. Bodies over 1 MiB are cut.
    """
    host, port = _split(address)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: baton-probe\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=_MAX_HEAD)
            writer.write(request)
            await writer.drain()
            return await _read_response(reader)
    except TimeoutError:
        raise ProbeError(f"timed out after {format_duration(timeout)}") from None
    except asyncio.IncompleteReadError:
        raise ProbeError("connection closed before a complete answer") from None
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise ProbeError(f"malformed answer ({exc})") from None
    except OSError as exc:
        raise ProbeError(_describe_os_error(exc)) from None
    finally:
        if writer is not None:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readuntil(b"\r\n")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProbeError(f"malformed status line {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProbeError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while len(body) < _MAX_BODY:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, body[:_MAX_BODY]
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length < 0:
            raise ProbeError("negative Content-Length")
        return status, await reader.readexactly(min(length, _MAX_BODY))
    if status in (204, 304) or 100 <= status < 200:
        return status, b""
    return status, await reader.read(_MAX_BODY)


async def wait_ready(
    address: str,
    *,
    health_path: str | None,
    interval: float,
    timeout: float,
    success_threshold: int,
    ready_timeout: float,
    alive: Callable[[], Awaitable[bool]] | None = None,
    on_progress: Callable[[str], None] | None = None,
    instance: str | None = None,
    http_on_tcp: bool = False,
    runtime_healthy: Callable[[], Awaitable[str | None]] | None = None,
) -> None:
    """Return once the instance at ``address`` is ready; raise ``DeploymentFailed`` if it
    never is within ``ready_timeout`` or ``alive()`` reports that it exited.

    ``instance`` names the instance in messages (default: its address). ``on_progress``
    receives short lines such as ``"GET /up → 200 (1/2)"``; repeated identical failures are
    reported once. ``http_on_tcp``: see the module docstring. ``runtime_healthy`` returns
    None once the runtime's own health check passes (or when it has none), else why not.
    """
    name = instance or address
    deadline = time.monotonic() + ready_timeout
    last_failure = "no check ran"
    last_reported: str | None = None

    def progress(message: str) -> None:
        nonlocal last_reported
        if on_progress is not None and message != last_reported:
            on_progress(message)
        last_reported = message

    def fail(reason: str) -> DeploymentFailed:
        return DeploymentFailed(f"{name} {reason}: last check {last_failure}")

    async def check_alive() -> None:
        if alive is not None and not await alive():
            raise fail("exited before it became ready")

    def remaining() -> float:
        return deadline - time.monotonic()

    async def pause(seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, remaining())))

    def cut_short(budget: float) -> bool:
        # A check the deadline cut short says little: keep the last real answer for the error.
        return budget < timeout and remaining() <= 0 and last_failure != "no check ran"

    never = f"never became ready in {format_duration(ready_timeout)}"

    # Phase 1: the port accepts TCP.
    failures = 0
    began = time.monotonic()
    while True:
        await check_alive()
        if remaining() <= 0:
            raise fail(never)
        budget = min(timeout, max(remaining(), 0.001))
        try:
            await tcp_connect(address, budget)
            if http_on_tcp and health_path is None:
                status, _ = await http_get(address, "/", budget)
                progress(f"GET / → {status} (an answer of any status counts)")
            break
        except ProbeError as exc:
            if not cut_short(budget):
                last_failure = f"{exc} ({address})"
            progress(f"waiting for {address}: {exc}")
        failures += 1
        await pause(tcp_retry(failures, time.monotonic() - began, interval, not http_on_tcp))
    progress(f"{address} accepts TCP")

    # Phase 2: the health path answers 2xx success_threshold times in a row.
    streak = 0
    failures = 0
    while health_path is not None and streak < success_threshold:
        await check_alive()
        if remaining() <= 0:
            raise fail(never)
        budget = min(timeout, max(remaining(), 0.001))
        try:
            status, _ = await http_get(address, health_path, budget)
        except ProbeError as exc:
            streak = 0
            if not cut_short(budget):
                last_failure = f"GET {health_path}: {exc}"
            progress(f"GET {health_path}: {exc}")
        else:
            if 200 <= status < 300:
                streak += 1
                progress(f"GET {health_path} → {status} ({streak}/{success_threshold})")
                if streak >= success_threshold:
                    break
            else:
                streak = 0
                last_failure = f"GET {health_path} → {status}"
                progress(last_failure)
        failures = 0 if streak else failures + 1
        await pause(backoff(failures, interval))

    # Phase 3: the runtime's own health verdict (Docker's HEALTHCHECK), when it has one.
    failures = 0
    while runtime_healthy is not None:
        await check_alive()
        if remaining() <= 0:
            raise fail(never)
        why = await runtime_healthy()
        if why is None:
            return
        last_failure = why
        progress(why)
        failures += 1
        await pause(backoff(failures, interval))
