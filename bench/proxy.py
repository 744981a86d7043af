"""Proxy benchmark: Baton's data plane against nginx and HAProxy, measured in the same run.

    .venv/bin/python bench/proxy.py [--duration 10] [--connections 50,256] [--threads 2]
                                    [--rounds 1] [--skip-memory] [--json out.json]
                                    [--baton-cmd "..."] [--skip-pure]

One run starts, each on a free 127.0.0.1 port with its own config in a temp dir:

- `backend`: nginx, one worker, `return 200 "ok\\n"` (what every proxy forwards to);
- `nginx`: nginx as a reverse proxy, one worker, upstream keep-alive pool of 256 (as Baton's default);
- `haproxy`: HAProxy, one thread, HTTP mode, keep-alive;
- `baton`: `baton proxy` (override with `--baton-cmd`; `{listen}`/`{admin}` placeholders
  are filled in, else `--listen ... --admin ...` is appended), routed with `PUT /routes`.
  If it cannot start, Baton is skipped with the reason and the rest still runs.
  The default is the wheel `make` installs (`.venv-compiled`: compiled with mypyc when a
  C compiler was present), else the editable `.venv` (pure Python);
- `baton-pure`: the same command with `BATON_PURE=1`, the pure-Python fallback of the same
  install (`--skip-pure` leaves it out). The report says which build each one ran.

`direct` is wrk straight to the backend: the ceiling on this machine.

For each connection count, every target gets a 2 s wrk warm-up then a measured run
(`wrk -t THREADS -c N -d DURATION --latency`), targets interleaved, the order rotated each
round; with several rounds the median is reported. Then Baton's ratios to nginx and the
targets: throughput >= 1.0x nginx, p99 <= 1.5x nginx.

Every core (unless `--skip-workers`): `nginx2w` (nginx, 2 workers, one shared listening
socket) and `baton2w` (`baton proxy --workers 2`: a supervisor and 2 workers sharing
each listening socket) join the same interleaved matrix; Baton 2 workers is compared with
nginx 2 workers. On a 2-core machine wrk competes with both workers for the cores.

Memory: resident memory (VmRSS, with children) of the Baton and nginx proxies before and
after 10,000 idle keep-alive client connections (each sends one GET, reads the response,
then stays open). Target for Baton: < 60 MB added per worker (for `baton2w`, each
worker's own growth is reported).

Everything runs on the same (possibly small, noisy) machine as wrk itself; read the
ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
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
    haproxy_process,
    nginx_backend_process,
    nginx_proxy_process,
    pin,
    raise_nofile_limit,
    read_response,
    require_tools,
    rss_bytes,
    run_wrk,
    terminate_on_sigterm,
)

WARMUP_SECONDS = 2
THROUGHPUT_TARGET = 1.0  # Baton req/s / nginx req/s, at least
P99_TARGET = 1.2  # issue 14: p99 at most 1.2x nginx's
MEMORY_TARGET_MB = 60.0
IDLE_CONNECTIONS = 10_000
WRK_CPUS = {0}  # --pin: wrk and the upstream
PROXY_CPUS = {1}  # --pin: the proxy measured
PURE_ENV = "BATON_PURE"  # runs an installed Baton's pure-Python fallback (baton.build)
# The wheel `make` installs (compiled when a C compiler was present), else the editable .venv.
DEFAULT_BATON = next(
    (p for p in (REPO / ".venv-compiled/bin/baton", REPO / ".venv/bin/baton") if p.exists()),
    REPO / ".venv/bin/baton",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument(
        "--connections",
        default="50,256",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="comma-separated wrk connection counts",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=1, help="measured runs per target (median)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the idle-connection test")
    parser.add_argument("--idle-connections", type=int, default=IDLE_CONNECTIONS)
    parser.add_argument(
        "--baton-cmd",
        default=f"{DEFAULT_BATON} proxy",
        help=f"command starting Baton's proxy (default: {DEFAULT_BATON.relative_to(REPO)} proxy)",
    )
    parser.add_argument(
        "--skip-pure", action="store_true", help="leave out Baton's pure-Python fallback"
    )
    parser.add_argument("--skip-baton", action="store_true", help="measure only the peers")
    parser.add_argument(
        "--skip-workers", action="store_true", help="skip the 2-worker Baton and nginx"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="wrk and the upstream on CPU 0, each one-worker proxy on CPU 1 (taskset), so wrk"
        " does not compete with the proxy it measures; implies --skip-workers",
    )
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            parser.error("--pin needs at least 2 CPUs")
        if shutil.which("taskset") is None:
            parser.error("--pin needs taskset (util-linux)")
        args.skip_workers = True
    if args.duration < 1 or args.rounds < 1 or not args.connections:
        parser.error("--duration >= 1, --rounds >= 1 and at least one connection count")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- starting the targets ----------------------------------------------------------------


def start_targets(
    stack: ExitStack, workdir: Path, args: argparse.Namespace, nofile: int
) -> tuple[dict[str, int], dict[str, ManagedProcess], str | None]:
    """Start backend and proxies; -> (target name -> port, name -> process, why no Baton)."""
    backend_port = free_port()
    backend = stack.enter_context(nginx_backend_process(workdir, backend_port, nofile))
    ports = {"direct": backend_port}
    procs = {"backend": backend}

    nginx_port = free_port()
    procs["nginx"] = stack.enter_context(
        nginx_proxy_process(workdir, nginx_port, backend_port, nofile)
    )
    ports["nginx"] = nginx_port

    if not args.skip_workers:
        nginx2_port = free_port()
        procs["nginx2w"] = stack.enter_context(
            nginx_proxy_process(workdir, nginx2_port, backend_port, nofile, workers=2)
        )
        ports["nginx2w"] = nginx2_port

    haproxy_port = free_port()
    procs["haproxy"] = stack.enter_context(
        haproxy_process(workdir, haproxy_port, backend_port, nofile)
    )
    ports["haproxy"] = haproxy_port

    baton_skipped: str | None = "--skip-baton" if args.skip_baton else None
    if not args.skip_baton:
        try:
            port, proc = start_baton(stack, workdir, args.baton_cmd, backend_port)
            ports["baton"] = port
            procs["baton"] = proc
            if not args.skip_workers:
                cmd = f"{args.baton_cmd} --workers 2"
                port, proc = start_baton(stack, workdir, cmd, backend_port, "baton2w")
                ports["baton2w"] = port
                procs["baton2w"] = proc
            if not args.skip_pure:
                port, proc = start_baton(
                    stack,
                    workdir / "pure",
                    args.baton_cmd,
                    backend_port,
                    "baton-pure",
                    {PURE_ENV: "1"},
                )
                ports["baton-pure"] = port
                procs["baton-pure"] = proc
        except (ProcessError, RuntimeError, OSError) as exc:
            baton_skipped = str(exc)
            log(
                "\n*** Baton skipped: it did not start or did not proxy.\n"
                f"{exc}\n"
                "(Until `baton proxy` is wired into the CLI, try "
                f"--baton-cmd '{REPO / '.venv/bin/python'} -m baton.proxy')\n"
            )

    for port in ports.values():
        check_ok(port)
    return ports, procs, baton_skipped


def start_baton(
    stack: ExitStack,
    workdir: Path,
    cmd: str,
    backend_port: int,
    name: str = "baton",
    env: dict[str, str] | None = None,
) -> tuple[int, ManagedProcess]:
    port = free_port()
    proc, admin = baton_process(cmd, workdir, port, name)
    proc.env = {k: v for k, v in proc.env.items() if k != PURE_ENV} | (env or {})
    proc.ready_timeout = 20.0
    proc.start()
    try:
        table = baton_single_app_table(port, [f"{LOOPBACK}:{backend_port}"])
        status, answer = admin_call(str(admin), "PUT", "/routes", table)
        if status != 200:
            raise RuntimeError(f"PUT /routes answered {status}: {answer}")
        check_ok(port)
    except BaseException as exc:
        detail = proc.describe()
        proc.close()
        if isinstance(exc, (RuntimeError, OSError)):
            raise RuntimeError(f"{exc}\n{detail}") from None
        raise
    stack.callback(proc.close)
    return port, proc


# -- throughput and latency --------------------------------------------------------------


def measure(
    ports: dict[str, int], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[int, dict[str, dict[str, float]]]]:
    """Run the wrk matrix -> (every run, {connections: {target: median figures}})."""
    runs: list[dict[str, Any]] = []
    names = list(ports)
    summary: dict[int, dict[str, dict[str, float]]] = {}
    for conns in args.connections:
        per_target: dict[str, list[WrkResult]] = {n: [] for n in names}
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                url = f"http://{LOOPBACK}:{ports[name]}/"
                cpus = WRK_CPUS if args.pin else None
                run_wrk(url, conns, WARMUP_SECONDS, args.threads, cpus=cpus)
                result = run_wrk(url, conns, args.duration, args.threads, cpus=cpus)
                per_target[name].append(result)
                runs.append({"target": name, "connections": conns, "round": rnd} | result.as_dict())
                log(
                    f"  c={conns:<4} {name:<8} {result.rps:>10,.0f} req/s  "
                    f"p99 {result.p99 * 1e3:7.2f} ms  errors {result.errors}"
                )
        summary[conns] = {
            name: {
                "rps": statistics.median(r.rps for r in results),
                "p50": statistics.median(r.latency["50"] for r in results),
                "p99": statistics.median(r.p99 for r in results),
                "errors": sum(r.errors for r in results),
            }
            for name, results in per_target.items()
        }
    return runs, summary


def ratios(
    summary: dict[int, dict[str, dict[str, float]]], baton: str = "baton", nginx: str = "nginx"
) -> dict[int, dict[str, Any]]:
    """Baton's figures against nginx's (``baton2w`` against ``nginx2w`` for 2 workers)."""
    out: dict[int, dict[str, Any]] = {}
    for conns, figures in summary.items():
        if baton not in figures or nginx not in figures:
            continue
        mine, theirs = figures[baton], figures[nginx]
        out[conns] = _ratio(mine, theirs)
    return out


def _ratio(baton: dict[str, float], nginx: dict[str, float]) -> dict[str, Any]:
    throughput = baton["rps"] / nginx["rps"]
    p99 = baton["p99"] / nginx["p99"]
    return {
        "throughput_vs_nginx": throughput,
        "p99_vs_nginx": p99,
        "throughput_met": throughput >= THROUGHPUT_TARGET,
        "p99_met": p99 <= P99_TARGET,
        "errors": baton["errors"],
    }


# -- memory under idle keep-alive connections --------------------------------------------


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_idle(port: int, count: int, batch: int = 500) -> list[Connection]:
    """Open `count` connections, each with one complete keep-alive GET, `batch` at a time."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    conns: list[Connection] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 30)
        except (OSError, TimeoutError):
            failed += 1
            return
        conns.append((reader, writer))
        try:
            writer.write(request)
            response = await asyncio.wait_for(read_response(reader), 30)
            if response.status != 200 or not response.keep_alive:
                failed += 1
        except Exception:
            failed += 1

    for start in range(0, count, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    if failed:
        log(f"    {failed} of {count} connections failed to open or to get a keep-alive 200")
    return conns


def _still_open(conns: list[Connection]) -> int:
    return sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())


