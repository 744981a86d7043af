"""The deploy engine's hands: what every step, undo, recovery and healing do to the world.

``Operations`` owns the I/O a deployment is made of, each as one public method: start an
instance of a release (the one path every caller uses: deploy, undo, dead-instance
replacement), wait for instances to be ready, run a hook or a migration phase (release
dir, env, secrets, output redacted), drain targets at the proxy, stop instances, freeze a
new release's artifact. It holds the parts these need (store, runtimes, proxy client,
route publisher, secrets, recent traffic, the running canaries) and decides nothing: which
step comes when is the strategies' and the executor's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from baton.deploy import releases as artifacts
from baton.deploy.canary import CanaryControl
from baton.deploy.deployment import Deployment, InstanceFailed, instance_of, runtime_name
from baton.deploy.hooks import HookResult, raise_for_hook, run_hook
from baton.deploy.proxyclient import ProxyClient, ProxyUnavailable
from baton.deploy.routes import Router
from baton.deploy.staging import StageGate
from baton.deploy.traffic import Traffic
from baton.errors import BatonError, DaemonUnreachable, DeploymentFailed
from baton.events import Artifact, Drained, HookOutput, HookRan, InstanceChanged, Probe, Warned
from baton.runtime.base import Instance, InstanceSpec, Runtime, Runtimes
from baton.secrets import SecretStore, redact
from baton.state.states import InstanceState
from baton.state.store import InstanceRow, ReleaseRow, Store

log = logging.getLogger("baton.engine")

LOG_TAIL = 20
MIGRATION_OUTPUT_LINES = 50

Rows = list[tuple[ReleaseRow, InstanceRow]]


def hook_env(release: ReleaseRow, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The env a hook of ``release`` runs with."""
    env = dict(release.env)
    env.update({"BATON_APP": release.app, "BATON_VERSION": release.version})
    env.update(extra or {})
    return env


