"""A release rolled out across hosts, batch by batch, with no fleet left on mixed versions.

``plan_batches`` (pure) cuts the hosts into batches of ``hosts_at_once``. ``roll_out`` is
the controller's side of one fleet deployment: under the app's etcd deploy lock it records
the deployment under ``/baton/deployments/APP``, then for each batch writes the new desired
release of every host of the batch in one transaction (one revision) and waits for each
host's agent to report ``done``. A host that reports ``failed``, stops being reachable
(its lease lapsed) or does not finish in time fails the batch; then every host already moved
— the earlier batches and this batch's — gets its previous desired release back (a new
deployment id, so agents act on it), and the result is a failure: the fleet ends on the
previous release everywhere. A host already unreachable when its turn comes fails the
deployment the same way, or is skipped and reported with ``skip_unreachable``.

Batches start in order while the hosts in flight (switched, not finished) leave room under
``max_unavailable`` (``deploy.max_unavailable_hosts``, default ``hosts_at_once``: one batch
at a time), as Kubernetes' ``maxUnavailable``: a host that finishes makes room for the next
batch at once, and a failure starts nothing new, waits for the hosts in flight, then
unwinds every host moved.

Every write (the record, the desired releases) is fenced (``baton.cluster.fence``) on the
controller's term and the deploy lock: a leader deposed without knowing it writes nothing.

The deployment record carries what a new leader needs to finish or unwind a deployment whose
controller died: calling ``roll_out`` again with the same deployment id resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from baton.cluster import keys
from baton.cluster.election import DeployLock
from baton.cluster.etcd import Etcd, put_op
from baton.cluster.fence import Fence
from baton.errors import EtcdError, EtcdUnavailable

DEPLOYMENTS = keys.ROOT + "deployments/"
HOST_TIMEOUT = 300.0  # one host's deploy, at most
POLL_INTERVAL = 0.1


async def deployment_record(etcd: Etcd, app: str, deployment: str) -> dict[str, Any] | None:
    """``/baton/deployments/APP`` if it is ``deployment``'s record (ended or running); None
    when there is none, it is another deployment's, or it is not a JSON object."""
    kv = await etcd.get(DEPLOYMENTS + app)
    if kv is None:
        return None
    with contextlib.suppress(ValueError):
        known = json.loads(kv.value)
        if isinstance(known, dict) and known.get("deployment") == deployment:
            return known
    return None


def plan_batches(hosts: Sequence[str], hosts_at_once: int) -> list[list[str]]:
    """Hosts in rollout order, ``hosts_at_once`` at a time (the last batch may be smaller)."""
    if hosts_at_once < 1:
        raise ValueError("hosts_at_once: expected at least 1")
    return [list(hosts[i : i + hosts_at_once]) for i in range(0, len(hosts), hosts_at_once)]


@dataclass
class RolloutResult:
    ok: bool
    deployment: str
    message: str
    done: list[str] = field(default_factory=list)  # hosts on the new release
    reverted: list[str] = field(default_factory=list)  # hosts switched back
    skipped: list[str] = field(default_factory=list)  # unreachable, skipped


async def _reachable(etcd: Etcd) -> set[str]:
    alive, _ = await etcd.get_prefix(keys.ALIVE)
    return {keys.name_after(keys.ALIVE, kv.key) for kv in alive}


async def _desired(etcd: Etcd, host: str, app: str) -> keys.DesiredRelease | None:
    kv = await etcd.get(keys.desired_key(host, app))
    return None if kv is None else keys.DesiredRelease.from_json(kv.value, f"etcd key {kv.key}")


async def _wait(
    etcd: Etcd, hosts: Sequence[str], app: str, deployment: str, timeout: float
) -> dict[str, keys.Progress | str]:
    """Each host's final progress on ``deployment``, or why it has none (a string)."""
    outcome: dict[str, keys.Progress | str] = {}
    deadline = time.monotonic() + timeout
    while len(outcome) < len(hosts):
        try:
            reachable = await _reachable(etcd)
            for host in hosts:
                if host in outcome:
                    continue
                kv = await etcd.get(keys.progress_key(host, app))
                progress = None if kv is None else keys.Progress.from_json(kv.value)
                if progress is not None and progress.deployment == deployment and progress.finished:
                    outcome[host] = progress
                    continue
                if host not in reachable:
                    outcome[host] = f"{host} became unreachable (its lease lapsed)"
        except (EtcdUnavailable, EtcdError):
            pass  # another member answers next round; the deadline bounds it
        if time.monotonic() > deadline:
            for host in hosts:
                outcome.setdefault(host, f"{host} did not finish within {timeout:g}s")
        if len(outcome) < len(hosts):
            await asyncio.sleep(POLL_INTERVAL)
    return outcome


