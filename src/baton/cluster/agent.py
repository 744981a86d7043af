"""The per-host agent: keep the host registered, and converge it to its desired state.

It owns nothing on the host. Its only seam to the single-host engine is the local daemon's
JSON API on ``baton.sock`` (``POST /deploy``, ``GET /status``), the same one the CLI uses, so
the engine can change freely behind it. For each app under ``/baton/desired/HOST/`` it
compares the desired release with what the host serves and, when they differ, asks the
daemon to deploy it, writing ``Progress`` to ``/baton/progress/HOST/APP`` as the deploy's
steps go by and its result at the end.

A desired release with a ``canary_weight`` (a fleet canary without edges) is handed to
``baton.cluster.hostcanary``: a canary on the host driven by the controller's weights.

Each desired release names its fleet ``deployment``; the agent acts once per deployment.
After a restart it reads its last progress back from etcd, and a release the host already
serves is reported done without deploying again, so converging is idempotent.

etcd going away (a dead member, a cut link) never stops the host: the proxy keeps its route
table, the daemon keeps its apps, and the agent changes nothing until it reads the desired
state again. Progress it could not write is kept and written first once etcd answers. A
silent partition (packets dropped, no error) is bounded: the agent re-reads the desired
state every ``RESYNC_INTERVAL`` even when its watch says nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from baton.cluster import keys
from baton.cluster.etcd import Etcd, KeyValue
from baton.cluster.hostcanary import HostCanaries
from baton.cluster.progress import write_progress
from baton.cluster.registry import HOST_TTL, Registration
from baton.deploy.staging import STAGED
from baton.errors import BatonError, DaemonUnreachable, EtcdError, EtcdUnavailable

log = logging.getLogger("baton.cluster")

RESYNC_INTERVAL = 3.0  # re-read the desired state at least this often
RETRY_INTERVAL = 1.0  # after etcd did not answer


class LocalDaemon:
    """The host's own control plane, reached on its API socket."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _error(self, resp: aiohttp.ClientResponse) -> BatonError:
        text = await resp.text()
        try:
            message = str(json.loads(text).get("error", text))
        except (ValueError, AttributeError):
            message = text[:300]
        return BatonError(f"the local daemon refused: {message}")

    async def status(self) -> dict[str, Any]:
        try:
            async with self._client().get(
                "http://baton/status", timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                if resp.status >= 400:
                    raise await self._error(resp)
                answer: dict[str, Any] = await resp.json()
                return answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DaemonUnreachable(f"the local daemon does not answer: {exc}") from None

    async def call(self, path: str, body: dict[str, Any]) -> None:
        """A request whose answer is not followed (``/canary/weight``, ``/promote``,
        ``/abort``): ``BatonError`` when the daemon refuses it."""
        try:
            async with self._client().post(
                f"http://baton{path}", json=body, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                if resp.status >= 400:
                    raise await self._error(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DaemonUnreachable(f"the local daemon does not answer: {exc}") from None

    async def deploy(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``POST /deploy`` (or ``/rollback``): the deployment's events, the last one
        ``"event": "result"``."""
        try:
            async with self._client().post(f"http://baton{path}", json=body) as resp:
                if resp.status >= 400:
                    raise await self._error(resp)
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise DaemonUnreachable(f"lost the local daemon during a deploy: {exc}") from None


class Agent:
    def __init__(
        self,
        etcd: Etcd,
        record: keys.HostRecord,
        daemon: LocalDaemon,
        *,
        ttl: int = HOST_TTL,
        resync: float = RESYNC_INTERVAL,
    ) -> None:
        self.etcd = etcd
        self.host = record.name
        self.daemon = daemon
        self.registration = Registration(etcd, record, ttl)
        self.resync = resync
        self.handled: dict[str, str] = {}  # app → the fleet deployment it finished
        self.unsent: dict[str, keys.Progress] = {}  # progress etcd did not take yet
        self.converged = asyncio.Event()  # set after each pass with nothing left to do
        # Fleet canaries without edges (the proxy's socket is beside the daemon's).
        self.canaries = HostCanaries(
            etcd, self.host, daemon, self._report, daemon.socket_path.parent / "proxy.sock"
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: register, then converge on every change of the desired state."""
        task = asyncio.get_running_loop().create_task(self._loop())
        try:
            await stop.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.canaries.close()
            await self.registration.stop()
            await self.daemon.close()

    async def _loop(self) -> None:
        await self.registration.start()
        while True:
            try:
                await self._flush()
                kvs, revision = await self.etcd.get_prefix(keys.desired_prefix(self.host))
                for kv in kvs:
                    await self._converge(kv)
                await self._publish_versions()  # `baton status` shows the fleet as it is
                self.converged.set()
                await self._watch(revision + 1)
            except (EtcdUnavailable, EtcdError) as exc:
                log.warning("agent %s: etcd: %s; the host keeps serving as it is", self.host, exc)
                await asyncio.sleep(RETRY_INTERVAL)
            except Exception:  # a bug in one round must not end the converging
                log.exception("agent %s: converging failed; trying again", self.host)
                await asyncio.sleep(RETRY_INTERVAL)

    async def _watch(self, start: int) -> None:
        """Converge on each change until a quiet ``resync`` interval (then re-read all)."""
        changes = self.etcd.watch(keys.desired_prefix(self.host), start)
        try:
            while True:
                try:
                    _, events = await asyncio.wait_for(anext(changes), self.resync)
                except (TimeoutError, StopAsyncIteration):
                    return
                for event in events:
                    if event.kind == "put":
                        self.converged.clear()
                        await self._converge(event.kv)
                self.converged.set()
        finally:
            await changes.aclose()

    async def _converge(self, kv: KeyValue) -> None:
        try:
            desired = keys.DesiredRelease.from_json(kv.value, f"etcd key {kv.key}")
        except ValueError as exc:
            log.error("agent %s: ignoring a bad desired release: %s", self.host, exc)
            return
        if self.handled.get(desired.app) == desired.deployment:
            return
        last = await self.etcd.get(keys.progress_key(self.host, desired.app))
        if last is not None:
            with contextlib.suppress(ValueError):
                progress = keys.Progress.from_json(last.value)
                if progress.deployment == desired.deployment and progress.finished:
                    self.handled[desired.app] = desired.deployment
                    return
        if await self.canaries.converge(desired):  # a driven canary's weight, promote, abort
            return
        await self._deploy(desired)
        self.handled[desired.app] = desired.deployment

    async def _deploy(self, desired: keys.DesiredRelease) -> None:
        progress = keys.Progress(desired.app, desired.version, desired.deployment, "deploying")
        try:
            status = await self.daemon.status()
        except BatonError as exc:
            await self._report(replace(progress, state="failed", message=str(exc)))
            return
        app = status.get("apps", {}).get(desired.app) or {}
        if app.get("live") == desired.version and not app.get("deployment"):
            await self._report(replace(progress, state="done", message="already served"))
            return
        log.info("agent %s: deploying %s %s", self.host, desired.app, desired.version)
        await self._report(progress)
        step = ""
        try:
            async for event in self.daemon.deploy(*desired.request()):
                name = str(event.get("event", ""))
                shown = event.get("step") if name == "step" else name
                shown = shown if isinstance(shown, str) else name
                if isinstance(event.get("deployment"), int):
                    progress = replace(progress, local_deployment=event["deployment"])
                if name == "result":
                    ok = bool(event.get("ok"))
                    final = replace(
                        progress,
                        state="done" if ok else "failed",
                        step="result",
                        steps=(*progress.steps, "result"),
                        message=str(event.get("message", "")),
                    )
                    await self._publish_versions()  # fresh before the controller sees done
                    await self._report(final)
                    return
                if shown == STAGED and desired.phase == "stage":
                    # Ready beside the live release; the daemon holds it at its switch.
                    # Published first: the edges route to these instances at the cutover.
                    await self._publish_versions()
                    staged = replace(progress, state="staged", step=STAGED,
                                     steps=(*progress.steps, STAGED))  # fmt: skip
                    await self._report(staged)
                    return
                if shown and shown != step:
                    step = shown
                    progress = replace(progress, step=shown, steps=(*progress.steps, shown))
                    await self._report(progress, best_effort=True)
        except BatonError as exc:
            await self._report(replace(progress, state="failed", message=str(exc)))
            return
        await self._report(
            replace(progress, state="failed", message="the local deploy ended without a result")
        )

    async def _report(self, progress: keys.Progress, *, best_effort: bool = False) -> None:
        """Write ``progress`` (only while the host is asked for its deployment:
        ``baton.cluster.progress``); when etcd does not answer, keep the last one for later."""
        try:
            stale = await write_progress(self.etcd, self.host, progress)  # fenced: see there
            self.unsent.pop(progress.app, None)
            if stale is not None:
                log.warning("agent %s: %s %s %s not reported: %s", self.host, progress.app,
                            progress.deployment, progress.state, stale)  # fmt: skip
        except (EtcdUnavailable, EtcdError) as exc:
            if not best_effort or progress.finished:
                self.unsent[progress.app] = progress
            log.warning("agent %s: progress not written yet (%s)", self.host, exc)

    async def _flush(self) -> None:
        for progress in list(self.unsent.values()):
            await self._report(progress)
            if progress.app in self.unsent:
                raise EtcdUnavailable("etcd still does not take the host's progress")

    async def _publish_versions(self) -> None:
        """Refresh the host record with the version each app serves (for ``baton hosts``)."""
        try:
            status = await self.daemon.status()
            apps = {name: app.get("live") for name, app in status.get("apps", {}).items()}
            instances = {
                name: sum(
                    len(r.get("instances", []))
                    for r in app.get("releases", [])
                    if r.get("version") == app.get("live")
                )
                for name, app in status.get("apps", {}).items()
            }
            record = replace(
                self.registration.record,
                apps=apps,
                instances=instances,
                endpoints=reachable_instances(status),
            )
            await self.registration.update(record)
        except (BatonError, AttributeError) as exc:
            log.warning("agent %s: could not publish its versions: %s", self.host, exc)


def reachable_instances(status: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """From the daemon's ``/status``: app → release → the addresses of its ready instances
    that other hosts can reach (not loopback: the host runs with ``--instance-ip``)."""
    out: dict[str, dict[str, list[str]]] = {}
    for name, app in status.get("apps", {}).items():
        for release in app.get("releases", []):
            addrs = [
                str(i.get("address"))
                for i in release.get("instances", [])
                if i.get("state") in ("ready", "routed")
                and not str(i.get("address", "")).startswith(("127.", "[::1]", "localhost"))
            ]
            if addrs:
                out.setdefault(name, {})[str(release.get("version"))] = sorted(addrs)
    return out
