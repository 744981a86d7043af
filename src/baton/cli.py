"""``baton``: the command line. Thin: parse, ask the control plane, render, exit with a code.

Exit codes (scripts depend on them): 0 done; 1 the deployment failed and users were left on
the previous release; 2 bad usage or config, nothing changed; 3 the control plane cannot be
reached, or another deployment of the app is running.

Every command but ``up``, ``server``, ``check`` and ``proxy`` talks to the control plane's
JSON API on ``<state dir>/baton.sock``. The state dir is ``--state-dir``, else
``$BATON_STATE_DIR``, else ``~/.local/state/baton``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from baton import __version__
from baton.errors import BatonError, ConfigError, DaemonUnreachable, ImageNotFound, UsageError
from baton.state.files import open_private, private_dir

if TYPE_CHECKING:
    from baton.config import AppConfig, ImageFacts

DEFAULT_STATE_DIR = "~/.local/state/baton"
UP_TIMEOUT = 300.0  # the daemon answers once every app converged (each within its ready_timeout)
DOWN_TIMEOUT = 120.0

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


class ApiError(BatonError):
    """An error the control plane answered with; carries its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- the API client ------------------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to the daemon's Unix socket (stdlib: the CLI starts fast, and every deploy
    pays for its start-up)."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("baton", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.unix_path))
        self.sock = sock


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
        self, method: str, path: str, body: Any, timeout: float | None
    ) -> tuple[_UnixHTTPConnection, http.client.HTTPResponse]:
        conn = _UnixHTTPConnection(self.socket, timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from None
        if resp.status >= 400:
            text = resp.read().decode(errors="replace")
            conn.close()
            try:
                answer = json.loads(text)
                error, code = str(answer.get("error", text)), int(answer.get("exit_code", 1))
            except (ValueError, AttributeError):
                error, code = f"the daemon answered {resp.status}: {text[:300]}", 1
            raise ApiError(error, code)
        return conn, resp

    def _call(self, method: str, path: str, body: Any, timeout: float | None) -> Any:
        conn, resp = self._open(method, path, body, timeout)
        try:
            return json.loads(resp.read())
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()

    async def call(
        self, method: str, path: str, body: Any = None, timeout: float | None = 30.0
    ) -> Any:
        return await asyncio.to_thread(self._call, method, path, body, timeout)

    async def stream(self, method: str, path: str, body: Any = None) -> AsyncIterator[Any]:
        """Newline-delimited JSON from the API, one object at a time.

        Lines are read by a daemon thread: a read blocked on the socket must not keep the
        CLI alive after Ctrl-C (the default executor's threads are joined at exit).
        """
        conn, resp = await asyncio.to_thread(self._open, method, path, body, None)
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
                    raise DaemonUnreachable(
                        f"lost the connection to the daemon ({item.__class__.__name__}); it may"
                        " have stopped: see `baton status` once it runs again"
                    )
                if not item:
                    return
                if item.strip():
                    yield json.loads(item)
        finally:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()

    async def answers(self) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.call("GET", "/health", timeout=2.0)
            return result
        except BatonError:
            return None


# -- helpers -------------------------------------------------------------------------------------


def _fail(exc: BatonError) -> NoReturn:
    errors.print(f"[red]error:[/red] {escape(str(exc))}")
    raise SystemExit(exc.exit_code)


_following: list[Progress] = []  # the deployment this CLI renders, for Ctrl-C's message


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except BatonError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        followed = next((p for p in _following if p.id is not None and p.result is None), None)
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


def state_dir_option(f: F) -> F:
    return click.option(
        "--state-dir",
        "sub_state_dir",
        type=click.Path(file_okay=False, path_type=Path),
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
        type=click.Path(dir_okay=True, path_type=Path),
        default=None,
        help="The app's baton.yml (default: ./baton.yml).",
    )(f)


def _config_path(config: Path | None) -> Path:
    return (config or Path("baton.yml")).expanduser().absolute()


def _app_selector(config: Path | None, app: str | None) -> dict[str, str]:
    """Which app a command is about: --app, else -c (or ./baton.yml when present), else the
    only app the daemon knows."""
    if app:
        return {"app": app}
    path = _config_path(config)
    if config is not None or path.exists():
        from baton.config import load_config

        try:
            return {"app": load_config(path).config.app}
        except ConfigError as exc:
            _fail(exc)
    return {}


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(UsageError(f"--env: expected KEY=VALUE, got {pair!r}"))
        env[key] = value
    return env


# -- rendering deployments -------------------------------------------------------------------------


class Progress:
    """Renders deployment events as they come; remembers the result."""

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.version = "?"
        self.previous: str | None = None
        self.app = "?"
        self.id: int | None = None
        self._last_verify = 0.0

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "deployment":
            self.app, self.version = event["app"], event["version"]
            self.id = event.get("id")
            self.previous = event.get("previous")
            what = {"rollback": "Rolling back", "contract": "Contract migration of"}.get(
                str(event.get("kind")), "Deploying"
            )
            replacing = f", replacing {self.previous}" if self.previous else ""
            console.print(
                f"[bold]{what} {escape(self.app)} {escape(self.version)}[/bold]"
                f" ({escape(str(event.get('strategy')))}{escape(replacing)}) — deployment"
                f" #{event['id']}"
            )
        elif kind == "step":
            batch = f" (batch {event['batch'] + 1})" if event.get("batch") is not None else ""
            detail = f": {event['detail']}" if event.get("detail") else ""
            console.print(f"  [cyan]▸ {event['step']}[/cyan]{batch}{escape(detail)}")
        elif kind == "instance":
            colour = {"ready": "green", "failed": "red"}.get(event["state"], "white")
            message = f" — {event['message']}" if event.get("message") else ""
            console.print(
                f"    instance {event['index']} {event['address']}"
                f" [{colour}]{event['state']}[/{colour}]{escape(message)}"
            )
        elif kind == "switch":
            weights = ", ".join(f"{k} {v}%" for k, v in event.get("weights", {}).items())
            label = "switched back" if event.get("back") else "traffic"
            console.print(f"    {label}: {escape(weights) or 'no release routed'}")
        elif kind == "verify":
            final = event.get("passed") or event.get("failing")
            if final or time.monotonic() - self._last_verify >= 2.0:
                self._last_verify = time.monotonic()
                mark = (
                    "[red]failing[/red]"
                    if event.get("failing")
                    else ("[green]passed[/green]" if event.get("passed") else "watching")
                )
                console.print(
                    f"    verify {mark}: {event['requests']} requests, {event['errors']} errors"
                    f" ({event['rate']:.1%})"
                )
        elif kind == "drain":
            how = "drained" if event.get("drained") else "drain timed out"
            console.print(f"    {len(event['targets'])} target(s) {how}")
        elif kind == "stopped":
            console.print(f"    stopped {', '.join(event['targets'])}")
        elif kind == "keep_warm":
            console.print(f"    {event['version']} stays warm for {event['seconds']:g}s")
        elif kind == "hook":
            mark = "[green]ok[/green]" if event["ok"] else "[red]failed[/red]"
            console.print(f"    {event['hook']} {mark}")
        elif kind == "hook_output":
            console.print(f"    [dim]{escape(event['hook'])}: {escape(event['line'])}[/dim]")
        elif kind == "smoke_test":
            console.print(f"    against {event['target']}")
        elif kind in ("canary_step", "verdict", "canary", "canary_request"):
            show_canary(event)
        elif kind == "warning":
            console.print(f"    [yellow]warning:[/yellow] {escape(event['message'])}")
        elif kind == "artifact":
            console.print(f"    release artifact: {escape(_artifact_text(event))}")
        elif kind == "pruned":
            console.print(
                f"    removed old release snapshots: {escape(', '.join(event['versions']))}"
            )
        elif kind == "result":
            self.result = event
            self._result(event)

    def _result(self, event: dict[str, Any]) -> None:
        seconds = f" ({event['seconds']:.1f}s)" if "seconds" in event else ""
        if event.get("ok"):
            console.print(f"[green]✓[/green] {escape(event['message'])}{seconds}")
            return
        errors.print(f"[red]✗ deployment failed:[/red] {escape(event.get('message', ''))}")
        if event.get("logs"):
            errors.print(f"  last log lines of instance {event.get('instance')}:")
            for line in event["logs"]:
                errors.print(f"    {escape(line)}")
        previous = event.get("previous")
        if event.get("status") in ("aborted", "interrupted"):
            return
        if previous:
            errors.print(f"  users are still on {escape(previous)}")
        else:
            errors.print("  nothing was routed to the new release")


def show_canary(event: dict[str, Any]) -> None:
    """One canary event of a deployment's progress: a step, a verdict, a request."""
    kind = event.get("event")
    if kind == "canary_step":
        weights = ", ".join(f"{k} {v}%" for k, v in event.get("weights", {}).items())
        console.print(
            f"    step {event['step']}/{event['steps']}: {escape(weights)}, holding"
            f" {event['hold']:g}s"
        )
    elif kind == "verdict":
        colour = {"pass": "green", "fail": "red"}.get(event.get("verdict", ""), "yellow")
        what = "guard" if event.get("guard") else f"verdict over {event.get('window', 0):g}s"
        figures = event.get("figures") or {}
        shown = ", ".join(
            f"{side} {_figure(figures, side)}"
            for side in ("canary", "baseline")
            if figures.get(f"{side}_requests") is not None
        )
        console.print(
            f"    {what}: [{colour}]{event.get('verdict')}[/{colour}] → {event.get('decision')}"
            f"{' (' + escape(shown) + ')' if shown else ''}"
        )
        for reason in event.get("reasons", []):
            console.print(f"      [dim]{escape(reason)}[/dim]")
    elif kind == "canary_request":
        console.print(f"    [bold]{event['request']} requested[/bold] (baton {event['request']})")
    elif kind == "canary":
        console.print(f"    canary {event.get('phase')}: {escape(event.get('message', ''))}")


def _figure(figures: dict[str, Any], side: str) -> str:
    """``240 req, 0.42% errors, p95 12.0 ms`` from a verdict's figures."""
    requests = figures.get(f"{side}_requests")
    rate = figures.get(f"{side}_error_rate")
    p95 = figures.get(f"{side}_p95")
    text = f"{requests} req"
    if rate is not None:
        text += f", {rate:.2%} errors"
    if p95 is not None:
        text += f", p95 {p95 * 1000:.1f} ms"
    return text


async def _follow(
    client: Client, path: str, body: dict[str, Any] | None, method: str = "POST"
) -> int:
    progress = Progress()
    _following.append(progress)
    async for event in client.stream(method, path, body):
        progress.show(event)
    if progress.result is None:
        raise DaemonUnreachable(
            "lost the connection to the daemon before the deployment ended; see `baton status`"
        )
    return int(progress.result.get("exit_code", 1))


# -- commands ------------------------------------------------------------------------------------


class _Commands(click.Group):
    """The CLI's commands; ``proxy`` is imported only when used (it loads the data plane)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "proxy", "flags", "hosts"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "proxy":
            from baton.proxy.cli import proxy_command

            return proxy_command
        if name == "flags":
            from baton.flags.cli import flags_group

            return flags_group
        if name == "hosts":
            from baton.cluster.cli import hosts_command

            return hosts_command
        return super().get_command(ctx, name)


def observe_options(f: F) -> F:
    """``--metrics``, ``--dashboard`` (+ TLS) and ``--log-format`` of ``up`` and ``server``."""
    from baton.observe.cli import add_options

    return add_options(f)


def cluster_options(f: F) -> F:
    """``--cluster``, ``--host-name``, ``--advertise``, ``--roles`` of ``up`` and ``server``."""
    from baton.cluster.cli import add_options

    return add_options(f)


def _cluster_flags(flags: dict[str, Any]) -> Any:
    from baton.cluster.cli import options_from

    try:
        return options_from(flags)
    except BatonError as exc:
        _fail(exc)


def _fleet_deploy(raw: Any, path: Path, cluster: str | None, *args: Any) -> int | None:
    """A fleet app's deploy (see ``baton.cluster.cli.fleet_deploy``), else None."""
    from baton.cluster.cli import fleet_deploy

    version, env, command, strategy, image, skip = args
    try:
        return fleet_deploy(
            raw, str(path), cluster, version=version, env=env, command=command,
            strategy=strategy, image=image, skip_unreachable=skip,
        )  # fmt: skip
    except BatonError as exc:
        _fail(exc)


def _observe_flags(observe: dict[str, Any]) -> tuple[Any, str, list[str]]:
    from baton.observe.cli import endpoints_from

    try:
        return endpoints_from(observe)
    except BatonError as exc:
        _fail(exc)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State dir (default: $BATON_STATE_DIR or ~/.local/state/baton).",
)
@click.version_option(__version__, prog_name="baton")
def main(state_dir: Path | None) -> None:
    """Zero-downtime deploys for self-hosted web apps."""


