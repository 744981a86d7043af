"""The deploy engine: the control plane's one entry point to deployments.

``Engine`` is the front desk. It validates, locks and records each deployment before
anything changes (``prepare_deploy``, ``prepare_rollback``, ``prepare_contract``), then
hands it to the ``Executor`` (``start``); it keeps the deployments in progress
(``DeploymentRun``s, which any number of CLI followers stream) and offers the rest of the
control plane small public methods instead of its parts. The work lives in modules of its
own: the strategies (``strategies/``: blue-green, rolling, canary as peers) plan the steps,
the executor sequences and commits them, ``operations`` does the I/O, ``undo`` puts users
back, ``recovery`` finishes or undoes after a crash and removes orphans, ``healing``
replaces dead instances, ``routes`` publishes the route table and ``status`` is the read
model. Planning (which steps, which weights, finish-or-undo after a crash) is pure and
lives in ``baton.deploy.plan``.

The one promise: when a deployment fails, at any step, users are left on the previous
release, and every instance the deployment started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from baton.config import AppConfig, LoadedConfig, apply_overrides, load_config, parse_config
from baton.deploy import releases as artifacts
from baton.deploy import staging
from baton.deploy import status as read_model
from baton.deploy.canary import CanaryControl
from baton.deploy.deployment import (
    Deployment,
    DeploymentRun,
    instance_of,
    runtime_name,
)
from baton.deploy.executor import Executor
from baton.deploy.healing import Healing
from baton.deploy.hooks import run_hook
from baton.deploy.migrations import contract_window, rollback_blocker, schema_phase
from baton.deploy.operations import Operations, Rows, hook_env
from baton.deploy.plan import unique_label
from baton.deploy.proxyclient import ProxyClient
from baton.deploy.recovery import Recovery
from baton.deploy.routes import Router
from baton.deploy.status import live_release
from baton.deploy.traffic import Snapshot, Traffic, figures
from baton.errors import BatonError, RouteTableError, UsageError
from baton.events import Intro
from baton.runtime.base import Instance, Runtime, Runtimes
from baton.secrets import SecretStore, check_given, redact
from baton.state.states import (
    ACTIVE_RELEASE_STATES,
    DeploymentStatus,
    InstanceState,
    ReleaseState,
)
from baton.state.store import DeploymentRow, EventRow, ReleaseRow, Store


def image_tag(image: str) -> str:
    """The tag of an image reference, the default ``--version`` of a docker app.

    ``shop:1.4.3`` → ``1.4.3``; ``registry:5000/shop`` → ``latest``; a digest
    (``shop@sha256:ab12...``) → its first 12 hex digits.
    """
    if "@" in image:
        digest = image.rsplit("@", 1)[1]
        return digest.split(":", 1)[-1][:12] or "latest"
    last = image.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


async def _default_version(app_dir: Path) -> str:
    """The short git commit of the app's directory, else a timestamp."""
    with contextlib.suppress(OSError, TimeoutError):
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-C",
            str(app_dir),
            "rev-parse",
            "--short",
            "HEAD",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 5.0)
        if proc.returncode == 0 and out.strip():
            return out.decode().strip()
    return time.strftime("%Y%m%d-%H%M%S")


