"""Upgrade benchmark: requests lost while the proxy upgrades or reloads, Baton against peers.

    .venv/bin/python bench/upgrade.py [--upgrades 20] [--interval 1.0] [--connections 50]
                                      [--threads 2] [--json out.json]

One run starts, each on a free 127.0.0.1 port with its own config in a temp dir:

- a backend: nginx, one worker, answering 200 "ok\\n" to everything (keep-alive);
- Baton: `baton proxy` routed to the backend. Each upgrade starts
  `python -m baton.proxy --admin SOCK --takeover` (the new process takes the listening
  sockets over, the old one retires) and waits until the admin socket's `GET /health`
  reports the new pid;
- nginx as the proxy (one worker, keep-alive upstream pool, as in bench/proxy.py); each
  upgrade is a reload (SIGHUP to the master, what `nginx -s reload` sends), done when a new
  worker runs;
- Caddy 2 as the proxy (`caddy run` with a JSON config and its admin endpoint on a loopback
  port); each upgrade is `POST /load` of the same config with one `@id` changed (so Caddy
  cannot skip it as unchanged), done when `/load` answers 200. Without caddy (Debian:
  `apt-get install -y caddy`), or if it does not start, this part is reported as skipped.

Every proxy is first upgraded once without load (checks that upgrading works, and times it).
Then, per proxy, `wrk -tT -cN --latency -dD` (keep-alive; D is the same for all) runs
against it while `--upgrades` upgrades run `--interval` s apart (start to start; a late one
starts as soon as the previous is done), beginning a few seconds into the run and ending a
few seconds before its end. Beside wrk, a probe opens a fresh connection every 1/--probe-rate
s (one GET, `Connection: close`) and classifies what happened: that is what tells refused
connections apart (wrk's keep-alive connections rarely reconnect, and its `connect` errors
count every kind of failed connect).

Reported per proxy: upgrades done, wrk's requests, socket errors by kind (connect, read,
write, timeout), non-2xx/3xx responses, and refused connections (probe refusals + wrk
connect errors). Expected (issue 6): nginx reloads and Caddy `/load` drop some keep-alive
requests, Baton drops none. Whatever happens is printed as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    REPO,
    ManagedProcess,
    ProcessError,
    WrkResult,
    admin_call,
    baton_process,
    baton_single_app_table,
    check_ok,
    free_port,
    nginx_backend_process,
    nginx_proxy_process,
    parse_wrk,
    process_tree,
    raise_nofile_limit,
    require_tools,
    terminate_on_sigterm,
    wrk_command,
)

LEAD_SECONDS = 3.0  # wrk runs this long before the first upgrade...
TAIL_SECONDS = 3.0  # ...and at least this long after the last one
UPGRADE_TIMEOUT = 30.0  # one upgrade taking longer than this has failed
RETIRE_TIMEOUT = 40.0  # retired Baton processes must have exited by then (after wrk)
PROXIES = ("baton", "nginx", "caddy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrades", type=int, default=20, help="upgrades/reloads per proxy")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between upgrades")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--probe-rate", type=float, default=20.0, help="fresh probe connections per second"
    )
    parser.add_argument(
        "--baton-cmd",
        default=f"{REPO / '.venv/bin/baton'} proxy",
        help="command starting Baton's first proxy (default: .venv/bin/baton proxy)",
    )
    parser.add_argument(
        "--takeover-cmd",
        default=f"{sys.executable} -m baton.proxy --admin {{admin}} --takeover",
        help="command starting a successor proxy; {admin} is the admin socket",
    )
    parser.add_argument(
        "--only", default=",".join(PROXIES), help="comma-separated subset of baton,nginx,caddy"
    )
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if args.upgrades < 1 or args.interval <= 0 or args.connections < 1 or args.probe_rate <= 0:
        parser.error("--upgrades >= 1, --interval > 0, --connections >= 1, --probe-rate > 0")
    if not args.only or set(args.only) - set(PROXIES):
        parser.error(f"--only takes a subset of {','.join(PROXIES)}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the proxies and how each one upgrades -------------------------------------------------


class Target:
    """One proxy under test: its port and its `upgrade()` (blocking, returns when done)."""

    name = ""

    def __init__(self, port: int) -> None:
        self.port = port
        self.notes: list[str] = []

    def upgrade(self) -> None:
        raise NotImplementedError

    def after_load(self) -> dict[str, Any]:
        """Checks once the load is over; extra figures for the report."""
        return {}


class BatonTarget(Target):
    name = "baton"

    def __init__(
        self, stack: ExitStack, workdir: Path, args: argparse.Namespace, backend_port: int
    ) -> None:
        super().__init__(free_port())
        self.stack = stack
        self.workdir = workdir / "baton"
        first, admin = baton_process(args.baton_cmd, workdir, self.port)
        first.ready_timeout = 20.0
        stack.callback(first.close)
        first.start()
        self.admin = str(admin)
        self.takeover_argv = [a.format(admin=admin) for a in shlex.split(args.takeover_cmd)]
        table = baton_single_app_table(self.port, [f"{LOOPBACK}:{backend_port}"])
        status, answer = admin_call(self.admin, "PUT", "/routes", table)
        if status != 200:
            raise RuntimeError(f"PUT /routes answered {status}: {answer}\n{first.describe()}")
        self.generations = [first]  # every Baton process started, oldest first
        self.failed: list[ManagedProcess] = []

    def serving_pid(self) -> int:
        return int(admin_call(self.admin, "GET", "/health", timeout=5)[1]["pid"])

    def upgrade(self) -> None:
        n = len(self.generations) + len(self.failed)
        new = ManagedProcess(
            self.takeover_argv, name=f"baton-gen{n}", log_dir=self.workdir, cwd=REPO
        )
        self.stack.callback(new.close)
        new.start()  # no port/socket to wait for: the admin socket below says when it serves
        deadline = time.monotonic() + UPGRADE_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, KeyError, ValueError):
                if self.serving_pid() == new.pid:
                    self.generations.append(new)
                    return
            if not new.alive:
                self.failed.append(new)
                raise ProcessError(f"the new proxy exited with {new.returncode}\n{new.describe()}")
            time.sleep(0.02)
        self.failed.append(new)
        new.stop()
        raise ProcessError(f"the new proxy did not take over in {UPGRADE_TIMEOUT:g}s")

    def after_load(self) -> dict[str, Any]:
        """Every retired proxy should exit by itself (0) once its connections are done."""
        retired = self.generations[:-1]
        deadline = time.monotonic() + RETIRE_TIMEOUT
        while any(p.alive for p in retired) and time.monotonic() < deadline:
            time.sleep(0.1)
        codes = [p.returncode for p in retired]
        still = sum(1 for c in codes if c is None)
        bad = [c for c in codes if c not in (0, None)]
        if still:
            self.notes.append(f"{still} retired proxies still running {RETIRE_TIMEOUT:g}s later")
        if bad:
            self.notes.append(f"retired proxies exited with {bad}")
        last_ok = self.generations[-1].alive
        if not last_ok:
            self.notes.append("the newest proxy is not running")
        with contextlib.suppress(OSError, KeyError, ValueError):
            if self.serving_pid() != self.generations[-1].pid:
                self.notes.append("the admin socket does not answer with the newest proxy's pid")
        return {
            "retired": len(retired),
            "retired_exit_codes": codes,
            "retired_exited_cleanly": sum(1 for c in codes if c == 0),
            "newest_serving": last_ok,
        }


class NginxTarget(Target):
    name = "nginx"

    def __init__(self, stack: ExitStack, workdir: Path, backend_port: int, nofile: int) -> None:
        super().__init__(free_port())
        self.master = nginx_proxy_process(workdir, self.port, backend_port, nofile)
        stack.callback(self.master.close)
        self.master.start()

    def workers(self) -> set[int]:
        return set(process_tree(self.master.pid)) - {self.master.pid}

    def upgrade(self) -> None:
        before = self.workers()
        self.master.signal(signal.SIGHUP)  # what `nginx -s reload` sends
        deadline = time.monotonic() + UPGRADE_TIMEOUT
        while not (self.workers() - before):
            if not self.master.alive:
                raise ProcessError(f"nginx exited during a reload\n{self.master.describe()}")
            if time.monotonic() >= deadline:
                raise ProcessError(f"nginx started no new worker in {UPGRADE_TIMEOUT:g}s")
            time.sleep(0.01)


class CaddyTarget(Target):
    name = "caddy"

    def __init__(self, stack: ExitStack, workdir: Path, backend_port: int) -> None:
        super().__init__(free_port())
        self.admin_port = free_port()
        self.backend_port = backend_port
        self.loads = 0
        self.dir = workdir / "caddy"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "caddy.json"
        conf.write_text(json.dumps(self.config(), indent=2))
        caddy = shutil.which("caddy") or "/usr/bin/caddy"
        home = str(self.dir)  # keep Caddy's data and autosave out of the real $HOME
        env = {"HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home}
        self.proc = ManagedProcess(
            [caddy, "run", "--config", str(conf), "--adapter", ""],
            port=self.port,
            env=env,
            name="caddy",
            log_dir=self.dir,
        )
        stack.callback(self.proc.close)
        self.proc.start()
        if self.admin("GET", "/config/")[0] != 200:
            raise ProcessError(f"caddy's admin endpoint does not answer\n{self.proc.describe()}")

    def config(self) -> dict[str, Any]:
        proxy = {
            "handler": "reverse_proxy",
            "upstreams": [{"dial": f"{LOOPBACK}:{self.backend_port}"}],
            "transport": {"protocol": "http", "keep_alive": {"max_idle_conns_per_host": 256}},
        }
        return {
            "admin": {"listen": f"{LOOPBACK}:{self.admin_port}", "config": {"persist": False}},
            "logging": {"logs": {"default": {"level": "WARN"}}},
            "storage": {"module": "file_system", "root": str(self.dir / "data")},
            "apps": {
                "http": {
                    "servers": {
                        "bench": {
                            "listen": [f"{LOOPBACK}:{self.port}"],
                            "automatic_https": {"disable": True},
                            "idle_timeout": "120s",
                            # The trivial change: a new @id each load, so none is a no-op.
                            "routes": [{"@id": f"bench-{self.loads}", "handle": [proxy]}],
                        }
                    }
                }
            },
        }

    def admin(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(LOOPBACK, self.admin_port, timeout=UPGRADE_TIMEOUT)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            headers["Cache-Control"] = "must-revalidate"  # reload even if unchanged
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def upgrade(self) -> None:
        self.loads += 1
        status, answer = self.admin("POST", "/load", json.dumps(self.config()).encode())
        if status != 200:
            raise ProcessError(f"caddy POST /load answered {status}: {answer[:300]!r}")


# -- a probe for refused connections -----------------------------------------------------


class Probe(threading.Thread):
    """Fresh connections (one GET, Connection: close) at a steady rate; counts outcomes."""

    REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"

    def __init__(self, port: int, rate: float, max_seconds: float) -> None:
        super().__init__(daemon=True, name=f"probe-{port}")
        self.port = port
        self.period = 1.0 / rate
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.counts: Counter[str] = Counter()
        self.failures: list[tuple[float, str]] = []  # (seconds into the run, outcome)

    def run(self) -> None:
        started = time.monotonic()
        due = started
        while time.monotonic() - started < self.max_seconds:
            due = max(due + self.period, time.monotonic())  # no bursts after a stall
            if self.stop_event.wait(max(0.0, due - time.monotonic())):
                return
            outcome = self.once()
            self.counts[outcome] += 1
            if outcome != "ok":
                self.failures.append((round(time.monotonic() - started, 3), outcome))

    def once(self) -> str:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=5) as sock:
                sock.sendall(self.REQUEST)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"error:{errno.errorcode.get(exc.errno or 0, str(exc))}"
        if not data:
            return "empty"
        status = data.split(b" ", 2)[1:2]
        if status[:1] and status[0].startswith(b"2"):
            return "ok"
        return f"status_{b''.join(status).decode(errors='replace')}"

    def finish(self) -> dict[str, int]:
        self.stop_event.set()
        self.join(timeout=15)
        return dict(self.counts)


# -- one measured run ---------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    upgrades_requested: int
    upgrades_done: int = 0
    upgrade_seconds: list[float] = field(default_factory=list)
    upgrade_at: list[float] = field(default_factory=list)  # seconds into the wrk run
    upgrade_failures: list[str] = field(default_factory=list)
    wrk: WrkResult | None = None
    wrk_output: str = ""
    probe: dict[str, int] = field(default_factory=dict)
    probe_failures: list[tuple[float, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def refused(self) -> int:
        wrk_connect = self.wrk.socket_errors.get("connect", 0) if self.wrk else 0
        return self.probe.get("refused", 0) + wrk_connect

    @property
    def probe_failed(self) -> int:
        return sum(n for k, n in self.probe.items() if k != "ok")

    @property
    def failed(self) -> int:
        return (self.wrk.errors if self.wrk else 0) + self.probe_failed

    def as_dict(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": self.skipped}
        return {
            "upgrades_requested": self.upgrades_requested,
            "upgrades_done": self.upgrades_done,
            "upgrade_seconds": [round(s, 4) for s in self.upgrade_seconds],
            "upgrade_at": self.upgrade_at,
            "upgrade_failures": self.upgrade_failures,
            "wrk": self.wrk.as_dict() if self.wrk else None,
            "wrk_output": self.wrk_output,
            "probe": self.probe,
            "probe_failures_at": self.probe_failures,
            "refused": self.refused,
            "failed_total": self.failed,
            "notes": self.notes,
        } | self.extra


def timed(fn: Callable[[], None]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def measure(
    stack: ExitStack, workdir: Path, target: Target, args: argparse.Namespace, duration: int
) -> Outcome:
    out = Outcome(target.name, args.upgrades)
    url = f"http://{LOOPBACK}:{target.port}/"
    wrk = ManagedProcess(
        wrk_command(url, args.connections, duration, args.threads),
        name=f"wrk-{target.name}",
        log_dir=workdir,
        stop_timeout=5,
    )
    stack.callback(wrk.close)
    probe = Probe(target.port, args.probe_rate, duration + 30)
    started = time.monotonic()
    wrk.start()
    probe.start()
    try:
        last_start = started + duration - TAIL_SECONDS
        for i in range(args.upgrades):
            due = started + LEAD_SECONDS + i * args.interval
            time.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() > last_start:
                out.notes.append(
                    f"stopped after {i} upgrades: wrk's run ends in < {TAIL_SECONDS:g}s"
                )
                break
            t0 = time.monotonic()
            out.upgrade_at.append(round(t0 - started, 3))
            try:
                target.upgrade()
            except (ProcessError, OSError) as exc:
                out.upgrade_failures.append(str(exc))
                log(f"    upgrade {i + 1} FAILED: {str(exc).splitlines()[0]}")
                continue
            out.upgrade_seconds.append(time.monotonic() - t0)
            out.upgrades_done += 1
        assert wrk.proc is not None
        try:
            wrk.proc.wait(timeout=max(0.0, started + duration + 60 - time.monotonic()))
        except Exception:
            raise RuntimeError(f"wrk overstayed its {duration}s run") from None
    finally:
        out.probe = probe.finish()
        out.probe_failures = probe.failures
    out.wrk_output = wrk.stdout_text()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk exited {wrk.returncode}\n{wrk.describe()}")
    out.wrk = parse_wrk(out.wrk_output)
    out.extra = target.after_load()
    out.notes += target.notes
    return out


# -- report --------------------------------------------------------------------------------


def report(outcomes: list[Outcome], args: argparse.Namespace, duration: int) -> None:
    print()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{duration}s --latency (keep-alive), "
        f"{args.upgrades} upgrades {args.interval:g}s apart, probe {args.probe_rate:g} fresh "
        f"connections/s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    head = (
        f"{'proxy':<7}{'upgrades':>9}{'requests':>10}{'connect':>9}{'read':>7}{'write':>7}"
        f"{'timeout':>9}{'non-2xx':>9}{'refused':>9}{'probe failed':>14}{'p99 ms':>8}"
    )
    print(head)
    for o in outcomes:
        if o.skipped:
            print(f"{o.name:<7}  skipped: {o.skipped.splitlines()[0]}")
            continue
        assert o.wrk is not None
        e = o.wrk.socket_errors
        probes = f"{o.probe_failed}/{sum(o.probe.values())}"
        upgrades = f"{o.upgrades_done}/{o.upgrades_requested}"
        print(
            f"{o.name:<7}{upgrades:>9}{o.wrk.requests:>10}"
            f"{e.get('connect', 0):>9}{e.get('read', 0):>7}{e.get('write', 0):>7}"
            f"{e.get('timeout', 0):>9}{o.wrk.non_2xx_3xx:>9}{o.refused:>9}"
            f"{probes:>14}{o.wrk.p99 * 1e3:>8.2f}"
        )
    print(
        "(requests .. non-2xx: wrk's keep-alive load; refused: probe connections refused + wrk "
        "connect errors;\n probe failed: fresh one-request connections that did not get a 2xx)"
    )
    print()
    for o in outcomes:
        if not o.skipped:
            print(verdict(o))


def verdict(o: Outcome) -> str:
    assert o.wrk is not None
    verb = "takeovers" if o.name == "baton" else "reloads"
    lines = []
    head = f"{o.name}: {o.upgrades_done} {verb}"
    if o.upgrade_seconds:
        mean = sum(o.upgrade_seconds) / len(o.upgrade_seconds)
        head += f" (each took {mean:.2f}s on average, max {max(o.upgrade_seconds):.2f}s)"
    if o.failed == 0:
        lines.append(f"{head}: no request failed and no connection was refused")
    else:
        lines.append(
            f"{head}: wrk {o.wrk.errors} of {o.wrk.requests} requests failed "
            f"(socket errors {o.wrk.socket_errors or 'none'}, non-2xx {o.wrk.non_2xx_3xx}); "
            f"probe {o.probe_failed} of {sum(o.probe.values())} failed; refused {o.refused}"
        )
    if o.name == "baton" and o.failed:
        lines.append("  *** BATON FAILED REQUESTS DURING ITS TAKEOVERS (expected: none)")
        if o.wrk.errors:
            lines.append("  wrk's report:\n" + o.wrk_output.rstrip())
    if o.probe_failed:
        bad = {k: n for k, n in o.probe.items() if k != "ok"}
        lines.append(
            f"  probe failures {bad}, at (s into the run) "
            f"{_clusters([t for t, _ in o.probe_failures])}; upgrades started at "
            f"{', '.join(f'{t:.1f}' for t in o.upgrade_at)}"
        )
    if "retired" in o.extra:
        lines.append(
            f"  retired Baton proxies that exited by themselves with 0: "
            f"{o.extra['retired_exited_cleanly']}/{o.extra['retired']}"
        )
    lines += [f"  upgrade failed: {f.splitlines()[0]}" for f in o.upgrade_failures]
    lines += [f"  note: {n}" for n in o.notes]
    return "\n".join(lines)


def _clusters(times: list[float], gap: float = 0.5) -> str:
    """'15.1-15.2 (21), 21.1 (4)': failure times grouped when closer than `gap` s."""
    groups: list[list[float]] = []
    for t in sorted(times):
        if groups and t - groups[-1][-1] < gap:
            groups[-1].append(t)
        else:
            groups.append([t])
    return ", ".join(
        (f"{g[0]:.1f}" if f"{g[0]:.1f}" == f"{g[-1]:.1f}" else f"{g[0]:.1f}-{g[-1]:.1f}")
        + f" ({len(g)})"
        for g in groups
    )


# -- main ----------------------------------------------------------------------------------


def start_targets(
    stack: ExitStack, workdir: Path, args: argparse.Namespace, backend_port: int, nofile: int
) -> tuple[dict[str, Target], dict[str, str]]:
    targets: dict[str, Target] = {}
    skipped: dict[str, str] = {}
    if "baton" in args.only:
        targets["baton"] = BatonTarget(stack, workdir, args, backend_port)
    if "nginx" in args.only:
        targets["nginx"] = NginxTarget(stack, workdir, backend_port, nofile)
    if "caddy" in args.only:
        if shutil.which("caddy") is None:
            skipped["caddy"] = "caddy is not installed (Debian: apt-get install -y caddy)"
        else:
            try:
                targets["caddy"] = CaddyTarget(stack, workdir, backend_port)
            except (ProcessError, OSError) as exc:
                skipped["caddy"] = f"caddy did not start: {exc}"
    for name, target in targets.items():
        check_ok(target.port)
        log(f"  {name} on :{target.port}")
    return targets, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tools("wrk", "nginx")
    terminate_on_sigterm()
    nofile = raise_nofile_limit()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        log(f"starting backend and proxies in {workdir}")
        backend_port = free_port()
        stack.enter_context(nginx_backend_process(workdir, backend_port, nofile))
        check_ok(backend_port)
        targets, skipped = start_targets(stack, workdir, args, backend_port, nofile)
        for name, why in skipped.items():
            log(f"*** {name} skipped: {why.splitlines()[0]}")

        # One upgrade each without load: it must work, and its time sizes the wrk run.
        warm: dict[str, float] = {}
        for name, target in list(targets.items()):
            try:
                warm[name] = timed(target.upgrade)
                check_ok(target.port)
            except (ProcessError, OSError, RuntimeError) as exc:
                if name != "caddy":
                    raise
                skipped[name] = f"caddy's first /load failed: {exc}"
                del targets[name]
                continue
            log(f"  {name}: one upgrade without load took {warm[name] * 1e3:.0f} ms")
        # Upgrades are slower under load: leave room for each to take 3x its unloaded time.
        step = max([args.interval, *(3 * s + 0.5 for s in warm.values())])
        duration = math.ceil(LEAD_SECONDS + (args.upgrades - 1) * step + 1 + TAIL_SECONDS)

        outcomes: list[Outcome] = []
        for name in PROXIES:
            if name in skipped:
                outcomes.append(Outcome(name, args.upgrades, skipped=skipped[name]))
            if name not in targets:
                continue
            log(f"{name}: wrk -c{args.connections} for {duration}s, {args.upgrades} upgrades")
            outcome = measure(stack, workdir, targets[name], args, duration)
            assert outcome.wrk is not None
            log(
                f"  {outcome.upgrades_done} done, {outcome.wrk.requests} requests, "
                f"errors {outcome.wrk.errors}, probe {outcome.probe}"
            )
            outcomes.append(outcome)
            time.sleep(1)  # let the last connections close before the next proxy's run

        report(outcomes, args, duration)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "config": {
                            "upgrades": args.upgrades,
                            "interval": args.interval,
                            "connections": args.connections,
                            "threads": args.threads,
                            "wrk_seconds": duration,
                            "probe_rate": args.probe_rate,
                            "cpus": os.cpu_count(),
                        },
                        "warm_upgrade_seconds": warm,
                        "proxies": {o.name: o.as_dict() for o in outcomes},
                    },
                    indent=2,
                )
                + "\n"
            )
            log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every process this benchmark started has been stopped")
        sys.exit(130)