flags_listen_option = click.option(
    "--flags",
    "flags_listen",
    default=None,
    metavar="ADDR",
    help="Also serve feature flags (OFREP) on this host:port (off loopback: BATON_FLAGS_TOKEN).",
)


@main.command()
@state_dir_option
@click.option("--detach", is_flag=True, help="Run in the background; return once the API answers.")
@flags_listen_option
@observe_options
@cluster_options
@click.pass_context
def up(
    ctx: click.Context,
    /,
    sub_state_dir: Path | None,
    detach: bool,
    flags_listen: str | None,
    **observe: Any,
) -> None:
    """Start the host daemon: the control plane and the proxy it supervises."""
    state_dir = state_dir_of(ctx, sub_state_dir)
    endpoints, log_format, server_flags = _observe_flags(observe)
    cluster = _cluster_flags(observe)
    if cluster is not None:
        server_flags = [*server_flags, *cluster.server_flags()]
    if flags_listen is not None:
        from baton.flags.http import check_ofrep_listen

        try:
            check_ofrep_listen(flags_listen, os.environ.get("BATON_FLAGS_TOKEN") or None)
        except BatonError as exc:
            _fail(exc)
        server_flags = [*server_flags, "--flags", flags_listen]
    client = Client(state_dir)
    running = _run(client.answers())
    if running is not None:
        console.print(f"baton is already running (pid {running.get('pid')}) on {state_dir}")
        return
    if not detach:
        from baton.server.app import run_server

        raise SystemExit(
            run_server(state_dir, endpoints, log_format, flags_listen=flags_listen, cluster=cluster)
        )
    private_dir(state_dir)
    private_dir(state_dir / "logs")
    log_path = state_dir / "logs" / "server.log"
    with open_private(log_path) as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "baton.cli",
                "--state-dir",
                str(state_dir),
                "server",
                *server_flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        health = _run(client.answers())
        if health is not None:
            console.print(f"baton is up (pid {health.get('pid')}), state in {state_dir}")
            return
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            errors.print(f"[red]error:[/red] the daemon exited with status {proc.returncode}:")
            errors.print(escape(tail))
            raise SystemExit(1)
        time.sleep(0.1)
    errors.print(
        f"[red]error:[/red] the daemon did not answer within {UP_TIMEOUT:g}s; see {log_path}"
    )
    raise SystemExit(3)