class Engine:
    """Deploys, rolls back, recovers and stops releases. One per control plane."""

    def __init__(
        self,
        store: Store,
        runtimes: Runtimes,
        proxy: ProxyClient,
        state_dir: Path,
        *,
        router: Router | None = None,
    ) -> None:
        self.store = store
        self.runtimes = runtimes
        self.proxy = proxy
        self.router = router or Router(store, proxy)
        self.state_dir = state_dir
        self.pid = os.getpid()
        self.runs: dict[int, DeploymentRun] = {}
        self._deploys: dict[int, Deployment] = {}
        # Held while the engine changes an app outside a deployment (replacing a dead
        # instance); a deployment of the app waits for it before it takes the app's lock.
        self._app_locks: dict[str, asyncio.Lock] = {}
        self.ops = Operations(store, runtimes, proxy, self.router, state_dir)
        self.executor = Executor(self.ops)
        self.recovery = Recovery(self.ops)
        self.healing = Healing(self.ops, self.app_lock)

    # -- the parts, as the rest of the control plane may use them ---------------------------

    @property
    def secrets(self) -> SecretStore:
        return self.ops.secrets

    @property
    def replaced(self) -> dict[str, list[dict[str, Any]]]:
        return self.healing.replaced

    @property
    def reconciled(self) -> dict[str, Any] | None:
        return self.recovery.reconciled

    @property
    def detaching(self) -> bool:
        return self.executor.detaching

    @detaching.setter
    def detaching(self, value: bool) -> None:
        self.executor.detaching = value

    def app_names(self) -> list[str]:
        """Every app ever deployed on this host (and not removed)."""
        return [a.name for a in self.store.apps()]

    def has_app(self, app: str) -> bool:
        return self.store.app(app) is not None

    def app_config(self, app: str) -> dict[str, Any] | None:
        """The app's stored config (its last deploy's), or None for an unknown app."""
        row = self.store.app(app)
        return dict(row.config) if row is not None else None

    def run(self, deployment_id: int) -> DeploymentRun | None:
        """The deployment in progress with this id (None once it ended)."""
        return self.runs.get(deployment_id)

    def running_deployment(self, app: str) -> DeploymentRow | None:
        return self.store.running_deployment(app)

    def running_deployments(self) -> list[DeploymentRow]:
        return self.store.running_deployments()

    def events(self, deployment_id: int) -> list[EventRow]:
        """A deployment's stored events, oldest first."""
        return self.store.events(deployment_id)

    def add_event(
        self, deployment_id: int | None, app: str, kind: str, data: dict[str, Any]
    ) -> None:
        self.store.add_event(deployment_id, app, kind, data)

    def canary(self, app: str) -> CanaryControl | None:
        """The app's running canary, if one runs."""
        return self.ops.canaries.get(app)

    def staged_request(
        self, app: str, what: staging.Decision, version: str | None
    ) -> DeploymentRun | None:
        """Switch to or discard the app's staged release (``deploy.staging.request``)."""
        return staging.request(self.ops.staged, self.run, app, what, version)

    def canary_version(self, app: str) -> str | None:
        """The version of ``app``'s running canary, once it takes traffic (feature flags)."""
        control = self.ops.canaries.get(app)
        return control.version if control is not None and control.step > 0 else None

    def recent_traffic(self) -> Traffic:
        """Recent proxy metrics, to read windows of (the feature-flag judge)."""
        return self.ops.traffic

    def latest_traffic(self) -> Snapshot | None:
        """The newest sample of the proxy's metrics."""
        return self.ops.traffic.latest

    async def sample_traffic(self) -> None:
        """Take a sample of the proxy's metrics (the daemon does, every second)."""
        await self.ops.traffic.sample(self.proxy)

    def release_figures(self, app: str, version: str, seconds: float | None = None) -> Any:
        """A release's recent figures (``traffic.figures``), over ``seconds`` or the status
        window."""
        if seconds is None:
            return figures(self.ops.traffic, app, version)
        return figures(self.ops.traffic, app, version, seconds)

    def proxy_client(self) -> ProxyClient:
        """The client of the proxy's admin API (for the metrics endpoint)."""
        return self.proxy

    def routes(self) -> Router:
        """The route publisher (the proxy supervisor and certificates read its table)."""
        return self.router

    def runtime_for(self, release: ReleaseRow) -> Runtime:
        return self.ops.runtime_for(release)

    def app_lock(self, app: str) -> asyncio.Lock:
        return self._app_locks.setdefault(app, asyncio.Lock())

    # -- starting deployments ----------------------------------------------------------------

    async def prepare_deploy(
        self,
        config_path: str,
        *,
        version: str | None = None,
        env: dict[str, str] | None = None,
        command: str | None = None,
        strategy: str | None = None,
        image: str | None = None,
        secrets: dict[str, str] | None = None,
        stage: bool = False,
    ) -> DeploymentRun:
        """Validate, lock the app and record the deployment; ``start`` then runs it.
        ``stage``: start the release and stop before its switch (``deploy.staging``).

        ``env`` updates the app's own env, which every later deploy carries; ``secrets``
        gives secret values (kept by the control plane once the deploy succeeds).
        Raises ``ConfigError``/``UsageError`` (nothing changed) or ``DeploymentLocked``.
        """
        loaded = load_config(config_path)
        app = loaded.config.app
        app_env = {**self.store.app_env(app), **(env or {})}
        cfg = apply_overrides(loaded.config, app_env, command, strategy, image)
        if stage:
            staging.check_stageable(cfg.deploy.strategy, app)
        given = check_given(secrets, cfg.secrets, app)
        values = {**self.secrets.read(app), **given}
        missing = [name for name in cfg.secrets if name not in values]
        if missing:
            raise UsageError(
                f"{app}: no value for the secret(s) {', '.join(missing)} named in baton.yml;"
                " put them in .baton/secrets beside baton.yml (mode 0600) or in the"
                " environment of `baton deploy`"
            )
        async with self.app_lock(cfg.app):
            run = await self._prepare_deploy(loaded, cfg, version)
        d = self._deploys[run.id]
        d.app_env = app_env
        d.secrets = values
        if stage:
            staging.register(self.ops.staged, run)
        return run

    async def _prepare_deploy(
        self, loaded: LoadedConfig, cfg: AppConfig, version: str | None
    ) -> DeploymentRun:
        app = cfg.app
        existing = self.store.releases(app)
        if version is not None:
            version = version.strip()
            if not version or any(c.isspace() for c in version):
                raise UsageError(f"--version: expected a label without spaces, got {version!r}")
            clash = [
                r for r in existing if r.version == version and r.state in ACTIVE_RELEASE_STATES
            ]
            if clash:
                raise UsageError(
                    f"--version: {app} already has a {clash[0].state} release {version!r};"
                    f" choose another label, or run `baton rollback {version}`"
                )
            kept = artifacts.label_clash(existing, version)
            if kept is not None:
                raise UsageError(
                    f"--version: {app} already has a release {version!r} ({kept.state}), and"
                    " releases are immutable: choose a new label for new code, or run"
                    f" `baton rollback {version}` to run that release again"
                )
        else:
            base = (
                image_tag(cfg.run.image)
                if cfg.runtime == "docker" and cfg.run.image
                else await _default_version(loaded.app_dir)
            )
            version = unique_label(base, [r.version for r in existing])
        previous = live_release(self.store, app)
        config = cfg.model_dump(mode="json")
        deployment_id, release_id = self.store.begin_deployment(
            app=app,
            app_config=config,
            config_path=str(loaded.path),
            kind="deploy",
            strategy=cfg.deploy.strategy,
            release={
                "version": version,
                "command": cfg.run.command,
                "env": dict(cfg.run.env),
                "cwd": str(loaded.app_dir),
                "config": config,
                "config_hash": loaded.config_hash,
            },
            previous_release_id=previous.id if previous else None,
            holder_pid=self.pid,
        )
        release = self.store.release(release_id)
        assert release is not None
        run = DeploymentRun(deployment_id, app, version, "deploy")
        run.emit(self._intro(run, release, previous, cfg.deploy.strategy))
        self.runs[deployment_id] = run
        self._deploys[deployment_id] = Deployment(
            run, app, release, cfg, previous, "deploy", cfg.deploy.strategy
        )
        return run

    def drive_canary(self, deployment_id: int, weight: int) -> None:
        """Make a prepared deploy a canary driven from outside (a fleet controller): it starts
        at ``weight`` and holds there until ``canary.drive`` gives a new one, or promote/abort."""
        self._deploys[deployment_id].canary_weight = weight

    async def prepare_rollback(
        self, app: str, version: str | None = None, *, force: bool = False
    ) -> DeploymentRun:
        """Lock the app and record a rollback to ``version`` (default: the previous release).

        Refused when a contract migration ran since ``version`` was made, unless ``force``.
        """
        async with self.app_lock(app):
            return await self._prepare_rollback(app, version, force)

    async def _prepare_rollback(self, app: str, version: str | None, force: bool) -> DeploymentRun:
        if self.store.app(app) is None:
            raise UsageError(f"no app named {app!r} was ever deployed on this host")
        live = live_release(self.store, app)
        target = self._rollback_target(app, live, version)
        blocker = rollback_blocker(target, self.store.schema_migrations(app))
        if blocker is not None and not force:
            contracted = self.store.release(blocker.release_id)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(blocker.contracted or 0))
            name = contracted.version if contracted else f"release #{blocker.release_id}"
            raise UsageError(
                f"refusing to roll {app} back to {target.version}: the contract migration of"
                f" {name} ran at {when}, and {target.version} is older than {name}, so it would"
                f" run against a schema that no longer has what it needs."
                f" `baton rollback --force {target.version}` runs it anyway: only do that"
                " once you have restored the schema it needs (or know it needs nothing that"
                " was removed), or users get errors"
            )
        artifacts.refuse_if_gone(self.store, target)
        cfg = parse_config(target.config)
        routed = self.store.instances(target.id, (InstanceState.ROUTED,))
        runtime = self.runtime_for(target)
        alive = [await runtime.alive(instance_of(target, i)) for i in routed]
        warm = (
            target.state == ReleaseState.WARM and bool(routed) and all(alive) and live is not None
        )
        if target.state == ReleaseState.WARM and not warm:
            # Some of its instances died: start it afresh rather than half warm.
            rows = [(target, row) for row in routed]
            with self.store.transaction():
                self.store.update_release(target.id, state=ReleaseState.STOPPED, weight=0)
                for _, row in rows:
                    self.store.set_instance_state(row.id, InstanceState.DRAINING)
            await self.router.push_app(app)
            await self.ops.stop_rows(rows, cfg.deploy.stop_timeout)
            target = self.store.release(target.id) or target
        deployment_id, _ = self.store.begin_deployment(
            app=app,
            app_config=None,
            config_path=None,
            kind="rollback",
            strategy=cfg.deploy.strategy,
            release=None,
            release_id=target.id,
            previous_release_id=live.id if live else None,
            holder_pid=self.pid,
        )
        run = DeploymentRun(deployment_id, app, target.version, "rollback")
        run.emit(self._intro(run, target, live, "switch" if warm else cfg.deploy.strategy))
        self.runs[deployment_id] = run
        d = Deployment(
            run, app, target, cfg, live, "rollback", cfg.deploy.strategy, warm_switch=warm
        )
        if warm:
            for row in routed:
                d.started[row.index] = (row.id, instance_of(target, row))
        self._deploys[deployment_id] = d
        return run

    # -- schema migrations: the contract half ----------------------------------------------

    def migration_state(self, app: str) -> dict[str, Any]:
        """The phase of ``app``'s schema, for ``baton migrate status`` and the auto-contract."""
        live = live_release(self.store, app)
        migrations = {m.release_id: m for m in self.store.schema_migrations(app)}
        migration = migrations.get(live.id) if live is not None else None
        cfg = parse_config(live.config) if live is not None else None
        window = contract_window(
            live,
            migration,
            contract_after=cfg.migrations.contract_after if cfg else 0.0,
            now=time.time(),
        )
        return {
            "app": app,
            "phase": schema_phase(live, migration, window),
            "version": live.version if live else None,
            "expanded": migration.expanded if migration else None,
            "contracted": migration.contracted if migration else None,
            "contract_allowed": window.allowed,
            "seconds_left": round(window.seconds_left, 1),
            "why": window.why,
            "contract": cfg.migrations.contract if cfg else None,
            "auto_contract": cfg.migrations.auto_contract if cfg else False,
            "status_command": cfg.migrations.status if cfg else None,
        }

    async def migration_status(self, app: str) -> dict[str, Any]:
        """``migration_state`` plus the output of the live release's ``migrations.status``."""
        state = self.migration_state(app)
        command = state.pop("status_command")
        live = live_release(self.store, app)
        if command and live is not None:
            values = self.secrets.read(app)
            names = live.config.get("secrets") or []
            env = hook_env(live, {name: values[name] for name in names if name in values})
            result = await run_hook("status", command, cwd=Path(live.cwd), env=env, timeout=30.0)
            secret_values = values.values()
            state["status_output"] = [
                redact(line, secret_values) for line in result.output_tail[-20:]
            ]
            state["status_ok"] = result.ok
        return state

    async def prepare_contract(self, app: str) -> DeploymentRun:
        """Lock the app and record the contract of its live release; ``start`` runs it.

        Refused (``UsageError``, nothing changed) before the window has passed, after the
        contract already ran, or when the live release configures no contract command.
        """
        async with self.app_lock(app):
            if self.store.app(app) is None:
                raise UsageError(f"no app named {app!r} was ever deployed on this host")
            state = self.migration_state(app)
            if not state["contract"]:
                raise UsageError(
                    f"{app} {state['version']} has no migrations.contract command in its baton.yml"
                )
            if not state["contract_allowed"]:
                raise UsageError(f"the contract of {app} is not allowed yet: {state['why']}")
            live = live_release(self.store, app)
            assert live is not None
            deployment_id, _ = self.store.begin_deployment(
                app=app,
                app_config=None,
                config_path=None,
                kind="contract",
                strategy="contract",
                release=None,
                release_id=live.id,
                previous_release_id=None,
                holder_pid=self.pid,
            )
            run = DeploymentRun(deployment_id, app, live.version, "contract")
            run.emit(self._intro(run, live, None, "contract"))
            self.runs[deployment_id] = run
            self._deploys[deployment_id] = Deployment(
                run, app, live, parse_config(live.config), None, "contract", "contract"
            )
            return run

    async def auto_contract(self) -> list[str]:
        """Run the contract of every app with ``auto_contract`` whose window has passed."""
        notes = []
        for app in self.store.apps():
            if self.store.running_deployment(app.name) is not None:
                continue
            state = self.migration_state(app.name)
            if state["auto_contract"] and state["contract"] and state["contract_allowed"]:
                try:
                    run = await self.prepare_contract(app.name)
                except BatonError as exc:
                    notes.append(f"{app.name}: auto-contract not started: {exc}")
                    continue
                self.start(run)
                notes.append(f"{app.name}: running the contract of {state['version']} (auto)")
        return notes

    def start(self, run: DeploymentRun) -> None:
        """Run a prepared deployment in the background (it outlives the client that asked)."""
        run.task = asyncio.get_running_loop().create_task(self._execute(self.claim(run)))

    def claim(self, run: DeploymentRun) -> Deployment:
        """The prepared deployment of ``run``, taken to be executed (``start`` does this; a
        test drives the executor with it directly)."""
        return self._deploys.pop(run.id)

    async def _execute(self, d: Deployment) -> None:
        try:
            await self.executor.execute(d)
        finally:
            self.runs.pop(d.run.id, None)

    def _intro(
        self, run: DeploymentRun, release: ReleaseRow, previous: ReleaseRow | None, how: str
    ) -> Intro:
        return Intro(
            id=run.id,
            app=run.app,
            kind=run.kind,
            version=release.version,
            previous=previous.version if previous else None,
            strategy=how,
        )

    def _rollback_target(
        self, app: str, live: ReleaseRow | None, version: str | None
    ) -> ReleaseRow:
        candidates = [
            r
            for r in self.store.releases(app)
            if r.live_since is not None and (live is None or r.id != live.id)
        ]
        if version is not None:
            named = [r for r in self.store.releases(app) if r.version == version]
            if not named:
                known = ", ".join(sorted({r.version for r in self.store.releases(app)})) or "none"
                raise UsageError(f"{app} has no release {version!r} (known: {known})")
            if live is not None and named[-1].id == live.id:
                raise UsageError(f"{version} is already the live release of {app}")
            return named[-1]
        if not candidates:
            raise UsageError(f"{app} has no previous release to roll back to")
        return max(candidates, key=lambda r: r.live_since or 0.0)

    # -- background work: warm releases, recovery, dead instances, shutdown -------------------

    async def expire_warm(self) -> None:
        """Stop warm releases whose ``keep_previous`` ran out (not while the app deploys)."""
        await self.healing.expire_warm()

    async def recover(self) -> list[str]:
        """After a restart: finish or undo unfinished deployments, then ``reconcile``."""
        return await self.recovery.recover()

    async def reconcile(self) -> list[str]:
        """Stop and remove every instance that belongs to no live or warm release."""
        return await self.recovery.reconcile()

    async def replace_dead(self) -> list[str]:
        """Replace the dead instances of live releases; top up releases that lost some."""
        return await self.healing.replace_dead()

    async def repair(self, release: ReleaseRow, *, now: bool = False) -> list[str]:
        """Start what a live release lacks (dead or missing instances), ready, then routed."""
        return await self.healing.repair(release, now=now)

    async def drain_and_stop(self, rows: Rows, drain_timeout: float, stop_timeout: float) -> None:
        """Wait for the rows' in-flight work (already out of the route table), then stop them."""
        await self.ops.drain(None, rows, drain_timeout)
        await self.ops.stop_rows(rows, stop_timeout)

    async def cancel_runs(self) -> None:
        """Stop every deployment in progress where it is (``stop_all`` cleans up after)."""
        tasks = [run.task for run in self.runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_all(self) -> None:
        """Stop every instance Baton started (``baton down``; the proxy is stopped first)."""
        rows = self.store.active_instances()
        by_timeout: dict[float, Rows] = {}
        for release, row in rows:
            timeout = parse_config(release.config).deploy.stop_timeout
            by_timeout.setdefault(timeout, []).append((release, row))
        await asyncio.gather(*(self.ops.stop_rows(r, t) for t, r in by_timeout.items()))
        # The live releases stay live: that is the desired state `baton up` brings back.
        with self.store.transaction():
            for app in self.store.apps():
                for release in self.store.releases(
                    app.name, (ReleaseState.PENDING, ReleaseState.WARM)
                ):
                    self.store.update_release(release.id, state=ReleaseState.STOPPED, weight=0)
                for release in self.store.releases(app.name, (ReleaseState.LIVE,)):
                    self.store.update_release(release.id, weight=100)  # alone when it is back
        for dep in self.store.running_deployments():
            self.store.finish_deployment(dep.id, DeploymentStatus.ABORTED, "baton down")

    # -- reading -----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return await read_model.status(self.ops, self.reconciled, self.replaced)

    def history(self, app: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return read_model.history(self.store, app, limit)

    def log_sources(self, app: str, version: str | None) -> list[tuple[str, Runtime, Instance]]:
        """(label, runtime, instance) of each instance of ``version`` (default: live)."""
        return read_model.log_sources(self.ops, app, version)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for an error raised while preparing a deployment."""
    if isinstance(exc, BatonError):
        return exc.exit_code, str(exc)
    return 1, f"{type(exc).__name__}: {exc}"


__all__ = [
    "DeploymentRun",
    "Engine",
    "RouteTableError",
    "Router",
    "describe_error",
    "image_tag",
    "instance_of",
    "runtime_name",
]
