"""Deploy hooks: the user's shell commands run at fixed points of a deployment.

A hook runs as ``/bin/sh -c <command>`` from the app's directory, in its own process group,
with Baton's environment plus ``env``. Its stdout and stderr are merged and streamed line by
line to ``log`` while the last lines are kept for the error message. A hook that outlives its
time-out has its whole process group terminated (SIGTERM, then SIGKILL). ``run_hook`` only
reports; ``raise_for_hook`` turns a failed result into ``DeploymentFailed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from baton.config import format_duration
from baton.errors import DeploymentFailed

TAIL_LINES = 20
_KILL_GRACE = 2.0  # after SIGTERM on time-out, how long before SIGKILL
_POLL = 0.02  # how often to look whether the hook has exited
_EOF_GRACE = 1.0  # after the hook exits, how long a background child may hold its output open


@dataclass(frozen=True)
class HookResult:
    name: str
    exit_code: int  # negative: killed by that signal (as in subprocess)
    output_tail: list[str]
    duration: float
    command: str = ""
    timed_out: bool = False
    output_lines: int = 0  # how many lines the hook wrote in all
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


async def run_hook(
    name: str,
    command: str,
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 600,
    log: Callable[[str], None] | None = None,
) -> HookResult:
    """Run one hook to completion (or time-out) and report how it went.

    ``env`` is added to Baton's own environment. Raises ``DeploymentFailed`` only when the
    hook cannot be started at all (say, ``cwd`` does not exist).
    """
    started = time.monotonic()
    try:
        # Popen rather than asyncio's subprocess: asyncio's wait() also waits for the output
        # pipe to close, which a background child of the hook may hold open for good.
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise DeploymentFailed(
            f"{name} hook {command!r} could not start in {cwd}: {exc.strerror or exc}"
        ) from None
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), proc.stdout
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    count = 0

    def emit(raw: bytes) -> None:
        nonlocal count
        line = raw.decode(errors="replace").rstrip("\r\n")
        count += 1
        tail.append(line)
        if log is not None:
            log(line)

    async def pump() -> None:
        # Chunks rather than readline(): a line longer than the stream limit must not fail.
        pending = b""
        while chunk := await stream.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                emit(raw)
        if pending:
            emit(pending)

    async def exited(within: float) -> bool:
        deadline = time.monotonic() + within
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL)
        return True

    reader = asyncio.create_task(pump())
    timed_out = False
    try:
        if not await exited(timeout):
            timed_out = True
            _killpg(proc.pid, signal.SIGTERM)
            if not await exited(_KILL_GRACE):
                _killpg(proc.pid, signal.SIGKILL)
                await exited(_KILL_GRACE)
            _killpg(proc.pid, signal.SIGKILL)  # whatever the shell left behind
        # A background child may still hold the pipe open; do not wait for it forever.
        await asyncio.wait({reader}, timeout=_EOF_GRACE)
    except asyncio.CancelledError:
        _killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        transport.close()
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, _KILL_GRACE)
    exit_code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    return HookResult(
        name=name,
        exit_code=exit_code,
        output_tail=list(tail),
        duration=time.monotonic() - started,
        command=command,
        timed_out=timed_out,
        output_lines=count,
        timeout=timeout,
    )


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def raise_for_hook(result: HookResult, *, lines: int = 10) -> None:
    """``DeploymentFailed`` naming the hook, how it ended and its last output lines.

    For example: ``pre_deploy hook './migrate.sh' exited 3: database is locked``.
    """
    if result.ok:
        return
    shown = f"{result.name} hook {result.command!r}" if result.command else f"{result.name} hook"
    if result.timed_out:
        limit = f" after {format_duration(result.timeout)}" if result.timeout is not None else ""
        how = f"timed out{limit} and was killed"
    elif result.exit_code < 0:
        try:
            how = f"was killed by {signal.Signals(-result.exit_code).name}"
        except ValueError:
            how = f"was killed by signal {-result.exit_code}"
    else:
        how = f"exited {result.exit_code}"
    last = [line for line in result.output_tail if line.strip()][-lines:] if lines > 0 else []
    if not last:
        output = " (no output)"
    elif len(last) == 1:
        output = f": {last[0]}"
    else:
        output = ":\n    " + "\n    ".join(last)
    raise DeploymentFailed(f"{shown} {how}{output}")
