"""The deploy engine: executes deployment plans against the runtime, the proxy and the store.

It owns the deployments in progress (``DeploymentRun``: the events any number of CLI
followers stream) and the route table pushed to the proxy (``Router``: always rebuilt from
the store, so the store and the proxy never disagree for long). Every deployment follows
the seven steps of ``baton deploy``: lock and record, pre_deploy and start, readiness,
smoke test, switch, verify, drain and stop (or keep warm), post_deploy. Each step is
written to the store before it runs, so ``recover`` can finish or undo a deployment the
control plane did not live to finish.

The one promise: when a deployment fails, at any step, users are left on the previous
release, and every instance the deployment started is stopped. Planning (which steps,
which weights, whether verification failed, finish-or-undo after a crash) is pure and
lives in ``baton.deploy.plan``; this module only does what the plan says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.config import AppConfig, LoadedConfig, apply_overrides, load_config, parse_config
from baton.deploy import releases as artifacts
from baton.deploy.hooks import HookResult
from baton.deploy.migrations import contract_window, rollback_blocker, schema_phase
from baton.deploy.plan import (
    ArmedFuse,
    Pool,
    Step,
    app_route,
    judge,
    live_version,
    plan_deploy,
    plan_recovery,
    primary_release,
    release_counts,
    release_options,
    route_table,
    split_weights,
    unique_label,
)
from baton.deploy.proxyclient import ProxyClient, ProxyUnavailable
from baton.deploy.traffic import Traffic
from baton.errors import (
    BatonError,
    DaemonUnreachable,
    DeploymentFailed,
    RouteTableError,
    UsageError,
)
from baton.observe import hub as observe_hub
from baton.observe import logs as observe_logs
from baton.observe.metrics import METRICS
from baton.observe.signals import SIGNALS
from baton.runtime.base import Instance, InstanceSpec, Runtime, Runtimes
from baton.secrets import SecretStore, check_given, redact
from baton.state.store import InstanceRow, ReleaseRow, Store

if TYPE_CHECKING:
    from baton.deploy.canary import CanaryControl

log = logging.getLogger("baton.engine")

ACTIVE_RELEASE_STATES = ("pending", "live", "warm")
LOG_TAIL = 20
REPLACE_BACKOFF_MAX = 60.0  # seconds between attempts to replace a dead instance, at most
RECENT_REPLACEMENTS = 20  # how many replacements `baton status` shows per app


def runtime_name(config: dict[str, Any]) -> str:
    """The runtime a stored config runs on (configs from before runtimes existed: process)."""
    return str(config.get("runtime") or "process")


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


def instance_of(release: ReleaseRow, row: InstanceRow) -> Instance:
    """The runtime's view of a stored instance."""
    return Instance(
        app=release.app,
        version=release.version,
        index=row.index,
        address=row.address,
        ref=row.ref,
        log_path=Path(row.log_path) if row.log_path else None,
    )


# -- events ------------------------------------------------------------------------------------


