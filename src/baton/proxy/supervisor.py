"""``baton proxy --workers N``: one supervisor process and N worker processes, one proxy.

Theory of operation. The supervisor binds (or inherits, or takes over) every listening
socket and holds it: per address, one socket per worker slot, all bound with
``SO_REUSEPORT`` so that the kernel spreads new connections evenly among the workers
(one socket shared by every worker would let whichever worker wakes first accept a whole
burst: measured, 50 simultaneous connections often all went to one worker). Each worker is
a full proxy (``server.Proxy``) started with a duplicate of its slot's socket
(``--listen-fd``). Holding every slot's socket here is what makes the group safe: closing
a ``SO_REUSEPORT`` socket resets the connections queued on it, and here none is closed
while the proxy lives. A worker that dies (even by SIGKILL) leaves its socket open in the
supervisor; clients queued on it wait for the replacement, which inherits the same
socket. The hitless takeover (``handoff.py``) hands over every socket of every slot, and
the successor serves every one, however many workers it has: with fewer, a worker accepts
on several sockets of an address (M sockets over N workers, round-robin: ``shares``); a
single proxy accepts on all of them; with more, siblings are bound. None is closed while
the proxy lives, so lowering ``proxy.workers`` resets no queued connection. A first socket
bound without
``SO_REUSEPORT`` (an older proxy's, or an older daemon's ``--listen-fd``) cannot have
siblings: then every worker shares that one socket, which works, less evenly.

The supervisor serves the one admin API the control plane knows (same paths, same
answers) and keeps the workers in step:
- A table change is first applied by one worker, which validates it exactly as a single
  proxy would (a bad table: its 400, nothing changed anywhere); its normalised table is
  saved beside the admin socket (``persist.py``) and sent to every other worker with the
  same generation. The change is answered only once **every worker acknowledged it**, so
  draining (which the control plane starts after the answer) never races a worker that
  still routes to the old release. A new listen address is bound here first and given to
  the workers (``handoff.ADOPT``) before they apply the table that needs it.
- A worker that exits is restarted with the held sockets; it loads the saved table before
  it accepts. Its last counters seen are kept in the totals (``workers.py``).
- Counters, histograms, in-flight and tunnel counts, targets and fuses are summed over
  the workers; drains wait on every worker; active health checks run once, here, and
  their results are sent to every worker (``AdminAPI.worker_health``).
- Idle upstream connections per target are divided among the workers.
Workers die with their supervisor (``PR_SET_PDEATHSIG``): a killed supervisor never leaves
workers serving a stale table beside its replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from baton import __version__
from baton.errors import RouteTableError
from baton.proxy import gcpolicy
from baton.proxy.handoff import (
    HandoffServer,
    Takeover,
    adopt_into,
    handoff_path,
)
from baton.proxy.health import check_once
from baton.proxy.persist import load_table, save_table, table_path
from baton.proxy.routing import AppSpec, HealthSpec, parse_app, parse_table
from baton.proxy.server import Proxy, ProxySettings
from baton.proxy.upstream import Target
from baton.proxy.workers import (
    counters_only,
    merge,
    prometheus_counters,
    routed_only,
    routed_series,
    share,
    share_of,
    sum_fuses,
    sum_metrics,
    sum_prometheus,
    sum_targets,
    zero_tripped,
)
from baton.server.listeners import bind_listener
from baton.state.files import private_umask

log = logging.getLogger("baton.proxy")

READY_TIMEOUT = 30.0  # a (re)started worker must answer with the current table within this
POLL_INTERVAL = 0.5  # how often each worker's counters are read (kept if it dies)
RESTART_BACKOFF = 1.0  # a worker that dies this soon after starting is restarted this late
PR_SET_PDEATHSIG = 1


def _listens(specs: dict[str, AppSpec]) -> list[str]:
    out: list[str] = []
    for spec in specs.values():
        out.append(spec.listen)
        if spec.http_listen is not None:
            out.append(spec.http_listen)
    return out


async def admin_get(path: str, url: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET a JSON document from an admin API over its Unix socket."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(f"GET {url} HTTP/1.0\r\nHost: baton\r\n\r\n".encode())
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if head.split(b" ", 2)[1:2] != [b"200"]:
        raise OSError(f"admin API at {path} answered {head.splitlines()[:1]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


@dataclass(eq=False)  # one per slot, compared (and hashed) by identity
class Worker:
    """One worker process, by slot; a restarted worker keeps its slot."""

    index: int
    admin: str
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    session: aiohttp.ClientSession | None = None
    metrics: dict[str, Any] | None = None  # the last /metrics.json seen
    text: str | None = None  # the last /metrics seen
    fuse_seen: int = 0  # the worker's own trip numbering
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def client(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.admin),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0),
            )
        return self.session


class Supervisor:
    """Holds the listening sockets, runs the workers, answers the admin API for them."""

    def __init__(
        self, admin: str, settings: ProxySettings, count: int, worker_args: list[str]
    ) -> None:
        self.admin = admin
        self.settings = settings
        self.worker_args = worker_args
        # Per address, one listening socket per worker slot (a SO_REUSEPORT group), or one
        # shared by every worker when the inherited socket cannot have siblings.
        self.held: dict[str, list[socket.socket]] = {}
        self.count = count
        self.table: dict[str, Any] = {"generation": 0, "apps": {}}
        self.saved = table_path(admin)
        self.lock = asyncio.Lock()  # table changes and worker (re)starts, one at a time
        folder = os.path.dirname(admin) or "."
        self.workers = [
            Worker(i, os.path.join(folder, f".w{os.getpid()}.{i}.sock")) for i in range(count)
        ]
        self.retired: dict[str, Any] = {"apps": {}}  # dead workers' last counters
        self.retired_text: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []  # fuse trips, numbered here
        self.trips = 0
        self.tripped: set[tuple[str, str, str]] = set()  # (app, release, deployment)
        self.stopping = False
        self.checks: dict[str, tuple[HealthSpec, asyncio.Task[None]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[self._errors])
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/routes", self.get_routes),
                web.put("/routes", self.change),
                web.put("/apps/{app}", self.change),
                web.delete("/apps/{app}", self.change),
                web.get("/targets", self.targets),
                web.post("/drain", self.drain),
                web.post("/undrain", self.broadcast),
                web.get("/metrics", self.metrics_text),
                web.get("/metrics.json", self.metrics_json),
                web.get("/fuses", self.fuses),
                web.get("/tls", self.tls_status),
                web.post("/tls/reload", self.broadcast),
                web.put("/acme/challenges/{token}", self.broadcast),
                web.delete("/acme/challenges/{token}", self.broadcast),
                web.delete("/tls/wanted/{name}", self.broadcast),
            ]
        )
        self.app = app
        self.runner: web.AppRunner | None = None

    @property
    def generation(self) -> int:
        return int(self.table.get("generation", 0))

    # -- start ----------------------------------------------------------------------------

    async def open(
        self,
        listen: list[str],
        listen_fds: dict[str, int],
        routes: Path | None,
        received: list[tuple[str, socket.socket]] | None,
    ) -> None:
        """Hold every listening socket and the first table, then start the workers."""
        # Every received socket is held and served, however many (``shares``).
        for address, sock in received or []:
            self.held.setdefault(address, []).append(sock)
        for address, fd in listen_fds.items():
            self.held.setdefault(address, []).append(socket.socket(fileno=fd))
        for address in list(self.held):
            self._fill(address)
        if received is not None:
            table = await admin_get(self.admin, "/routes")
            self._set_table({"generation": table["generation"], "apps": table["apps"]})
            # Every address the table routes is held, so no worker ever binds one itself.
            self._bind(_listens(parse_table({"apps": table["apps"]})))
        self._bind([a for a in listen if a not in self.held])
        if received is None:
            if routes is not None:
                raw = json.loads(routes.read_text())
                specs = parse_table(raw)
                self._bind(_listens(specs))
                self._set_table({"generation": 1, "apps": raw.get("apps", {})})
            else:
                self._restore()
        for worker in self.workers:
            await self._spawn(worker)
        self._reconcile_health()
        loop = asyncio.get_running_loop()
        self.tasks.add(loop.create_task(self._poll()))

    def _restore(self) -> None:
        """The saved table, without apps whose address cannot be bound (logged)."""
        try:
            restored = load_table(self.saved)
        except RouteTableError as exc:
            log.warning("%s; starting with an empty table", exc)
            restored = None
        if restored is None:
            self._set_table({"generation": 0, "apps": {}})
            return
        specs, generation = restored
        usable: dict[str, Any] = {}
        for name, spec in specs.items():
            try:
                self._bind(_listens({name: spec}))
            except OSError as exc:
                log.warning(
                    "saved route table: app %s: cannot listen on %s (%s)",
                    name,
                    spec.listen,
                    exc.strerror or exc,
                )
                continue
            usable[name] = spec.to_json()
        self._set_table({"generation": generation, "apps": usable})

    def _bind(self, addresses: list[str]) -> list[str]:
        """Hold a socket per worker for each address not held yet; returns the new ones."""
        new: list[str] = []
        try:
            for address in addresses:
                if address not in self.held:
                    self.held[address] = [bind_listener(address)]
                    new.append(address)
                    self._fill(address)
        except (OSError, RouteTableError):
            self._release(new)
            raise
        return new

    def _fill(self, address: str) -> None:
        """One socket per worker on ``address``: siblings of the first (``SO_REUSEPORT``),
        so the kernel spreads new connections evenly among the workers, and a dead
        worker's socket, held here, keeps its queued clients for the replacement. A
        first socket bound without ``SO_REUSEPORT`` (an older proxy's) cannot have
        siblings: every worker then shares it."""
        group = self.held[address]
        while len(group) < self.count:
            try:
                group.append(bind_listener(address))
            except OSError as exc:
                if len(group) > 1:
                    raise
                log.warning("%s: one listening socket shared by every worker (%s)", address, exc)
                return

    def _release(self, addresses: list[str]) -> None:
        for address in addresses:
            for sock in self.held.pop(address, []):
                sock.close()

    def slot(self, address: str, worker: Worker) -> socket.socket:
        return self.shares(address, worker)[0]

    def shares(self, address: str, worker: Worker) -> list[socket.socket]:
        """The sockets of ``address`` that ``worker`` accepts on (``share_of``)."""
        group = self.held[address]
        return [group[i] for i in share_of(len(group), self.count, worker.index)]

    def _set_table(self, table: dict[str, Any]) -> None:
        self.table = table
        routed = {
            (str(app), str(rel.get("name")))
            for app, spec in table.get("apps", {}).items()
            for rel in spec.get("releases", [])
            if isinstance(rel, dict)
        }
        self.retired = routed_only(self.retired, routed)
        self.retired_text = routed_series(self.retired_text, routed)
        try:
            save_table(self.saved, table)
        except OSError as exc:
            log.error("cannot save the route table to %s: %s", self.saved, exc.strerror or exc)

    async def start_api(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.UnixSite(self.runner, path)
        with private_umask():
            await site.start()

    def listening_fds(self) -> list[tuple[str, int]]:
        """Every held socket (a successor needs them all: closing one resets its queue)."""
        return [(a, os.dup(sock.fileno())) for a, group in self.held.items() for sock in group]

    # -- workers --------------------------------------------------------------------------

    async def _spawn(self, worker: Worker) -> None:
        """Start ``worker`` and wait until it serves the current table."""
        argv = [
            sys.executable,
            "-m",
            "baton.proxy",
            "--admin",
            worker.admin,
            "--worker-of",
            self.admin,
            *self.worker_args,
        ]
        fds: list[int] = []
        for address in self.held:
            for sock in self.shares(address, worker):
                argv += ["--listen-fd", f"{address}={sock.fileno()}"]
                fds.append(sock.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.admin)
        worker.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, pass_fds=fds
        )
        worker.started = time.monotonic()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while True:
            if worker.proc.returncode is not None:
                raise OSError(f"worker {worker.index} exited with status {worker.proc.returncode}")
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                health = await admin_get(worker.admin, "/health", timeout=1.0)
                if health.get("generation") == self.generation:
                    break
            if loop.time() >= deadline:
                worker.proc.kill()
                raise OSError(f"worker {worker.index} was not ready within {READY_TIMEOUT:g}s")
            await asyncio.sleep(0.02)
        current = asyncio.current_task()
        for task in worker.tasks:
            if task is not current:
                task.cancel()
        worker.tasks = [
            loop.create_task(self._watch(worker, worker.proc)),
            loop.create_task(self._watch_fuses(worker)),
        ]

    async def _watch(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        """Restart ``worker`` when it exits (it gets the current table before it accepts)."""
        while True:
            await proc.wait()
            if self.stopping:
                return
            log.warning(
                "worker %d (pid %s) exited with status %s; restarting it",
                worker.index,
                proc.pid,
                proc.returncode,
            )
            self._retire(worker)
            if time.monotonic() - worker.started < RESTART_BACKOFF:
                await asyncio.sleep(RESTART_BACKOFF)
            async with self.lock:
                if self.stopping:
                    return
                try:
                    worker.restarts += 1
                    await self._spawn(worker)
                    return  # _spawn started a new watcher for the new process
                except OSError as exc:
                    log.error("cannot restart worker %d: %s", worker.index, exc)
                    if worker.proc is not None:
                        proc = worker.proc
            await asyncio.sleep(RESTART_BACKOFF)  # not in a tight loop, and not locked

    def _retire(self, worker: Worker) -> None:
        """Keep a dead worker's last counters in the totals; its gauges are gone."""
        if worker.metrics is not None:
            self.retired = merge(self.retired, counters_only(worker.metrics))
        if worker.text is not None:
            for series, value in prometheus_counters(worker.text).items():
                self.retired_text[series] = self.retired_text.get(series, 0.0) + value
        worker.metrics = worker.text = None
        worker.fuse_seen = 0

    def _live(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    async def _call(
        self,
        worker: Worker,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, str]:
        async with worker.client().request(
            method,
            f"http://worker{path}",
            data=body,
            headers={"Content-Type": "application/json"} if body is not None else None,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status, await resp.text()

    async def _json(self, worker: Worker, path: str, timeout: float = 10.0) -> Any:
        status, text = await self._call(worker, "GET", path, timeout=timeout)
        if status != 200:
            raise OSError(f"worker {worker.index} answered {status} to {path}")
        return json.loads(text)

    async def _each(
        self, path: str, timeout: float = 10.0
    ) -> list[tuple[Worker, Any | BaseException]]:
        live = self._live()
        answers = await asyncio.gather(
            *(self._json(w, path, timeout) for w in live), return_exceptions=True
        )
        return list(zip(live, answers, strict=True))

    async def _poll(self) -> None:
        """Read every worker's counters often, so that a dead worker's are kept."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await self._read_metrics()
            with contextlib.suppress(Exception):
                await self._read_text()

    async def _read_metrics(self) -> list[dict[str, Any]]:
        out = []
        for worker, answer in await self._each("/metrics.json"):
            if isinstance(answer, dict):
                worker.metrics = answer
                out.append(answer)
            elif worker.metrics is not None:
                out.append(worker.metrics)
        return out

    async def _read_text(self) -> list[str]:
        live = self._live()
        answers = await asyncio.gather(
            *(self._call(w, "GET", "/metrics") for w in live), return_exceptions=True
        )
        out = []
        for worker, answer in zip(live, answers, strict=True):
            if isinstance(answer, tuple) and answer[0] == 200:
                worker.text = answer[1]
            if worker.text is not None:
                out.append(worker.text)
        return out

    # -- active health checks, once for every worker ---------------------------------------

    def _reconcile_health(self) -> None:
        try:
            specs = parse_table({"apps": self.table.get("apps", {})})
        except RouteTableError:
            specs = {}
        wanted: dict[str, HealthSpec] = {}
        for app in specs.values():
            for rel in app.releases:
                for address in rel.targets:
                    wanted.setdefault(address, app.health)
        for address, (spec, task) in list(self.checks.items()):
            if wanted.get(address) != spec:
                task.cancel()
                del self.checks[address]
        loop = asyncio.get_running_loop()
        for address, spec in wanted.items():
            if address not in self.checks:
                self.checks[address] = (spec, loop.create_task(self._check(address, spec)))

    async def _check(self, address: str, spec: HealthSpec) -> None:
        target = Target(address)
        while True:
            await asyncio.sleep(spec.interval)
            ok = await check_once(target, spec)
            body = json.dumps({"results": [[address, ok, spec.rise, spec.fall]]}).encode()
            await asyncio.gather(
                *(self._call(w, "POST", "/worker/health", body) for w in self._live()),
                return_exceptions=True,
            )

    # -- fuses: a trip in one worker is reported once and reaches every worker ------------

    async def _watch_fuses(self, worker: Worker) -> None:
        # Short long-polls: a stopping worker's admin API waits for open requests.
        while True:
            try:
                answer = await self._json(
                    worker, f"/fuses?after={worker.fuse_seen}&wait=1", timeout=10.0
                )
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.2)
                continue
            new = answer.get("new", [])
            worker.fuse_seen = int(answer.get("trips", worker.fuse_seen))
            for event in new:
                self.trips += 1
                self.events.append({**event, "id": self.trips})
                key = (str(event.get("app")), str(event.get("release")))
                self.tripped.add((*key, str(event.get("deployment"))))
            del self.events[:-50]
            if new:
                await self._spread_trip(worker)

    async def _spread_trip(self, tripped: Worker) -> None:
        """The tripped worker's table (the canary at weight 0) goes to every worker."""
        async with self.lock:
            try:
                table = await self._json(tripped, "/routes")
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError):
                return
            generation = self.generation + 1
            self._set_table({"generation": generation, "apps": table["apps"]})
            body = json.dumps({"apps": table["apps"]}).encode()
            await asyncio.gather(
                *(
                    self._call(w, "PUT", f"/routes?generation={generation}", body)
                    for w in self._live()
                ),
                return_exceptions=True,
            )

    # -- the admin API --------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except RouteTableError as exc:
            return _error(400, str(exc))
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            return _error(503, f"a proxy worker did not answer: {exc or type(exc).__name__}")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise

    async def health(self, request: web.Request) -> web.Response:
        answers = dict(await self._each("/health", timeout=2.0))
        workers = []
        connections = queued = 0
        for worker in self.workers:  # every slot, also one being restarted (pid null)
            answer = answers.get(worker)
            if not isinstance(answer, dict):
                answer = {}
            connections += int(answer.get("connections", 0))
            queued += int(answer.get("queued", 0))
            workers.append(
                {
                    "index": worker.index,
                    "pid": answer.get("pid"),
                    "generation": answer.get("generation"),
                    "restarts": worker.restarts,
                }
            )
        return web.json_response(
            {
                "status": "stopping" if self.stopping else "ok",
                "pid": os.getpid(),
                "version": __version__,
                "generation": self.generation,
                "listeners": sorted(self.held),
                "connections": connections,
                "queued": queued,
                "workers": workers,
            }
        )

    async def get_routes(self, request: web.Request) -> web.Response:
        return web.json_response(self.table)

    async def change(self, request: web.Request) -> web.Response:
        """PUT /routes, PUT /apps/{app}, DELETE /apps/{app}: applied by every worker."""
        raw = await request.read()
        addresses: list[str] = []
        if request.method == "PUT":
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None  # the worker names the problem
            if "app" in request.match_info and isinstance(body, dict):
                addresses = _listens({"x": parse_app(request.match_info["app"], body)})
            elif isinstance(body, dict):
                addresses = _listens(parse_table(body))
        async with self.lock:
            live = self._live()
            if not live:
                raise OSError("no worker is running")
            first, rest = live[0], live[1:]
            generation = self.generation + 1
            try:
                new = self._bind(addresses)
            except OSError as exc:
                return _error(409, f"cannot apply: {exc.strerror or exc}")
            try:
                if new:
                    adopted = {a: self.slot(a, first).fileno() for a in new}
                    await asyncio.to_thread(adopt_into, handoff_path(first.admin), adopted)
                status, text = await self._call(
                    first,
                    request.method,
                    f"{request.rel_url.raw_path}?generation={generation}",
                    raw or None,
                )
            except BaseException:
                self._release(new)
                raise
            if status != 200:
                self._release(new)
                if new:  # the refused table's sockets must not stay open in ``first``
                    await asyncio.to_thread(adopt_into, handoff_path(first.admin), {})
                return web.Response(status=status, text=text, content_type="application/json")
            table = await self._json(first, "/routes")
            apps = zero_tripped(table["apps"], self.tripped)
            if apps is not None:  # ``first`` did not see the trip another worker saw
                await self._apply_to(first, [], generation, json.dumps({"apps": apps}).encode())
            apps = apps if apps is not None else table["apps"]
            self._set_table({"generation": generation, "apps": apps})
            body = json.dumps({"apps": apps}).encode()
            answers = await asyncio.gather(
                *(self._apply_to(w, new, generation, body) for w in rest),
                return_exceptions=True,
            )
            for worker, answer in zip(rest, answers, strict=True):
                if answer is not None and worker.proc is not None and worker.alive:
                    # It cannot carry the table its peers serve: replaced (with the table).
                    log.error("worker %d did not apply the table: %s", worker.index, answer)
                    worker.proc.kill()
            self._reconcile_health()
        return web.json_response({"generation": generation})

    async def _apply_to(
        self, worker: Worker, new: list[str], generation: int, body: bytes
    ) -> str | None:
        if new:
            adopted = {a: self.slot(a, worker).fileno() for a in new}
            await asyncio.to_thread(adopt_into, handoff_path(worker.admin), adopted)
        status, text = await self._call(worker, "PUT", f"/routes?generation={generation}", body)
        return None if status == 200 else f"{status} {text}"

    async def targets(self, request: web.Request) -> web.Response:
        parts = [a["targets"] for _, a in await self._each("/targets") if isinstance(a, dict)]
        return web.json_response({"targets": sum_targets(parts)})

    async def drain(self, request: web.Request) -> web.Response:
        """Every worker drains (and waits, closes tunnels) at once; drained when all are."""
        raw = await request.read()
        answers = await self._all(request, raw, timeout=3700.0)
        status, text = answers[0]
        if status != 200:
            return web.Response(status=status, text=text, content_type="application/json")
        parts = [json.loads(t) for s, t in answers if s == 200]
        return web.json_response(
            {
                "drained": all(p.get("drained") for p in parts),
                "targets": sum_targets([p.get("targets", {}) for p in parts]),
                "tunnels_closed": sum(int(p.get("tunnels_closed", 0)) for p in parts),
            }
        )

    async def _all(
        self, request: web.Request, raw: bytes, timeout: float = 30.0
    ) -> list[tuple[int, str]]:
        live = self._live()
        if not live:
            raise OSError("no worker is running")
        return list(
            await asyncio.gather(
                *(
                    self._call(w, request.method, request.path_qs, raw or None, timeout)
                    for w in live
                )
            )
        )

    async def broadcast(self, request: web.Request) -> web.Response:
        """Sent to every worker; the answer is the first worker's."""
        status, text = (await self._all(request, await request.read()))[0]
        return web.Response(status=status, text=text, content_type="application/json")

    async def tls_status(self, request: web.Request) -> web.Response:
        """The first worker's certificates; on-demand names any worker was asked for."""
        answers = [a for _, a in await self._each("/tls") if isinstance(a, dict)]
        if not answers:
            raise OSError("no worker is running")
        wanted = sorted({name for a in answers for name in a.get("wanted", [])})
        return web.json_response({**answers[0], "wanted": wanted})

    async def metrics_json(self, request: web.Request) -> web.Response:
        return web.json_response(sum_metrics(await self._read_metrics(), self.retired))

    async def metrics_text(self, request: web.Request) -> web.Response:
        text = sum_prometheus(await self._read_text(), self.retired_text)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def fuses(self, request: web.Request) -> web.Response:
        after = _number(request, "after", 0, 1 << 62)
        wait = _number(request, "wait", 0, 60)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while self.trips <= after and loop.time() < end:
            await asyncio.sleep(0.01)
        parts = [a.get("apps", {}) for _, a in await self._each("/fuses") if isinstance(a, dict)]
        return web.json_response(
            {
                "trips": self.trips,
                "apps": sum_fuses(parts),
                "events": self.events,
                "new": [e for e in self.events if e["id"] > after],
            }
        )

    # -- stop -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Workers stop accepting and finish their work (``Proxy.shutdown``); then we go."""
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        for _, task in self.checks.values():
            task.cancel()
        for worker in self.workers:
            for task in worker.tasks:
                task.cancel()
            if worker.alive and worker.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)
        # At once: workers stop accepting now, and a successor holds what it serves; a
        # socket it does not serve must leave the port's group before clients queue on it.
        for group in self.held.values():
            for sock in group:
                sock.close()
        for worker in self.workers:
            if worker.proc is not None:
                try:
                    await asyncio.wait_for(worker.proc.wait(), self.settings.drain_deadline + 10)
                except TimeoutError:
                    worker.proc.kill()
            if worker.session is not None:
                await worker.session.close()
            for path in (worker.admin, handoff_path(worker.admin)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if self.runner is not None:
            await self.runner.cleanup()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _number(request: web.Request, name: str, minimum: float, maximum: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return minimum
    try:
        value = float(raw)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise RouteTableError(f"{name}: expected a number from {minimum:g} to {maximum:g}")
    return value


def worker_args(settings: ProxySettings, count: int) -> list[str]:
    """The flags each worker gets: the supervisor's settings, idle pools divided."""
    args = [
        f"--header-timeout={settings.header_timeout!r}s",
        f"--keepalive-timeout={settings.keepalive_timeout!r}s",
        f"--max-header-size={settings.max_header_size}",
        f"--max-headers={settings.max_headers}",
        f"--max-connections={settings.max_connections}",
        f"--tunnel-idle-timeout={settings.tunnel_idle_timeout!r}s",
        f"--upstream-idle-timeout={settings.upstream_idle_timeout!r}s",
        f"--upstream-max-idle={share(settings.upstream_max_idle, count)}",
        f"--drain-deadline={settings.drain_deadline!r}s",
    ]
    spec = settings.access_log
    if spec is not None:
        args += [
            f"--access-log={spec.path}",
            f"--access-log-format={spec.fmt}",
            f"--access-log-sample={spec.sample!r}",
        ]
    return args


async def supervise(
    listen: list[str],
    admin: str,
    settings: ProxySettings,
    count: int,
    routes: Path | None = None,
    takeover: bool = False,
    listen_fds: dict[str, int] | None = None,
) -> None:
    """Run ``count`` workers as one proxy until SIGTERM/SIGINT or a successor took over."""
    supervisor = Supervisor(admin, settings, count, worker_args(settings, count))
    successor: Takeover | None = None
    received: list[tuple[str, socket.socket]] | None = None
    if takeover:
        successor = Takeover(admin)
        received = await asyncio.to_thread(successor.receive_all)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.open(listen, listen_fds or {}, routes, received)
        own_admin = admin + ".next" if takeover else admin
        await supervisor.start_api(own_admin)
        handoff = HandoffServer(handoff_path(own_admin), supervisor.listening_fds, stop.set)
        handoff.start()
        if successor is not None:
            health = await admin_get(own_admin, "/health")
            if health.get("generation") != supervisor.generation:
                raise OSError(f"self-check failed: {health}")
            os.replace(own_admin, admin)
            os.replace(handoff_path(own_admin), handoff_path(admin))
            successor.finish()
            print(f"baton proxy: took over from pid {successor.old_pid}", flush=True)
        print(
            f"baton proxy: {count} workers listening on"
            f" {', '.join(sorted(supervisor.held)) or '-'}, admin {admin}",
            flush=True,
        )
        await stop.wait()
        handoff.stop()
    finally:
        await supervisor.close()


# -- the worker's side ------------------------------------------------------------------


async def _adopt(proxy: Proxy, sockets: dict[str, socket.socket]) -> None:
    """Listening sockets for the table that comes next (``Proxy.listen`` takes them
    instead of binding); any left from a table that was refused are closed."""
    for sock in proxy.adopted.values():
        sock.close()
    proxy.adopted = dict(sockets)


def _die_with_parent() -> None:
    """SIGTERM (a graceful stop) when the supervisor dies, however it dies."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


async def serve_worker(
    admin: str,
    supervisor_admin: str,
    settings: ProxySettings,
    listen_fds: list[tuple[str, int]],
) -> None:
    """One worker: the supervisor's saved table first, then accept; until SIGTERM."""
    from baton.proxy.admin import AdminAPI
    from baton.proxy.h2 import H2Session
    from baton.proxy.tls import register_h2

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _die_with_parent()
    register_h2(H2Session)
    proxy = Proxy(settings)
    if proxy.access_log is not None:
        proxy.access_log.start()
    saved: tuple[dict[str, AppSpec], int] | None = None
    try:
        saved = load_table(table_path(supervisor_admin))
        if saved is not None:
            proxy.tls.update(saved[0])
    except RouteTableError as exc:
        log.warning("%s; starting with an empty table", exc)
        saved = None
    for address, fd in listen_fds:  # one or more per address (``Supervisor.shares``)
        await proxy.listen_also(address, socket.socket(fileno=fd), serve=False)
    if saved is not None:
        await proxy.apply(saved[0], generation=saved[1])
    await proxy.start_serving()  # only now: with the table every worker serves
    api = AdminAPI(proxy, worker=True)
    await api.start(admin)
    handoff = HandoffServer(
        handoff_path(admin), proxy.listening_fds, stop.set, functools.partial(_adopt, proxy)
    )
    handoff.start()
    proxy.start()
    gcpolicy.settle()  # start-up done: its objects are never walked again
    await stop.wait()
    handoff.stop()
    await proxy.shutdown(settings.drain_deadline)
    await api.stop()
    if proxy.access_log is not None:
        await proxy.access_log.close()