@main.command()
@state_dir_option
@click.option(
    "--timeout",
    default="30s",
    show_default=True,
    help="How long the new proxy has to take over before it is killed.",
)
@click.option(
    "--proxy-command",
    default=None,
    help="Command that runs the new proxy (default: this Baton's own), e.g. from a new venv.",
)
@click.pass_context
def upgrade(
    ctx: click.Context, sub_state_dir: Path | None, timeout: str, proxy_command: str | None
) -> None:
    """Replace the running proxy with a new process without refusing a connection."""
    from baton.config import parse_duration

    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        _fail(UsageError(f"--timeout: {exc}"))
    command = shlex.split(proxy_command) if proxy_command else None
    if proxy_command is not None and not command:
        _fail(UsageError("--proxy-command: expected a command"))
    client = Client(state_dir_of(ctx, sub_state_dir))
    body = {"command": command, "timeout": seconds}
    result = _run(client.call("POST", "/proxy/upgrade", body, timeout=seconds + 30))
    console.print(
        f"proxy upgraded without a gap: pid {result['old_pid']} → {result['pid']}"
        f" (Baton {result.get('version')}); the old one retires once its connections end"
    )


@main.command()
@state_dir_option
@flags_listen_option
@observe_options
@cluster_options
@click.pass_context
def server(
    ctx: click.Context, /, sub_state_dir: Path | None, flags_listen: str | None, **observe: Any
) -> None:
    """Run the control plane in the foreground (what `baton up` runs)."""
    from baton.server.app import run_server

    endpoints, log_format, _ = _observe_flags(observe)
    cluster = _cluster_flags(observe)
    state_dir = state_dir_of(ctx, sub_state_dir)
    raise SystemExit(
        run_server(state_dir, endpoints, log_format, flags_listen=flags_listen, cluster=cluster)
    )


