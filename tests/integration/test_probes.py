"""Readiness probes against real sockets: nothing listening, flaky servers, the example app."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from baton.deploy.probes import ProbeError, http_get, tcp_connect, wait_ready
from baton.errors import DeploymentFailed
from baton.runtime.base import InstanceSpec
from baton.runtime.process import ProcessRuntime

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "app"

Responder = Callable[[int], bytes]  # request number (from 1) -> raw HTTP answer
Serve = Callable[[Responder], Awaitable[str]]


def answer(status: int, body: bytes = b"", chunked: bool = False) -> bytes:
    reason = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "X")
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:3], body[3:]) if p)
        return (
            f"HTTP/1.1 {status} {reason}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + chunks
            + b"0\r\n\r\n"
        )
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a raw HTTP server on 127.0.0.1; each connection gets responder(n)."""
    servers: list[asyncio.Server] = []

    async def start(responder: Responder) -> str:
        count = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            try:
                await reader.readuntil(b"\r\n\r\n")
                data = responder(count)
                if data:
                    writer.write(data)
                    await writer.drain()
                else:
                    await asyncio.sleep(30)  # accept, never answer
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def unused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def test_http_get_reads_content_length_and_chunked_bodies(serve: Serve) -> None:
    plain = await serve(lambda n: answer(200, b"hello"))
    chunked = await serve(lambda n: answer(503, b"chunky", chunked=True))
    assert await http_get(plain, "/up", timeout=5) == (200, b"hello")
    assert await http_get(chunked, "/up", timeout=5) == (503, b"chunky")


async def test_http_get_failures_are_probe_errors_with_a_reason(serve: Serve) -> None:
    with pytest.raises(ProbeError, match="refused"):
        await http_get(unused_address(), "/up", timeout=2)
    silent = await serve(lambda n: b"")
    with pytest.raises(ProbeError, match="timed out after 200ms"):
        await http_get(silent, "/up", timeout=0.2)
    garbage = await serve(lambda n: b"SMTP ready\r\n\r\n")
    with pytest.raises(ProbeError, match="malformed"):
        await http_get(garbage, "/up", timeout=2)
    with pytest.raises(ProbeError, match="refused"):
        await tcp_connect(unused_address(), timeout=2)


async def test_an_address_nobody_listens_on_never_becomes_ready() -> None:
    address = unused_address()
    with pytest.raises(DeploymentFailed) as caught:
        await wait_ready(
            address,
            health_path="/up",
            interval=0.02,
            timeout=0.5,
            success_threshold=1,
            ready_timeout=0.3,
            instance="shop v2 #0",
        )
    message = str(caught.value)
    assert message.startswith("shop v2 #0 never became ready in 300ms")
    assert "connection refused" in message and address in message


async def test_readiness_needs_a_streak_of_successes_after_failures(serve: Serve) -> None:
    # 500, 500, 200, 500 (breaks the streak), then 200s.
    plan = {1: 500, 2: 500, 3: 200, 4: 500}
    address = await serve(lambda n: answer(plan.get(n, 200), b"ok"))
    seen: list[str] = []
    await wait_ready(
        address,
        health_path="/up",
        interval=0.01,
        timeout=2,
        success_threshold=2,
        ready_timeout=20,
        on_progress=seen.append,
    )
    health = [line for line in seen if line.startswith("GET /up")]
    assert health == [
        "GET /up → 500",
        "GET /up → 200 (1/2)",
        "GET /up → 500",
        "GET /up → 200 (1/2)",
        "GET /up → 200 (2/2)",
    ]