class Operations:
    """The I/O of deployments (see the module docstring). One per control plane."""

    def __init__(
        self,
        store: Store,
        runtimes: Runtimes,
        proxy: ProxyClient,
        router: Router,
        state_dir: Path,
    ) -> None:
        self.store = store
        self.runtimes = runtimes
        self.proxy = proxy
        self.router = router
        self.state_dir = state_dir
        self.secrets = SecretStore(state_dir)
        self.traffic = Traffic()  # recent proxy metrics: canary guard, `baton status`
        self.canaries: dict[str, CanaryControl] = {}  # app -> its running canary
        self.staged: dict[str, StageGate] = {}  # app -> its staged release (deploy/staging)

    def runtime_for(self, release: ReleaseRow) -> Runtime:
        return self.runtimes.get(runtime_name(release.config))

    # -- secrets ----------------------------------------------------------------------------

    def secret_values(self, d: Deployment) -> dict[str, str]:
        return d.secrets if d.secrets is not None else self.secrets.read(d.app)

    def secret_env(self, d: Deployment) -> dict[str, str]:
        """The secrets the release names (in its config), with their current values."""
        values = self.secret_values(d)
        names = d.release.config.get("secrets") or []
        return {name: values[name] for name in names if name in values}

    def redact(self, text: str, d: Deployment) -> str:
        return redact(text, self.secret_values(d).values())

    # -- hooks and migrations -----------------------------------------------------------------

    async def hook(
        self,
        d: Deployment,
        name: str,
        command: str | None,
        extra: dict[str, str],
        on_result: Callable[[HookResult], None] | None = None,
    ) -> None:
        if not command:
            return

        def line(text: str) -> None:
            d.run.emit(HookOutput(hook=name, line=self.redact(text, d)))

        result = await run_hook(
            name,
            command,
            cwd=Path(d.release.cwd),
            env=hook_env(d.release, {**self.secret_env(d), **extra}),
            timeout=d.cfg.hooks.timeout,
            log=line,
        )
        d.run.emit(HookRan(hook=name, ok=result.ok))
        if on_result is not None:
            on_result(result)
        try:
            raise_for_hook(result)
        except DeploymentFailed as exc:  # its last output lines may echo a secret
            raise DeploymentFailed(self.redact(str(exc), d)) from None

    async def migration(self, d: Deployment, phase: str, command: str) -> None:
        """Run a migration phase as a hook (release dir, env, secrets); record its output."""

        def record(result: HookResult) -> None:
            output = [self.redact(line, d) for line in result.output_tail]
            self.store.add_event(
                d.run.id,
                d.app,
                "migration",
                {
                    "phase": phase,
                    "version": d.release.version,
                    "ok": result.ok,
                    "exit_code": result.exit_code,
                    "seconds": round(result.duration, 3),
                    "output": output[-MIGRATION_OUTPUT_LINES:],
                },
            )

        await self.hook(d, phase, command, {}, on_result=record)

    # -- the release's artifact ---------------------------------------------------------------

    async def prepare_release(self, d: Deployment) -> None:
        """What must hold before anything changes: the runtime can run the release (docker:
        the image is there), and a new release's artifact is frozen: the snapshot (then
        ``hooks.build`` in it) or the image ID."""
        runtime = self.runtime_for(d.release)
        await runtime.prepare(artifacts.pinned(d.cfg, d.release.artifact))
        if d.kind != "deploy" or d.release.artifact:
            return
        resolve = getattr(runtime, "resolve_image", None)
        d.release = await artifacts.make_artifact(
            self.store, self.state_dir, d.release, d.cfg, resolve
        )
        d.run.emit(Artifact(extra=artifacts.describe(d.release.artifact)))
        if d.cfg.hooks.build:
            await self.hook(d, "build", d.cfg.hooks.build, {})

    # -- instances ------------------------------------------------------------------------------

    async def start_instance(self, d: Deployment, index: int) -> None:
        """Start instance ``index`` of ``d.release``; record it (store and ``d.started``)."""
        release = d.release
        runtime = self.runtime_for(release)
        base = InstanceSpec(
            app=d.app,
            version=release.version,
            index=index,
            command=release.command or "",
            cwd=Path(release.cwd),
            env={
                **release.env,
                **self.secret_env(d),
                "BATON_APP": d.app,
                "BATON_VERSION": release.version,
                "BATON_INSTANCE": str(index),
            },
            log_dir=self.state_dir / "logs" / d.app,
        )
        try:
            cfg = artifacts.pinned(d.cfg, release.artifact)
            instance = await runtime.start(runtime.spec(cfg, base))
        except DaemonUnreachable:
            raise
        except BatonError as exc:
            raise InstanceFailed(
                f"instance {index} of {release.version} did not start: {exc}", index, []
            ) from exc
        except OSError as exc:
            raise InstanceFailed(
                f"instance {index} of {release.version} did not start: {exc}", index, []
            ) from exc
        row_id = self.store.add_instance(
            release.id,
            index,
            instance.address,
            instance.ref,
            str(instance.log_path) if instance.log_path else None,
        )
        d.started[index] = (row_id, instance)
        d.run.emit(InstanceChanged(index=index, address=instance.address, state="starting"))

    async def start_instances(self, d: Deployment, indexes: tuple[int, ...]) -> None:
        """Start several instances at once (a container takes a Docker round trip or three).
        Every instance that did start is in ``d.started``, so an undo stops it."""
        results = await asyncio.gather(
            *(self.start_instance(d, index) for index in indexes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def wait_ready(self, d: Deployment, indexes: tuple[int, ...]) -> None:
        """Wait until every instance ``indexes`` of ``d`` is ready; the first failure raises
        ``InstanceFailed`` (with its logs) and stops waiting for the others."""
        from baton.deploy.probes import wait_ready

        health = d.cfg.health
        runtime = self.runtime_for(d.release)

        async def one(index: int) -> None:
            row_id, instance = d.started[index]

            async def alive() -> bool:
                return await runtime.alive(instance)

            async def runtime_healthy() -> str | None:
                verdict = await runtime.healthy(instance)
                if verdict is None or verdict:
                    return None
                return f"the {runtime.name} runtime does not report it healthy (yet)"

            def progress(message: str) -> None:
                d.run.emit(Probe(index=index, message=message))

            try:
                await wait_ready(
                    instance.address,
                    health_path=health.path,
                    interval=health.interval,
                    timeout=health.timeout,
                    success_threshold=health.success_threshold,
                    ready_timeout=d.cfg.deploy.ready_timeout,
                    alive=alive,
                    on_progress=progress,
                    instance=f"{d.release.version}#{index}",
                    http_on_tcp=not runtime.tcp_proves_listening,
                    runtime_healthy=runtime_healthy,
                )
            except DeploymentFailed as exc:
                self.store.set_instance_state(row_id, InstanceState.FAILED)
                logs = await self.logs(runtime, instance)
                d.run.emit(
                    InstanceChanged(
                        index=index, address=instance.address, state="failed", message=str(exc)
                    )
                )
                raise InstanceFailed(
                    f"instance {index} of {d.release.version} ({instance.address}) is not"
                    f" ready: {exc}",
                    index,
                    logs,
                ) from exc
            self.store.set_instance_state(row_id, InstanceState.READY)
            d.run.emit(InstanceChanged(index=index, address=instance.address, state="ready"))

        tasks = [asyncio.ensure_future(one(i)) for i in indexes]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            exc = task.exception() if not task.cancelled() else None
            if exc is not None:
                raise exc

    async def logs(self, runtime: Runtime, instance: Instance) -> list[str]:
        try:
            return await runtime.logs(instance, LOG_TAIL)
        except Exception:
            return []

    def rows(self, ids: tuple[int, ...]) -> Rows:
        """(release, instance) of each stored instance id that still exists."""
        out = []
        for instance_id in ids:
            row = self.store.instance(instance_id)
            release = self.store.release(row.release_id) if row else None
            if row is not None and release is not None:
                out.append((release, row))
        return out

    async def drain(self, d: Deployment | None, rows: Rows, wait: float) -> None:
        """Wait (at most ``wait`` seconds) for the rows' in-flight work at the proxy."""
        addresses = [row.address for _, row in rows]
        if not addresses:
            return
        try:
            answer = await self.proxy.drain(addresses, wait)
            drained = bool(answer.get("drained", True))
        except ProxyUnavailable:
            drained = True  # a restarted proxy has nothing in flight to the old targets
        except BatonError as exc:
            drained = False
            if d is not None:
                d.run.emit(Warned(message=f"drain: {exc}"))
        if d is not None:
            d.run.emit(Drained(targets=addresses, drained=drained))

    async def stop_rows(
        self, rows: Rows, timeout: float, state: InstanceState = InstanceState.STOPPED
    ) -> None:
        """Stop each instance (SIGTERM, ``timeout``, SIGKILL) and record it as ``state``."""

        async def one(release: ReleaseRow, row: InstanceRow) -> None:
            try:
                await self.runtime_for(release).stop(instance_of(release, row), timeout)
            except Exception:
                log.exception("stopping %s failed", row.address)
            self.store.set_instance_state(row.id, state)

        await asyncio.gather(*(one(r, i) for r, i in rows))
