"""One Baton host for end-to-end tests: the real CLI, daemon, proxy and app processes.

`Host` owns a temp dir (state dir, baton.yml, a free public port), runs `baton ...` as a child
process (``baton`` from async tests, ``run`` from the synchronous benchmarks, ``command`` for
whoever needs the argv to stream its output), and tears down everything it started (daemon,
proxy, instances) even when a test fails. Integration tests, browser tests and the benchmarks
build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.runtime.process import ProcessRuntime, pid_alive
from tests.support.load import Load, LoadResult
from tests.support.procs import REPO_ROOT, free_port

APP_DIR = REPO_ROOT / "examples" / "app"
BATON = [sys.executable, "-m", "baton.cli"]
CLI_TIMEOUT = 120.0


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().strip())
    return None


class Host:
    """One Baton host in a temp dir: the CLI, its state dir, and the app's public port."""

    def __init__(
        self, root: Path, cli: Sequence[str] = BATON, env: Mapping[str, str] | None = None
    ) -> None:
        """``cli``: the argv that runs ``baton`` (the benchmarks use the console script);
        ``env``: the environment of every ``baton`` run (default: this process's)."""
        self.root = root
        self.state_dir = root / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cli = list(cli)
        self.env = dict(os.environ if env is None else env)

    def config(self, extra: dict[str, Any] | None = None, name: str = "baton.yml") -> Path:
        base: dict[str, Any] = {
            "app": "shop",
            "proxy": {"listen": f"127.0.0.1:{self.port}"},
            "run": {
                "command": f"exec {sys.executable} app.py --port $PORT",
                "cwd": str(APP_DIR),
                "env": {"APP_VERSION": "v1", "SHUTDOWN_GRACE": "5"},
            },
            "instances": 2,
            "health": {"path": "/up", "interval": "50ms", "timeout": "2s", "success_threshold": 2},
            "deploy": {
                "strategy": "blue-green",
                "ready_timeout": "20s",
                "drain_timeout": "5s",
                "stop_timeout": "5s",
                "keep_previous": "0s",
                "verify": "0s",
                "max_error_rate": "5%",
            },
        }
        merged = _merge(base, extra or {})
        # A run key given as None is left out (a docker app has no command or cwd of its own).
        merged["run"] = {k: v for k, v in merged["run"].items() if v is not None}
        path = self.root / name
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
        return path

    def command(self, *args: str) -> list[str]:
        """The argv of ``baton --state-dir STATE ARGS...``."""
        return [*self.cli, "--state-dir", str(self.state_dir), *args]

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        """``baton ARGS...`` run to its end, synchronously (for the benchmarks)."""
        done = subprocess.run(
            self.command(*args),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**self.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        )
        return Result(done.returncode, done.stdout, done.stderr)

    async def baton(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *self.command(*args),
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**self.env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(
                f"baton {' '.join(args)} did not finish within {timeout:g}s:\n"
                f"{out.decode()}\n{err.decode()}"
            ) from None
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def deploy(self, *args: str, config: Path | None = None) -> Result:
        return await self.baton("deploy", "-c", str(config or self.root / "baton.yml"), *args)

    async def status(self) -> dict[str, Any]:
        result = await self.baton("status", "--json")
        assert result.rc == 0, result
        data: dict[str, Any] = json.loads(result.out)
        return data

    async def get(self, path: str = "/") -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    @property
    def server_pid(self) -> int | None:
        return _pid(self.state_dir / "server.pid")

    @property
    def proxy_pid(self) -> int | None:
        return _pid(self.state_dir / "proxy.pid")

    async def running_instances(self) -> list[str]:
        """Addresses of every instance process Baton started that still runs."""
        return sorted(i.address for i in await ProcessRuntime(self.state_dir).owned())

    async def teardown(self) -> None:
        """`baton down`, then make sure: kill whatever is left, by pid, never by name."""
        with contextlib.suppress(AssertionError):
            await self.baton("down", timeout=90)
        for pid in (self.server_pid, self.proxy_pid):
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        runtime = ProcessRuntime(self.state_dir)
        for instance in await runtime.owned():
            await runtime.stop(instance, 1.0)

    def down(self) -> None:
        """``teardown`` for synchronous callers (the benchmarks)."""
        asyncio.run(self.teardown())


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config()
    try:
        up = await h.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        yield h
    finally:
        await h.teardown()


async def start_load(host: Host, seconds: float = 120.0) -> Load:
    return await Load().start(
        host.url, concurrency=6, max_requests=2_000_000, max_seconds=seconds, delay=0.002
    )


def served_after(result: LoadResult, t: float, until: float | None = None) -> set[str]:
    return {s.value for s in result.timeline if s.sent >= t and (until is None or s.sent < until)}


def assert_no_failures(result: LoadResult) -> None:
    assert result.failures == [], result.summary()
    assert result.total > 0
