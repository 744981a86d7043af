"""The fleet's command-line surface: ``baton up --cluster ...`` flags, ``baton hosts``, and
``baton deploy`` of an app whose baton.yml names ``hosts`` (``fleet_deploy``).

``add_options`` puts ``--cluster``, ``--host-name``, ``--advertise`` and ``--roles`` on
``up`` and ``server``; ``options_from`` checks them (a bad value is a usage error naming the
flag, and nothing starts) and returns the ``ClusterOptions`` the daemon starts its agent
with, plus the same flags for a detached ``baton server``. ``--cluster`` may also come from
``$BATON_CLUSTER``; without either the host runs alone, as before.
"""

from __future__ import annotations

import ipaddress
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
    instance_ip: str | None = None  # instances listen (or are published) there, for the edges

    def server_flags(self) -> list[str]:
        flags = [
            "--cluster", ",".join(self.endpoints),
            "--host-name", self.host_name,
            "--advertise", self.advertise,
            "--roles", ",".join(self.roles),
        ]  # fmt: skip
        if self.instance_ip is not None:
            flags += ["--instance-ip", self.instance_ip]
        return flags


def add_options(f: F) -> F:
    f = click.option(
        "--instance-ip",
        default=None,
        metavar="IP",
        help="Run the app instances on this private IPv4 address of the host (not loopback;"
        " Docker instances publish their port there), so edge proxies route straight to them"
        " (default: loopback; edges then route to this host's proxy).",
    )(f)
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
        for flag in ("host_name", "advertise", "roles", "instance_ip"):
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
    ip = flags.get("instance_ip")
    return ClusterOptions(
        tuple(endpoints), name, advertise, roles, None if ip is None else instance_ip(str(ip))
    )


def instance_ip(value: str) -> str:
    """``--instance-ip``: an IPv4 address of this host, not loopback, that a port can be
    bound on (the instances' own sockets are opened there); ``UsageError`` otherwise."""
    try:
        ip = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise UsageError(f"--instance-ip {value!r}: expected an IPv4 address") from None
    if ip.is_loopback or ip.is_unspecified:
        raise UsageError(
            f"--instance-ip {value!r}: expected this host's private address, not"
            f" {'loopback' if ip.is_loopback else 'the wildcard'} (instances are on loopback"
            " without the flag)"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((str(ip), 0))
        except OSError as exc:
            raise UsageError(
                f"--instance-ip {value!r}: not an address of this host ({exc.strerror})"
            ) from None
    return str(ip)


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
    host_configs: tuple[str, ...] = (),
) -> int | None:
    """``baton deploy`` of an app whose baton.yml names ``hosts``: ask the fleet's controller
    and follow each host's progress. None when the app is not a fleet app (deploy locally).
    Secret values are not sent: each host uses its own (``baton secrets set`` there)."""
    import asyncio

    from baton.cluster import keys
    from baton.cluster.settings import fleet_settings

    settings = fleet_settings(raw, path)
    text = cluster or os.environ.get("BATON_CLUSTER")
    configs = parse_host_configs(host_configs)
    if settings.hosts is None:
        if cluster:
            raise UsageError(f"--cluster: {path} names no hosts (e.g. hosts: [web1, web2])")
        if configs:
            raise UsageError(
                f"--host-config: only for a fleet app, and {path} names no hosts"
                " (e.g. hosts: [web1, web2])"
            )
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
    canary = _edge_canary(raw, path, strategy)  # at the edges, or on every host at once
    if canary and settings.edge_listen is not None:
        # the canary is the edges'; each host switches blue-green, out of rotation
        release = replace(release, strategy="blue-green")
    # deploy.strategy rolling behind edges: the hosts in batches, the edges routing to all
    rolling = settings.edge_listen is not None and deploy_strategy(raw, strategy) == "rolling"
    if settings.edge_listen is not None and not rolling:
        check_edge_unavailable(settings.hosts_at_once, settings.max_unavailable_hosts, strategy)
    return asyncio.run(
        _follow_fleet(
            text, release, settings.hosts, settings.hosts_at_once, skip_unreachable, edge, canary,
            max_unavailable=settings.max_unavailable_hosts, configs=configs, rolling=rolling,
        )
    )  # fmt: skip


def check_edge_unavailable(hosts_at_once: int, max_unavailable: int, strategy: str | None) -> None:
    """A deploy through the edges that is not rolling takes half the hosts out of rotation by
    design, so a ``deploy.max_unavailable_hosts`` above ``hosts_at_once`` (allowed by a
    rolling baton.yml) cannot hold when ``--strategy`` asks for another: a usage error."""
    if max_unavailable > hosts_at_once:
        raise UsageError(
            f"--strategy {strategy}: deploy.max_unavailable_hosts ({max_unavailable}) cannot"
            " apply through the edges except to a rolling deploy (the others take half the"
            " hosts out of rotation at once); use --strategy rolling"
        )


