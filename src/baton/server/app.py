"""``baton server``: the control plane process, and the supervisor of the proxy.

It owns the state dir: ``baton.db`` (the store), ``baton.sock`` (the API), ``proxy.sock``
(the proxy's admin API), ``proxy.pid``, ``server.pid``, ``server.lock`` and ``logs/``.

Start-up order matters: take the state dir's lock (one control plane per state dir), make
sure a proxy runs (adopt the one that still answers on ``proxy.sock`` after a crash, so
users are served throughout; else start one), finish or undo what a previous control plane
left half done (``Engine.recover``), and only then answer the API, so the first thing a
client sees is consistent. Recovery ends with a reconcile: every instance (process or
container) that belongs to no live or warm release is stopped and removed, and listed in
``baton status`` (``reconcile.cleaned``). Then four loops run: the proxy watcher, which
restarts a dead or hung proxy and sends it the current route table; the warm-release reaper;
the instance watcher, which every ``INSTANCE_WATCH_INTERVAL`` replaces dead instances of
live releases by new ones of the same release (not while the app deploys); and the traffic
sampler, which keeps the proxy's recent metrics for `baton status`.

Runtimes are made per app by name (``runtime:`` in baton.yml, see ``baton.runtime.base``);
a host whose apps all run as processes never talks to a Docker engine.

After recovery, and still before the API answers, the host converges to its desired state
(``baton.deploy.lifecycle.converge``): every app's live release gets its instances started,
ready and routed when they do not run (after a reboot or ``baton down``); running ones were
adopted. So ``baton up`` returns once the apps are served again.

Signals only set an event. SIGTERM and SIGINT (what ``systemctl stop`` and Ctrl-C send) stop
the control plane alone: the proxy and the instances run in sessions of their own and go on
serving, a deployment in progress stays recorded for the next control plane to finish or
undo, and the next ``baton up`` adopts everything. ``POST /shutdown`` (``baton down``) stops
every deployment, the proxy (which finishes its in-flight requests) and then every instance,
but keeps the desired state, so the next ``baton up`` brings every app back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from baton import __version__
from baton.cluster.cli import ClusterOptions
from baton.cluster.start import configure_runtimes, start_agent
from baton.deploy.engine import Engine, Router
from baton.deploy.lifecycle import converge
from baton.deploy.proxyclient import ProxyClient, ProxyUnavailable
from baton.errors import BatonError
from baton.flags.http import FlagAdmin, Ofrep, check_ofrep_listen, start_ofrep
from baton.flags.judge import JUDGE_INTERVAL as FLAG_JUDGE_INTERVAL
from baton.flags.judge import check as judge_flags
from baton.flags.service import WATCH_INTERVAL as FLAGS_FILE_INTERVAL
from baton.flags.service import FlagService
from baton.observe import logs as observe_logs
from baton.observe import serve as observe_serve
from baton.observe import signals as observe_signals
from baton.observe.endpoints import Endpoints
from baton.observe.metrics import METRICS
from baton.proxy.workers import wanted_workers
from baton.runtime.base import Runtimes
from baton.runtime.logtail import tail_file
from baton.runtime.process import pid_alive
from baton.server.api import Api
from baton.server.certs import CertManager, expiry_samples, live_acme_apps
from baton.server.listeners import HeldListeners
from baton.state.files import open_private, private_dir, private_umask
from baton.state.store import Store

log = logging.getLogger("baton.server")

WATCH_INTERVAL = 0.25  # how often the proxy is checked
WATCH_FAILURES = 3  # consecutive failed health checks before a live proxy is replaced
PROXY_START_TIMEOUT = 15.0
PROXY_STOP_TIMEOUT = 35.0
PROXY_UPGRADE_TIMEOUT = 30.0
INSTANCE_WATCH_INTERVAL = 1.0  # how often live instances are checked for death
TRAFFIC_SAMPLE_INTERVAL = 1.0  # how often the proxy's metrics are sampled (`baton status`)
AUTO_CONTRACT_INTERVAL = 1.0


def api_socket(state_dir: Path) -> Path:
    return state_dir / "baton.sock"


def _is_proxy(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"baton.proxy" in cmdline or b"proxy\x00--admin" in cmdline


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(tail_file(path, lines))


class ProxySupervisor:
    """Keeps one proxy answering on ``proxy.sock`` with the store's route table."""

    def __init__(self, state_dir: Path, client: ProxyClient, router: Router) -> None:
        self.state_dir = state_dir
        self.client = client
        self.router = router
        self.socket = state_dir / "proxy.sock"
        self.pid_file = state_dir / "proxy.pid"
        self.log_path = state_dir / "logs" / "proxy.log"
        self.pid: int | None = None
        self.restarts = 0
        self.adopted = False
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.version: str | None = None  # the running proxy's Baton version
        self._changing = asyncio.Lock()  # one restart or upgrade at a time
        # The public sockets, kept open here too: while a proxy is dead, clients wait in
        # their accept queue instead of being refused (``listeners.py``).
        self.held = HeldListeners()
        self._peeked: tuple[int | None, list[str]] | None = None  # what was last collected
        self.extra_args: list[str] = []  # e.g. the access log's flags (baton.observe)
        self._resized: tuple[int | None, int] | None = None  # proxy.workers last acted on

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "restarts": self.restarts, "socket": str(self.socket)}

    def _wanted_workers(self) -> int:
        return wanted_workers(self.router.live_config(a.name) for a in self.router.store.apps())

    def _workers_args(self) -> list[str]:
        wanted = self._wanted_workers()
        return ["--workers", str(wanted)] if wanted > 1 else []

    async def _resize(self, health: dict[str, Any]) -> None:
        """The apps' ``proxy.workers`` changed: a hitless upgrade to that many workers
        (tried once per proxy and count; a failure leaves the running proxy serving)."""
        wanted, running = self._wanted_workers(), len(health.get("workers") or []) or 1
        if wanted == running or self._resized == (self.pid, wanted):
            return
        self._resized = (self.pid, wanted)
        log.info("proxy.workers is now %d (the proxy runs %d): upgrading it", wanted, running)
        try:
            await self.upgrade()
        except BatonError as exc:
            log.error("could not give the proxy %d workers: %s", wanted, exc)

    async def ensure(self) -> None:
        """Adopt the proxy that answers on the socket, or start one."""
        try:
            health = await self.client.health()
        except (ProxyUnavailable, BatonError):
            await self.restart()
            return
        self.pid = int(health.get("pid") or 0) or None
        self.version = health.get("version")
        self.adopted = True
        if self.pid:
            self.pid_file.write_text(f"{self.pid}\n")
        log.info("adopted the running proxy (pid %s)", self.pid)

    def _stale_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    async def _kill(self, pid: int, timeout: float) -> None:
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            if (
                self._proc is not None
                and self._proc.pid == pid
                and self._proc.returncode is not None
            ):
                break
            await asyncio.sleep(0.05)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 5.0)

    async def restart(self) -> None:
        """Replace whatever proxy there is by a fresh one carrying the current table."""
        for pid in {self.pid, self._stale_pid()}:
            if pid and _is_proxy(pid):
                await self._kill(pid, 2.0)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        listens = self.router.listens()
        try:
            await self._spawn(listens)
        except BatonError:
            if not listens:
                raise
            # One of the apps' addresses cannot be bound: start anyway; the table says why.
            await self._spawn([])
        await self.router.push_all()

    async def _spawn(self, listens: list[str]) -> None:
        private_dir(self.log_path.parent)
        if self._log is None:
            self._log = open_private(self.log_path)
        argv = [sys.executable, "-m", "baton.proxy", "--admin", str(self.socket), *self.extra_args]
        argv += self._workers_args()
        fds = self.held.hold(listens)
        for address in listens:
            if address in fds:
                argv += ["--listen-fd", f"{address}={fds[address]}"]
            else:
                argv += ["--listen", address]
        self._log.write(f"--- baton: starting the proxy: {' '.join(argv)}\n".encode())
        self._log.flush()
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # outlives a crashed control plane; adopted on restart
            pass_fds=tuple(fds.values()),
        )
        self.pid = self._proc.pid
        self.adopted = False
        self.pid_file.write_text(f"{self.pid}\n")
        deadline = time.monotonic() + PROXY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise BatonError(
                    f"the proxy exited with status {self._proc.returncode} at start:\n"
                    f"{_tail(self.log_path)}"
                )
            with contextlib.suppress(BatonError):
                await self.client.health(timeout=1.0)
                log.info("proxy started (pid %s) on %s", self.pid, ", ".join(listens) or "-")
                return
            await asyncio.sleep(0.05)
        await self._kill(self._proc.pid, 1.0)
        raise BatonError(f"the proxy did not answer within {PROXY_START_TIMEOUT:g}s")

    def _gone(self) -> bool:
        if self._proc is not None and self._proc.pid == self.pid:
            return self._proc.returncode is not None
        return self.pid is not None and not pid_alive(self.pid)

    async def watch(self, stop: asyncio.Event) -> None:
        """Until ``stop``: restart the proxy when it exits or stops answering."""
        failures = 0
        backoff = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL + backoff)
            if stop.is_set():
                return
            gone = self._gone()
            if not gone:
                try:
                    health = await self.client.health(timeout=2.0)
                    failures, backoff = 0, 0.0
                    listeners = health.get("listeners") or []
                    if self.held.missing(listeners) and (self.pid, listeners) != self._peeked:
                        self._peeked = (self.pid, listeners)
                        # It bound an address itself: hold it too, for its next restart.
                        await asyncio.to_thread(self.held.collect, str(self.socket))
                    await self._resize(health)
                    continue
                except BatonError:
                    failures += 1
                    if failures < WATCH_FAILURES:
                        continue
            log.warning(
                "the proxy (pid %s) %s; restarting it",
                self.pid,
                "exited" if gone else "stopped answering",
            )
            self.restarts += 1
            try:
                async with self._changing:
                    await self.restart()
                failures, backoff = 0, 0.0
            except BatonError as exc:
                log.error("could not restart the proxy: %s", exc)
                backoff = min(5.0, backoff * 2 + 0.5)

    async def upgrade(
        self, command: list[str] | None = None, timeout: float = PROXY_UPGRADE_TIMEOUT
    ) -> dict[str, Any]:
        """Replace the running proxy by a new process without refusing one connection.

        The new proxy takes the listening sockets and the route table over from the old one
        (``baton.proxy.handoff``) and answers on ``proxy.sock`` once it is ready; only then
        does the old one retire. A new proxy that exits or is not ready within ``timeout``
        is killed, and the old one goes on serving: nothing changed for users.
        """
        async with self._changing:
            old = await self.client.health(timeout=5.0)
            old_pid = int(old.get("pid") or 0)
            private_dir(self.log_path.parent)
            if self._log is None:
                self._log = open_private(self.log_path)
            argv = [*(command or [sys.executable, "-m", "baton.proxy"])]
            argv += ["--admin", str(self.socket), "--takeover", *self.extra_args]
            argv += self._workers_args()
            self._log.write(f"--- baton: upgrading the proxy: {' '.join(argv)}\n".encode())
            self._log.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BatonError(f"cannot start the new proxy ({argv[0]}): {exc}") from None
            deadline = time.monotonic() + timeout
            while True:
                if proc.returncode is not None:
                    why = f"exited with status {proc.returncode} before taking over"
                    break
                with contextlib.suppress(BatonError):
                    health = await self.client.health(timeout=1.0)
                    if health.get("pid") == proc.pid:
                        self._proc, self.pid, self.adopted = proc, proc.pid, False
                        self.version = health.get("version")
                        self.pid_file.write_text(f"{self.pid}\n")
                        log.info("proxy upgraded: pid %s -> %s", old_pid, proc.pid)
                        return {"old_pid": old_pid, "pid": proc.pid, "version": self.version}
                if time.monotonic() >= deadline:
                    why = f"was not ready within {timeout:g}s"
                    break
                await asyncio.sleep(0.05)
            await self._kill(proc.pid, 1.0)
            for leftover in (f"{self.socket}.next", f"{self.socket}.next.handoff"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            raise BatonError(
                f"the new proxy {why}; the old one (pid {old_pid}) goes on serving\n"
                f"{_tail(self.log_path, 10)}"
            )

    def detach(self) -> None:
        """Leave the proxy running for the next control plane (which adopts it)."""
        if self._log is not None:
            self._log.close()
            self._log = None

    async def stop(self) -> None:
        """SIGTERM: the proxy stops accepting and finishes in-flight requests, then exits."""
        if self.pid is not None:
            await self._kill(self.pid, PROXY_STOP_TIMEOUT)
        self.held.close()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None


class AlreadyRunning(BatonError):
    exit_code = 0


def _lock(state_dir: Path) -> IO[str]:
    handle = (state_dir / "server.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(f"a control plane already runs on {state_dir}") from None
    return handle


async def serve(
    state_dir: Path,
    endpoints: Endpoints | None = None,
    *,
    flags_listen: str | None = None,
    cluster: ClusterOptions | None = None,
) -> int:
    """Run the control plane until SIGTERM/SIGINT or ``POST /shutdown``. Returns the exit code.

    ``flags_listen`` (``host:port``) also serves feature-flag evaluations (OFREP) over TCP.
    """
    flags_token = os.environ.get("BATON_FLAGS_TOKEN") or None
    if flags_listen is not None:
        check_ofrep_listen(flags_listen, flags_token)
    state_dir = state_dir.expanduser().absolute()
    private_dir(state_dir)
    lock = _lock(state_dir)
    (state_dir / "server.pid").write_text(f"{os.getpid()}\n")
    store = Store.open(state_dir / "baton.db")
    runtimes = Runtimes(state_dir)
    configure_runtimes(cluster, runtimes)  # --instance-ip: instances reachable by the edges
    proxy = ProxyClient(state_dir / "proxy.sock")
    engine = Engine(store, runtimes, proxy, state_dir)
    certs = CertManager(state_dir, proxy, lambda: live_acme_apps(engine.routes()))
    engine.routes().acme_dir = str(certs.acme_dir)
    METRICS.register_gauge(
        "baton_certificate_expiry_seconds",
        "Seconds until each HTTPS host's certificate expires.",
        lambda: expiry_samples(
            live_acme_apps(engine.routes()), certs.acme_dir, datetime.datetime.now(datetime.UTC)
        ),
    )
    supervisor = ProxySupervisor(state_dir, proxy, engine.routes())
    if endpoints is not None:
        supervisor.extra_args = list(endpoints.proxy_args)
    stop = asyncio.Event()
    down = asyncio.Event()  # `baton down`: stop the data plane too

    def shut_down() -> None:
        down.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    ofrep_runner: web.AppRunner | None = None
    extra_runners: list[observe_serve.Running] = []  # --metrics, --dashboard, --otlp-endpoint
    background: list[asyncio.Task[None]] = []
    try:
        await supervisor.ensure()
        if supervisor.adopted and supervisor.version != __version__:
            # Baton was upgraded while its proxy kept running: hand over to the new code.
            log.warning(
                "the proxy runs Baton %s, this is %s: upgrading it", supervisor.version, __version__
            )
            try:
                await supervisor.upgrade()
            except BatonError as exc:
                log.error("could not upgrade the proxy: %s", exc)
        for note in await engine.recover():
            log.warning("recovery: %s", note)
        for note in await converge(engine):
            log.warning("convergence: %s", note)
        api = Api(
            engine,
            proxy_info=supervisor.info,
            shutdown=shut_down,
            upgrade_proxy=supervisor.upgrade,
            certificates=certs.certificates,
        )
        if endpoints is not None:  # before the API answers: a port in use fails `up` at once
            extra_runners = await observe_serve.start(endpoints, engine, supervisor)
        flags = FlagService(
            store,
            lambda: {a.name: a.config_path for a in store.apps()},
            canary_version=engine.canary_version,
        )
        flags.check_files()
        api_app = api.app()
        api_app.add_routes(FlagAdmin(flags).routes() + Ofrep(flags).routes())
        runner = web.AppRunner(api_app, handle_signals=False, access_log=None)
        await runner.setup()
        sock = api_socket(state_dir)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        site = web.UnixSite(runner, str(sock))
        with private_umask():  # born 0600: no window with the process umask's mode
            await site.start()
        log.info("baton server %s: API on %s", os.getpid(), sock)
        background = [
            loop.create_task(supervisor.watch(stop)),
            loop.create_task(every(1.0, stop, "warm releases", lambda: _expire_warm(engine))),
            loop.create_task(
                every(INSTANCE_WATCH_INTERVAL, stop, "instance watcher", engine.replace_dead)
            ),
            loop.create_task(
                every(TRAFFIC_SAMPLE_INTERVAL, stop, "traffic", lambda: _sample_traffic(engine))
            ),
            loop.create_task(every(FLAGS_FILE_INTERVAL, stop, "flags files", flags.check_files)),
            loop.create_task(
                every(AUTO_CONTRACT_INTERVAL, stop, "migrations", engine.auto_contract)
            ),
            loop.create_task(
                every(
                    FLAG_JUDGE_INTERVAL,
                    stop,
                    "flag judge",
                    lambda: judge_flags(flags, engine.recent_traffic()),
                )
            ),
            loop.create_task(certs.run(stop)),
            loop.create_task(observe_signals.watch(engine, stop)),
        ]
        if cluster is not None:  # after the API answers: the agent deploys through it
            background.append(loop.create_task(start_agent(cluster, state_dir, stop)))
        if flags_listen is not None:
            ofrep_runner = await start_ofrep(Ofrep(flags, flags_token), flags_listen)
            log.info("feature flags (OFREP) on http://%s", flags_listen)
        await stop.wait()
        log.info("shutting down")
        return 0
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            api_socket(state_dir).unlink()
        if down.is_set():
            # `baton down`: everything Baton started goes; the desired state stays.
            await engine.cancel_runs()
            await supervisor.stop()
            await engine.stop_all()
        else:
            # SIGTERM, or a crash: the proxy and the instances keep serving; the next
            # control plane adopts them and finishes or undoes any deployment in progress.
            engine.detaching = True
            await engine.cancel_runs()
            supervisor.detach()
            log.info(
                "the control plane stopped; the proxy (pid %s) and the apps keep serving"
                " (`baton up` adopts them, `baton down` stops them)",
                supervisor.pid,
            )
        if ofrep_runner is not None:
            await ofrep_runner.cleanup()
        for extra in extra_runners:
            await extra.cleanup()
        if runner is not None:
            await runner.cleanup()
        await proxy.close()
        runtimes.close()
        store.close()
        with contextlib.suppress(FileNotFoundError):
            (state_dir / "server.pid").unlink()
        lock.close()


async def every(
    interval: float,
    stop: asyncio.Event,
    what: str,
    tick: Callable[[], Awaitable[Iterable[str] | None] | Iterable[str] | None],
) -> None:
    """Call ``tick`` every ``interval`` seconds until ``stop``; log the notes it returns.

    The daemon's periodic jobs (warm releases, dead instances, traffic samples, flags files
    and judges, auto-contract) all run this way: an error in one round is logged and the
    next round runs anyway, since a bug in a watcher must not end the watching.
    """
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        try:
            notes = tick()
            if inspect.isawaitable(notes):
                notes = await notes
            for note in notes or ():
                log.warning("%s: %s", what, note)
        except BatonError as exc:
            log.warning("%s failed: %s", what, exc)
        except Exception:
            log.exception("%s failed; going on", what)


async def _expire_warm(engine: Engine) -> None:
    await engine.expire_warm()


async def _sample_traffic(engine: Engine) -> None:
    """Keep the engine's recent traffic fed, so `baton status` can show each release's
    recent figures."""
    if engine.app_names():
        await engine.sample_traffic()


def run_server(
    state_dir: Path,
    endpoints: Endpoints | None = None,
    log_format: str = "text",
    *,
    flags_listen: str | None = None,
    cluster: ClusterOptions | None = None,
) -> int:
    observe_logs.configure(log_format)
    try:
        return asyncio.run(serve(state_dir, endpoints, flags_listen=flags_listen, cluster=cluster))
    except AlreadyRunning as exc:
        print(f"baton server: {exc}", file=sys.stderr)
        return 0
    except BatonError as exc:
        print(f"baton server: {exc}", file=sys.stderr)
        return exc.exit_code or 1