def _worker_pids(proc: ManagedProcess) -> list[int]:
    """A ``baton proxy --workers N``'s worker pids (from its admin API); [] for others."""
    admin = proc.unix_socket
    if admin is None:
        return []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        status, answer = admin_call(str(admin), "GET", "/health")
        if status == 200:
            return [int(w["pid"]) for w in answer.get("workers", [])]
    return []


async def _memory_of(name: str, proc: ManagedProcess, port: int, count: int) -> dict[str, Any]:
    await asyncio.sleep(1)
    workers = _worker_pids(proc)
    workers_before = [rss_bytes(pid, include_children=False) for pid in workers]
    before = rss_bytes(proc.pid)
    started = time.monotonic()
    conns = await _open_idle(port, count)
    opened = time.monotonic() - started
    await asyncio.sleep(2)  # let the proxy settle; idle connections stay idle
    after = rss_bytes(proc.pid)
    workers_after = [rss_bytes(pid, include_children=False) for pid in workers]
    open_now = _still_open(conns)
    for _, w in conns:
        w.close()
    closing = asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing, 30)
    added = (after - before) / 2**20
    log(
        f"  {name:<8} RSS {before / 2**20:7.1f} MB -> {after / 2**20:7.1f} MB "
        f"(+{added:.1f} MB) with {open_now} idle connections (opened in {opened:.1f}s)"
    )
    per_worker = [(a - b) / 2**20 for a, b in zip(workers_after, workers_before, strict=True)]
    if per_worker:
        log(f"  {name:<8} per worker: " + ", ".join(f"+{mb:.1f} MB" for mb in per_worker))
    return {
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "added_mb": added,
        "idle_connections": open_now,
        "per_connection_kb": (after - before) / 1024 / max(1, open_now),
        **({"added_mb_per_worker": per_worker} if per_worker else {}),
    }


