"""``baton``: the command line. Thin: parse, ask the control plane, render, exit with a code.

Exit codes (scripts depend on them): 0 done; 1 the deployment failed and users were left on
the previous release; 2 bad usage or config, nothing changed; 3 the control plane cannot be
reached, or another deployment of the app is running.

Every command but ``up``, ``server``, ``check`` and ``proxy`` talks to the control plane's
JSON API on ``<state dir>/baton.sock``. The state dir is ``--state-dir``, else
``$BATON_STATE_DIR``, else ``~/.local/state/baton``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from baton import __version__
from baton.build import version_option
from baton.errors import BatonError, ConfigError, DaemonUnreachable, ImageNotFound, UsageError

# Not imported at start-up (rich, the event classes, subprocess): `baton deploy` sends its
# request first, and every deploy waits for the CLI's start-up up to it.
if TYPE_CHECKING:
    from rich.console import Console

    from baton import events as ev
    from baton.config import AppConfig, ImageFacts

from baton.cli_support import (
    DIR_TYPE,
    DOWN_TIMEOUT,
    UP_TIMEOUT,
    Client,
    F,
    app_option,
    app_selector,
    config_option,
    config_path,
    console,
    errors,
    escape,
    fail,
    following,
    guard,
    run_async,
    state_dir_of,
    state_dir_option,
)


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(UsageError(f"--env: expected KEY=VALUE, got {pair!r}"))
        env[key] = value
    return env


# -- rendering deployments -------------------------------------------------------------------------


class Progress:
    """Renders deployment events as they come (one method per event type); remembers the
    result. ``out``/``err`` default to the CLI's consoles (tests pass their own)."""

    def __init__(self, out: Console | None = None, err: Console | None = None) -> None:
        self.out = out or console
        self.err = err or errors
        self.result: ev.Result | None = None
        self.version = "?"
        self.previous: str | None = None
        self.app = "?"
        self.id: int | None = None
        self._last_verify = 0.0

    def show(self, data: dict[str, Any]) -> None:
        """Render one event as it came from the API (a wire dict)."""
        from baton import events as ev

        try:
            event = ev.from_dict(data)
        except ValueError:
            return  # not an event: nothing to show
        self.render(event)

    def render(self, event: ev.Event) -> None:
        from baton import events as ev

        print_ = self.out.print
        match event:
            case ev.Intro():
                self.app, self.version = event.app, event.version
                self.id = event.id
                self.previous = event.previous
                what = {"rollback": "Rolling back", "contract": "Contract migration of"}.get(
                    event.kind, "Deploying"
                )
                replacing = f", replacing {self.previous}" if self.previous else ""
                print_(
                    f"[bold]{what} {escape(self.app)} {escape(self.version)}[/bold]"
                    f" ({escape(str(event.strategy))}{escape(replacing)}) — deployment"
                    f" #{event.id}"
                )
            case ev.StepStarted():
                batch = f" (batch {event.batch + 1})" if event.batch is not None else ""
                detail = f": {event.detail}" if event.detail else ""
                print_(f"  [cyan]▸ {event.step}[/cyan]{batch}{escape(detail)}")
            case ev.InstanceChanged():
                colour = {"ready": "green", "failed": "red"}.get(event.state, "white")
                message = f" — {event.message}" if event.message else ""
                print_(
                    f"    instance {event.index} {event.address}"
                    f" [{colour}]{event.state}[/{colour}]{escape(message)}"
                )
            case ev.Probe():
                print_(f"    [dim]instance {event.index}: {escape(event.message)}[/dim]")
            case ev.Switched():
                weights = ", ".join(f"{k} {v}%" for k, v in event.weights.items())
                label = "switched back" if event.back else "traffic"
                print_(f"    {label}: {escape(weights) or 'no release routed'}")
            case ev.Verifying():
                final = event.passed or event.failing
                if final or time.monotonic() - self._last_verify >= 2.0:
                    self._last_verify = time.monotonic()
                    mark = (
                        "[red]failing[/red]"
                        if event.failing
                        else ("[green]passed[/green]" if event.passed else "watching")
                    )
                    print_(
                        f"    verify {mark}: {event.requests} requests, {event.errors} errors"
                        f" ({event.rate:.1%})"
                    )
            case ev.Drained():
                how = "drained" if event.drained else "drain timed out"
                print_(f"    {len(event.targets)} target(s) {how}")
            case ev.Stopped():
                print_(f"    stopped {', '.join(event.targets)}")
            case ev.KeptWarm():
                print_(f"    {event.version} stays warm for {event.seconds:g}s")
            case ev.HookRan():
                mark = "[green]ok[/green]" if event.ok else "[red]failed[/red]"
                print_(f"    {event.hook} {mark}")
            case ev.HookOutput():
                print_(f"    [dim]{escape(event.hook)}: {escape(event.line)}[/dim]")
            case ev.SmokeTest():
                print_(f"    against {event.target}")
            case ev.CanaryStep() | ev.CanaryVerdict() | ev.CanaryNote() | ev.CanaryRequest():
                self.render_canary(event)
            case ev.Warned():
                print_(f"    [yellow]warning:[/yellow] {escape(event.message)}")
            case ev.Artifact():
                print_(f"    release artifact: {escape(_artifact_text(event.extra))}")
            case ev.Pruned():
                print_(f"    removed old release snapshots: {escape(', '.join(event.versions))}")
            case ev.Result():
                self.result = event
                self._result(event)
            case _:
                pass  # a kind this CLI does not know (a newer daemon's): nothing to show

    def _result(self, event: ev.Result) -> None:
        from baton import events as ev

        seconds = f" ({event.seconds:.1f}s)" if ev.given(event.seconds) else ""
        if event.ok:
            self.out.print(f"[green]✓[/green] {escape(event.message)}{seconds}")
            return
        self.err.print(f"[red]✗ deployment failed:[/red] {escape(event.message)}")
        if event.logs:
            self.err.print(f"  last log lines of instance {event.instance}:")
            for line in event.logs:
                self.err.print(f"    {escape(line)}")
        previous = event.previous
        if event.status in ("aborted", "interrupted"):
            return
        if previous:
            self.err.print(f"  users are still on {escape(previous)}")
        else:
            self.err.print("  nothing was routed to the new release")

    def render_canary(self, event: ev.Event) -> None:
        """One canary event of a deployment's progress: a step, a verdict, a request."""
        from baton import events as ev

        print_ = self.out.print
        match event:
            case ev.CanaryStep():
                weights = ", ".join(f"{k} {v}%" for k, v in event.weights.items())
                print_(
                    f"    step {event.step}/{event.steps}: {escape(weights)}, holding"
                    f" {event.hold:g}s"
                )
            case ev.CanaryVerdict():
                colour = {"pass": "green", "fail": "red"}.get(event.verdict, "yellow")
                what = "guard" if event.guard else f"verdict over {event.window:g}s"
                figures = event.figures or {}
                shown = ", ".join(
                    f"{side} {_figure(figures, side)}"
                    for side in ("canary", "baseline")
                    if figures.get(f"{side}_requests") is not None
                )
                print_(
                    f"    {what}: [{colour}]{event.verdict}[/{colour}] → {event.decision}"
                    f"{' (' + escape(shown) + ')' if shown else ''}"
                )
                for reason in event.reasons:
                    print_(f"      [dim]{escape(reason)}[/dim]")
            case ev.CanaryRequest():
                print_(f"    [bold]{event.request} requested[/bold] (baton {event.request})")
            case ev.CanaryNote():
                print_(f"    canary {event.phase}: {escape(event.message)}")


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