def deploy_strategy(raw: object, strategy: str | None) -> str | None:
    """The deploy's strategy: ``--strategy``, else ``deploy.strategy`` of baton.yml."""
    deploy = raw.get("deploy") if isinstance(raw, dict) else None
    chosen = strategy or (deploy.get("strategy") if isinstance(deploy, dict) else None)
    return chosen if isinstance(chosen, str) else None


def parse_host_configs(items: tuple[str, ...]) -> dict[str, str]:
    """``--host-config HOST=PATH`` values: host → its baton.yml path (absolute: it is read on
    that host). A bad one is a usage error naming it; whether the host is one of the app's is
    checked once the hosts are known (``check_host_configs``)."""
    from baton.cluster import keys

    configs: dict[str, str] = {}
    for item in items:
        host, sep, path = item.partition("=")
        if not sep or not host or not path:
            raise UsageError(
                f"--host-config {item!r}: expected HOST=PATH, e.g. web2=/srv/app/baton.yml"
            )
        try:
            keys.check_name("host name", host)
        except ValueError as exc:
            raise UsageError(f"--host-config {item!r}: {exc}") from None
        if not os.path.isabs(path):
            raise UsageError(
                f"--host-config {item!r}: expected an absolute path (it is read on {host})"
            )
        if host in configs:
            raise UsageError(f"--host-config: {host} is given twice")
        configs[host] = os.path.normpath(path)
    return configs


def check_host_configs(configs: dict[str, str], hosts: list[str]) -> None:
    """Every ``--host-config`` names one of the hosts the app is deployed to."""
    strangers = sorted(set(configs) - set(hosts))
    if strangers:
        raise UsageError(
            f"--host-config: {', '.join(strangers)} is not one of the app's hosts"
            f" ({', '.join(hosts)})"
        )


def _edge_canary(raw: object, path: str, strategy: str | None) -> dict[str, Any]:
    """A fleet canary (at the edges, or without edges on every host) when the deploy's
    strategy is canary: its steps and judge limits from ``deploy.canary`` (as
    ``DeployRequest`` fields), else nothing."""
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
        "canary_max_error_rate_increase": settings.analysis.max_error_rate_increase,
        "canary_max_latency_ratio": settings.analysis.max_latency_ratio,
        "canary_confidence": settings.analysis.confidence,
        "canary_max_hold_extensions": settings.max_hold_extensions,
    }


async def _follow_fleet(
    text: str,
    release: keys.DesiredRelease,
    selector: Any,
    hosts_at_once: int,
    skip_unreachable: bool,
    edge: tuple[str | None, str] = (None, "/up"),
    canary: dict[str, Any] | None = None,
    *,
    max_unavailable: int = 0,
    configs: dict[str, str] | None = None,
    rolling: bool = False,
) -> int:
    import asyncio

    from baton.cluster import keys
    from baton.cluster.controller import submit
    from baton.cluster.election import leader
    from baton.cluster.etcd import Etcd
    from baton.cluster.registry import hosts
    from baton.cluster.rollout import deployment_record

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
        check_host_configs(configs or {}, names)
        if await leader(etcd) is None:
            console.print("no controller leads yet: waiting for a host with the controller role")
        request = keys.DeployRequest(
            release, tuple(names), hosts_at_once, skip_unreachable, edge=edge[0],
            edge_health=edge[1], **(canary or {}), configs=configs or {},
            max_unavailable_hosts=max_unavailable if max_unavailable > hosts_at_once else 0,
            edge_rolling=rolling,
        )  # fmt: skip
        how = f"{hosts_at_once} at a time"
        if max_unavailable > hosts_at_once:
            how += f", up to {max_unavailable} switching at once"
        if edge[0] is not None and rolling:
            from baton.cluster.edgeroll import resolve

            how = f"rolling through the edges on {edge[0]}, {how}"
            if (await resolve(etcd, request))[1] == "staged":
                how = (
                    f"a staged cutover through the edges on {edge[0]} (they route straight to"
                    " instances, so the hosts do not roll)"
                )
        elif edge[0] is not None:
            how = f"{'a canary' if canary else 'blue-green'} through the edges on {edge[0]}"
        elif canary:
            how = "a canary on every host at once"
        await submit(etcd, request)
        console.print(
            f"fleet deployment {release.deployment}: {release.app} {release.version} to"
            f" {', '.join(names)}, {escape(how)}"
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
            record = await deployment_record(etcd, release.app, release.deployment) or {}
            if record.get("state") in ("succeeded", "failed"):
                ok = record["state"] == "succeeded"
                mark = "[green]done[/green]" if ok else "[red]failed[/red]"
                console.print(f"{mark}: {escape(str(record.get('message', '')))}")
                return 0 if ok else 1
            await asyncio.sleep(0.2)
        console.print("[red]error:[/red] the fleet deployment did not end in time")
        return 3