class DeploymentRun:
    """A deployment in progress: its events, kept for every follower, and its outcome."""

    def __init__(self, deployment_id: int, app: str, version: str, kind: str) -> None:
        self.id = deployment_id
        self.app = app
        self.version = version
        self.kind = kind
        self.events: list[dict[str, Any]] = []
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def emit(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", time.time())
        self.events.append(event)
        observe_hub.publish(self.id, self.app, self.version, event)
        self._wake.set()
        self._wake = asyncio.Event()

    def finish(self, result: dict[str, Any]) -> None:
        self.emit({"event": "result", "deployment": self.id, **result})
        self.finished = True
        self._wake.set()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event so far, then each new one, until the result."""
        seen = 0
        while True:
            while seen < len(self.events):
                yield self.events[seen]
                seen += 1
            if self.finished:
                return
            await self._wake.wait()


# -- the route table -----------------------------------------------------------------------------


class Router:
    """Builds route tables from the store and sends them to the proxy, one at a time."""

    def __init__(self, store: Store, proxy: ProxyClient) -> None:
        self.store = store
        self.proxy = proxy
        self._lock = asyncio.Lock()
        self.fuses: dict[str, ArmedFuse] = {}  # app -> its running canary's fuse
        self.acme_dir: str | None = None  # where ACME certificates live (server/certs.py)

    def pools(self, app: str) -> list[tuple[ReleaseRow, Pool]]:
        pools = []
        for release in self.store.releases(app):
            targets = tuple(i.address for i in self.store.instances(release.id, ("routed",)))
            if targets:
                pools.append((release, Pool(release.version, release.weight, targets)))
        return pools

    def live_config(self, app: str) -> dict[str, Any] | None:
        """The config of the release that sets the app's routing (None when nothing routes)."""
        pools = self.pools(app)
        primary = primary_release([p for _, p in pools])
        return next((dict(r.config) for r, p in pools if p.release == primary), None)

    def app_route(self, app: str) -> dict[str, Any] | None:
        pools = self.pools(app)
        primary = primary_release([p for _, p in pools])
        config = next((r.config for r, p in pools if p.release == primary), None)
        if config is None:
            return None
        route = app_route(config, [p for _, p in pools], self.acme_dir)
        if route is not None:
            route.update(release_options(pools[-1][0].config))  # the newest release decides
            armed = self.fuses.get(app)
            if armed is not None and any(r.id == armed.release_id for r, _ in pools):
                armed.apply(route)
        return route

    def table(self) -> dict[str, Any]:
        return route_table({a.name: self.app_route(a.name) for a in self.store.apps()})

    def listens(self) -> list[str]:
        table = self.table()
        # HTTPS listeners are opened by the table itself (they need its certificates).
        return sorted({r["listen"] for r in table["apps"].values() if "tls" not in r})

    async def push_app(self, app: str, *, retry_for: float = 15.0) -> None:
        """Send one app's routes; wait (bounded) for a proxy that is being restarted."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                async with self._lock:
                    route = self.app_route(app)
                    if route is None:
                        await self.proxy.delete_app(app)
                    else:
                        await self.proxy.put_app(app, route)
                return
            except ProxyUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def push_all(self) -> None:
        async with self._lock:
            await self.proxy.put_routes(self.table())


# -- the engine --------------------------------------------------------------------------------


class _InstanceFailed(DeploymentFailed):
    def __init__(self, message: str, index: int | None, logs: list[str]) -> None:
        super().__init__(message)
        self.index = index
        self.logs = logs


@dataclass
class _Deploy:
    run: DeploymentRun
    app: str
    release: ReleaseRow
    cfg: AppConfig
    previous: ReleaseRow | None
    kind: str
    strategy: str
    warm_switch: bool = False
    switched: bool = False  # some traffic went to the new release
    started: dict[int, tuple[int, Instance]] = field(default_factory=dict)
    finalized: bool = False
    app_env: dict[str, str] | None = None  # the app's --env to keep once this deploy succeeds
    secrets: dict[str, str] | None = None  # every secret value of the app, for this deploy


MIGRATION_OUTPUT_LINES = 50


def _hook_env(release: ReleaseRow, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(release.env)
    env.update({"BATON_APP": release.app, "BATON_VERSION": release.version})
    env.update(extra or {})
    return env


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
        self._deploys: dict[int, _Deploy] = {}
        # Held while the engine changes an app outside a deployment (replacing a dead
        # instance); a deployment of the app waits for it before it takes the app's lock.
        self._app_locks: dict[str, asyncio.Lock] = {}
        self._replace_after: dict[int, tuple[float, float]] = {}  # release id -> (when, backoff)
        self.replaced: dict[str, list[dict[str, Any]]] = {}
        self.reconciled: dict[str, Any] | None = None
        self.canaries: dict[str, CanaryControl] = {}  # app -> its running canary
        self.traffic = Traffic()  # recent proxy metrics: canary guard, `baton status`
        self.secrets = SecretStore(state_dir)
        # Set when the control plane stops but the data plane goes on (SIGTERM): deployments
        # in progress stay recorded as running, for the next control plane to finish or undo.
        self.detaching = False

    def canary_version(self, app: str) -> str | None:
        """The version of ``app``'s running canary, once it takes traffic (feature flags)."""
        control = self.canaries.get(app)
        return control.version if control is not None and control.step > 0 else None

    def runtime_for(self, release: ReleaseRow) -> Runtime:
        return self.runtimes.get(runtime_name(release.config))

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
    ) -> DeploymentRun:
        """Validate, lock the app and record the deployment; ``start`` then runs it.

        ``env`` updates the app's own env, which every later deploy carries; ``secrets``
        gives secret values (kept by the control plane once the deploy succeeds).
        Raises ``ConfigError``/``UsageError`` (nothing changed) or ``DeploymentLocked``.
        """
        loaded = load_config(config_path)
        app = loaded.config.app
        app_env = {**self.store.app_env(app), **(env or {})}
        cfg = apply_overrides(loaded.config, app_env, command, strategy, image)
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
        previous = self._live_release(app)
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
        self._deploys[deployment_id] = _Deploy(
            run, app, release, cfg, previous, "deploy", cfg.deploy.strategy
        )
        return run

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
        live = self._live_release(app)
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
        routed = self.store.instances(target.id, ("routed",))
        runtime = self.runtime_for(target)
        alive = [await runtime.alive(instance_of(target, i)) for i in routed]
        warm = target.state == "warm" and bool(routed) and all(alive) and live is not None
        if target.state == "warm" and not warm:
            # Some of its instances died: start it afresh rather than half warm.
            rows = [(target, row) for row in routed]
            with self.store.transaction():
                self.store.update_release(target.id, state="stopped", weight=0)
                for _, row in rows:
                    self.store.set_instance_state(row.id, "draining")
            await self.router.push_app(app)
            await self._stop_rows(rows, cfg.deploy.stop_timeout)
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
        d = _Deploy(run, app, target, cfg, live, "rollback", cfg.deploy.strategy, warm_switch=warm)
        if warm:
            for row in routed:
                d.started[row.index] = (row.id, instance_of(target, row))
        self._deploys[deployment_id] = d
        return run

    # -- schema migrations: the contract half ----------------------------------------------

    def migration_state(self, app: str) -> dict[str, Any]:
        """The phase of ``app``'s schema, for ``baton migrate status`` and the auto-contract."""
        live = self._live_release(app)
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
        from baton.deploy.hooks import run_hook

        state = self.migration_state(app)
        command = state.pop("status_command")
        live = self._live_release(app)
        if command and live is not None:
            values = self.secrets.read(app)
            names = live.config.get("secrets") or []
            env = _hook_env(live, {name: values[name] for name in names if name in values})
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
            live = self._live_release(app)
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
            self._deploys[deployment_id] = _Deploy(
                run, app, live, parse_config(live.config), None, "contract", "contract"
            )
            return run

    async def _contract(self, d: _Deploy) -> None:
        command = d.cfg.migrations.contract
        assert command is not None
        self.store.set_step(d.run.id, "contract")
        d.run.emit({"event": "step", "step": "contract", "batch": None})
        await self._migration(d, "contract", command)
        self.store.record_contracted(d.release.id)

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
        d = self._deploys.pop(run.id)
        run.task = asyncio.get_running_loop().create_task(self._execute(d))

    def _intro(
        self, run: DeploymentRun, release: ReleaseRow, previous: ReleaseRow | None, how: str
    ) -> dict[str, Any]:
        return {
            "event": "deployment",
            "id": run.id,
            "app": run.app,
            "kind": run.kind,
            "version": release.version,
            "previous": previous.version if previous else None,
            "strategy": how,
        }

    def _live_release(self, app: str) -> ReleaseRow | None:
        live = self.store.releases(app, ("live",))
        return live[-1] if live else None

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

    # -- executing ---------------------------------------------------------------------------

    async def _execute(self, d: _Deploy) -> None:
        run = d.run
        started = time.monotonic()
        observe_logs.bind(run.id, run.app, run.version)
        try:
            await self._steps(d)
        except asyncio.CancelledError:
            if self.detaching:
                run.finish(
                    {
                        "ok": False,
                        "exit_code": 3,
                        "status": "interrupted",
                        "message": "the control plane stopped during the deployment; the"
                        " next `baton up` finishes or undoes it",
                    }
                )
                raise
            self.store.finish_deployment(run.id, "aborted", "the control plane stopped")
            if d.kind == "deploy" and not d.switched:
                artifacts.discard(self.store, self.store.release(d.release.id) or d.release)
            run.finish(
                {
                    "ok": False,
                    "exit_code": 1,
                    "status": "aborted",
                    "message": "the control plane stopped during the deployment",
                }
            )
            raise
        except BaseException as exc:
            failed = exc if isinstance(exc, DeploymentFailed) else None
            message = str(exc) if isinstance(exc, BatonError) else f"{type(exc).__name__}: {exc}"
            message = self._redact(message, d)
            if not isinstance(exc, BatonError):
                log.exception("deployment %s crashed", run.id)
            status = "rolled_back" if self._traffic_moved(d) else "failed"
            try:
                # A contract changed no release and no route: there is nothing to undo.
                if d.kind != "contract" and not await self._undo(d):
                    status = "failed"
            except Exception as undo_exc:
                log.exception("undoing deployment %s failed", run.id)
                message += f"; undoing it failed too: {undo_exc}"
            message = self._redact(message, d)
            self.store.finish_deployment(run.id, status, message)
            self.store.add_event(run.id, run.app, "failed", {"error": message})
            if d.kind == "deploy":
                # A release that never went live for good is not kept (its label is free).
                artifacts.discard(self.store, self.store.release(d.release.id) or d.release)
            result: dict[str, Any] = {
                "ok": False,
                # A runtime engine that does not answer (Docker) is the CLI's exit 3.
                "exit_code": 3 if isinstance(exc, DaemonUnreachable) else 1,
                "status": status,
                "message": message,
                "previous": d.previous.version if d.previous else None,
                "seconds": round(time.monotonic() - started, 3),
            }
            if isinstance(failed, _InstanceFailed):
                result["instance"] = failed.index
                result["logs"] = [self._redact(line, d) for line in failed.logs]
            run.finish(result)
        else:
            self._keep_desired_state(d)
            self.store.finish_deployment(run.id, "succeeded")
            self.store.add_event(run.id, run.app, "succeeded", {"version": d.release.version})
            done = "is live" if d.kind != "contract" else "ran its contract migration"
            run.finish(
                {
                    "ok": True,
                    "exit_code": 0,
                    "status": "succeeded",
                    "message": f"{run.app} {d.release.version} {done}",
                    "version": d.release.version,
                    "seconds": round(time.monotonic() - started, 3),
                }
            )
        finally:
            self.runs.pop(run.id, None)

    def _traffic_moved(self, d: _Deploy) -> bool:
        return d.switched

    # -- releases, env and secrets (see baton.deploy.releases and baton.secrets) ---------------

    def _secret_values(self, d: _Deploy) -> dict[str, str]:
        return d.secrets if d.secrets is not None else self.secrets.read(d.app)

    def _secret_env(self, d: _Deploy) -> dict[str, str]:
        """The secrets the release names (in its config), with their current values."""
        values = self._secret_values(d)
        names = d.release.config.get("secrets") or []
        return {name: values[name] for name in names if name in values}

    def _redact(self, text: str, d: _Deploy) -> str:
        return redact(text, self._secret_values(d).values())

    def _keep_desired_state(self, d: _Deploy) -> None:
        """A deploy succeeded: its env and secrets are the app's from now on; prune."""
        if d.app_env is not None:
            self.store.set_app_env(d.app, d.app_env)
        try:
            if d.secrets is not None and d.secrets != self.secrets.read(d.app):
                self.secrets.write(d.app, d.secrets)
        except OSError as exc:  # the release is live; say what could not be kept
            d.run.emit(
                {"event": "warning", "message": f"could not keep the secrets: {exc.strerror}"}
            )
        try:
            removed = artifacts.prune(self.store, d.app, d.cfg.deploy.keep_releases)
        except OSError as exc:
            d.run.emit({"event": "warning", "message": f"could not prune old releases: {exc}"})
            return
        if removed:
            d.run.emit({"event": "pruned", "versions": removed})

    async def prepare_release(self, d: _Deploy) -> None:
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
        d.run.emit({"event": "artifact", **artifacts.describe(d.release.artifact)})
        if d.cfg.hooks.build:
            await self._hook(d, "build", d.cfg.hooks.build, {})

    async def _steps(self, d: _Deploy) -> None:
        if d.kind == "contract":
            await self._contract(d)
            return
        if d.strategy == "canary":
            from baton.deploy.canary import run_canary

            await run_canary(self, d)  # comes back here as blue-green when it cannot canary
            return
        cfg = d.cfg
        prev_routed = self.store.instances(d.previous.id, ("routed",)) if d.previous else []
        if d.warm_switch:
            old = tuple(i.id for i in prev_routed)
            steps = [Step("switch", new=tuple(d.started), old=old)]
            if old:
                steps.append(Step("drain", old=old))
                steps.append(Step("keep_warm" if cfg.deploy.keep_previous > 0 else "stop", old=old))
        else:
            steps = plan_deploy(
                d.strategy,
                new_count=cfg.instances,
                old=[i.id for i in prev_routed],
                max_surge=cfg.deploy.max_surge,
                pre_deploy=bool(cfg.hooks.pre_deploy) and d.kind == "deploy",
                expand=bool(cfg.migrations.expand) and d.kind == "deploy",
                smoke_test=bool(cfg.hooks.smoke_test),
                verify=cfg.deploy.verify > 0,
                keep_warm=cfg.deploy.keep_previous > 0,
                post_deploy=bool(cfg.hooks.post_deploy),
            )
        if not d.warm_switch:
            # Before anything changes: what the runtime needs (docker: the image) is there.
            self.store.set_step(d.run.id, "prepare")
            d.run.emit({"event": "step", "step": "prepare", "batch": None})
            await self.prepare_release(d)
        # Past the verification (or the last switch, without one), the new release has the
        # traffic for good: a failure to drain or stop the old one is a warning, not an undo.
        commit = max(i for i, s in enumerate(steps) if s.kind in ("switch", "verify"))
        for n, step in enumerate(steps):
            if step.kind == "post_deploy":
                await self._finalize(d)
            self.store.set_step(d.run.id, step.label)
            self.store.add_event(d.run.id, d.app, "step", {"step": step.label})
            d.run.emit({"event": "step", "step": step.kind, "batch": step.batch})
            if n <= commit:
                await self._do(d, step)
                continue
            try:
                await self._do(d, step)
            except BatonError as exc:
                d.run.emit({"event": "warning", "message": f"{step.kind}: {exc}"})
        await self._finalize(d)

    async def _do(self, d: _Deploy, step: Step) -> None:
        cfg = d.cfg
        if step.kind == "pre_deploy":
            await self._hook(d, "pre_deploy", cfg.hooks.pre_deploy, {})
        elif step.kind == "expand":
            assert cfg.migrations.expand is not None
            await self._migration(d, "expand", cfg.migrations.expand)
            self.store.record_expanded(d.app, d.release.id)
        elif step.kind == "start":
            # Concurrently: a container takes a Docker round trip or three to create and start.
            # Every instance that did start is in d.started, so an undo stops it.
            results = await asyncio.gather(
                *(self._start_instance(d, index) for index in step.new), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        elif step.kind == "ready":
            await self._wait_ready(d, step.new)
        elif step.kind == "smoke_test":
            _, instance = d.started[step.new[0]]
            url = f"http://{instance.address}"
            d.run.emit({"event": "smoke_test", "target": url})
            await self._hook(d, "smoke_test", cfg.hooks.smoke_test, {"BATON_TARGET_URL": url})
        elif step.kind == "switch":
            await self._switch(d, step)
        elif step.kind == "verify":
            await self._verify(d, step.batch)
        elif step.kind == "drain":
            await self._drain(d, self._rows(step.old), cfg.deploy.drain_timeout)
        elif step.kind == "stop":
            await self._stop_old(d, step)
        elif step.kind == "keep_warm":
            assert d.previous is not None
            until = time.time() + cfg.deploy.keep_previous
            self.store.update_release(d.previous.id, state="warm", weight=0, warm_until=until)
            d.run.emit(
                {
                    "event": "keep_warm",
                    "version": d.previous.version,
                    "seconds": cfg.deploy.keep_previous,
                }
            )
        elif step.kind == "post_deploy":
            try:
                await self._hook(d, "post_deploy", cfg.hooks.post_deploy, {})
            except DeploymentFailed as exc:
                # The new release is live and verified; a failed notification does not undo it.
                d.run.emit({"event": "warning", "message": f"post_deploy failed: {exc}"})

    def _rows(self, ids: tuple[int, ...]) -> list[tuple[ReleaseRow, InstanceRow]]:
        out = []
        for instance_id in ids:
            row = self.store.instance(instance_id)
            release = self.store.release(row.release_id) if row else None
            if row is not None and release is not None:
                out.append((release, row))
        return out

    async def _hook(
        self,
        d: _Deploy,
        name: str,
        command: str | None,
        extra: dict[str, str],
        on_result: Callable[[HookResult], None] | None = None,
    ) -> None:
        from baton.deploy.hooks import raise_for_hook, run_hook

        if not command:
            return

        def line(text: str) -> None:
            d.run.emit({"event": "hook_output", "hook": name, "line": self._redact(text, d)})

        result = await run_hook(
            name,
            command,
            cwd=Path(d.release.cwd),
            env=_hook_env(d.release, {**self._secret_env(d), **extra}),
            timeout=d.cfg.hooks.timeout,
            log=line,
        )
        d.run.emit({"event": "hook", "hook": name, "ok": result.ok})
        if on_result is not None:
            on_result(result)
        try:
            raise_for_hook(result)
        except DeploymentFailed as exc:  # its last output lines may echo a secret
            raise DeploymentFailed(self._redact(str(exc), d)) from None

    async def _migration(self, d: _Deploy, phase: str, command: str) -> None:
        """Run a migration phase as a hook (release dir, env, secrets); record its output."""

        def record(result: HookResult) -> None:
            output = [self._redact(line, d) for line in result.output_tail]
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

        await self._hook(d, phase, command, {}, on_result=record)

    async def _start_instance(self, d: _Deploy, index: int) -> None:
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
                **self._secret_env(d),
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
            raise _InstanceFailed(
                f"instance {index} of {release.version} did not start: {exc}", index, []
            ) from exc
        except OSError as exc:
            raise _InstanceFailed(
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
        d.run.emit(
            {"event": "instance", "index": index, "address": instance.address, "state": "starting"}
        )

    async def _wait_ready(self, d: _Deploy, indexes: tuple[int, ...]) -> None:
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
                d.run.emit({"event": "probe", "index": index, "message": message})

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
                self.store.set_instance_state(row_id, "failed")
                logs = await self._logs(runtime, instance)
                d.run.emit(
                    {
                        "event": "instance",
                        "index": index,
                        "address": instance.address,
                        "state": "failed",
                        "message": str(exc),
                    }
                )
                raise _InstanceFailed(
                    f"instance {index} of {d.release.version} ({instance.address}) is not"
                    f" ready: {exc}",
                    index,
                    logs,
                ) from exc
            self.store.set_instance_state(row_id, "ready")
            d.run.emit(
                {"event": "instance", "index": index, "address": instance.address, "state": "ready"}
            )

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

    async def _logs(self, runtime: Runtime, instance: Instance) -> list[str]:
        try:
            return await runtime.logs(instance, LOG_TAIL)
        except Exception:
            return []

    async def _switch(self, d: _Deploy, step: Step) -> None:
        release = d.release
        previous = d.previous
        new_ids = [d.started[i][0] for i in step.new]
        if d.warm_switch:
            addresses = [d.started[i][1].address for i in step.new]
            with contextlib.suppress(BatonError):
                await self.proxy.undrain(addresses)
        with self.store.transaction():
            for row_id in new_ids:
                self.store.set_instance_state(row_id, "routed")
            if d.strategy == "blue-green" or d.warm_switch:
                self.store.update_release(release.id, weight=100)
                if previous is not None:
                    self.store.update_release(previous.id, weight=0)
            else:
                for instance_id in step.old:
                    self.store.set_instance_state(instance_id, "draining")
                new_count = len(self.store.instances(release.id, ("routed",)))
                old_count = len(self.store.instances(previous.id, ("routed",))) if previous else 0
                old_weight, new_weight = split_weights([old_count, new_count])
                self.store.update_release(release.id, weight=new_weight)
                if previous is not None:
                    self.store.update_release(previous.id, weight=old_weight)
        d.switched = True
        await self.router.push_app(d.app)
        weights = {p.release: p.weight for _, p in self.router.pools(d.app)}
        d.run.emit({"event": "switch", "weights": weights, "batch": step.batch})

    async def _verify(self, d: _Deploy, batch: int | None = None) -> None:
        cfg = d.cfg.deploy
        version = d.release.version
        where = "" if batch is None else f" in batch {batch + 1}"

        async def counts() -> Any:
            try:
                return release_counts(await self.proxy.metrics(), d.app, version)
            except BatonError:
                return None

        before = await counts()
        if before is None:
            d.run.emit({"event": "warning", "message": "no metrics from the proxy; not verified"})
            return
        deadline = time.monotonic() + cfg.verify
        last_report = 0.0
        verdict = judge(before, before, cfg.max_error_rate)
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.25, left))
            now = await counts()
            if now is None:
                continue
            verdict = judge(before, now, cfg.max_error_rate)
            if cfg.signals.rollback and (why := SIGNALS.regression(d.run.id, cfg.signals)):
                raise DeploymentFailed(f"{version} failed verification: {why}; switched back")
            if verdict.failing:
                d.run.emit(
                    {
                        "event": "verify",
                        "requests": verdict.requests,
                        "errors": verdict.errors,
                        "rate": verdict.rate,
                        "failing": True,
                        "batch": batch,
                    }
                )
                raise DeploymentFailed(
                    f"{version} failed verification{where}:"
                    f" {verdict.describe(cfg.max_error_rate)}; switched back"
                )
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                d.run.emit(
                    {
                        "event": "verify",
                        "requests": verdict.requests,
                        "errors": verdict.errors,
                        "rate": verdict.rate,
                        "failing": False,
                        "left": round(max(0.0, left), 1),
                    }
                )
        d.run.emit(
            {
                "event": "verify",
                "requests": verdict.requests,
                "errors": verdict.errors,
                "rate": verdict.rate,
                "failing": False,
                "passed": True,
            }
        )

    async def _drain(
        self, d: _Deploy | None, rows: list[tuple[ReleaseRow, InstanceRow]], wait: float
    ) -> None:
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
                d.run.emit({"event": "warning", "message": f"drain: {exc}"})
        if d is not None:
            d.run.emit({"event": "drain", "targets": addresses, "drained": drained})

    async def _stop_old(self, d: _Deploy, step: Step) -> None:
        rows = self._rows(step.old)
        with self.store.transaction():
            for _, row in rows:
                self.store.set_instance_state(row.id, "draining")
        await self.router.push_app(d.app)
        await self._stop_rows(rows, d.cfg.deploy.stop_timeout)
        d.run.emit({"event": "stopped", "targets": [row.address for _, row in rows]})

    async def _stop_rows(
        self, rows: list[tuple[ReleaseRow, InstanceRow]], timeout: float, state: str = "stopped"
    ) -> None:
        async def one(release: ReleaseRow, row: InstanceRow) -> None:
            try:
                await self.runtime_for(release).stop(instance_of(release, row), timeout)
            except Exception:
                log.exception("stopping %s failed", row.address)
            self.store.set_instance_state(row.id, state)

        await asyncio.gather(*(one(r, i) for r, i in rows))

    async def _finalize(self, d: _Deploy) -> None:
        """The new release took the traffic and passed verification: record it as live."""
        if d.finalized:
            return
        d.finalized = True
        now = time.time()
        older_warm: list[ReleaseRow] = []
        with self.store.transaction():
            self.store.update_release(
                d.release.id, state="live", weight=100, live_since=now, clear_warm_until=True
            )
            self.store.set_app_stopped(d.app, False)
            for release in self.store.releases(d.app, ACTIVE_RELEASE_STATES):
                if release.id == d.release.id:
                    continue
                if (
                    d.previous is not None
                    and release.id == d.previous.id
                    and release.state == "warm"
                ):
                    continue
                if release.state == "warm":
                    older_warm.append(release)
                self.store.update_release(release.id, state="stopped", weight=0)
                for row in self.store.instances(release.id, ("routed", "ready", "starting")):
                    self.store.set_instance_state(row.id, "draining")
        try:
            await self.router.push_app(d.app)
        except BatonError as exc:
            # The store says what is live; the proxy watcher sends it once the proxy answers.
            d.run.emit({"event": "warning", "message": f"route table: {exc}"})
        leftovers = [
            (r, row)
            for r in self.store.releases(d.app, ("stopped",))
            for row in self.store.instances(r.id, ("draining",))
        ]
        if leftovers:
            await self._drain(None, leftovers, d.cfg.deploy.drain_timeout)
            await self._stop_rows(leftovers, d.cfg.deploy.stop_timeout)

    async def _undo(self, d: _Deploy) -> bool:
        """Put users back on the previous release and stop what this deployment started.

        Returns True when the previous release (or, on a first deploy, nothing) is routed.
        """
        release, previous = d.release, d.previous
        timeout = d.cfg.deploy.stop_timeout
        # Everything this deployment started, failed ones included: "failed" means it failed
        # its readiness, not that the process is gone.
        started_ids = {row_id for row_id, _ in d.started.values()}
        new_rows = [
            (release, row)
            for row in self.store.instances(release.id)
            if row.id in started_ids and row.state != "stopped"
        ]
        if d.warm_switch:
            # A failed switch back to a warm release: it stays warm, the live one stays live.
            assert previous is not None
            with self.store.transaction():
                self.store.update_release(previous.id, weight=100)
                self.store.update_release(release.id, weight=0)
            await self.router.push_app(d.app)
            return True
        restored = True
        if previous is not None:
            # Rolling takes old instances out batch by batch: those of the batch that failed
            # still run (they are drained and stopped only after its verification), so they
            # go back into the table; what earlier batches stopped is started again.
            runtime = self.runtime_for(previous)
            for row in self.store.instances(previous.id, ("draining",)):
                if await runtime.alive(instance_of(previous, row)):
                    self.store.set_instance_state(row.id, "routed")
            prev_routed = self.store.instances(previous.id, ("routed",))
            missing = parse_config(previous.config).instances - len(prev_routed)
            if missing > 0 and any(r.state == "routed" for _, r in new_rows):
                restored = await self._restart_previous(d, prev_routed, missing) or bool(
                    prev_routed
                )
        routed_new = [(r, row) for r, row in new_rows if row.state == "routed"]
        if restored:
            with self.store.transaction():
                for _, row in new_rows:
                    self.store.set_instance_state(row.id, "draining")
                self.store.update_release(release.id, weight=0)
                if previous is not None:
                    self.store.update_release(previous.id, state="live", weight=100)
            if routed_new or previous is None:
                self.store.set_step(d.run.id, "rollback")
                await self.router.push_app(d.app)
                d.run.emit(
                    {
                        "event": "switch",
                        "weights": {p.release: p.weight for _, p in self.router.pools(d.app)},
                        "back": True,
                    }
                )
                await self._drain(d, routed_new, d.cfg.deploy.drain_timeout)
            await self._stop_rows(new_rows, timeout, state="failed")
            if release.state != "live":
                self.store.update_release(release.id, state="failed", weight=0)
            return True
        return False

    async def _restart_previous(self, d: _Deploy, routed: list[InstanceRow], missing: int) -> bool:
        """Rolling stopped old instances: start ``missing`` of them again, then switch back."""
        previous = d.previous
        assert previous is not None
        cfg = parse_config(previous.config)
        d.run.emit(
            {
                "event": "step",
                "step": "rollback",
                "batch": None,
                "detail": f"starting {missing} instance(s) of {previous.version} again",
            }
        )
        self.store.set_step(d.run.id, "rollback")
        back = _Deploy(d.run, d.app, previous, cfg, None, "rollback", cfg.deploy.strategy)
        used = {row.index for row in routed}
        indexes = tuple(i for i in range(cfg.instances + len(used)) if i not in used)[:missing]
        try:
            for index in indexes:
                await self._start_instance(back, index)
            await self._wait_ready(back, indexes)
        except DeploymentFailed as exc:
            d.run.emit(
                {"event": "warning", "message": f"could not restart {previous.version}: {exc}"}
            )
            rows = [(previous, r) for r in self.store.instances(previous.id, ("starting", "ready"))]
            await self._stop_rows(rows, cfg.deploy.stop_timeout, state="failed")
            return False
        with self.store.transaction():
            for row_id, _ in back.started.values():
                self.store.set_instance_state(row_id, "routed")
        return True

    # -- background work: warm releases, recovery, shutdown ---------------------------------------

    async def expire_warm(self) -> None:
        """Stop warm releases whose ``keep_previous`` ran out (not while the app deploys)."""
        now = time.time()
        for app in self.store.apps():
            if self.store.running_deployment(app.name) is not None:
                continue
            for release in self.store.releases(app.name, ("warm",)):
                if release.warm_until is not None and release.warm_until > now:
                    continue
                rows = [(release, r) for r in self.store.instances(release.id, ("routed", "ready"))]
                with self.store.transaction():
                    self.store.update_release(release.id, state="stopped", weight=0)
                    for _, row in rows:
                        self.store.set_instance_state(row.id, "draining")
                await self.router.push_app(app.name)
                cfg = parse_config(release.config)
                await self._stop_rows(rows, cfg.deploy.stop_timeout)
                self.store.add_event(None, app.name, "expired", {"version": release.version})

    async def recover(self) -> list[str]:
        """After a restart: finish or undo unfinished deployments, then ``reconcile``.

        Returns notes for the log. A runtime engine that does not answer (Docker) leaves its
        instances as the store says (they are looked at again by the watcher), never stops
        the control plane from starting.
        """
        notes: list[str] = []
        # Instances that died while nobody watched.
        for release, row in self.store.active_instances():
            try:
                alive = await self.runtime_for(release).alive(instance_of(release, row))
            except BatonError as exc:
                notes.append(f"could not check {release.app} {release.version}#{row.index}: {exc}")
                continue
            if not alive:
                self.store.set_instance_state(row.id, "failed")
        for dep in self.store.running_deployments():
            notes.append(await self._recover_deployment(dep.id))
        # Releases with nothing running any more: a pending one failed, a warm one is gone.
        # A live release stays live: it is the app's desired state, and convergence starts
        # its instances again (after a reboot, none of them runs).
        for app in self.store.apps():
            for release in self.store.releases(app.name, ("pending", "warm")):
                if not self.store.instances(release.id, ("routed",)):
                    self.store.update_release(
                        release.id,
                        state="failed" if release.state == "pending" else "stopped",
                        weight=0,
                    )
        # The proxy routes what the store now says, before anything it routed is stopped.
        try:
            await self.router.push_all()
        except BatonError as exc:
            notes.append(f"could not send the route table to the proxy: {exc}")
        notes.extend(await self.reconcile())
        return notes

    def _runtimes_in_use(self) -> list[str]:
        """Process (always: it is local and cheap), and every runtime a release ran on."""
        names = {"process"}
        for app in self.store.apps():
            names.add(runtime_name(app.config))
            names.update(runtime_name(r.config) for r in self.store.releases(app.name))
        return sorted(names)

    async def reconcile(self) -> list[str]:
        """Stop and remove every instance that belongs to no live or warm release.

        Two sources, one rule: the store's instances that are not routed by a live or warm
        release, and whatever each runtime in use says it owns (process records, containers
        labelled with this state dir) that no such release routes. What was removed is kept
        in ``self.reconciled`` for ``baton status`` and written to the store's events.
        Returns notes for the log.
        """
        notes: list[str] = []
        cleaned: list[dict[str, Any]] = []
        keep = {
            row.ref
            for release, row in self.store.active_instances()
            if release.state in ("live", "warm") and row.state == "routed"
        }

        def entry(runtime: str, instance: Instance, source: str) -> dict[str, Any]:
            return {
                "runtime": runtime,
                "app": instance.app,
                "version": instance.version,
                "index": instance.index,
                "address": instance.address,
                "ref": instance.ref,
                "source": source,
            }

        for release, row in self.store.active_instances():
            if row.ref in keep:
                continue
            await self._stop_rows(
                [(release, row)], parse_config(release.config).deploy.stop_timeout
            )
            name = runtime_name(release.config)
            cleaned.append(entry(name, instance_of(release, row), "store"))
        done = {c["ref"] for c in cleaned}
        for name in self._runtimes_in_use():
            runtime = self.runtimes.get(name)
            try:
                owned = await runtime.owned()
            except BatonError as exc:
                notes.append(f"could not list the {name} runtime's instances: {exc}")
                continue
            orphans = [i for i in owned if i.ref not in keep and i.ref not in done]

            async def stop(runtime: Runtime, instance: Instance) -> None:
                try:
                    await runtime.stop(instance, 5.0)
                except Exception:
                    log.exception("stopping orphan %s failed", instance.address)

            await asyncio.gather(*(stop(runtime, i) for i in orphans))
            cleaned.extend(entry(name, i, "runtime") for i in orphans)
        for item in cleaned:
            self.store.add_event(None, item["app"], "cleaned", item)
            notes.append(
                f"removed {item['runtime']} instance {item['app']} {item['version']}"
                f"#{item['index']} ({item['address']}): no live or warm release routes it"
            )
        self.reconciled = {"at": time.time(), "cleaned": cleaned}
        return notes

    # -- dead instances ------------------------------------------------------------------------

    async def replace_dead(self) -> list[str]:
        """Replace the dead instances of live releases; top up releases that lost some.

        Not for an app while a deployment of it runs (or is being recorded). Each
        replacement is a new instance of the same release, proven ready like any other,
        swapped into the route table in one snapshot together with the dead one's removal
        (until then the proxy's retries cover the dead target). A release whose
        replacement fails is tried again after a back-off (1 s, doubling, at most
        ``REPLACE_BACKOFF_MAX``). Returns notes for the log.
        """
        notes: list[str] = []
        for app in self.store.apps():
            lock = self.app_lock(app.name)
            if app.stopped:
                continue
            if lock.locked() or self.store.running_deployment(app.name) is not None:
                continue
            async with lock:
                for release in self.store.releases(app.name, ("live",)):
                    if self.store.running_deployment(app.name) is not None:
                        break
                    try:
                        notes.extend(await self._repair(release))
                    except BatonError as exc:
                        notes.append(f"{app.name} {release.version}: {exc}")
        return notes

    async def repair(self, release: ReleaseRow, *, now: bool = False) -> list[str]:
        """Start what a live release lacks (dead or missing instances), ready, then routed.

        The same path a deploy uses to start a release's instances (``_start_instance``).
        ``now`` ignores the back-off of earlier failed attempts (convergence at start).
        """
        if now:
            self._replace_after.pop(release.id, None)
        return await self._repair(release)

    async def _repair(self, release: ReleaseRow) -> list[str]:
        now = time.monotonic()
        when, backoff = self._replace_after.get(release.id, (0.0, 0.0))
        if now < when:
            return []
        runtime = self.runtime_for(release)
        cfg = parse_config(release.config)
        routed = self.store.instances(release.id, ("routed",))
        dead = [r for r in routed if not await runtime.alive(instance_of(release, r))]
        missing = max(0, cfg.instances - len(routed))
        if not dead and not missing:
            self._replace_after.pop(release.id, None)
            return []
        first = max((r.index for r in self.store.instances(release.id)), default=-1) + 1
        indexes = tuple(range(first, first + len(dead) + missing))
        run = DeploymentRun(0, release.app, release.version, "replace")
        d = _Deploy(run, release.app, release, cfg, None, "replace", cfg.deploy.strategy)
        what = ", ".join(f"#{r.index} ({r.address})" for r in dead) or f"{missing} missing"
        log.warning("%s %s: replacing dead instance(s) %s", release.app, release.version, what)
        try:
            for index in indexes:
                await self._start_instance(d, index)
            await self._wait_ready(d, indexes)
        except BatonError as exc:
            rows = [
                (release, row)
                for row_id, _ in d.started.values()
                if (row := self.store.instance(row_id)) is not None
            ]
            await self._stop_rows(rows, cfg.deploy.stop_timeout, state="failed")
            backoff = min(REPLACE_BACKOFF_MAX, max(1.0, backoff * 2))
            self._replace_after[release.id] = (time.monotonic() + backoff, backoff)
            self.store.add_event(
                None, release.app, "replace_failed", {"version": release.version, "error": str(exc)}
            )
            return [
                f"{release.app} {release.version}: could not replace {what} (next try in"
                f" {backoff:g}s): {exc}"
            ]
        self._replace_after.pop(release.id, None)
        with self.store.transaction():
            for row_id, _ in d.started.values():
                self.store.set_instance_state(row_id, "routed")
            for row in dead:
                self.store.set_instance_state(row.id, "failed")
        await self.router.push_app(release.app)
        # Remove what is left of the dead ones (docker: the exited container, logs saved).
        for row in dead:
            try:
                await runtime.stop(instance_of(release, row), 0.0)
            except Exception:
                log.exception("removing dead instance %s failed", row.address)
        new = [inst for _, inst in d.started.values()]
        record = {
            "at": time.time(),
            "version": release.version,
            "dead": [{"index": r.index, "address": r.address} for r in dead],
            "new": [{"index": i.index, "address": i.address} for i in new],
        }
        history = self.replaced.setdefault(release.app, [])
        history.append(record)
        del history[:-RECENT_REPLACEMENTS]
        self.store.add_event(None, release.app, "replaced", record)
        METRICS.count_restart(release.app, "instance", len(dead) or len(new))
        return [
            f"{release.app} {release.version}: replaced {what} by "
            + ", ".join(f"#{i.index} ({i.address})" for i in new)
        ]

    async def _recover_deployment(self, deployment_id: int) -> str:
        dep = self.store.deployment(deployment_id)
        assert dep is not None
        if dep.kind == "contract":
            # Traffic never moved; whether the command finished is unknown: run it again.
            message = "the control plane stopped during the contract migration; run it again"
            self.store.finish_deployment(dep.id, "failed", message)
            return f"{dep.app}: deployment #{dep.id}: {message}"
        new = self.store.release(dep.release_id) if dep.release_id is not None else None
        previous = (
            self.store.release(dep.previous_release_id)
            if dep.previous_release_id is not None
            else None
        )

        def alive_rows(release: ReleaseRow | None) -> list[InstanceRow]:
            if release is None:
                return []
            return self.store.instances(release.id, ("starting", "ready", "routed", "draining"))

        decision, why = plan_recovery(
            dep.step,
            has_previous=previous is not None,
            previous_alive=len(alive_rows(previous)),
            new_alive=len(alive_rows(new)),
        )
        if new is not None and previous is not None and new.id == previous.id:
            decision = "undo"
        keep, drop = (previous, new) if decision == "undo" else (new, previous)
        with self.store.transaction():
            if keep is not None:
                rows = alive_rows(keep)
                for row in rows:
                    self.store.set_instance_state(row.id, "routed")
                # The kept release is the app's desired release even when none of its
                # instances runs (a reboot mid-deploy): convergence starts them again.
                self.store.update_release(keep.id, state="live", weight=100)
                if decision == "finish":
                    self.store.update_release(keep.id, live_since=time.time())
            if drop is not None:
                for row in alive_rows(drop):
                    self.store.set_instance_state(row.id, "draining")
                self.store.update_release(
                    drop.id, state="failed" if decision == "undo" else "stopped", weight=0
                )
        done = "undone" if decision == "undo" else "finished"
        message = f"the control plane restarted at step {dep.step!r}; {done}: {why}"
        self.store.finish_deployment(
            dep.id, "aborted" if decision == "undo" else "succeeded", message
        )
        self.store.add_event(dep.id, dep.app, "recovered", {"decision": decision, "why": why})
        return f"{dep.app}: deployment #{dep.id} {message}"

    async def drain_and_stop(
        self,
        rows: list[tuple[ReleaseRow, InstanceRow]],
        drain_timeout: float,
        stop_timeout: float,
    ) -> None:
        """Wait for the rows' in-flight work (already out of the route table), then stop them."""
        await self._drain(None, rows, drain_timeout)
        await self._stop_rows(rows, stop_timeout)

    async def cancel_runs(self) -> None:
        """Stop every deployment in progress where it is (``stop_all`` cleans up after)."""
        tasks = [run.task for run in self.runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_all(self) -> None:
        """Stop every instance Baton started (``baton down``; the proxy is stopped first)."""
        rows = self.store.active_instances()
        by_timeout: dict[float, list[tuple[ReleaseRow, InstanceRow]]] = {}
        for release, row in rows:
            timeout = parse_config(release.config).deploy.stop_timeout
            by_timeout.setdefault(timeout, []).append((release, row))
        await asyncio.gather(*(self._stop_rows(r, t) for t, r in by_timeout.items()))
        # The live releases stay live: that is the desired state `baton up` brings back.
        with self.store.transaction():
            for app in self.store.apps():
                for release in self.store.releases(app.name, ("pending", "warm")):
                    self.store.update_release(release.id, state="stopped", weight=0)
                for release in self.store.releases(app.name, ("live",)):
                    self.store.update_release(release.id, weight=100)  # alone when it is back
        for dep in self.store.running_deployments():
            self.store.finish_deployment(dep.id, "aborted", "baton down")

    # -- reading -----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        try:
            targets = await self.proxy.targets()
            proxy_ok = True
        except BatonError:
            targets, proxy_ok = {}, False
        apps: dict[str, Any] = {}
        for app in self.store.apps():
            pools = self.router.pools(app.name)
            releases = []
            for release in self.store.releases(app.name, ACTIVE_RELEASE_STATES):
                instances = []
                for row in self.store.instances(
                    release.id, ("starting", "ready", "routed", "draining")
                ):
                    seen = targets.get(row.address)
                    try:
                        alive: bool | None = await self.runtime_for(release).alive(
                            instance_of(release, row)
                        )
                    except BatonError:
                        alive = None  # the runtime's engine does not answer
                    if alive is None:
                        health = "unknown"
                    elif not alive:
                        health = "down"
                    elif seen is None:
                        health = "up"
                    else:
                        health = "healthy" if seen.get("healthy", True) else "unhealthy"
                    seen = seen or {}
                    instances.append(
                        {
                            "index": row.index,
                            "address": row.address,
                            "state": row.state,
                            "health": health,
                            "in_flight": seen.get("in_flight", 0),
                            "tunnels": seen.get("tunnels", 0),
                        }
                    )
                releases.append(
                    {
                        "version": release.version,
                        "state": release.state,
                        "weight": release.weight,
                        "warm_until": release.warm_until,
                        "artifact": artifacts.describe(release.artifact),
                        "instances": instances,
                    }
                )
            running = self.store.running_deployment(app.name)
            route = app.config.get("proxy", {})
            cleaned = (self.reconciled or {}).get("cleaned", [])
            desired = self._live_release(app.name)
            apps[app.name] = {
                "stopped": app.stopped,
                "desired": desired.version if desired else None,
                "runtime": runtime_name(app.config),
                "live": live_version([p for _, p in pools]),
                "listen": route.get("listen"),
                "hosts": route.get("hosts", []),
                "releases": releases,
                "deployment": running.as_json() if running else None,
                "cleaned": [c for c in cleaned if c["app"] == app.name],
                "replaced": list(self.replaced.get(app.name, [])),
            }
        return {"proxy": {"ok": proxy_ok}, "apps": apps, "reconcile": self.reconciled}

    def history(self, app: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        out = []
        for dep in self.store.deployments(app, limit):
            release = self.store.release(dep.release_id) if dep.release_id else None
            previous = (
                self.store.release(dep.previous_release_id) if dep.previous_release_id else None
            )
            entry = {
                **dep.as_json(),
                "version": release.version if release else None,
                "previous": previous.version if previous else None,
                "artifact": artifacts.describe(release.artifact) if release else None,
            }
            migrations = [e.data for e in self.store.events(dep.id) if e.kind == "migration"]
            if migrations:
                entry["migrations"] = migrations
            out.append(entry)
        return out

    def log_sources(self, app: str, version: str | None) -> list[tuple[str, Runtime, Instance]]:
        """(label, runtime, instance) of each instance of ``version`` (default: the live
        release); the latest instance per index. The runtime reads the logs: the process
        runtime its log files, the docker runtime the containers (or, once a container is
        removed, the file its logs were saved to)."""
        if self.store.app(app) is None:
            raise UsageError(f"no app named {app!r} was ever deployed on this host")
        releases = self.store.releases(app)
        if version is None:
            chosen = [r for r in releases if r.state == "live"] or releases[-1:]
        else:
            chosen = [r for r in releases if r.version == version]
            if not chosen:
                raise UsageError(f"{app} has no release {version!r}")
            chosen = chosen[-1:]
        sources: list[tuple[str, Runtime, Instance]] = []
        for release in chosen:
            rows = self.store.instances(release.id)
            latest: dict[int, InstanceRow] = {row.index: row for row in rows}
            runtime = self.runtime_for(release)
            for index, row in sorted(latest.items()):
                label = f"{release.version}#{index}"
                sources.append((label, runtime, instance_of(release, row)))
        return sources


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
    "instance_of",
]
