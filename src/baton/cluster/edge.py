"""Edge proxies: hosts with the ``edge`` role route an app's traffic to its app hosts.

An app's **edge route** lives at ``/baton/edges/APP`` (``EdgeRoute``): where every edge
listens for the app, which app hosts it routes to, and the release the fleet serves. Whoever
publishes it (``publish``: ``baton edge route``, the controller) writes it in one put, so
every edge applies the same change from the same etcd revision: moving the app from one set
of hosts to another (blue hosts to green hosts) is one cutover for the whole fleet.

``edge_route_table`` (pure) turns a route plus the fleet's host records into the proxy's
route-table entry for the app: one release whose targets are the app hosts' proxies at the
addresses the hosts advertise, health-checked by the edge's proxy (HTTP on the app's health
path, so a host whose proxy or instances stop answering leaves the rotation). The **only**
non-loopback upstream addresses an edge ever routes to come from the cluster's own host
records: a route naming a host that never joined, or one without the ``app`` role, is
refused with the reason and changes nothing.

A route with ``instances`` targets, instead of the hosts' proxies, the release's instances
on each host: the private addresses the host publishes in its record's ``endpoints``
(``--instance-ip``); a loopback or non-IPv4 one is refused, a host with none is left out.
Each edge publishes its per-release figures (answers, errors, in flight) with the revision
they were measured at, for the canary judge and for draining the old release at a cutover.

``EdgeAgent`` runs in the daemon of an edge host (``baton up --cluster ... --roles edge``):
it lists ``/baton/edges/``, applies each app's table to its own proxy through the proxy's
admin socket, and watches the prefix from the next revision; every ``RESYNC_INTERVAL`` it
re-reads everything (host records may have changed, or the proxy was restarted with the
daemon's own table). etcd unreachable: the proxy keeps its last table.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baton import addresses
from baton.cluster import keys
from baton.cluster.etcd import Etcd
from baton.cluster.fence import Fence
from baton.cluster.figures import EDGE_FIGURES, INTERVAL, publish_figures, release_figures
from baton.cluster.registry import hosts
from baton.errors import BatonError, EtcdError, EtcdUnavailable

log = logging.getLogger("baton.cluster")

EDGES = keys.ROOT + "edges/"
APPLIED = keys.ROOT + "edge-applied/"  # EDGE → the etcd revision its proxy routes from
RESYNC_INTERVAL = 3.0
RETRY_INTERVAL = 1.0
HEALTH = {"kind": "http", "interval": 0.5, "timeout": 2.0, "rise": 1, "fall": 2}


def edge_key(app: str) -> str:
    return EDGES + keys.check_name("app name", app)


@dataclass(frozen=True)
class EdgeRoute:
    """What every edge does with one app's traffic."""

    app: str
    listen: str  # where each edge's proxy listens for the app, HOST:PORT
    hosts: tuple[str, ...]  # the app hosts it routes to, by name
    version: str = "fleet"  # the release the fleet serves (names the edge's release)
    health_path: str = "/up"
    # A canary across the fleet: these hosts serve ``canary_version``, which gets
    # ``canary_weight`` percent of every edge's requests (the hosts above get the rest).
    canary_hosts: tuple[str, ...] = ()
    canary_version: str | None = None
    canary_weight: int = 0
    # Route straight to the release's instances on each host (the addresses the host
    # publishes in its record's ``endpoints``), not to the hosts' proxies.
    instances: bool = False

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "app": self.app,
            "listen": self.listen,
            "hosts": list(self.hosts),
            "version": self.version,
            "health_path": self.health_path,
        }
        if self.instances:
            body["instances"] = True
        if self.canary_hosts:
            body["canary"] = {
                "hosts": list(self.canary_hosts),
                "version": self.canary_version,
                "weight": self.canary_weight,
            }
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str, what: str = "edge route") -> EdgeRoute:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{what}: not JSON") from None
        if not isinstance(body, dict):
            raise ValueError(f"{what}: expected a JSON object")
        app = body.get("app")
        if not isinstance(app, str):
            raise ValueError(f"{what}: app: expected an app name")
        keys.check_name("app name", app)
        listen = body.get("listen")
        try:
            addresses.parse_address(listen)
        except ValueError as exc:
            raise ValueError(f"{what}: listen: {exc}") from None
        names = body.get("hosts")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{what}: hosts: expected a non-empty list of host names")
        for name in names:
            keys.check_name("host name", name)
        version = body.get("version", "fleet")
        if not isinstance(version, str) or not version:
            raise ValueError(f"{what}: version: expected a non-empty string")
        path = body.get("health_path", "/up")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"{what}: health_path: expected a path starting with /")
        instances = body.get("instances", False)
        if not isinstance(instances, bool):
            raise ValueError(f"{what}: instances: expected true or false")
        canary = body.get("canary")
        if canary is None:
            return cls(app, str(listen), tuple(names), version, path, instances=instances)
        if not isinstance(canary, dict):
            raise ValueError(f"{what}: canary: expected an object")
        c_hosts = canary.get("hosts")
        if (
            not isinstance(c_hosts, list)
            or not c_hosts
            or not all(isinstance(n, str) for n in c_hosts)
        ):
            raise ValueError(f"{what}: canary.hosts: expected a non-empty list of host names")
        for name in c_hosts:
            keys.check_name("host name", name)
        if set(c_hosts) & set(names):
            raise ValueError(f"{what}: canary.hosts: a host cannot serve both releases")
        c_version = canary.get("version")
        if not isinstance(c_version, str) or not c_version or c_version == version:
            raise ValueError(f"{what}: canary.version: expected a release other than {version!r}")
        weight = canary.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ValueError(f"{what}: canary.weight: expected a whole percentage, 0 to 100")
        return cls(
            app, str(listen), tuple(names), version, path, tuple(c_hosts), c_version, weight,
            instances,
        )  # fmt: skip