@main.command()
@state_dir_option
@click.pass_context
def down(ctx: click.Context, sub_state_dir: Path | None) -> None:
    """Drain and stop everything Baton started: instances, the proxy, the daemon."""
    from baton.runtime.process import pid_alive

    state_dir = state_dir_of(ctx, sub_state_dir)
    client = Client(state_dir)
    health = _run(client.answers())
    if health is None:
        console.print(f"baton is not running on {state_dir}")
        return
    _run(client.call("POST", "/shutdown"))
    pid = int(health.get("pid") or 0)
    deadline = time.monotonic() + DOWN_TIMEOUT
    while time.monotonic() < deadline and pid and pid_alive(pid):
        time.sleep(0.1)
    if pid and pid_alive(pid):
        errors.print(f"[red]error:[/red] the daemon (pid {pid}) is still stopping")
        raise SystemExit(1)
    console.print("baton is down")


@main.command()
@state_dir_option
@config_option
@click.option(
    "--version",
    "version",
    default=None,
    help="Release label (default: the image tag for docker apps, else the git commit or time).",
)
@click.option(
    "--env", "env", multiple=True, metavar="KEY=VALUE", help="Extra environment (repeatable)."
)
@click.option("--command", "command", default=None, help="Override run.command for this release.")
@click.option(
    "--strategy",
    type=click.Choice(["blue-green", "rolling", "canary"]),
    default=None,
    help="Override deploy.strategy for this release.",
)
@click.option(
    "--image", "image", default=None, help="Docker apps: deploy this image instead of run.image."
)
@click.option(
    "--cluster",
    default=None,
    metavar="ENDPOINTS",
    help="A fleet app (hosts: in baton.yml): etcd client URLs (default: $BATON_CLUSTER).",
)
@click.option(
    "--skip-unreachable", is_flag=True, help="A fleet app: skip hosts unreachable on their turn."
)
@click.pass_context
def deploy(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    version: str | None,
    env: tuple[str, ...],
    command: str | None,
    strategy: str | None,
    image: str | None,
    cluster: str | None = None,
    skip_unreachable: bool = False,
) -> None:
    """Deploy a new release of the app in baton.yml, with zero downtime."""
    from baton.config import apply_overrides, load_config
    from baton.secrets import gather

    overrides = _parse_env(env)
    path = _config_path(config)
    try:
        loaded = load_config(path)
        apply_overrides(loaded.config, overrides, command, strategy, image)
        secret_values = gather(loaded.config.secrets, loaded.base_dir, dict(os.environ))
    except BatonError as exc:
        _fail(exc)
    fleet = _fleet_deploy(loaded.raw, path, cluster, version, overrides, command, strategy, image, skip_unreachable)  # fmt: skip
    if fleet is not None:
        raise SystemExit(fleet)
    client = Client(state_dir_of(ctx, sub_state_dir))
    body = {
        "config": str(path),
        "version": version,
        "env": overrides,
        "command": command,
        "strategy": strategy,
        "image": image,
        "secrets": secret_values,
    }
    raise SystemExit(_run(_follow(client, "/deploy", body)))


def _size(count: int) -> str:
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1e6:.1f} MB"


def _artifact_text(artifact: dict[str, Any]) -> str:
    """A release's artifact in one line: its snapshot, or its image tag and ID."""
    if artifact.get("kind") == "snapshot":
        kept = "" if artifact.get("kept", True) else " (removed)"
        size = ""
        if artifact.get("files") is not None and artifact.get("bytes") is not None:
            size = (
                f" ({artifact['files']} files, {_size(artifact['bytes'])},"
                f" {artifact.get('seconds') or 0:g}s)"
            )
        return f"snapshot {artifact.get('path')}{kept}{size}"
    if artifact.get("kind") == "image":
        image_id = str(artifact.get("id") or "")
        short = image_id.split(":", 1)[-1][:12]
        digest = f", {artifact['digest']}" if artifact.get("digest") else ""
        return f"image {artifact.get('image')} = {short}{digest}"
    return "-"


def _selector_query(config: Path | None, app: str | None) -> str:
    from urllib.parse import urlencode

    selector = _app_selector(config, app)
    return f"?{urlencode(selector)}" if selector else ""


@main.group("env", invoke_without_command=True)
@state_dir_option
@config_option
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def env_command(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    as_json: bool,
) -> None:
    """The app's plain environment (run.env plus --env values later deploys keep)."""
    ctx.ensure_object(dict)
    ctx.obj.update(state_dir=state_dir_of(ctx, sub_state_dir), config=config, app=app)
    if ctx.invoked_subcommand is not None:
        return
    client = Client(ctx.obj["state_dir"])
    data = _run(client.call("GET", f"/env{_selector_query(config, app)}"))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _show_env(data)