def _follow(client: Client, path: str, body: dict[str, Any] | None, method: str = "POST") -> int:
    return _render(client.events(method, path, body, meanwhile=_ready_to_render))


def _ready_to_render() -> None:
    """What rendering a deployment needs (rich, the event classes), imported while the
    daemon works on the request just sent rather than before it."""
    import importlib

    from baton.cli_console import warm

    importlib.import_module("baton.events")
    warm()


def _render(events: Iterator[Any]) -> int:
    """Render a deployment's events as they come; its exit code."""
    progress = Progress()
    following.append(progress)
    for event in events:
        progress.show(event)
    if progress.result is None:
        raise DaemonUnreachable(
            "lost the connection to the daemon before the deployment ended; see `baton status`"
        )
    return progress.result.exit_code


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
        fail(exc)


def _fleet_deploy(raw: Any, path: Path, cluster: str | None, *args: Any) -> int | None:
    """A fleet app's deploy (see ``baton.cluster.cli.fleet_deploy``), else None."""
    from baton.cluster.cli import fleet_deploy

    version, env, command, strategy, image, skip, host_configs = args
    try:
        return fleet_deploy(
            raw, str(path), cluster, version=version, env=env, command=command,
            strategy=strategy, image=image, skip_unreachable=skip, host_configs=host_configs,
        )  # fmt: skip
    except BatonError as exc:
        fail(exc)