def edge_route_table(route: EdgeRoute, records: Mapping[str, keys.HostRecord]) -> dict[str, Any]:
    """The proxy's table entry for ``route``; ``ValueError`` naming a host the fleet does not
    know (or that serves no apps): upstreams come from the host records, nowhere else."""
    releases = [{"name": route.version, "weight": 100 - route.canary_weight,
                 "targets": _targets(route, route.hosts, records, route.version)}]  # fmt: skip
    if route.canary_hosts:
        canary = _targets(route, route.canary_hosts, records, route.canary_version or "")
        releases.append({"name": route.canary_version, "weight": route.canary_weight,
                         "targets": canary})  # fmt: skip
    return {
        "listen": route.listen,
        "releases": releases,
        "health": {**HEALTH, "path": route.health_path},
    }


def _targets(
    route: EdgeRoute, names: tuple[str, ...], records: Mapping[str, keys.HostRecord], version: str
) -> list[str]:
    targets: list[str] = []
    for name in names:
        record = records.get(name)
        if record is None:
            raise ValueError(f"edge route {route.app}: host {name!r} never joined the fleet")
        if "app" not in record.roles:
            raise ValueError(f"edge route {route.app}: host {name!r} has no app role")
        if route.instances:  # a host with none of them ready is not in rotation
            targets += _instance_targets(route, name, record, version)
            continue
        try:
            host, port = addresses.parse_address(record.advertise)
        except ValueError as exc:
            raise ValueError(
                f"edge route {route.app}: host {name!r} advertises {record.advertise!r}: {exc}"
            ) from None
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if target not in targets:
            targets.append(target)
    if not targets:
        raise ValueError(
            f"edge route {route.app}: no host of {', '.join(names)} publishes a ready"
            f" instance of {version!r} reachable from the private network (--instance-ip)"
        )
    return targets


def _instance_targets(
    route: EdgeRoute, name: str, record: keys.HostRecord, version: str
) -> list[str]:
    """The host's published instances of ``version``: private IPv4 addresses only (a
    loopback address of another host would be the edge's own loopback)."""
    out: list[str] = []
    for address in record.endpoints.get(route.app, {}).get(version, []):
        try:
            host, port = addresses.parse_address(address)
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"edge route {route.app}: host {name!r} publishes instance {address!r}:"
                " expected IPv4:PORT"
            ) from None
        if ip.is_loopback or ip.is_unspecified:
            raise ValueError(
                f"edge route {route.app}: host {name!r} publishes instance {address!r},"
                " not reachable from the other hosts"
            )
        out.append(f"{ip}:{port}")
    return out


REVISION = "@revision"  # in an edge's figures: the edge-route revision they were taken at


async def in_flight(etcd: Etcd, app: str, release: str, revision: int) -> tuple[int, list[str]]:
    """Requests (and tunnels) every reachable edge has in flight to ``app``'s ``release``,
    as measured after it applied ``revision``; and the edges with no such figures yet."""
    edges = [v.record.name for v in await hosts(etcd) if v.reachable and "edge" in v.record.roles]
    kvs, _ = await etcd.get_prefix(EDGE_FIGURES)
    figures = {keys.name_after(EDGE_FIGURES, kv.key): kv.value for kv in kvs}
    total, late = 0, []
    for edge in edges:
        try:
            body = json.loads(figures[edge])
            if int(body.get(REVISION, 0)) < revision:
                raise ValueError("taken before the revision")
            total += int(body.get(app, {}).get(release, {}).get("in_flight", 0))
        except (KeyError, ValueError, TypeError, AttributeError):
            late.append(edge)
    return total, late


async def publish(etcd: Etcd, route: EdgeRoute, fence: Fence | None = None) -> int:
    """Write ``route`` (one put: every edge switches from this revision); the revision.
    Fenced on ``fence`` (default: the running controller's term, ``Fence.current``): a
    deposed leader's route changes nothing and raises ``Fenced``."""
    return await (fence or Fence.current(etcd)).put(edge_key(route.app), route.to_json())