def _show_env(data: dict[str, Any]) -> None:
    kept = data.get("from_deploy") or {}
    console.print(f"{escape(data['app'])} (release {escape(str(data.get('release')))}):")
    for name, value in sorted((data.get("env") or {}).items()):
        note = "  [dim](--env, kept by later deploys)[/dim]" if name in kept else ""
        console.print(f"  {escape(name)}={escape(value)}{note}")
    pending = sorted(set(kept) - set(data.get("env") or {}))
    for name in pending:
        console.print(
            f"  {escape(name)}={escape(kept[name])}  [dim](--env, from the next deploy)[/dim]"
        )


@env_command.command("unset")
@click.argument("name")
@click.pass_context
def env_unset(ctx: click.Context, name: str) -> None:
    """Stop carrying NAME's --env value into later deploys (from the next deploy on)."""
    client = Client(ctx.obj["state_dir"])
    body = {**_app_selector(ctx.obj["config"], ctx.obj["app"]), "unset": [name]}
    _show_env(_run(client.call("POST", "/env", body)))


@main.group("secrets", invoke_without_command=True)
@state_dir_option
@config_option
@app_option
@click.pass_context
def secrets_command(
    ctx: click.Context, sub_state_dir: Path | None, config: Path | None, app: str | None
) -> None:
    """The app's secrets, by name (values are never shown)."""
    ctx.ensure_object(dict)
    ctx.obj.update(state_dir=state_dir_of(ctx, sub_state_dir), config=config, app=app)
    if ctx.invoked_subcommand is not None:
        return
    client = Client(ctx.obj["state_dir"])
    data = _run(client.call("GET", f"/secrets{_selector_query(config, app)}"))
    _show_secrets(data)


def _show_secrets(data: dict[str, Any]) -> None:
    console.print(f"{escape(data['app'])} secrets:")
    if not data["secrets"]:
        console.print("  none listed under secrets: in baton.yml")
    for item in data["secrets"]:
        mark = "[green]set[/green]" if item["set"] else "[red]missing[/red]"
        console.print(f"  {escape(item['name'])}  {mark}")
    for name in data.get("unlisted", []):
        console.print(f"  {escape(name)}  [dim]set, not listed in baton.yml[/dim]")


@secrets_command.command("set")
@click.argument("name")
@click.pass_context
def secrets_set(ctx: click.Context, name: str) -> None:
    """Set NAME to the value read from stdin (one line; used from the next deploy)."""
    value = sys.stdin.readline().rstrip("\r\n") if not sys.stdin.isatty() else None
    if value is None:
        value = click.prompt(f"value of {name}", hide_input=True)
    client = Client(ctx.obj["state_dir"])
    body = {**_app_selector(ctx.obj["config"], ctx.obj["app"]), "set": {name: value}}
    _show_secrets(_run(client.call("POST", "/secrets", body)))


@secrets_command.command("unset")
@click.argument("name")
@click.pass_context
def secrets_unset(ctx: click.Context, name: str) -> None:
    """Forget NAME's value (a deploy that still lists it then fails, naming it)."""
    client = Client(ctx.obj["state_dir"])
    body = {**_app_selector(ctx.obj["config"], ctx.obj["app"]), "unset": [name]}
    _show_secrets(_run(client.call("POST", "/secrets", body)))


@main.command()
@state_dir_option
@config_option
@app_option
@click.argument("version", required=False)
@click.option(
    "--force",
    is_flag=True,
    help="Roll back even to a release older than a contract migration (it may break).",
)
@click.pass_context
def rollback(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    version: str | None,
    force: bool,
) -> None:
    """Deploy the previous release again (or VERSION): by a switch when it is still warm."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    body: dict[str, Any] = {**_app_selector(config, app), "version": version, "force": force}
    raise SystemExit(_run(_follow(client, "/rollback", body)))


async def _canary_request(client: Client, what: str, body: dict[str, Any]) -> int:
    """Ask the running canary to promote or abort, then follow it to its end.

    Exit 0 when it did what was asked (promoted and live; aborted and users back on the
    stable release), else 1.
    """
    progress = Progress()
    async for event in client.stream("POST", f"/{what}", body):
        if event.get("event") == "deployment":
            console.print(
                f"asking deployment #{event['id']} ({escape(event['app'])}"
                f" {escape(event['version'])}) to {what}"
            )
            continue
        progress.show(event)
    result = progress.result
    if result is None:
        raise DaemonUnreachable(
            "lost the connection to the daemon before the deployment ended; see `baton status`"
        )
    if what == "promote":
        return 0 if result.get("ok") else 1
    return 0 if result.get("status") == "rolled_back" else 1


@main.command()
@state_dir_option
@config_option
@app_option
@click.pass_context
def promote(
    ctx: click.Context, sub_state_dir: Path | None, config: Path | None, app: str | None
) -> None:
    """Promote the running canary now: skip its remaining steps."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    raise SystemExit(_run(_canary_request(client, "promote", _app_selector(config, app))))


@main.command()
@state_dir_option
@config_option
@app_option
@click.pass_context
def abort(
    ctx: click.Context, sub_state_dir: Path | None, config: Path | None, app: str | None
) -> None:
    """Abort the running canary now: users go back to the stable release (deploy exits 1)."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    raise SystemExit(_run(_canary_request(client, "abort", _app_selector(config, app))))


@main.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Redraw in place every --interval until Ctrl-C.")
@click.option("--interval", default="1s", show_default=True, help="Redraw period of --watch.")
@click.pass_context
def status(
    ctx: click.Context,
    sub_state_dir: Path | None,
    as_json: bool,
    watch: bool,
    interval: str,
) -> None:
    """Per app: the live release, each release's weight and instances, deployments running."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    if watch:
        if as_json:
            _fail(UsageError("--watch and --json do not go together"))
        from baton.observe.live import watch as watch_live

        period = _interval(interval)
        watch_live(lambda: _run(client.call("GET", "/status")), _show_status, console, period)
        return
    data = _run(client.call("GET", "/status"))
    fleet = _fleet_view(client.state_dir, "status")
    if fleet is not None:
        data["fleet"] = fleet
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _show_status(data)
    _show_fleet(fleet, "status")


