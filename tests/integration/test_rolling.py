"""Rolling deploys drain each old batch in the background while the next batch starts.

Real CLI, daemon, proxy and app processes (``tests/support/backend.py`` as the app, for its
WebSocket endpoint): WebSockets held open to every old instance keep each old batch draining
until ``drain_timeout``; the next batch must not wait for that drain, no request may fail, no
WebSocket may be cut before its batch's drain, and the deploy ends on the new release.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from dataclasses import dataclass

import aiohttp

from tests.support.host import Host, assert_no_failures, start_load
from tests.support.procs import REPO_ROOT

BACKEND = REPO_ROOT / "tests" / "support" / "backend.py"
INSTANCES = 3


@dataclass
class Socket:
    name: str  # the backend instance it reached: v1-<index>
    closed_at: float | None = None


async def _hold(session: aiohttp.ClientSession, url: str) -> tuple[Socket, asyncio.Task[None]]:
    """A WebSocket through the proxy, held open; its task records when it was closed."""
    ws = await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=10))
    first = await asyncio.wait_for(ws.receive(), 10)
    assert first.type == aiohttp.WSMsgType.TEXT, first
    sock = Socket(name=str(first.data))

    async def watch() -> None:
        async for _ in ws:  # the backend only echoes: nothing comes until the close
            pass
        sock.closed_at = time.monotonic()

    return sock, asyncio.ensure_future(watch())


async def _stream(host: Host, *args: str) -> tuple[int, list[tuple[float, str]]]:
    """Run ``baton ARGS`` and return its exit code and stdout lines with arrival times."""
    proc = await asyncio.create_subprocess_exec(
        *host.command(*args),
        cwd=host.root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    assert proc.stdout is not None
    lines: list[tuple[float, str]] = []
    try:
        async with asyncio.timeout(120):
            while raw := await proc.stdout.readline():
                lines.append((time.monotonic(), raw.decode().rstrip()))
            rc = await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("\n".join(line for _, line in lines)) from None
    return rc, lines


def _at(lines: list[tuple[float, str]], text: str) -> tuple[int, float]:
    """(position, arrival time) of the first output line containing ``text``."""
    for n, (t, line) in enumerate(lines):
        if text in line:
            return n, t
    raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(x for _, x in lines))


def _configure(host: Host, *, drain: str, extra_args: str = "", ready_timeout: str = "20s") -> None:
    """The backend (copied alone, so the release snapshot stays small) as a rolling app of
    ``INSTANCES`` instances, one at a time; each instance is named ``VERSION-INDEX``."""
    app_dir = host.root / "app"
    app_dir.mkdir(exist_ok=True)
    shutil.copy(BACKEND, app_dir / "backend.py")
    host.config(
        {
            "run": {
                "command": f"exec {sys.executable} backend.py --port $PORT"
                f" --name $APP_VERSION-$BATON_INSTANCE --grace 10 {extra_args}",
                "cwd": str(app_dir),
            },
            "instances": INSTANCES,
            "deploy": {
                "strategy": "rolling",
                "max_surge": 1,
                "drain_timeout": drain,
                "stop_timeout": "10s",
                "ready_timeout": ready_timeout,
            },
        }
    )


async def _hold_every_instance(
    session: aiohttp.ClientSession, host: Host
) -> list[tuple[Socket, asyncio.Task[None]]]:
    """WebSockets through the proxy until every v1 instance holds some (bounded)."""
    held: list[tuple[Socket, asyncio.Task[None]]] = []
    url = f"http://127.0.0.1:{host.port}/ws"
    while len({s.name for s, _ in held}) < INSTANCES and len(held) < 30:
        held.append(await _hold(session, url))
    assert {s.name for s, _ in held} == {f"v1-{i}" for i in range(INSTANCES)}
    return held


async def test_a_rolling_deploy_drains_old_batches_while_the_next_batch_starts(
    host: Host,
) -> None:
    _configure(host, drain="4s")
    first = await host.deploy("--version", "v1")
    assert first.rc == 0, first

    async with aiohttp.ClientSession() as session:
        held = await _hold_every_instance(session, host)
        load = await start_load(host)
        rc, lines = await _stream(
            host,
            *("deploy", "-c", str(host.root / "baton.yml")),
            *("--version", "v2", "--env", "APP_VERSION=v2"),
        )
        outcome = await load.stop()
        async with asyncio.timeout(30):
            await asyncio.gather(*(task for _, task in held))
    text = "\n".join(line for _, line in lines)
    assert rc == 0, text
    assert "shop v2 is live" in text, text
    assert_no_failures(outcome)

    # The batches overlap: batch k+1 starts before batch k's drain ended (its stop begins
    # only once its drain is over).
    for batch in range(1, INSTANCES):
        next_start, _ = _at(lines, f"▸ start (batch {batch + 1})")
        stop, _ = _at(lines, f"▸ stop (batch {batch})")
        assert next_start < stop, text

    # Old instance v1-k leaves in batch k+1 (the old instances go in the order they were
    # started); none of its WebSockets was cut before that batch's drain began.
    for sock, _ in held:
        batch = int(sock.name.rsplit("-", 1)[1]) + 1
        _, drain_began = _at(lines, f"▸ drain (batch {batch})")
        assert sock.closed_at is not None
        assert sock.closed_at >= drain_began, (sock, text)

    status = await host.status()
    assert status["apps"]["shop"]["live"] == "v2"
    assert len(await host.running_instances()) == INSTANCES
    assert (await host.get())[1].startswith("v2-")


async def test_a_failed_batch_routes_an_old_batch_still_draining_again(host: Host) -> None:
    # v2's second instance never gets ready: batch 2 fails while batch 1 still drains.
    _configure(
        host,
        drain="10s",
        ready_timeout="3s",
        extra_args='--up-status "$([ $APP_VERSION-$BATON_INSTANCE = v2-1 ] && echo 503'
        ' || echo 200)"',
    )
    first = await host.deploy("--version", "v1")
    assert first.rc == 0, first
    before = await host.running_instances()

    async with aiohttp.ClientSession() as session:
        held = await _hold_every_instance(session, host)
        load = await start_load(host)
        rc, lines = await _stream(
            host,
            *("deploy", "-c", str(host.root / "baton.yml")),
            *("--version", "v2", "--env", "APP_VERSION=v2"),
        )
        outcome = await load.stop()
        text = "\n".join(line for _, line in lines)
        assert rc == 1, text
        _at(lines, "▸ drain (batch 1)")
        # Undo cancelled batch 1's drain: its old instance was never stopped, it is routed
        # again (the very same process), and nothing of v2 runs.
        assert "▸ stop (batch 1)" not in text, text
        assert_no_failures(outcome)
        assert await host.running_instances() == before
        status = await host.status()
        assert status["apps"]["shop"]["live"] == "v1"
        bodies = {(await host.get())[1] for _ in range(12)}
        assert bodies == {f"v1-{i}" for i in range(INSTANCES)}, bodies
        for _, task in held:
            task.cancel()
