"""The fleet's command-line surface: ``baton up --cluster ...`` flags and ``baton hosts``.

``add_options`` puts ``--cluster``, ``--host-name``, ``--advertise`` and ``--roles`` on
``up`` and ``server``; ``options_from`` checks them (a bad value is a usage error naming the
flag, and nothing starts) and returns the ``ClusterOptions`` the daemon starts its agent
with, plus the same flags for a detached ``baton server``. ``--cluster`` may also come from
``$BATON_CLUSTER``; without either the host runs alone, as before.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from baton.cluster import keys
from baton.errors import BatonError, UsageError

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


console = Console(highlight=False, soft_wrap=True)


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
    from baton.cluster.etcd import Etcd
    from baton.cluster.registry import hosts

    text = cluster or os.environ.get("BATON_CLUSTER")
    if not text:
        raise _fail(UsageError("baton hosts: give --cluster ENDPOINTS or set $BATON_CLUSTER"))

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
                }
                for v in await hosts(etcd)
            ]

    try:
        rows = asyncio.run(listing())
    except BatonError as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no hosts registered yet (`baton up --cluster ...` on each host)")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("HOST", "STATE", "ADDRESS", "ROLES", "APPS"):
        table.add_column(column)
    for row in rows:
        apps = ", ".join(f"{a} {v or '-'}" for a, v in sorted(row["apps"].items())) or "-"
        state = "[green]reachable[/green]" if row["reachable"] else "[red]unreachable[/red]"
        table.add_row(
            escape(row["name"]), state, escape(row["advertise"]), ",".join(row["roles"]),
            escape(apps),
        )  # fmt: skip
    console.print(table)


def _fail(exc: BatonError) -> SystemExit:
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(str(exc))}")
    return SystemExit(exc.exit_code)