def _fleet_view(state_dir: Path, what: str) -> dict[str, Any] | None:
    """The fleet's hosts (status) or deployments (history) when the daemon runs in one."""
    from baton.cluster.fleetview import read_for_cli

    return read_for_cli(state_dir, what)


def _show_fleet(fleet: dict[str, Any] | None, what: str) -> None:
    from baton.cluster import fleetview

    if fleet is None:
        return
    if "error" in fleet:
        console.print(f"[yellow]fleet:[/yellow] {escape(fleet['error'])}")
        return
    render = fleetview.status_lines if what == "status" else fleetview.history_lines
    click.echo("\n".join(render(fleet[what])))


def _interval(text: str) -> float:
    from baton.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        _fail(UsageError(f"--interval: {exc}"))
    if not 0.1 <= seconds <= 3600:
        _fail(UsageError(f"--interval: expected between 100ms and 1h, got {text!r}"))
    return seconds


@main.command()
@state_dir_option
@click.option("--app", default=None, help="Only this app.")
@click.option("--interval", default="1s", show_default=True, help="Redraw period.")
@click.option("--window", default="5s", show_default=True, help="Traffic behind each figure.")
@click.pass_context
def top(
    ctx: click.Context, sub_state_dir: Path | None, app: str | None, interval: str, window: str
) -> None:
    """Live view of each release's split, req/s, errors and latency (e.g. during a canary)."""
    from baton.observe.live import watch as watch_live
    from baton.observe.views import top_lines

    client = Client(state_dir_of(ctx, sub_state_dir))
    period, seconds = _interval(interval), _interval(window)

    def fetch() -> Any:
        data = _run(client.call("GET", f"/status?window={seconds:g}"))
        if app is not None:
            if app not in data["apps"]:
                raise UsageError(f"--app: no app named {app!r} is deployed here")
            data["apps"] = {app: data["apps"][app]}
        return data

    fetch()  # a bad --app or an unreachable daemon fails at once, with its exit code
    watch_live(
        fetch,
        lambda data: console.print(escape("\n".join(top_lines(data, console.width)))),
        console,
        period,
    )


def _show_status(data: dict[str, Any]) -> None:
    from rich.table import Table  # only these views need it: not at start-up

    proxy = data.get("proxy", {})
    console.print(
        f"proxy: {'[green]up[/green]' if proxy.get('ok') else '[red]down[/red]'}"
        f" (pid {proxy.get('pid')}, restarts {proxy.get('restarts', 0)})"
    )
    if not data["apps"]:
        console.print("no apps deployed yet")
    for name, app in data["apps"].items():
        live = app["live"] or "[yellow](traffic split)[/yellow]" if app["releases"] else "none"
        console.print(f"\n[bold]{escape(name)}[/bold] on {app['listen']}  live: {live}")
        if app.get("stopped"):
            console.print(
                f"[yellow]stopped[/yellow] by `baton app stop` (release"
                f" {escape(str(app.get('desired')))}); `baton app start {escape(name)}` starts it"
            )
        table = Table(show_edge=False, box=None, pad_edge=False)
        for column in (
            "release",
            "state",
            "weight",
            "instance",
            "address",
            "health",
            "in flight",
            "tunnels",
        ):
            table.add_column(column)
        for release in app["releases"]:
            instances = release["instances"] or [None]
            for n, inst in enumerate(instances):
                head = (
                    [release["version"], release["state"], f"{release['weight']}%"]
                    if n == 0
                    else ["", "", ""]
                )
                if inst is None:
                    table.add_row(*head, "-", "-", "-", "-", "-")
                else:
                    table.add_row(
                        *head,
                        f"#{inst['index']} {inst['state']}",
                        inst["address"],
                        inst["health"],
                        str(inst["in_flight"]),
                        str(inst.get("tunnels", 0)),
                    )
        console.print(table)
        for release in app["releases"]:
            if release.get("artifact"):
                text = _artifact_text(release["artifact"])
                console.print(f"  {escape(release['version'])} runs {escape(text)}")
        _show_traffic(app)
        dep = app.get("deployment")
        if dep:
            console.print(
                f"deployment #{dep['id']} ({dep['kind']}, {dep['strategy']}) at step {dep['step']}"
            )
        for item in app.get("replaced", [])[-3:]:
            dead = ", ".join(f"#{d['index']} {d['address']}" for d in item["dead"]) or "missing"
            new = ", ".join(f"#{n['index']} {n['address']}" for n in item["new"])
            when = time.strftime("%H:%M:%S", time.localtime(item["at"]))
            console.print(f"replaced dead {escape(dead)} by {escape(new)} at {when}")
        for item in app.get("cleaned", []):
            console.print(
                f"cleaned at start: {item['runtime']} {escape(item['version'])}#{item['index']}"
                f" ({item['address']}), which no live or warm release routed"
            )
    _show_certificates(data.get("certificates") or [])


