"""Deploy-correlated signals and the terminal views, against a real daemon under load.

A release that answers slower than its predecessor is flagged in ``baton history`` (read at
80 columns); with ``deploy.signals.rollback`` the same regression, seen during
``deploy.verify``, switches users back. ``baton status --watch`` and ``baton top`` run in a
pseudo-terminal: they redraw in place and end with exit 0 on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.host import BATON, Host, assert_no_failures, start_load
from tests.support.load import Load
from tests.support.procs import ctrl_c_default

pytestmark = pytest.mark.timeout(240)


def signals_config(**extra: Any) -> dict[str, Any]:
    return {
        "instances": 1,
        "deploy": {"signals": {"window": "3s", "min_requests": 20, **extra}},
    }


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config(signals_config())
    try:
        assert (await h.baton("up", "--detach", timeout=60)).rc == 0
        assert (await h.deploy("--version", "v1")).rc == 0
        yield h
    finally:
        await h.teardown()


async def served(load: Load, body: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while load.bodies[body] < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{body!r} was served {load.bodies[body]} times, not {n}")
        await asyncio.sleep(0.05)


async def signals_of(host: Host, version: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = (await host.baton("history", "--json")).out
        for dep in json.loads(out)["deployments"]:
            if dep["version"] == version and dep.get("signals"):
                return dict(dep["signals"])
        await asyncio.sleep(0.5)
    raise AssertionError(f"no signals were stored for {version}")


async def test_a_slower_release_is_flagged_and_with_signals_rollback_switched_back(
    host: Host,
) -> None:
    load = await start_load(host, seconds=200)
    await served(load, "v1\n", 300)
    slow = await host.deploy("--version", "v2", "--env", "APP_VERSION=v2", "--env", "LATENCY_MS=40")
    assert slow.rc == 0, slow
    found = await signals_of(host, "v2")
    assert found["regression"] is True, found
    assert found["previous_version"] == "v1" and found["window"] == 3
    assert found["new"]["p95"] > 1.5 * found["previous"]["p95"]
    assert found["new"]["requests"] >= 20 and found["previous"]["requests"] >= 20

    # `baton history` at 80 columns: the figures and the flag, no line wider than 80.
    proc = await asyncio.create_subprocess_exec(
        *BATON, "--state-dir", str(host.state_dir), "history",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0
    assert "#2 SUCCEEDED shop deploy v2 (from v1)" in out
    assert "regression: p95" in out.replace("\n      ", " "), out
    assert max(len(line) for line in out.splitlines()) <= 80, out

    # With rollback on, a regression seen during verify switches back to v2.
    rollback = signals_config(window="30s", rollback=True)
    rollback["deploy"]["verify"] = "6s"
    host.config(rollback)
    await served(load, "v2\n", 300)
    slower = await host.deploy(
        "--version", "v3", "--env", "APP_VERSION=v3", "--env", "LATENCY_MS=150"
    )
    outcome = await load.stop()
    assert slower.rc == 1, slower
    assert "deploy signals: p95" in slower.err + slower.out, slower
    assert (await host.status())["apps"]["shop"]["live"] == "v2"
    assert_no_failures(outcome)


def run_in_terminal(
    argv: list[str], until: bytes, timeout: float = 30.0, times: int = 2
) -> tuple[bytes, int]:
    """Run ``argv`` on a pseudo-terminal until its output holds ``until`` ``times`` times (by
    default: two drawings), then Ctrl-C it; (everything it wrote, its exit status)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        argv,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "80", "LINES": "40", "TERM": "xterm-256color"},
        start_new_session=True,
        preexec_fn=ctrl_c_default,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while seen.count(until) < times and time.monotonic() < deadline:
            try:
                seen += os.read(leader, 65536)
            except OSError:
                break
        os.kill(proc.pid, signal.SIGINT)
        status = proc.wait(timeout=10)
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return seen, status


async def test_status_watch_and_top_redraw_in_place_and_quit_on_ctrl_c(host: Host) -> None:
    load = await start_load(host, seconds=60)
    await served(load, "v1\n", 100)
    base = [*BATON, "--state-dir", str(host.state_dir)]
    out, status = await asyncio.to_thread(
        run_in_terminal, [*base, "status", "--watch", "--interval", "200ms"], b"live: v1"
    )
    assert status == 0, out
    assert out.count(b"live: v1") >= 2, out
    assert b"\x1b[2K" in out or b"\x1b[1A" in out, out  # cursor moved up: redrawn in place
    out, status = await asyncio.to_thread(
        run_in_terminal, [*base, "top", "--interval", "200ms"], b" ms", times=6
    )  # two drawings with figures (p50, p95, p99): the first may come before any
    await load.stop()
    assert status == 0, out
    text = out.decode(errors="replace")
    assert "shop  live: v1" in text and "release" in text
    frames = text.split("updated ")[:-1]  # one drawing each, its own rows only
    assert all(frame.count("release ") == 1 for frame in frames), text  # never a stale copy
    row = next(line for line in frames[-1].splitlines() if line.strip().startswith("v1 "))
    assert "100%" in row and "ms" in row, row
