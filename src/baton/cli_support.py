"""What every ``baton`` command shares: the daemon's API client, the state dir and the
common options, turning errors into exit codes, and which app a command is about.

``cli.py`` (the commands) and ``flags/cli.py`` (``baton flags ...``) both build on it, so
neither imports the other's names. Imports stay light: every CLI start pays for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import click

from baton.cli_console import console, errors, escape
from baton.errors import BatonError, ConfigError, DaemonUnreachable, UsageError

if TYPE_CHECKING:
    import http.client

__all__ = ["console", "errors", "escape"]  # the CLI's consoles, re-exported for the commands

DEFAULT_STATE_DIR = "~/.local/state/baton"
UP_TIMEOUT = 300.0  # the daemon answers once every app converged (each within its ready_timeout)
DOWN_TIMEOUT = 120.0

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class ApiError(BatonError):
    """An error the control plane answered with; carries its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- the API client ------------------------------------------------------------------------------


class Exchange:
    """One request to the daemon's Unix socket and its answer (one connection each).

    The request is written with a plain socket and ``http.client`` (HTTP/1.1, which reads the
    chunked event streams) is imported only to read the answer: `baton deploy` has its
    request on its way before it pays for that import (every deploy waits for the CLI's
    start-up up to its request)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.response: http.client.HTTPResponse | None = None

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.sock.close()


def request_bytes(method: str, path: str, payload: bytes | None) -> bytes:
    """An HTTP/1.1 request to the daemon, as ``http.client`` would write it."""
    if not path.startswith("/") or any(c <= " " or c >= "\x7f" for c in path):
        raise UsageError(f"not a request path for the daemon: {path!r}")
    head = f"{method} {path} HTTP/1.1\r\nHost: baton\r\nAccept-Encoding: identity\r\n"
    if payload is not None:
        head += f"Content-Length: {len(payload)}\r\nContent-Type: application/json\r\n"
    elif method not in ("GET", "HEAD"):
        head += "Content-Length: 0\r\n"
    return head.encode("ascii") + b"\r\n" + (payload or b"")


class Client:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "baton.sock"

    def _unreachable(self, exc: BaseException) -> DaemonUnreachable:
        return DaemonUnreachable(
            f"the baton daemon does not answer on {self.socket} ({exc or type(exc).__name__});"
            f" start it with `baton up --state-dir {self.state_dir}`"
        )

    def _open(
        self,
        method: str,
        path: str,
        body: Any,
        timeout: float | None,
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[Exchange, http.client.HTTPResponse]:
        """Send the request, run ``meanwhile()`` (while the daemon works on it), read the
        answer's head; an error answer raises ``ApiError``, no answer ``DaemonUnreachable``."""
        payload = None if body is None else json.dumps(body).encode()
        request = request_bytes(method, path, payload)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        exchange = Exchange(sock)
        try:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(request)
        except OSError as exc:
            exchange.close()
            raise self._unreachable(exc) from None
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                exchange.close()
                raise
        import http.client

        try:
            resp = exchange.response = http.client.HTTPResponse(sock, method=method)
            resp.begin()
        except (OSError, http.client.HTTPException) as exc:
            exchange.close()
            raise self._unreachable(exc) from None
        if resp.status >= 400:
            text = resp.read().decode(errors="replace")
            exchange.close()
            try:
                answer = json.loads(text)
                error, code = str(answer.get("error", text)), int(answer.get("exit_code", 1))
            except (ValueError, AttributeError):
                error, code = f"the daemon answered {resp.status}: {text[:300]}", 1
            raise ApiError(error, code)
        return exchange, resp

    def _call(self, method: str, path: str, body: Any, timeout: float | None) -> Any:
        import http.client

        exchange, resp = self._open(method, path, body, timeout)
        try:
            return json.loads(resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            exchange.close()

    async def call(
        self, method: str, path: str, body: Any = None, timeout: float | None = 30.0
    ) -> Any:
        import asyncio  # not at start-up: `baton deploy` runs without it

        return await asyncio.to_thread(self._call, method, path, body, timeout)

    async def stream(self, method: str, path: str, body: Any = None) -> AsyncIterator[Any]:
        """Newline-delimited JSON from the API, one object at a time.

        Lines are read by a daemon thread: a read blocked on the socket must not keep the
        CLI alive after Ctrl-C (the default executor's threads are joined at exit).
        """
        import asyncio
        import http.client
        import threading

        exchange, resp = await asyncio.to_thread(self._open, method, path, body, None)
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[bytes | Exception] = asyncio.Queue()

        def pump() -> None:
            while True:
                try:
                    line: bytes | Exception = resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    line = exc
                try:
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                except RuntimeError:  # the loop is gone: the CLI is exiting
                    return
                if not isinstance(line, bytes) or not line:
                    return

        threading.Thread(target=pump, name="baton-stream", daemon=True).start()
        try:
            while True:
                item = await lines.get()
                if isinstance(item, Exception):
                    raise lost(item)
                if not item:
                    return
                if item.strip():
                    yield json.loads(item)
        finally:
            with contextlib.suppress(OSError):
                exchange.sock.shutdown(socket.SHUT_RDWR)
            exchange.close()

    def events(
        self,
        method: str,
        path: str,
        body: Any = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Iterator[Any]:
        """``stream`` without asyncio, for ``_follow``: the request is sent (and an unreachable
        daemon or an error answer raised) here; the objects are read as the caller iterates.
        A read blocked on the socket is interrupted by Ctrl-C (it runs in the main thread).
        ``meanwhile()`` runs once the request is sent, before the daemon's answer is read.
        """
        exchange, resp = self._open(method, path, body, None, meanwhile)
        return self._lines(exchange, resp)

    @staticmethod
    def _lines(exchange: Exchange, resp: http.client.HTTPResponse) -> Iterator[Any]:
        import http.client

        try:
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise lost(exc) from None
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            exchange.close()

    async def answers(self) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.call("GET", "/health", timeout=2.0)
            return result
        except BatonError:
            return None


def lost(exc: BaseException) -> DaemonUnreachable:
    return DaemonUnreachable(
        f"lost the connection to the daemon ({exc.__class__.__name__}); it may"
        " have stopped: see `baton status` once it runs again"
    )


# -- helpers -------------------------------------------------------------------------------------


def fail(exc: BatonError) -> NoReturn:
    errors.print(f"[red]error:[/red] {escape(str(exc))}")
    raise SystemExit(exc.exit_code)


class Followed(Protocol):
    """A deployment the CLI renders (``cli.Progress``), as Ctrl-C's message needs it."""

    id: int | None
    app: str
    version: str
    result: Any


following: list[Followed] = []  # the deployment this CLI renders, for Ctrl-C's message


def run_async(coro: Any) -> Any:
    import asyncio  # imported when a command needs it: `baton deploy` does not

    return guard(lambda: asyncio.run(coro))


def guard(work: Callable[[], T]) -> T:
    """``work()``; a ``BatonError`` exits with its code, Ctrl-C says what goes on."""
    try:
        return work()
    except BatonError as exc:
        fail(exc)
    except KeyboardInterrupt:
        followed = next((p for p in following if p.id is not None and p.result is None), None)
        if followed is not None:
            errors.print(
                f"interrupted: deployment #{followed.id} of {escape(followed.app)}"
                f" {escape(followed.version)} goes on in the daemon; `baton watch"
                f" {escape(followed.app)}` re-attaches to it, `baton status` shows where it is"
            )
        else:
            errors.print("interrupted (a deployment in progress goes on in the daemon)")
        raise SystemExit(130) from None


def state_dir_of(ctx: click.Context, explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit.expanduser().absolute()
    root = ctx.find_root()
    chosen = root.params.get("state_dir") if root is not None else None
    if chosen is not None:
        return Path(chosen).expanduser().absolute()
    return Path(os.environ.get("BATON_STATE_DIR") or DEFAULT_STATE_DIR).expanduser().absolute()


# One instance of each path type for every command's option: each ``click.Path()`` looks up
# its name's translation (gettext stats the locale dirs anew every time), and `baton` builds
# about 30 of these options at every start (~5 ms).
DIR_TYPE = click.Path(file_okay=False, path_type=Path)
PATH_TYPE = click.Path(dir_okay=True, path_type=Path)


def state_dir_option(f: F) -> F:
    return click.option(
        "--state-dir",
        "sub_state_dir",
        type=DIR_TYPE,
        default=None,
        help="State dir (default: $BATON_STATE_DIR or ~/.local/state/baton).",
    )(f)


app_option = click.option(
    "--app", default=None, help="The app (default: the one in baton.yml, or the only one)."
)


def config_option(f: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config",
        type=PATH_TYPE,
        default=None,
        help="The app's baton.yml (default: ./baton.yml).",
    )(f)


def config_path(config: Path | None) -> Path:
    return (config or Path("baton.yml")).expanduser().absolute()


def app_selector(config: Path | None, app: str | None) -> dict[str, str]:
    """Which app a command is about: --app, else -c (or ./baton.yml when present), else the
    only app the daemon knows."""
    if app:
        return {"app": app}
    path = config_path(config)
    if config is not None or path.exists():
        from baton.config import load_config

        try:
            return {"app": load_config(path).config.app}
        except ConfigError as exc:
            fail(exc)
    return {}
