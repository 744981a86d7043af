"""A fleet canary without edges, on one app host: the agent's side (topology a).

Each host's proxy serves its own instances, so a canary across such a fleet runs on every
host at once: the host starts the new release beside its live one and splits its own
proxy's traffic at the weight the fleet's controller chose. The controller writes each
weight as the desired release's ``canary_weight`` of every host in one etcd transaction;
``HostCanaries.converge`` (called by the agent for each desired release) applies it:

- a new deployment with a ``canary_weight``: ``POST /deploy`` with ``canary_weight`` starts a
  **driven** canary (``baton.deploy.canary``: the single-host engine's canary with no timer,
  judge or fuse of its own), followed in the background; each weight it applies is reported
  as the host's progress (``Progress.weight``), so the controller knows when every host
  splits its traffic the same way;
- the same deployment with another weight: ``POST /canary/weight``;
- the same deployment without a weight: ``POST /promote``; the local deploy then finishes
  (verify, drain, stop or keep warm) and its result is the host's progress, as a plain one;
- another deployment (the controller unwinding: the previous release, ``-undo``):
  ``POST /abort``, wait for the local canary to end (the engine's undo leaves users on the
  live release), then the agent converges to it as usual ("already served").

While a driven canary runs, ``publish`` puts the host's proxy figures of that app (the
counters and latency histograms, ``baton.cluster.figures``) to ``/baton/host-figures/HOST``
every ``figures.INTERVAL``; the controller's judge sums them over every host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from baton.cluster import keys
from baton.cluster.etcd import Etcd
from baton.cluster.figures import HOST_FIGURES, INTERVAL, publish_figures, release_figures
from baton.deploy.proxyclient import ProxyClient
from baton.errors import BatonError, EtcdError, EtcdUnavailable

log = logging.getLogger("baton.cluster")

ABORT_WAIT = 120.0  # for an aborted local canary to end (its undo drains the canary)


class Daemon(Protocol):
    """What this module uses of the agent's ``LocalDaemon``."""

    def deploy(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def call(self, path: str, body: dict[str, Any]) -> None: ...


@dataclass
class Running:
    deployment: str
    task: asyncio.Task[None]
    weight: int | None = None  # the weight the host applied last


Report = Callable[[keys.Progress], Awaitable[None]]


class HostCanaries:
    """The driven canaries of one host, by app."""

    def __init__(
        self, etcd: Etcd, host: str, daemon: Daemon, report: Report, proxy_sock: Path
    ) -> None:
        self.etcd = etcd
        self.host = host
        self.daemon = daemon
        self.report = report
        self.proxy = ProxyClient(proxy_sock)
        self.running: dict[str, Running] = {}
        self.finished: dict[str, str] = {}  # app → the canary deployment that ended here

    async def converge(self, desired: keys.DesiredRelease) -> bool:
        """Apply ``desired`` if it concerns a driven canary; False: the agent's usual path."""
        app = desired.app
        run = self.running.get(app)
        alive = run is not None and not run.task.done()
        if run is not None and alive and run.deployment != desired.deployment:
            await self._abort(app, run)
            return False
        if run is not None and alive:
            if desired.canary_weight is None:
                await self._call("/promote", {"app": app})
            elif desired.canary_weight != run.weight:
                await self._call("/canary/weight", {"app": app, "weight": desired.canary_weight})
            return True
        if desired.canary_weight is None:
            return self.finished.get(app) == desired.deployment  # promoted (or ended) here
        if self.finished.get(app) == desired.deployment:
            return True  # it ended here (failed or aborted): the controller unwinds
        task = asyncio.get_running_loop().create_task(self._follow(desired))
        self.running[app] = Running(desired.deployment, task)
        return True

    async def _call(self, path: str, body: dict[str, Any]) -> None:
        try:
            await self.daemon.call(path, body)
        except BatonError as exc:
            log.warning("agent %s: %s %s: %s", self.host, path, body.get("app"), exc)

    async def _abort(self, app: str, run: Running) -> None:
        deadline = asyncio.get_running_loop().time() + ABORT_WAIT
        while not run.task.done() and asyncio.get_running_loop().time() < deadline:
            await self._call("/abort", {"app": app})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.task), 1.0)

    async def _follow(self, desired: keys.DesiredRelease) -> None:
        """Run the local driven canary to its end, reporting each weight and the result."""
        app = desired.app
        progress = keys.Progress(app, desired.version, desired.deployment, "deploying")
        await self.report(progress)
        body = {**desired.deploy_body(), "canary_weight": desired.canary_weight}
        publisher = asyncio.get_running_loop().create_task(self._publish(app))
        try:
            async for event in self.daemon.deploy("/deploy", body):
                name = str(event.get("event", ""))
                if isinstance(event.get("deployment"), int):
                    progress = replace(progress, local_deployment=event["deployment"])
                if name == "canary_step" and isinstance(event.get("weight"), int):
                    self.running[app].weight = event["weight"]
                    shown = f"canary {event['weight']}%"
                    progress = replace(
                        progress, step=shown, steps=(*progress.steps, shown), weight=event["weight"]
                    )
                    await self.report(progress)
                elif name == "step" and isinstance(event.get("step"), str):
                    shown = event["step"]
                    progress = replace(progress, step=shown, steps=(*progress.steps, shown))
                elif name == "result":
                    ok = bool(event.get("ok"))
                    await self.report(
                        replace(
                            progress,
                            state="done" if ok else "failed",
                            step="result",
                            steps=(*progress.steps, "result"),
                            message=str(event.get("message", "")),
                        )
                    )
                    return
            await self.report(replace(progress, state="failed", message="no result"))
        except BatonError as exc:
            await self.report(replace(progress, state="failed", message=str(exc)))
        finally:
            self.finished[app] = desired.deployment
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    async def _publish(self, app: str) -> None:
        """The host's proxy figures of ``app`` while its driven canary runs."""
        while True:
            await asyncio.sleep(INTERVAL)
            try:
                figures = release_figures((await self.proxy.metrics()).get("apps", {}), [app])
                await publish_figures(self.etcd, HOST_FIGURES + self.host, figures)
            except (EtcdUnavailable, EtcdError, BatonError) as exc:
                log.debug("agent %s: figures not published: %s", self.host, exc)

    async def close(self) -> None:
        for run in self.running.values():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        await self.proxy.close()
