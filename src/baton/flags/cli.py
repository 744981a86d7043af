"""``baton flags``: list, change, kill and trace an app's feature flags through the daemon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from baton.cli_support import (
    Client,
    app_option,
    app_selector,
    config_option,
    config_path,
    console,
    fail,
    run_async,
    state_dir_of,
    state_dir_option,
)
from baton.errors import UsageError
from baton.flags.service import FLAGS_FILE


def _app(client: Client, config: Path | None, app: str | None) -> str:
    chosen = app_selector(config, app).get("app")
    if chosen:
        return chosen
    apps = [a["app"] for a in run_async(client.call("GET", "/flags"))["apps"]]
    if len(apps) == 1:
        return str(apps[0])
    fail(
        UsageError(
            f"which app? give --app or -c baton.yml (apps with flags: {', '.join(apps) or 'none'})"
        )
    )


def _shares(shares: dict[str, float] | None) -> str:
    if not shares:
        return ""
    return ", ".join(f"{name} {share * 100:.4g}%" for name, share in shares.items())


def _describe(flag: dict[str, Any]) -> str:
    if flag.get("killed"):
        return f"[red]killed[/red] → {escape(str(flag['default']))}"
    parts = []
    if flag.get("rules"):
        parts.append(f"{len(flag['rules'])} rule(s)")
    if flag.get("rollout"):
        parts.append("rollout " + _shares(flag["rollout"]))
    parts.append(f"else {flag['default']}")
    return escape(", ".join(parts))


@click.group("flags")
def flags_group() -> None:
    """Feature flags: served to apps over OFREP, changed here without a deploy."""


@flags_group.command("list")
@state_dir_option
@config_option
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_flags(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    as_json: bool,
) -> None:
    """Every flag of every app (or of one): type, variants, what decides, kills."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    selector = app_selector(config, app)
    query = f"?app={selector['app']}" if selector.get("app") else ""
    answer = run_async(client.call("GET", "/flags" + query))
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
        return
    if not answer["apps"]:
        console.print(f"no app has flags (add {FLAGS_FILE} beside its baton.yml)")
        return
    for entry in answer["apps"]:
        console.print(f"[bold]{escape(entry['app'])}[/bold] — flag set version {entry['version']}")
        if entry.get("file_error"):
            console.print(f"  [red]{FLAGS_FILE} not applied:[/red] {escape(entry['file_error'])}")
        table = Table(box=None, pad_edge=False)
        for column in ("flag", "type", "variants", "serves"):
            table.add_column(column)
        for key, flag in entry["flags"].items():
            variants = ", ".join(f"{n}={json.dumps(v)}" for n, v in flag["variants"].items())
            table.add_row(escape(key), flag["type"], escape(variants), _describe(flag))
        console.print(table)


def _change(
    ctx: click.Context, sub_state_dir: Path | None, body: dict[str, Any], what: str
) -> None:
    client = Client(state_dir_of(ctx, sub_state_dir))
    result = run_async(client.call("POST", "/flags/change", body))
    console.print(f"{escape(body['app'])} {escape(what)} (flag set version {result['version']})")


@flags_group.command("set")
@state_dir_option
@config_option
@app_option
@click.argument("key")
@click.argument("variant")
@click.pass_context
def set_flag(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    key: str,
    variant: str,
) -> None:
    """Serve VARIANT to everyone (clears the flag's rules and rollout)."""
    client = Client(state_dir_of(ctx, sub_state_dir))
    body = {"app": _app(client, config, app), "key": key, "action": "set", "variant": variant}
    _change(ctx, sub_state_dir, body, f"{key}: {variant} for everyone")


@flags_group.command("rollout")
@state_dir_option
@config_option
@app_option
@click.argument("key")
@click.argument("percent")
@click.option("--variant", default="on", show_default=True, help="The variant rolled out.")
@click.pass_context
def rollout_flag(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    key: str,
    percent: str,
    variant: str,
) -> None:
    """Serve --variant to PERCENT of contexts (sticky per targeting key), the rest the default."""
    from baton.flags.model import FlagError, parse_percent

    try:
        share = parse_percent(percent.strip(), "PERCENT", None)
    except FlagError as exc:
        fail(UsageError(str(exc)))
    client = Client(state_dir_of(ctx, sub_state_dir))
    body = {
        "app": _app(client, config, app),
        "key": key,
        "action": "rollout",
        "variant": variant,
        "share": share,
    }
    _change(ctx, sub_state_dir, body, f"{key}: {variant} for {share * 100:.4g}% of contexts")


def _switch(action: str, help_text: str) -> click.Command:
    @state_dir_option
    @config_option
    @app_option
    @click.argument("key")
    @click.pass_context
    def command(
        ctx: click.Context,
        sub_state_dir: Path | None,
        config: Path | None,
        app: str | None,
        key: str,
    ) -> None:
        client = Client(state_dir_of(ctx, sub_state_dir))
        body = {"app": _app(client, config, app), "key": key, "action": action}
        _change(
            ctx,
            sub_state_dir,
            body,
            f"{key}: {action}ed" if action == "kill" else f"{key}: revived",
        )

    command.__doc__ = help_text
    return click.command(action)(command)


flags_group.add_command(
    _switch("kill", "Kill switch: KEY serves its default to everyone until revived.")
)
flags_group.add_command(_switch("revive", "End KEY's kill switch: its rules apply again."))


@flags_group.command("apply")
@state_dir_option
@config_option
@click.pass_context
def apply_flags(ctx: click.Context, sub_state_dir: Path | None, config: Path | None) -> None:
    """Validate the flags.yml beside baton.yml and serve it now (the daemon also watches it)."""
    path = config_path(config)
    app = app_selector(path, None)["app"]
    client = Client(state_dir_of(ctx, sub_state_dir))
    flags_file = path.parent / FLAGS_FILE
    result = run_async(client.call("POST", "/flags/apply", {"app": app, "file": str(flags_file)}))
    console.print(f"{escape(app)}: {escape(str(flags_file))} served as version {result['version']}")


@flags_group.command("history")
@state_dir_option
@config_option
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-n", "--limit", default=20, show_default=True, help="How many versions.")
@click.pass_context
def flag_history(
    ctx: click.Context,
    sub_state_dir: Path | None,
    config: Path | None,
    app: str | None,
    as_json: bool,
    limit: int,
) -> None:
    """Every version of the app's flag set, newest first: when, from where, what changed."""
    import time

    client = Client(state_dir_of(ctx, sub_state_dir))
    name = _app(client, config, app)
    answer = run_async(client.call("GET", f"/flags/history?app={name}&limit={limit}"))
    if as_json:
        click.echo(json.dumps(answer, indent=2, sort_keys=True))
        return
    for version in answer["versions"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(version["created"]))
        console.print(
            f"v{version['version']:<4} {when}  {version['source']:<4} {escape(version['note'])}"
        )
