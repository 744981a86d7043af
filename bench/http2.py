"""HTTP/2 benchmark: Baton's HTTP/2 over TLS against nginx's ``http2``, in the same run.

    .venv/bin/python bench/http2.py [--duration 10] [--clients 4] [--streams 10] [--rounds 1]
                                 [--json out.json]

One run starts, each on a free 127.0.0.1 port with its own config in a temp dir, all with
the same self-signed certificate (ECDSA P-256, made here with ``cryptography``):

- `backend`: nginx, one worker, plain HTTP/1.1, `return 200 "ok\\n"`;
- `nginx`: nginx, one worker, `listen ... ssl http2`, upstream keep-alive pool of 256;
- `baton`: `python -m baton.proxy` with an HTTPS app listener (`tls` in its route, the
  same certificate; HTTP/2 by ALPN), routed
  with `PUT /routes` to the same backend.

Each target gets a 2 s h2load warm-up, then a measured run
(`h2load -t 1 -c CLIENTS -m STREAMS -D DURATION`: CLIENTS TLS connections, STREAMS
concurrent streams on each), targets interleaved, the order rotated each round; with
several rounds the median is reported. Printed: req/s of each, failed requests, and
Baton's req/s as a ratio of nginx's.

Everything runs on the same (possibly small, shared) machine as h2load itself; read the
ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    REPO,
    admin_call,
    baton_process,
    baton_single_app_table,
    free_port,
    nginx_backend_process,
    nginx_h2_proxy_process,
    raise_nofile_limit,
    require_tools,
    terminate_on_sigterm,
)

from tests.support.certs import self_signed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--clients", type=int, default=4, help="h2load connections (-c)")
    p.add_argument("--streams", type=int, default=10, help="concurrent streams each (-m)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def h2load(port: int, duration: float, clients: int, streams: int) -> dict[str, float]:
    """One h2load run; -> req/s, succeeded and failed (failed + errored + timed out)."""
    cmd = ["h2load", "-t", "1", "-c", str(clients), "-m", str(streams)]
    cmd += ["-D", str(max(1, round(duration))), f"https://{LOOPBACK}:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    if "Application protocol: h2" not in out:
        raise RuntimeError(f"h2load did not negotiate h2:\n{out}")
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not rps or not counts:
        raise RuntimeError(f"unexpected h2load output:\n{out}")
    ok, failed, errored, timeout = map(int, counts.groups())
    return {"rps": float(rps.group(1)), "succeeded": ok, "failed": failed + errored + timeout}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tools("h2load", "nginx")
    terminate_on_sigterm()
    nofile = raise_nofile_limit()
    with tempfile.TemporaryDirectory(prefix="baton-bench-h2-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        cert, key = self_signed(workdir, ("bench.test",))
        backend_port = free_port()
        stack.enter_context(nginx_backend_process(workdir, backend_port, nofile))
        ports: dict[str, int] = {"nginx": free_port()}
        stack.enter_context(
            nginx_h2_proxy_process(workdir, ports["nginx"], backend_port, nofile, cert, key)
        )
        ports["baton"] = free_port()
        cmd = [str(REPO / ".venv/bin/python"), "-m", "baton.proxy"]
        proc, admin = baton_process(cmd, workdir, free_port())  # a plain port: readiness
        proc.ready_timeout = 20.0
        stack.enter_context(proc)
        table = baton_single_app_table(ports["baton"], [f"{LOOPBACK}:{backend_port}"])
        for spec in table["apps"].values():  # the app's listener speaks HTTPS (h2 by ALPN)
            spec["tls"] = {"certificate": str(cert), "key": str(key)}
        status, answer = admin_call(str(admin), "PUT", "/routes", table)
        if status != 200:
            raise SystemExit(f"PUT /routes answered {status}: {answer}")

        runs: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        order = list(ports)
        for r in range(args.rounds):
            for name in order[r % 2 :] + order[: r % 2]:
                h2load(ports[name], 2, args.clients, args.streams)  # warm-up
                result = h2load(ports[name], args.duration, args.clients, args.streams)
                log(f"round {r + 1} {name}: {result['rps']:.0f} req/s, {result['failed']} failed")
                runs[name].append(result)
        summary: dict[str, Any] = {
            name: {
                "rps": statistics.median(x["rps"] for x in results),
                "failed": sum(int(x["failed"]) for x in results),
            }
            for name, results in runs.items()
        }
        ratio = summary["baton"]["rps"] / summary["nginx"]["rps"]
        print(
            f"HTTP/2 over TLS, h2load -c {args.clients} -m {args.streams}, "
            f"{args.duration:.0f}s x {args.rounds}:"
        )
        for name in ("baton", "nginx"):
            s = summary[name]
            print(f"  {name:6} {s['rps']:10.0f} req/s  failed {s['failed']}")
        print(f"  Baton / nginx: {ratio:.2f}x")
        if args.json is not None:
            args.json.write_text(json.dumps({"summary": summary, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