def _observe_flags(observe: dict[str, Any]) -> tuple[Any, str, list[str]]:
    from baton.observe.cli import endpoints_from

    try:
        return endpoints_from(observe)
    except BatonError as exc:
        fail(exc)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=DIR_TYPE,
    default=None,
    help="State dir (default: $BATON_STATE_DIR or ~/.local/state/baton).",
)
@version_option(__version__)
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
            fail(exc)
        server_flags = [*server_flags, "--flags", flags_listen]
    client = Client(state_dir)
    running = run_async(client.answers())
    if running is not None:
        console.print(f"baton is already running (pid {running.get('pid')}) on {state_dir}")
        return
    if not detach:
        from baton.server.app import run_server

        raise SystemExit(
            run_server(state_dir, endpoints, log_format, flags_listen=flags_listen, cluster=cluster)
        )
    import subprocess

    from baton.state.files import open_private, private_dir

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
        health = run_async(client.answers())
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
        fail(UsageError(f"--timeout: {exc}"))
    import shlex

    command = shlex.split(proxy_command) if proxy_command else None
    if proxy_command is not None and not command:
        fail(UsageError("--proxy-command: expected a command"))
    client = Client(state_dir_of(ctx, sub_state_dir))
    body = {"command": command, "timeout": seconds}
    result = run_async(client.call("POST", "/proxy/upgrade", body, timeout=seconds + 30))
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
    health = run_async(client.answers())
    if health is None:
        console.print(f"baton is not running on {state_dir}")
        return
    run_async(client.call("POST", "/shutdown"))
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
@click.option(
    "--host-config",
    multiple=True,
    metavar="HOST=PATH",
    help="A fleet app: HOST's baton.yml is at PATH (absolute) where it differs (repeatable).",
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
    host_config: tuple[str, ...] = (),
) -> None:
    """Deploy a new release of the app in baton.yml, with zero downtime."""
    from baton.deployread import read_deploy_facts
    from baton.secrets import gather

    overrides = _parse_env(env)
    path = config_path(config)
    checks = (path, overrides, command, strategy, image)
    facts = None if cluster or host_config else read_deploy_facts(path)
    if facts is None:  # a fleet app, or a file that is not plainly fine: validate it here
        raw, secret_values = _validate_deploy(*checks)
        fleet = _fleet_deploy(raw, path, cluster, version, overrides, command, strategy, image, skip_unreachable, host_config)  # fmt: skip
        if fleet is not None:
            raise SystemExit(fleet)
    else:  # the daemon validates it (exit 2, the same message naming file and key)
        try:
            secret_values = gather(facts.secrets, facts.base_dir, dict(os.environ))
        except BatonError as exc:
            _validate_deploy(*checks)  # a bad config is the first thing to say, as before
            fail(exc)
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

    def send() -> int:
        try:
            events = client.events("POST", "/deploy", body, meanwhile=_ready_to_render)
        except DaemonUnreachable:
            if facts is not None:
                _validate_deploy(*checks)  # a bad config exits 2 even with no daemon, as before
            raise
        return _render(events)

    raise SystemExit(guard(send))