async def _finished(etcd: Etcd, hosts: Sequence[str], app: str, deployment: str) -> set[str]:
    """The hosts that already deployed ``deployment`` successfully."""
    done: set[str] = set()
    for host in hosts:
        kv = await etcd.get(keys.progress_key(host, app))
        if kv is not None:
            with contextlib.suppress(ValueError):
                progress = keys.Progress.from_json(kv.value)
                if progress.deployment == deployment and progress.state == "done":
                    done.add(host)
    return done


async def _switch(fence: Fence, releases: dict[str, keys.DesiredRelease], app: str) -> None:
    """Write every host's desired release in one transaction: one revision for all (fenced:
    a deposed leader's switch writes nothing and raises ``Fenced``)."""
    ops = [put_op(keys.desired_key(h, app), r.to_json()) for h, r in releases.items()]
    if ops:
        await fence.txn(ops)


async def roll_out(
    etcd: Etcd,
    release: keys.DesiredRelease,
    hosts: Sequence[str],
    *,
    hosts_at_once: int = 1,
    skip_unreachable: bool = False,
    configs: dict[str, str] | None = None,
    holder: str = "baton",
    host_timeout: float = HOST_TIMEOUT,
    fence: Fence | None = None,
    max_unavailable: int | None = None,
) -> RolloutResult:
    """Deploy ``release`` to ``hosts`` in batches; on a failure, put them all back.

    Batches of ``hosts_at_once`` start while the hosts in flight (switched, not finished)
    leave room under ``max_unavailable`` (default ``hosts_at_once``: one batch at a time);
    each batch is verified when all its hosts are done. A failure starts no new batch, waits
    for the hosts in flight to finish, then unwinds every host moved.

    Every write is fenced on ``fence`` (default: the running controller's term, see
    ``baton.cluster.fence``) and on the deploy lock: once either is lost a write raises
    ``Fenced``, which ends the rollout there, unwinding nothing (the new leader owns it).

    Called again with the same deployment id (a new leader taking over), it resumes: hosts
    that already finished it are not deployed again, and the previous releases recorded by
    the first run are the ones an unwind restores. A deployment that already ended returns
    its recorded outcome.
    """
    app, deployment = release.app, release.deployment
    bound = hosts_at_once if max_unavailable is None else max_unavailable
    if bound < hosts_at_once:
        raise ValueError(
            f"max_unavailable_hosts: expected at least hosts_at_once ({hosts_at_once}), got {bound}"
        )
    lock = await DeployLock.acquire(etcd, app, f"{holder} ({deployment})")
    guard = (fence or Fence.current(etcd)).with_lock(
        lock.key, lock.revision, f"the deploy lock of {app}"
    )
    result = RolloutResult(False, deployment, "")
    previous: dict[str, keys.DesiredRelease | None] = {}
    record: dict[str, Any] = {
        "deployment": deployment,
        "app": app,
        "version": release.version,
        "hosts": list(hosts),
        "hosts_at_once": hosts_at_once,
        "max_unavailable_hosts": bound,
        "state": "running",
        "previous": {},
    }
    try:
        known = await deployment_record(etcd, app, deployment)
        if known is not None:
            if known.get("state") != "running":
                return RolloutResult(
                    known.get("state") == "succeeded", deployment, known.get("message", "")
                )
            record = known
            previous = {
                host: None if raw is None else keys.DesiredRelease.from_json(raw)
                for host, raw in known.get("previous", {}).items()
            }
        await guard.put(DEPLOYMENTS + app, json.dumps(record))
        problems = await _roll(
            etcd, guard, release, plan_batches(hosts, hosts_at_once), bound, previous, record,
            result, skip_unreachable=skip_unreachable, configs=configs or {},
            host_timeout=host_timeout,
        )  # fmt: skip
        if problems:
            result.message = "; ".join(problems)
        else:
            result.ok = True
            result.message = f"{app} {release.version} is live on {len(result.done)} host(s)"
            if result.skipped:
                result.message += f"; skipped (unreachable): {', '.join(result.skipped)}"
        if not result.ok:
            result.reverted = await _unwind(guard, app, deployment, previous, host_timeout)
            result.done = []
        record["state"] = "succeeded" if result.ok else "failed"
        record["message"] = result.message
        record["skipped"] = result.skipped
        record["reverted"] = result.reverted
        await guard.put(DEPLOYMENTS + app, json.dumps(record))
        return result
    finally:
        await lock.release()