async def published(etcd: Etcd, app: str) -> EdgeRoute | None:
    kv = await etcd.get(edge_key(app))
    return None if kv is None else EdgeRoute.from_json(kv.value, f"etcd key {kv.key}")


async def wait_applied(etcd: Etcd, revision: int, timeout: float) -> list[str]:
    """Wait until every reachable edge routes from ``revision`` or later; the edges that do.
    ``TimeoutError`` names the edges that did not within ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        edges = [
            v.record.name for v in await hosts(etcd) if v.reachable and "edge" in v.record.roles
        ]
        acks, _ = await etcd.get_prefix(APPLIED)
        seen: dict[str, int] = {}
        for kv in acks:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                seen[keys.name_after(APPLIED, kv.key)] = int(json.loads(kv.value)["revision"])
        late = [e for e in edges if seen.get(e, 0) < revision]
        if not late:
            return edges
        if asyncio.get_running_loop().time() >= deadline:
            raise TimeoutError(f"edge(s) {', '.join(late)} did not apply revision {revision}")
        await asyncio.sleep(0.05)


class EdgeAgent:
    """Keeps an edge host's proxy routing every edge route published in etcd."""

    def __init__(self, etcd: Etcd, host: str, proxy: Any) -> None:
        self.etcd = etcd
        self.host = host
        self.proxy = proxy  # a ProxyClient on the daemon's proxy.sock
        self.applied: dict[str, dict[str, Any]] = {}  # app → the entry the proxy was given
        self.revision = 0  # the etcd revision the tables were last applied from
        self.synced = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._loop()), loop.create_task(self._figures())]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _figures(self) -> None:
        """Publish the edge's per-release counters and latency histograms of the apps it
        routes (``baton.cluster.figures``: the fleet canary's judge sums every edge's)."""
        while True:
            await asyncio.sleep(INTERVAL)
            if not self.applied:
                continue
            try:
                revision = self.revision  # the tables applied before the metrics are read
                apps = (await self.proxy.metrics()).get("apps", {})
                figures: dict[str, Any] = release_figures(apps, self.applied)
                figures[REVISION] = revision
                await publish_figures(self.etcd, EDGE_FIGURES + self.host, figures)
            except (EtcdUnavailable, EtcdError, BatonError) as exc:
                log.debug("edge %s: figures not published: %s", self.host, exc)

    async def _loop(self) -> None:
        while True:
            try:
                revision = await self.sync()
                await self._watch(revision + 1)
            except (EtcdUnavailable, EtcdError, BatonError) as exc:
                log.warning("edge %s: %s; the proxy keeps its last table", self.host, exc)
                await asyncio.sleep(RETRY_INTERVAL)
            except Exception:  # a bug in one round must not end the edge's routing
                log.exception("edge %s: applying edge routes failed; trying again", self.host)
                await asyncio.sleep(RETRY_INTERVAL)

    async def sync(self) -> int:
        """Apply every published edge route; the revision they were read at."""
        kvs, revision = await self.etcd.get_prefix(EDGES)
        records = {v.record.name: v.record for v in await hosts(self.etcd)}
        present = (await self.proxy.routes()).get("apps", {})
        wanted: set[str] = set()
        for kv in kvs:
            try:
                route = EdgeRoute.from_json(kv.value, f"etcd key {kv.key}")
                entry = edge_route_table(route, records)
            except ValueError as exc:
                log.error("edge %s: not applied: %s", self.host, exc)
                if (app := keys.name_after(EDGES, kv.key)) in self.applied:
                    wanted.add(app)  # keep the last good table rather than none
                continue
            wanted.add(route.app)
            if self.applied.get(route.app) != entry or route.app not in present:
                await self.proxy.put_app(route.app, entry)
                self.applied[route.app] = entry
                log.info(
                    "edge %s: %s %s → %s (etcd revision %d)",
                    self.host, route.app, route.version,
                    ", ".join(entry["releases"][0]["targets"]), kv.mod_revision,
                )  # fmt: skip
        for app in [a for a in self.applied if a not in wanted]:
            await self.proxy.delete_app(app)
            del self.applied[app]
        self.revision = revision
        with contextlib.suppress(EtcdUnavailable, EtcdError):  # acknowledged for the cutover
            await self.etcd.put(APPLIED + self.host, json.dumps({"revision": revision}))
        self.synced.set()
        return revision

    async def _watch(self, start: int) -> None:
        changes = self.etcd.watch(EDGES, start)
        try:
            while True:
                try:
                    _, events = await asyncio.wait_for(anext(changes), RESYNC_INTERVAL)
                except (TimeoutError, StopAsyncIteration):
                    return
                if events:
                    self.synced.clear()
                    await self.sync()
        finally:
            await changes.aclose()