async def test_the_streak_stays_spaced_by_the_interval_while_failures_are_retried_sooner(
    serve: Serve,
) -> None:
    # The app answers 503 while it boots, then 200s. Retries while it boots come sooner
    # than the interval (back-off from 10 ms), but the successes of the streak are still
    # at least `interval` apart: the health rule is not weakened.
    interval = 0.4
    answered: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()

    def respond(n: int) -> bytes:
        status = 503 if len(answered) < 3 else 200
        answered.append((status, loop.time()))
        return answer(status, b"ok")

    address = await serve(respond)
    await wait_ready(
        address,
        health_path="/up",
        interval=interval,
        timeout=2,
        success_threshold=2,
        ready_timeout=20,
    )
    times = [t for status, t in answered]
    statuses = [status for status, t in answered]
    assert statuses == [503, 503, 503, 200, 200]
    assert times[1] - times[0] < interval and times[2] - times[1] < interval
    assert times[4] - times[3] >= interval - 0.01


async def test_a_health_path_that_keeps_failing_reports_the_last_answer(serve: Serve) -> None:
    address = await serve(lambda n: answer(500, b"db down"))
    with pytest.raises(
        DeploymentFailed, match=r"never became ready in 1s: last check GET /up → 500"
    ):
        await wait_ready(
            address,
            health_path="/up",
            interval=0.02,
            timeout=0.5,
            success_threshold=2,
            ready_timeout=1,
        )


async def test_without_a_health_path_tcp_accept_is_ready(serve: Serve) -> None:
    address = await serve(lambda n: answer(500))
    await wait_ready(
        address, health_path=None, interval=0.1, timeout=1, success_threshold=3, ready_timeout=5
    )


async def test_a_dead_process_fails_readiness_at_once() -> None:
    calls = 0

    async def alive() -> bool:
        nonlocal calls
        calls += 1
        return calls < 3

    with pytest.raises(DeploymentFailed, match="exited before it became ready"):
        async with asyncio.timeout(10):  # far below ready_timeout: the exit is noticed at once
            await wait_ready(
                unused_address(),
                health_path="/up",
                interval=0.01,
                timeout=1,
                success_threshold=1,
                ready_timeout=120,
                alive=alive,
            )


async def test_the_example_app_becomes_ready_after_its_boot_delay(tmp_path: Path) -> None:
    runtime = ProcessRuntime(tmp_path / "state")
    spec = InstanceSpec(
        app="example",
        version="v3",
        index=0,
        command=[sys.executable, "app.py"],
        cwd=EXAMPLE_DIR,
        env={"APP_VERSION": "v3", "BOOT_DELAY": "0.3"},
        log_dir=tmp_path / "logs",
    )
    instance = await runtime.start(spec)
    try:
        await wait_ready(
            instance.address,
            health_path="/up",
            interval=0.02,
            timeout=2,
            success_threshold=2,
            ready_timeout=20,
            alive=lambda: runtime.alive(instance),
        )
        assert await http_get(instance.address, "/", timeout=5) == (200, b"v3\n")
    finally:
        await runtime.stop(instance, timeout=10)


async def test_an_example_app_that_is_never_healthy_or_crashes_fails_readiness(
    tmp_path: Path,
) -> None:
    runtime = ProcessRuntime(tmp_path / "state")

    def spec(index: int, **env: str) -> InstanceSpec:
        return InstanceSpec(
            "example", "bad", index, [sys.executable, "app.py"], EXAMPLE_DIR, env, tmp_path
        )

    sick = await runtime.start(spec(0, NEVER_HEALTHY="1"))
    crashing = await runtime.start(spec(1, FAIL_ON_START="1"))
    try:
        with pytest.raises(DeploymentFailed, match=r"GET /up → 503"):
            await wait_ready(
                sick.address,
                health_path="/up",
                interval=0.02,
                timeout=2,
                success_threshold=1,
                ready_timeout=1.5,
                alive=lambda: runtime.alive(sick),
            )
        with pytest.raises(DeploymentFailed, match="exited before it became ready"):
            await wait_ready(
                crashing.address,
                health_path="/up",
                interval=0.02,
                timeout=2,
                success_threshold=1,
                ready_timeout=60,
                alive=lambda: runtime.alive(crashing),
            )
    finally:
        for instance in (sick, crashing):
            await runtime.stop(instance, timeout=10)