def _show_certificates(rows: list[dict[str, Any]]) -> None:
    """``baton status``: each host's certificate (issuer, expiry, source, last error)."""
    from rich.table import Table  # only these views need it: not at start-up

    if not rows:
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("host", "issuer", "not after", "source", "error"):
        table.add_column(column)
    for row in rows:
        issuer = str(row.get("issuer") or "-")
        cn = next((p[3:] for p in issuer.split(",") if p.startswith("CN=")), issuer)
        table.add_row(
            escape(str(row.get("host") or "*")),
            escape(cn),
            escape(str(row.get("not_after") or "-")[:19]),
            escape(str(row.get("source") or "-")),
            f"[red]{escape(str(row['error']))}[/red]" if row.get("error") else "",
        )
    console.print("\n[bold]certificates[/bold]")
    console.print(table)


def _show_traffic(app: dict[str, Any]) -> None:
    """Each release's recent traffic, and where a running canary is."""
    from rich.table import Table  # only these views need it: not at start-up

    rows = [r for r in app["releases"] if r.get("traffic")]
    if rows:
        seconds = max(r["traffic"].get("seconds") or 0 for r in rows)
        table = Table(show_edge=False, box=None, pad_edge=False, title_justify="left")
        for column in ("release", "req/s", "errors", "p50", "p95", "p99"):
            table.add_column(column, justify="left" if column == "release" else "right")

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f} ms"

        for release in rows:
            t = release["traffic"]
            table.add_row(
                release["version"],
                "-" if t.get("rate") is None else f"{t['rate']:.1f}",
                "-" if t.get("error_rate") is None else f"{t['error_rate']:.2%}",
                ms(t.get("p50")),
                ms(t.get("p95")),
                ms(t.get("p99")),
            )
        console.print(f"traffic, last {seconds:g}s:")
        console.print(table)
    canary = app.get("canary")
    if canary:
        step = (
            f"step {canary['step']}/{canary['steps']} at {canary['weight']}%"
            if canary["step"]
            else "starting (no traffic yet)"
        )
        left = f", {canary['left']:g}s left" if canary.get("left") is not None else ""
        extra = f", held again {canary['extensions']}x" if canary.get("extensions") else ""
        confirming = ", confirming a latency fail" if canary.get("confirming") else ""
        console.print(
            f"canary {escape(canary['version'])} (stable {escape(canary['stable'])}): {step}"
            f"{left}{extra}{confirming}"
        )
        last = canary.get("last_verdict")
        if last:
            console.print(
                f"  last verdict (step {last['step']}): {last['verdict']} → {last['decision']}"
            )


@main.command()
@state_dir_option
@config_option
@click.option("--app", default=None, help="Only this app.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-n", "--limit", default=20, show_default=True, help="How many deployments.")
@click.pass_context
def history(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    as_json: bool,
    limit: int,
) -> None:
    """Past deployments, newest first."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    selector = _app_selector(config, app) if (config or app) else {}
    query = f"?limit={limit}" + (f"&app={selector['app']}" if selector else "")
    data = _run(client.call("GET", f"/history{query}"))
    fleet = _fleet_view(client.state_dir, "history")
    if fleet is not None and "history" in fleet and selector:
        fleet["history"] = [d for d in fleet["history"] if d["app"] == selector["app"]]
    if fleet is not None:
        data["fleet"] = fleet
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from baton.observe.views import history_lines

    click.echo("\n".join(history_lines(data["deployments"], console.width)))
    _show_fleet(fleet, "history")


@main.command()
@state_dir_option
@config_option
@app_option
@click.option("--version", "version", default=None, help="The release (default: the live one).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option(
    "-n", "--lines", default=100, show_default=True, help="Lines per instance to start with."
)
@click.pass_context
def logs(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    version: str | None,
    follow: bool,
    lines: int,
) -> None:
    """The instances' output (stdout and stderr)."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    params = {**_app_selector(config, app), "lines": str(lines), "follow": "1" if follow else "0"}
    if version:
        params["version"] = version
    query = "&".join(f"{k}={v}" for k, v in params.items())

    async def show() -> None:
        async for item in client.stream("GET", f"/logs?{query}"):
            click.echo(f"[{item['instance']}] {item['line']}")

    _run(show())


@main.command()
@config_option
def check(config: Path | None) -> None:
    """Validate baton.yml and print a zero-downtime checklist."""
    from baton.config import checklist, load_config

    path = _config_path(config)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        _fail(exc)
    console.print(f"[green]✓[/green] {escape(str(path))} is valid (app {loaded.config.app})")
    image = _run(_image_facts(loaded.config)) if loaded.config.runtime == "docker" else None
    failed = False
    for item in checklist(loaded, image):
        mark = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]"}.get(
            item.level, "[red]✗[/red]"
        )
        console.print(f"  {mark} {escape(item.message)}")
        failed = failed or not item.ok
    if failed:
        raise SystemExit(2)


async def _image_facts(cfg: AppConfig) -> ImageFacts:
    """What the Docker engine says about a docker app's image (for ``baton check``)."""
    import tempfile

    from baton.config import ImageFacts
    from baton.runtime.docker import DockerRuntime

    image = str(cfg.run.image)
    with tempfile.TemporaryDirectory(prefix="baton-check-") as tmp:
        runtime = DockerRuntime(Path(tmp))
        try:
            healthcheck = await runtime.image_healthcheck(image)
        except DaemonUnreachable as exc:
            return ImageFacts(image, found=None, error=str(exc))
        except ImageNotFound:
            return ImageFacts(image, found=False)
        except BatonError as exc:
            return ImageFacts(image, found=None, error=str(exc))
        finally:
            runtime.close()
    return ImageFacts(image, found=True, healthcheck=healthcheck)


