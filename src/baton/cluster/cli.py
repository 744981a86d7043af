"""The fleet's command-line surface: ``baton up --cluster ...`` flags, ``baton hosts``, and
``baton deploy`` of an app whose baton.yml names ``hosts`` (``fleet_deploy``).

``add_options`` puts ``--cluster``, ``--host-name``, ``--advertise`` and ``--roles`` on
``up`` and ``server``; ``options_from`` checks them (a bad value is a usage error naming the
flag, and nothing starts) and returns the ``ClusterOptions`` the daemon starts its agent
with, plus the same flags for a detached ``baton server``. ``--cluster`` may also come from
``$BATON_CLUSTER``; without either the host runs alone, as before.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from baton.cli_support import console, escape, fail
from baton.errors import BatonError, UsageError

# Every `baton` start imports this module (``up``'s options): asyncio, rich and the key
# records are imported by the functions that use them, not here.
if TYPE_CHECKING:
    from baton.cluster import keys

F = TypeVar("F", bound=Callable[..., Any])

ROLES = ("app", "edge", "controller")


@dataclass(frozen=True)
class ClusterOptions:
    endpoints: tuple[str, ...]
    host_name: str
    advertise: str
    roles: tuple[str, ...]

    def server_flags(self) -> list[str]:
        return [
            "--cluster", ",".join(self.endpoints),
            "--host-name", self.host_name,
            "--advertise", self.advertise,
            "--roles", ",".join(self.roles),
        ]  # fmt: skip


def add_options(f: F) -> F:
    f = click.option(
        "--roles",
        default=None,
        metavar="ROLES",
        help="This host's roles in the fleet, comma-separated: app, edge, controller"
        " (default: app,controller).",
    )(f)
    f = click.option(
        "--advertise",
        default=None,
        metavar="HOST:PORT",
        help="Where other hosts reach this host's proxy (default: the host name, port 80).",
    )(f)
    f = click.option(
        "--host-name",
        default=None,
        metavar="NAME",
        help="This host's name in the fleet (default: the machine's host name).",
    )(f)
    f = click.option(
        "--cluster",
        default=None,
        metavar="ENDPOINTS",
        help="Join a fleet: etcd client URLs, comma-separated (default: $BATON_CLUSTER).",
    )(f)
    return f


def options_from(flags: dict[str, Any]) -> ClusterOptions | None:
    """The fleet flags checked, or None when this host runs alone."""
    cluster = flags.get("cluster") or os.environ.get("BATON_CLUSTER") or None
    if cluster is None:
        for flag in ("host_name", "advertise", "roles"):
            if flags.get(flag):
                raise UsageError(f"--{flag.replace('_', '-')} needs --cluster (or $BATON_CLUSTER)")
        return None
    from baton.cluster import keys
    from baton.cluster.etcd import parse_endpoints

    try:
        endpoints = parse_endpoints(str(cluster))
    except UsageError as exc:
        raise UsageError(f"--cluster: {exc}") from None
    name = str(flags.get("host_name") or socket.gethostname().split(".")[0])
    try:
        keys.check_name("host name", name)
    except ValueError as exc:
        raise UsageError(f"--host-name: {exc}") from None
    advertise = str(flags.get("advertise") or f"{name}:80")
    host, _, port = advertise.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--advertise {advertise!r}: expected HOST:PORT")
    roles = tuple(r.strip() for r in str(flags.get("roles") or "app,controller").split(","))
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise UsageError(
            f"--roles: unknown role(s) {', '.join(map(repr, bad))}; expected {', '.join(ROLES)}"
        )
    return ClusterOptions(tuple(endpoints), name, advertise, roles)


@click.command("hosts")
@click.option(
    "--cluster",
    default=None,
    metavar="ENDPOINTS",
    help="etcd client URLs, comma-separated (default: $BATON_CLUSTER).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def hosts_command(cluster: str | None, as_json: bool) -> None:
    """List the fleet's hosts: reachable or not, roles, address, what each app runs."""
    import asyncio

    from baton.cluster.etcd import Etcd
    from baton.cluster.registry import hosts

    text = cluster or os.environ.get("BATON_CLUSTER")
    if not text:
        fail(UsageError("baton hosts: give --cluster ENDPOINTS or set $BATON_CLUSTER"))

    async def listing() -> list[dict[str, Any]]:
        async with Etcd(text) as etcd:
            return [
                {
                    "name": v.record.name,
                    "reachable": v.reachable,
                    "advertise": v.record.advertise,
                    "roles": list(v.record.roles),
                    "baton": v.record.baton,
                    "apps": v.record.apps,
                    "instances": v.record.instances,
                }
                for v in await hosts(etcd)
            ]

    try:
        rows = asyncio.run(listing())
    except BatonError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no hosts registered yet (`baton up --cluster ...` on each host)")
        return
    from rich.table import Table  # only this view needs it: not at start-up

    table = Table(box=None, pad_edge=False)
    for column in ("HOST", "STATE", "ADDRESS", "ROLES", "APPS"):
        table.add_column(column)
    for row in rows:
        apps = (
            ", ".join(
                f"{a} {v or '-'} ({row['instances'].get(a, 0)} instances)"
                for a, v in sorted(row["apps"].items())
            )
            or "-"
        )
        state = "[green]reachable[/green]" if row["reachable"] else "[red]unreachable[/red]"
        table.add_row(
            escape(row["name"]), state, escape(row["advertise"]), ",".join(row["roles"]),
            escape(apps),
        )  # fmt: skip
    console.print(table)


FLEET_TIMEOUT_PER_HOST = 600.0