async def _roll(
    etcd: Etcd,
    guard: Fence,
    release: keys.DesiredRelease,
    batches: list[list[str]],
    bound: int,
    previous: dict[str, keys.DesiredRelease | None],
    record: dict[str, Any],
    result: RolloutResult,
    *,
    skip_unreachable: bool,
    configs: dict[str, str],
    host_timeout: float,
) -> list[str]:
    """Switch the batches, several at once within ``bound`` hosts in flight; what failed."""
    app, deployment = release.app, release.deployment
    flying: dict[str, asyncio.Task[dict[str, keys.Progress | str]]] = {}
    started: list[list[str]] = []  # batches switched and not yet verified
    problems: list[str] = []
    try:
        while True:
            while batches and not problems and len(flying) + len(batches[0]) <= bound:
                batch = batches.pop(0)
                reachable = await _reachable(etcd)
                finished = await _finished(etcd, batch, app, deployment)  # a resumed run
                gone = [h for h in batch if h not in reachable and h not in finished]
                if gone and not skip_unreachable:
                    problems.append(f"{', '.join(gone)} unreachable when its turn came")
                    break
                result.skipped += gone
                batch = [h for h in batch if h not in gone]
                wanted: dict[str, keys.DesiredRelease] = {}
                for host in batch:
                    if host not in previous:  # a resumed run already knows (and moved) it
                        previous[host] = await _desired(etcd, host, app)
                    if host not in finished:
                        config = configs.get(host, release.config)
                        wanted[host] = replace(release, config=config)
                if wanted:
                    # Recorded before the switch: whoever unwinds must know what to go back to.
                    record["previous"] = {
                        h: None if r is None else r.to_json() for h, r in previous.items()
                    }
                    await guard.put(DEPLOYMENTS + app, json.dumps(record))
                    await _switch(guard, wanted, app)
                loop = asyncio.get_running_loop()
                for host in wanted:
                    flying[host] = loop.create_task(
                        _wait(etcd, [host], app, deployment, host_timeout)
                    )
                started.append(batch)
            if not flying:
                result.done += [h for b in started for h in b]
                return problems
            await asyncio.wait(flying.values(), return_when=asyncio.FIRST_COMPLETED)
            for host, task in list(flying.items()):
                if task.done():
                    del flying[host]
                    outcome = task.result()[host]
                    if isinstance(outcome, str):
                        problems.append(f"{host}: {outcome}")
                    elif outcome.state != "done":
                        problems.append(f"{host}: {outcome.message}")
            for batch in [b for b in started if not any(h in flying for h in b)]:
                started.remove(batch)  # every host of it done (or the deploy failed)
                result.done += batch
    finally:
        for task in flying.values():
            task.cancel()


async def _unwind(
    fence: Fence,
    app: str,
    deployment: str,
    previous: dict[str, keys.DesiredRelease | None],
    timeout: float,
) -> list[str]:
    """Give every moved host its previous release back; the hosts that got it."""
    undo = f"{deployment}-undo"
    back = {
        host: replace(before, deployment=undo, rollback=True)
        for host, before in previous.items()
        if before is not None
    }
    if not back:
        return []
    await _switch(fence, back, app)
    outcome = await _wait(fence.etcd, list(back), app, undo, timeout)
    return [h for h in back if not isinstance(o := outcome[h], str) and o.state == "done"]