# -- schema migrations -----------------------------------------------------------------------------


@main.group()
def migrate() -> None:
    """Expand/contract schema migrations: see where each app's schema is, run the contract."""


@migrate.command("status")
@state_dir_option
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def migrate_status(
    ctx: click.Context, sub_state_dir: Path | None, app: str | None, as_json: bool
) -> None:
    """Each app's schema phase: expanded, pending (contract allowed), contracted or none."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    query = f"?app={app}" if app else ""
    answer = _run(client.call("GET", "/migrate/status" + query, timeout=60))
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
        return
    for state in answer["apps"]:
        colour = {"contracted": "green", "pending": "yellow", "expanded": "cyan"}.get(
            state["phase"], "white"
        )
        console.print(
            f"[bold]{escape(state['app'])}[/bold] {escape(str(state['version']))}:"
            f" [{colour}]{state['phase']}[/{colour}]"
        )
        if state["phase"] in ("expanded", "pending"):
            console.print(f"  {escape(state['why'])}")
            how = (
                "runs by itself (auto_contract)"
                if state["auto_contract"]
                else ("run it with `baton migrate contract`")
            )
            if state["phase"] == "pending":
                console.print(f"  the contract is allowed: {how}")
        for line in state.get("status_output") or []:
            console.print(f"  | {escape(line)}")


@migrate.command("contract")
@state_dir_option
@config_option
@app_option
@click.pass_context
def migrate_contract(
    ctx: click.Context, sub_state_dir: Path | None, config: Path | None, app: str | None
) -> None:
    """Run the live release's contract migration, once its expand has proved itself.

    Refused (exit 2) before migrations.contract_after of the release being live without a
    rollback, with the time left. Afterwards a rollback to an older release is refused.
    """
    client = Client(state_dir_of(ctx, sub_state_dir))
    raise SystemExit(_run(_follow(client, "/migrate/contract", _app_selector(config, app))))


@main.command()
@state_dir_option
@click.argument("app", required=False)
@click.pass_context
def watch(ctx: click.Context, sub_state_dir: Path | None, app: str | None) -> None:
    """Re-attach to APP's deployment in progress (live progress), or show the last one's outcome.

    Exits as `baton deploy` would: 0 live, 1 failed (users on the previous release), 3 no daemon.
    """
    client = Client(state_dir_of(ctx, sub_state_dir))
    query = f"?app={app}" if app else ""
    raise SystemExit(_run(_follow(client, f"/watch{query}", None, method="GET")))


@main.group("app")
def app_group() -> None:
    """Per-app verbs: stop, start, remove."""


def _app_verb(ctx: click.Context, sub_state_dir: Path | None, name: str, verb: str) -> Any:
    client = Client(state_dir_of(ctx, sub_state_dir))
    return _run(client.call("POST", f"/apps/{name}/{verb}", {}, timeout=DOWN_TIMEOUT))


@app_group.command("stop")
@state_dir_option
@click.argument("name")
@click.pass_context
def app_stop(ctx: click.Context, sub_state_dir: Path | None, name: str) -> None:
    """Drain and stop NAME; it stays stopped (across `baton up`) until `baton app start`."""
    result = _app_verb(ctx, sub_state_dir, name, "stop")
    console.print(f"{escape(name)} stopped ({len(result['stopped'])} instance(s))")


@app_group.command("start")
@state_dir_option
@click.argument("name")
@click.pass_context
def app_start(ctx: click.Context, sub_state_dir: Path | None, name: str) -> None:
    """Start NAME's live release again: ready, then routed."""
    result = _app_verb(ctx, sub_state_dir, name, "start")
    console.print(f"{escape(name)} {escape(result['version'])} is serving")


@app_group.command("remove")
@state_dir_option
@click.argument("name")
@click.pass_context
def app_remove(ctx: click.Context, sub_state_dir: Path | None, name: str) -> None:
    """Drain and stop NAME, then forget it, its releases and its history."""
    result = _app_verb(ctx, sub_state_dir, name, "remove")
    console.print(f"{escape(name)} removed ({len(result['stopped'])} instance(s) stopped)")


@main.command("install-service")
@state_dir_option
@click.option("--user", "user_unit", is_flag=True, help="A systemd --user unit.")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write baton.service (default: /etc/systemd/system, or"
    " ~/.config/systemd/user with --user).",
)
@click.option("--print", "print_only", is_flag=True, help="Print the unit; write nothing.")
@click.pass_context
def install_service(
    ctx: click.Context,
    sub_state_dir: Path | None,
    user_unit: bool,
    output_dir: Path | None,
    print_only: bool,
) -> None:
    """Write a systemd unit that runs the control plane; the proxy and apps survive its restarts."""
    from baton.service import default_output_dir, install, spec_for, unit_text

    spec = spec_for(state_dir_of(ctx, sub_state_dir), user_unit)
    if print_only:
        click.echo(unit_text(spec), nl=False)
        return
    target = (output_dir or default_output_dir(user_unit)).expanduser().absolute()
    try:
        path = install(spec, target)
    except OSError as exc:
        _fail(UsageError(f"--output-dir: cannot write {target}: {exc.strerror or exc}"))
    flag = " --user" if user_unit else ""
    console.print(f"wrote {path}")
    console.print(f"next: systemctl{flag} daemon-reload && systemctl{flag} enable --now baton")
    if user_unit:
        console.print('to run it without a login session: loginctl enable-linger "$USER"')


if __name__ == "__main__":
    main()