def _validate_deploy(
    path: Path, env: dict[str, str], command: str | None, strategy: str | None, image: str | None
) -> tuple[Any, dict[str, str]]:
    """``baton deploy``'s full check of baton.yml and its flags (what the daemon checks too):
    the raw file and the secret values to send; a problem exits 2 naming file and key."""
    from baton.config import apply_overrides, load_config
    from baton.secrets import gather

    try:
        loaded = load_config(path)
        apply_overrides(loaded.config, env, command, strategy, image)
        values = gather(loaded.config.secrets, loaded.base_dir, dict(os.environ))
    except BatonError as exc:
        fail(exc)
    return loaded.raw, values


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

    selector = app_selector(config, app)
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
    data = run_async(client.call("GET", f"/env{_selector_query(config, app)}"))
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
    body = {**app_selector(ctx.obj["config"], ctx.obj["app"]), "unset": [name]}
    _show_env(run_async(client.call("POST", "/env", body)))


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
    data = run_async(client.call("GET", f"/secrets{_selector_query(config, app)}"))
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
    body = {**app_selector(ctx.obj["config"], ctx.obj["app"]), "set": {name: value}}
    _show_secrets(run_async(client.call("POST", "/secrets", body)))


@secrets_command.command("unset")
@click.argument("name")
@click.pass_context
def secrets_unset(ctx: click.Context, name: str) -> None:
    """Forget NAME's value (a deploy that still lists it then fails, naming it)."""
    client = Client(ctx.obj["state_dir"])
    body = {**app_selector(ctx.obj["config"], ctx.obj["app"]), "unset": [name]}
    _show_secrets(run_async(client.call("POST", "/secrets", body)))


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
    body: dict[str, Any] = {**app_selector(config, app), "version": version, "force": force}
    raise SystemExit(guard(lambda: _follow(client, "/rollback", body)))


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
        return 0 if result.ok else 1
    return 0 if result.status == "rolled_back" else 1


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
    raise SystemExit(run_async(_canary_request(client, "promote", app_selector(config, app))))


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
    raise SystemExit(run_async(_canary_request(client, "abort", app_selector(config, app))))


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
            fail(UsageError("--watch and --json do not go together"))
        from baton.observe.live import watch as watch_live

        period = _interval(interval)
        watch_live(lambda: run_async(client.call("GET", "/status")), _show_status, console, period)
        return
    data = run_async(client.call("GET", "/status"))
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
        fail(UsageError(f"--interval: {exc}"))
    if not 0.1 <= seconds <= 3600:
        fail(UsageError(f"--interval: expected between 100ms and 1h, got {text!r}"))
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
        data = run_async(client.call("GET", f"/status?window={seconds:g}"))
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
    selector = app_selector(config, app) if (config or app) else {}
    query = f"?limit={limit}" + (f"&app={selector['app']}" if selector else "")
    data = run_async(client.call("GET", f"/history{query}"))
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
    params = {**app_selector(config, app), "lines": str(lines), "follow": "1" if follow else "0"}
    if version:
        params["version"] = version
    query = "&".join(f"{k}={v}" for k, v in params.items())

    async def show() -> None:
        async for item in client.stream("GET", f"/logs?{query}"):
            click.echo(f"[{item['instance']}] {item['line']}")

    run_async(show())


@main.command()
@config_option
def check(config: Path | None) -> None:
    """Validate baton.yml and print a zero-downtime checklist."""
    from baton.config import checklist, load_config

    path = config_path(config)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        fail(exc)
    console.print(f"[green]✓[/green] {escape(str(path))} is valid (app {loaded.config.app})")
    image = run_async(_image_facts(loaded.config)) if loaded.config.runtime == "docker" else None
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
    answer = run_async(client.call("GET", "/migrate/status" + query, timeout=60))
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
    raise SystemExit(guard(lambda: _follow(client, "/migrate/contract", app_selector(config, app))))


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
    raise SystemExit(guard(lambda: _follow(client, f"/watch{query}", None, method="GET")))


@main.group("app")
def app_group() -> None:
    """Per-app verbs: stop, start, remove."""


def _app_verb(ctx: click.Context, sub_state_dir: Path | None, name: str, verb: str) -> Any:
    client = Client(state_dir_of(ctx, sub_state_dir))
    return run_async(client.call("POST", f"/apps/{name}/{verb}", {}, timeout=DOWN_TIMEOUT))


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
        fail(UsageError(f"--output-dir: cannot write {target}: {exc.strerror or exc}"))
    flag = " --user" if user_unit else ""
    console.print(f"wrote {path}")
    console.print(f"next: systemctl{flag} daemon-reload && systemctl{flag} enable --now baton")
    if user_unit:
        console.print('to run it without a login session: loginctl enable-linger "$USER"')


if __name__ == "__main__":
    main()