def fleet_deploy(
    raw: object,
    path: str,
    cluster: str | None,
    *,
    version: str | None,
    env: dict[str, str],
    command: str | None,
    strategy: str | None,
    image: str | None,
    skip_unreachable: bool,
) -> int | None:
    """``baton deploy`` of an app whose baton.yml names ``hosts``: ask the fleet's controller
    and follow each host's progress. None when the app is not a fleet app (deploy locally).
    Secret values are not sent: each host uses its own (``baton secrets set`` there)."""
    import asyncio

    from baton.cluster import keys
    from baton.cluster.settings import fleet_settings

    settings = fleet_settings(raw, path)
    text = cluster or os.environ.get("BATON_CLUSTER")
    if settings.hosts is None:
        if cluster:
            raise UsageError(f"--cluster: {path} names no hosts (e.g. hosts: [web1, web2])")
        return None
    if not text:
        raise UsageError(
            f"{path}: hosts: a fleet deploy needs --cluster ENDPOINTS or $BATON_CLUSTER"
        )
    if not version:
        raise UsageError("--version: a fleet deploy needs one label, the same on every host")
    assert isinstance(raw, dict)
    app = str(raw.get("app"))
    release = keys.DesiredRelease(
        app,
        version,
        f"{app}-{version}-{int(time.time() * 1000)}",
        str(Path(path).expanduser().absolute()),
        image=image,
        strategy=strategy,
        command=command,
        env=env,
    )
    edge = (settings.edge_listen, settings.edge_health_path)
    canary: dict[str, Any] = {}
    if settings.edge_listen is not None:
        canary = _edge_canary(raw, path, strategy)
        if canary:  # the canary is the edges'; each host switches blue-green, out of rotation
            release = replace(release, strategy="blue-green")
    return asyncio.run(
        _follow_fleet(
            text, release, settings.hosts, settings.hosts_at_once, skip_unreachable, edge, canary
        )
    )


def _edge_canary(raw: object, path: str, strategy: str | None) -> dict[str, Any]:
    """A fleet canary at the edges when the deploy's strategy is canary: its steps and judge
    limits from ``deploy.canary`` (as ``DeployRequest`` fields), else nothing."""
    deploy = raw.get("deploy") if isinstance(raw, dict) else None
    chosen = strategy or (deploy.get("strategy") if isinstance(deploy, dict) else None)
    if chosen != "canary":
        return {}
    from baton.config import load_config

    settings = load_config(path).config.deploy.canary
    return {
        "canary": tuple((s.weight, s.hold) for s in settings.steps),
        "canary_max_error_rate": settings.analysis.max_error_rate,
        "canary_min_requests": settings.analysis.min_requests,
    }


async def _follow_fleet(
    text: str,
    release: keys.DesiredRelease,
    selector: Any,
    hosts_at_once: int,
    skip_unreachable: bool,
    edge: tuple[str | None, str] = (None, "/up"),
    canary: dict[str, Any] | None = None,
) -> int:
    import asyncio

    from baton.cluster import keys
    from baton.cluster.controller import submit
    from baton.cluster.election import leader
    from baton.cluster.etcd import Etcd
    from baton.cluster.registry import hosts
    from baton.cluster.rollout import DEPLOYMENTS

    async with Etcd(text) as etcd:
        views = await hosts(etcd)
        names = selector.pick([(v.record.name, v.record.roles) for v in views])
        known = {v.record.name for v in views}
        strangers = [n for n in names if n not in known]
        if strangers or not names:
            raise UsageError(
                f"hosts: {', '.join(strangers) or 'no host matches'}: never joined the fleet"
                " (`baton up --cluster ... --host-name NAME` on it)"
            )
        if await leader(etcd) is None:
            console.print("no controller leads yet: waiting for a host with the controller role")
        request = keys.DeployRequest(
            release, tuple(names), hosts_at_once, skip_unreachable, edge=edge[0],
            edge_health=edge[1], **(canary or {}),
        )  # fmt: skip
        await submit(etcd, request)
        console.print(
            f"fleet deployment {release.deployment}: {release.app} {release.version} to"
            f" {', '.join(names)}, {hosts_at_once} at a time"
            if edge[0] is None
            else f" {', '.join(names)}, {'a canary' if canary else 'blue-green'} through the"
            f" edges on {edge[0]}"
        )
        shown: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + FLEET_TIMEOUT_PER_HOST * len(names)
        while time.monotonic() < deadline:
            for name in names:
                kv = await etcd.get(keys.progress_key(name, release.app))
                if kv is None:
                    continue
                progress = keys.Progress.from_json(kv.value)
                if not progress.deployment.startswith(release.deployment):
                    continue
                now = (progress.state, progress.step)
                if shown.get(name) != now:
                    shown[name] = now
                    undo = " (switching back)" if progress.deployment.endswith("-undo") else ""
                    detail = f": {progress.message}" if progress.message else ""
                    console.print(
                        f"  {escape(name)}{undo}: {progress.state} {escape(progress.step)}"
                        f"{escape(detail)}"
                    )
            kv = await etcd.get(DEPLOYMENTS + release.app)
            record = json.loads(kv.value) if kv is not None else {}
            if record.get("deployment") == release.deployment and record.get("state") in (
                "succeeded",
                "failed",
            ):
                ok = record["state"] == "succeeded"
                mark = "[green]done[/green]" if ok else "[red]failed[/red]"
                console.print(f"{mark}: {escape(str(record.get('message', '')))}")
                return 0 if ok else 1
            await asyncio.sleep(0.2)
        console.print("[red]error:[/red] the fleet deployment did not end in time")
        return 3