def measure_memory(
    ports: dict[str, int], procs: dict[str, ManagedProcess], count: int
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in ("baton", "nginx", "baton2w", "nginx2w"):
        if name in procs:
            results[name] = asyncio.run(_memory_of(name, procs[name], ports[name], count))
            time.sleep(1)  # let the closes reach the proxy before the next one
    return results


# -- report ------------------------------------------------------------------------------


def baton_build(cmd: str, env: dict[str, str]) -> str:
    """What `baton --version` says the proxy started by ``cmd`` runs (compiled or pure)."""
    program = shlex.split(cmd)[0]
    if Path(program).name != "baton":
        return "unknown (--baton-cmd is not a baton script)"
    environ = {k: v for k, v in os.environ.items() if k != PURE_ENV} | env
    done = subprocess.run(
        [program, "--version"], capture_output=True, text=True, timeout=60, env=environ
    )
    return done.stdout.strip().partition(", version ")[2] or done.stderr.strip()[:200]


def report(
    summary: dict[int, dict[str, dict[str, float]]],
    ratio: dict[int, dict[str, Any]],
    memory: dict[str, dict[str, Any]],
    baton_skipped: str | None,
    args: argparse.Namespace,
    ratio2: dict[int, dict[str, Any]] | None = None,
    pure_ratio: dict[int, dict[str, Any]] | None = None,
    builds: dict[str, str] | None = None,
) -> None:
    def met(ok: bool) -> str:
        return "met" if ok else "NOT MET"

    print()
    print(
        f"wrk -t{args.threads} -d{args.duration:g}s --latency, {args.rounds} round(s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    for name, build in (builds or {}).items():
        print(f"{name}: {build}")
    print(f"{'target':<11}{'conns':>6}{'req/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for conns, figures in summary.items():
        for name, f in figures.items():
            print(
                f"{name:<11}{conns:>6}{f['rps']:>12,.0f}{f['p50'] * 1e3:>9.2f}"
                f"{f['p99'] * 1e3:>9.2f}{f['errors']:>8.0f}"
            )
    print()
    if baton_skipped:
        print(f"Baton: skipped ({baton_skipped.splitlines()[0]})")
    for conns, r in ratio.items():
        print(
            f"Baton vs nginx at {conns} connections: throughput {r['throughput_vs_nginx']:.2f}x "
            f"(target >= {THROUGHPUT_TARGET:.1f}x: {met(r['throughput_met'])}), "
            f"p99 {r['p99_vs_nginx']:.2f}x (target <= {P99_TARGET:.1f}x: {met(r['p99_met'])})"
            + (f", {r['errors']:.0f} errors" if r["errors"] else "")
        )
    for conns, r in (ratio2 or {}).items():
        print(
            f"Baton 2 workers vs nginx 2 workers at {conns} connections: throughput "
            f"{r['throughput_vs_nginx']:.2f}x, p99 {r['p99_vs_nginx']:.2f}x"
            + (f", {r['errors']:.0f} errors" if r["errors"] else "")
        )
    for conns, r in (pure_ratio or {}).items():
        figures = summary[conns]
        print(
            f"Baton pure Python at {conns} connections: throughput {r['throughput_vs_nginx']:.2f}x "
            f"nginx, p99 {r['p99_vs_nginx']:.2f}x nginx; baton / baton-pure req/s "
            f"{figures['baton']['rps'] / figures['baton-pure']['rps']:.2f}x"
            + (f", {r['errors']:.0f} errors" if r["errors"] else "")
        )
    for name, m in memory.items():
        line = (
            f"Memory {name}: +{m['added_mb']:.1f} MB for {m['idle_connections']} idle keep-alive "
            f"connections ({m['per_connection_kb']:.2f} KiB each; "
            f"{m['rss_before_mb']:.1f} -> {m['rss_after_mb']:.1f} MB)"
        )
        if name == "baton" and m["idle_connections"] >= IDLE_CONNECTIONS:
            line += f" target < {MEMORY_TARGET_MB:.0f} MB: {met(m['added_mb'] < MEMORY_TARGET_MB)}"
        if m.get("added_mb_per_worker") and m["idle_connections"] >= IDLE_CONNECTIONS:
            worst = max(m["added_mb_per_worker"])
            line += (
                f"; per worker +{', +'.join(f'{mb:.1f}' for mb in m['added_mb_per_worker'])} MB,"
                f" target < {MEMORY_TARGET_MB:.0f} MB per worker: {met(worst < MEMORY_TARGET_MB)}"
            )
        print(line)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tools("wrk", "nginx", "haproxy")
    terminate_on_sigterm()
    nofile = raise_nofile_limit()
    if not args.skip_memory and nofile < args.idle_connections + 1024:
        log(
            f"open-file limit {nofile} is too low for {args.idle_connections} idle connections "
            "(this process and the proxy each hold one fd per connection, plus spares); "
            "raise the hard limit (ulimit -Hn) or pass --idle-connections / --skip-memory"
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        log(f"starting backend and proxies in {workdir}")
        ports, procs, baton_skipped = start_targets(stack, workdir, args, nofile)
        if args.pin:
            for name, proc in procs.items():
                pin(proc.pid, WRK_CPUS if name == "backend" else PROXY_CPUS)
            log(
                f"pinned: wrk and the upstream on CPU {min(WRK_CPUS)}, proxies on {min(PROXY_CPUS)}"
            )
        log("targets: " + ", ".join(f"{n} :{p}" for n, p in ports.items()))
        runs, summary = measure(ports, args)
        memory: dict[str, dict[str, Any]] = {}
        if not args.skip_memory:
            log(f"memory with {args.idle_connections} idle keep-alive connections:")
            memory = measure_memory(ports, procs, args.idle_connections)
        for name, proc in procs.items():
            if not proc.alive:
                log(f"!!! {name} died during the benchmark:\n{proc.describe()}")
        ratio = ratios(summary)
        ratio2 = ratios(summary, "baton2w", "nginx2w")
        pure_ratio = ratios(summary, "baton-pure")
        builds = {}
        if "baton" in ports:
            builds["baton"] = baton_build(args.baton_cmd, {})
        if "baton-pure" in ports:
            builds["baton-pure"] = baton_build(args.baton_cmd, {PURE_ENV: "1"})
        report(summary, ratio, memory, baton_skipped, args, ratio2, pure_ratio, builds)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "config": {
                            "duration": args.duration,
                            "connections": args.connections,
                            "threads": args.threads,
                            "rounds": args.rounds,
                            "cpus": os.cpu_count(),
                            "pinned": args.pin,
                        },
                        "runs": runs,
                        "summary": {str(c): v for c, v in summary.items()},
                        "baton_vs_nginx": {str(c): v for c, v in ratio.items()},
                        "baton2w_vs_nginx2w": {str(c): v for c, v in ratio2.items()},
                        "baton_pure_vs_nginx": {str(c): v for c, v in pure_ratio.items()},
                        "baton_builds": builds,
                        "baton_skipped": baton_skipped,
                        "memory": memory,
                        "targets": {
                            "throughput_vs_nginx_min": THROUGHPUT_TARGET,
                            "p99_vs_nginx_max": P99_TARGET,
                            "memory_added_mb_max": MEMORY_TARGET_MB,
                        },
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
