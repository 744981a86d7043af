"""Child processes for tests and benchmarks: start them, know when they are ready, stop them.

`ManagedProcess` runs one command in its own session (so a hard kill reaches its children
too), with stdout and stderr written to files (a pipe nobody reads would stall a chatty
child). It is ready when a TCP port on 127.0.0.1 accepts or a Unix socket path accepts;
if the child dies first, or the time-out passes, the error carries the tail of its stderr.
`stop()` sends SIGTERM, waits, then SIGKILLs the process group; `kill()` is the hard kill
(a crashed release). Both are safe to call twice.

`Backend` is a `ManagedProcess` running `tests/support/backend.py` on a free port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"
BACKEND_SCRIPT = Path(__file__).with_name("backend.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


class ProcessError(RuntimeError):
    """A managed child process did not start or did not behave."""


def ctrl_c_default() -> None:
    """``preexec_fn`` for a child the test Ctrl-C's: SIGINT back to its default. A shell
    starts background jobs (``cmd &`` without job control) with SIGINT ignored, children
    inherit that, and Python then installs no KeyboardInterrupt handler: a CLI run under
    such a test runner would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_socket_open(path: str | os.PathLike[str], timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(os.fspath(path))
            return True
        except OSError:
            return False


def wait_port(port: int, timeout: float = 10.0, host: str = LOOPBACK) -> None:
    """Wait until `host:port` accepts a TCP connection; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not port_open(port, host):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted on {host}:{port} within {timeout:g}s")
        time.sleep(0.02)


def wait_port_closed(port: int, timeout: float = 10.0, host: str = LOOPBACK) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port, host):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} still accepts after {timeout:g}s")
        time.sleep(0.02)


class ManagedProcess:
    """One child process with a readiness check and a clean stop.

    `port` and `unix_socket` say what "ready" means (either, both, or neither: then ready is
    "still alive" right after the start). `env` is added to this process's environment. Use as a context manager, or call `start()` /
    `stop()`. On an exception inside the `with` block the child's stderr is printed, so a
    failing test shows what the child said.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        port: int | None = None,
        unix_socket: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
        ready_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cmd = [os.fspath(c) for c in cmd]
        self.port = port
        self.unix_socket = None if unix_socket is None else os.fspath(unix_socket)
        self.env = {**os.environ, **(env or {})}
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.name = name or Path(self.cmd[0]).name
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._log_dir = log_dir
        self._own_log_dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_path: Path | None = None
        self.stderr_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        if self.proc is not None:
            raise ProcessError(f"{self.name} already started")
        if self._log_dir is None:
            self._own_log_dir = tempfile.TemporaryDirectory(prefix=f"baton-{self.name}-")
            log_dir = Path(self._own_log_dir.name)
        else:
            log_dir = Path(self._log_dir)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
        self.stdout_path = log_dir / f"{safe}.stdout"
        self.stderr_path = log_dir / f"{safe}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        while True:
            if not self.alive:
                raise ProcessError(
                    f"{self.name} exited with {self.returncode} before it was ready\n"
                    f"{self.describe()}"
                )
            if self._ready():
                return
            if time.monotonic() >= deadline:
                what = " and ".join(
                    w
                    for w in (
                        f"port {self.port}" if self.port is not None else "",
                        f"socket {self.unix_socket}" if self.unix_socket is not None else "",
                    )
                    if w
                )
                raise ProcessError(f"{self.name}: {what} not ready in time\n{self.describe()}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        if self.port is not None and not port_open(self.port):
            return False
        return self.unix_socket is None or unix_socket_open(self.unix_socket)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to `timeout` (default `stop_timeout`), then SIGKILL the group."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
        self._kill_group()  # leftovers of the session (children of the child), if any
        return proc.returncode

    def kill(self) -> None:
        """Hard kill (SIGKILL to the process group), as if the machine took it away."""
        self._kill_group()

    def _kill_group(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    # -- state -----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ProcessError(f"{self.name} not started")
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stdout_text(self) -> str:
        return _read(self.stdout_path)

    def stderr_text(self) -> str:
        return _read(self.stderr_path)

    def describe(self, tail: int = 4000) -> str:
        err = self.stderr_text()[-tail:]
        out = self.stdout_text()[-tail:]
        lines = [f"command: {' '.join(self.cmd)}"]
        if out.strip():
            lines.append(f"--- stdout (tail) ---\n{out}")
        lines.append(f"--- stderr (tail) ---\n{err}" if err.strip() else "--- stderr: empty ---")
        return "\n".join(lines)

    def close(self) -> None:
        self.stop()
        if self._own_log_dir is not None:
            self._own_log_dir.cleanup()
            self._own_log_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is not None and not isinstance(exc, ProcessError):
            print(f"\n=== {self.name} ===\n{self.describe()}", file=sys.stderr)
        self.close()


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def backend_command(
    name: str,
    *,
    port: int | None = None,
    grace: float = 30.0,
    up_status: int = 200,
    startup_delay: float = 0.0,
) -> list[str]:
    """The command line of the test backend; without `port` it listens on `$PORT`.

    Hand it to a runtime as a release's command: `GET /` then answers `name`.
    """
    cmd = [sys.executable, str(BACKEND_SCRIPT), "--name", name, "--grace", str(grace)]
    cmd += ["--up-status", str(up_status), "--startup-delay", str(startup_delay)]
    return cmd if port is None else [*cmd, "--port", str(port)]


class Backend(ManagedProcess):
    """The test backend (`tests/support/backend.py`) named `name`, on a free port.

    `name` is what `GET /` answers, so a test can tell releases apart by the body.
    """

    def __init__(
        self,
        name: str,
        *,
        port: int | None = None,
        grace: float = 30.0,
        up_status: int = 200,
        startup_delay: float = 0.0,
        ready_timeout: float = 15.0,
        stop_timeout: float | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        port = free_port() if port is None else port
        cmd = backend_command(
            name, port=port, grace=grace, up_status=up_status, startup_delay=startup_delay
        )
        super().__init__(
            cmd,
            port=port,
            name=f"backend-{name}",
            ready_timeout=ready_timeout + startup_delay,
            stop_timeout=grace + 5.0 if stop_timeout is None else stop_timeout,
            log_dir=log_dir,
        )
        self.backend_name = name

    @property
    def addr(self) -> str:
        """`127.0.0.1:PORT`, the form the proxy admin API takes as a target."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"
