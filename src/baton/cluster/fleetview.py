"""What ``baton status`` and ``baton history`` show of the fleet a host belongs to.

A daemon started with ``--cluster`` records where its fleet is (``cluster.json`` in the
state dir, mode 0600: the etcd endpoints and this host's name) while its agent runs;
``local_cluster`` reads it back for the CLI. ``fleet_status`` reads every host from etcd:
reachable or not, roles, address, and per app the release it serves, its live instances and
its last progress report. ``fleet_history`` reads each app's last fleet deployment with every
host's steps. ``status_lines`` and ``history_lines`` render them (pure).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from baton.cluster import keys
from baton.cluster.etcd import Etcd
from baton.cluster.registry import hosts

CLUSTER_FILE = "cluster.json"
DEPLOYMENTS = keys.ROOT + "deployments/"


def write_local_cluster(state_dir: Path, endpoints: list[str], host: str) -> Path:
    """Born 0600, like the rest of the state dir: an endpoint URL may carry credentials."""
    from baton.state.files import write_private

    path = state_dir / CLUSTER_FILE
    write_private(path, json.dumps({"endpoints": endpoints, "host": host}).encode())
    return path


def local_cluster(state_dir: Path) -> tuple[list[str], str] | None:
    """The fleet this host's daemon runs in (endpoints, host name), or None when alone."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        body = json.loads((state_dir / CLUSTER_FILE).read_text())
        endpoints = [str(e) for e in body["endpoints"]]
        return endpoints, str(body["host"])
    return None


async def _progress(etcd: Etcd) -> dict[tuple[str, str], keys.Progress]:
    kvs, _ = await etcd.get_prefix(keys.PROGRESS)
    out: dict[tuple[str, str], keys.Progress] = {}
    for kv in kvs:
        host, _, app = keys.name_after(keys.PROGRESS, kv.key).partition("/")
        with contextlib.suppress(ValueError):
            out[host, app] = keys.Progress.from_json(kv.value, f"etcd key {kv.key}")
    return out


async def fleet_status(etcd: Etcd) -> list[dict[str, Any]]:
    """Every host of the fleet, sorted by name, with what each app runs there."""
    progress = await _progress(etcd)
    rows: list[dict[str, Any]] = []
    for view in await hosts(etcd):
        record = view.record
        names = sorted(set(record.apps) | {a for h, a in progress if h == record.name})
        apps: dict[str, Any] = {}
        for app in names:
            last = progress.get((record.name, app))
            apps[app] = {
                "live": record.apps.get(app),
                "instances": record.instances.get(app, 0),
                "deployment": last.deployment if last else None,
                "state": last.state if last else None,
                "step": last.step if last else None,
            }
        rows.append(
            {
                "name": record.name,
                "reachable": view.reachable,
                "advertise": record.advertise,
                "roles": list(record.roles),
                "apps": apps,
            }
        )
    return rows


async def fleet_history(etcd: Etcd) -> list[dict[str, Any]]:
    """Each app's last fleet deployment, and every host's steps in it (and its undo)."""
    progress = await _progress(etcd)
    kvs, _ = await etcd.get_prefix(DEPLOYMENTS)
    out: list[dict[str, Any]] = []
    for kv in kvs:
        try:
            record = json.loads(kv.value)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        app = keys.name_after(DEPLOYMENTS, kv.key)
        deployment = str(record.get("deployment", ""))
        per_host = []
        for host in record.get("hosts", []):
            last = progress.get((str(host), app))
            mine = last is not None and last.deployment.startswith(deployment)
            per_host.append(
                {
                    "host": host,
                    "deployment": last.deployment if last and mine else None,
                    "state": last.state if last and mine else "not started",
                    "steps": list(last.steps) if last and mine else [],
                    "message": last.message if last and mine else "",
                    "local_deployment": last.local_deployment if last and mine else None,
                }
            )
        out.append(
            {
                "app": app,
                "deployment": deployment,
                "version": record.get("version"),
                "state": record.get("state"),
                "message": record.get("message", ""),
                "skipped": record.get("skipped", []),
                "reverted": record.get("reverted", []),
                "hosts": per_host,
            }
        )
    return out


def status_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"fleet: {len(rows)} host(s)"]
    for row in rows:
        state = "reachable" if row["reachable"] else "UNREACHABLE"
        lines.append(f"  {row['name']} {state} {row['advertise']} ({','.join(row['roles'])})")
        for app, a in sorted(row["apps"].items()):
            doing = f", {a['state']} {a['step'] or ''}".rstrip() if a["state"] else ""
            lines.append(f"    {app}: {a['live'] or '-'}, {a['instances']} instance(s){doing}")
    return lines


def history_lines(deployments: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for d in deployments:
        lines.append(
            f"fleet deployment {d['deployment']}: {d['app']} {d['version']} {d['state']}"
            + (f": {d['message']}" if d["message"] else "")
        )
        for h in d["hosts"]:
            undo = " (switched back)" if str(h["deployment"] or "").endswith("-undo") else ""
            local = f" #{h['local_deployment']}" if h["local_deployment"] is not None else ""
            steps = " > ".join(h["steps"]) or "-"
            lines.append(f"  {h['host']}{local}{undo}: {h['state']}: {steps}")
    return lines


def read_for_cli(state_dir: Path, what: str) -> dict[str, Any] | None:
    """For ``baton status``/``history`` (``what``): the fleet's view, or None when the
    host's daemon runs alone. etcd not answering is said, not raised: the host's own
    status is still worth showing."""
    import asyncio

    from baton.errors import BatonError

    where = local_cluster(state_dir)
    if where is None:
        return None
    endpoints, host = where

    async def read() -> list[dict[str, Any]]:
        async with Etcd(endpoints) as etcd:
            return await (fleet_status(etcd) if what == "status" else fleet_history(etcd))

    try:
        return {"host": host, what: asyncio.run(read())}
    except BatonError as exc:
        return {"host": host, "error": f"the fleet's etcd does not answer: {exc}"}
