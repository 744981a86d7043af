"""Canary benchmark: blast radius and detection time of a bad canary, false aborts of good ones.

    .venv/bin/python bench/canary.py [--runs 20] [--bad-runs 3] [--hold 5] [--concurrency 16]
                                     [--json out.json]

One run, in a temp dir, on free 127.0.0.1 ports, through the real CLI, daemon, proxy and the
example app (2 instances per release), with the issue's step weights (5 %, 25 %, 50 %, each
held ``--hold`` seconds) and the default analysis (200 requests per release per step, 1 %
error ceiling, +0.5 % error increase, p95 ratio 1.25, confidence 0.95). Every release runs
with noisy latency: ``LATENCY_MS=2`` plus an exponentially distributed ``LATENCY_JITTER_MS=5``
on average, so the p95 of identical releases wanders from window to window.

1. ``--bad-runs`` canaries of a release that answers 500 to 30 % of its requests
   (``ERROR_RATE=0.3``), under a closed-loop load of ``--concurrency`` clients:
   - blast radius: the 500s the clients got while ``baton deploy`` ran, as a share of every
     request they sent in that time (and as a share of a 60 s window around the deploy, for
     a deploy that would otherwise have held its first step for a minute);
   - time to detection: from the first 500 a client received to the abort verdict (the
     ``ts`` the daemon recorded in the history), and to the last request the clients sent
     that still got the bad release.
2. ``--runs`` canaries of good releases (the same app, new version label each time), one
   after the other under the same load: a false abort is any that does not end promoted.

Targets (issue 5): blast radius under 0.5 % of requests, detection within 15 s of the first
bad response, zero false aborts. The figures depend on the load: the guard needs 20 canary
requests in its last 10 s, so at 5 % weight it needs 400 requests to the app in all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.load import Load, LoadResult  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

APP_DIR = REPO / "examples" / "app"
BATON = [sys.executable, "-m", "baton.cli"]
NOISE = {"LATENCY_MS": "2", "LATENCY_JITTER_MS": "5"}


class Bench:
    def __init__(self, root: Path, hold: float) -> None:
        self.root = root
        self.state_dir = root / "state"
        self.port = free_port()
        self.config = root / "baton.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "app": "bench",
                    "proxy": {"listen": f"127.0.0.1:{self.port}"},
                    "run": {
                        "command": f"exec {sys.executable} app.py --port $PORT",
                        "cwd": str(APP_DIR),
                        "env": {"APP_VERSION": "v0", "SHUTDOWN_GRACE": "5", **NOISE},
                    },
                    "instances": 2,
                    "health": {"path": "/up", "interval": "50ms"},
                    "deploy": {
                        "strategy": "canary",
                        "drain_timeout": "5s",
                        "stop_timeout": "5s",
                        "keep_previous": "0s",
                        "verify": "0s",
                        "canary": {
                            "steps": [
                                {"weight": 5, "hold": f"{hold:g}s"},
                                {"weight": 25, "hold": f"{hold:g}s"},
                                {"weight": 50, "hold": f"{hold:g}s"},
                            ],
                        },
                    },
                },
                sort_keys=False,
            )
        )

    async def baton(self, *args: str, timeout: float = 600.0) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *BATON,
            "--state-dir",
            str(self.state_dir),
            *args,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def deploy(self, version: str, *env: str) -> tuple[int, str, str]:
        flags = [x for e in (f"APP_VERSION={version}", *env) for x in ("--env", e)]
        return await self.baton("deploy", "-c", str(self.config), "--version", version, *flags)

    async def last_deployment(self) -> dict[str, Any]:
        rc, out, err = await self.baton("history", "--json", "-n", "1")
        assert rc == 0, err
        found: dict[str, Any] = json.loads(out)["deployments"][0]
        return found


def share(result: LoadResult, since: float, until: float) -> tuple[int, int]:
    sent = [s for s in result.timeline if since <= s.sent < until]
    return sum(1 for s in sent if s.status is not None and s.status >= 500), len(sent)


async def bad_run(bench: Bench, n: int, concurrency: int) -> dict[str, Any]:
    load = await Load().start(
        f"http://127.0.0.1:{bench.port}/",
        concurrency=concurrency,
        max_requests=10_000_000,
        max_seconds=600,
    )
    await asyncio.sleep(30.0)  # so a 60 s window around the deploy is all under load
    wall = time.time() - time.monotonic()
    started = time.monotonic()
    rc, _, err = await bench.deploy(f"bad{n}", "ERROR_RATE=0.3")
    done = time.monotonic()
    await asyncio.sleep(max(0.0, 60.0 - (done - started) - 30.0))
    result = await load.stop()
    assert rc == 1, err
    dep = await bench.last_deployment()
    abort = next(e for e in dep["canary"] if e.get("decision") == "abort")
    bad = [s for s in result.timeline if s.status is not None and s.status >= 500]
    first_bad, last_bad_sent = bad[0].t, max(s.sent for s in bad)
    failed, total = share(result, started, done)
    window_failed, window_total = share(result, started - 30.0, started + 30.0)
    return {
        "failed": failed,
        "requests": total,
        "blast_radius": failed / total,
        "blast_radius_60s": window_failed / window_total,
        "rate": round(total / (done - started), 1),
        "deploy_seconds": round(done - started, 2),
        "detection_seconds": round(abort["ts"] - wall - first_bad, 2),
        "bad_traffic_seconds": round(last_bad_sent - first_bad, 2),
        "by": "guard" if abort.get("guard") else "verdict",
        "connection_failures": len(result.failures),
    }


async def good_runs(bench: Bench, runs: int, concurrency: int) -> dict[str, Any]:
    load = await Load().start(
        f"http://127.0.0.1:{bench.port}/",
        concurrency=concurrency,
        max_requests=100_000_000,
        max_seconds=7200,
    )
    outcomes: list[dict[str, Any]] = []
    for n in range(runs):
        started = time.monotonic()
        rc, out, err = await bench.deploy(f"good{n}")
        dep = await bench.last_deployment()
        judged = [e for e in dep["canary"] if e["kind"] == "verdict"]
        outcome = {
            "rc": rc,
            "seconds": round(time.monotonic() - started, 1),
            "decisions": [e["decision"] for e in judged],
            "reasons": [] if rc == 0 else [e["reason"] for e in judged[-1:]],
        }
        outcomes.append(outcome)
        print(f"  good run {n + 1}/{runs}: rc {rc}, {outcome['decisions']}", flush=True)
        if rc != 0:
            print(f"    {err.strip().splitlines()[0] if err.strip() else out[-300:]}")
    result = await load.stop()
    decisions = [d for o in outcomes for d in o["decisions"]]
    return {
        "runs": runs,
        "false_aborts": sum(1 for o in outcomes if o["rc"] != 0),
        "judged_steps": len(decisions),
        "latency_confirmations": decisions.count("confirm"),
        "extensions": decisions.count("extend"),
        "failed_requests": len(result.failures)
        + sum(1 for s in result.timeline if s.status is not None and s.status >= 500),
        "requests": result.total,
        "median_seconds": statistics.median(o["seconds"] for o in outcomes) if outcomes else 0,
        "outcomes": outcomes,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="good canaries (false aborts)")
    parser.add_argument("--bad-runs", type=int, default=3, help="bad canaries (blast radius)")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--concurrency", type=int, default=16, help="load clients")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-canary-") as tmp:
        bench = Bench(Path(tmp), args.hold)
        rc, _, err = await bench.baton("up", "--detach", timeout=60)
        assert rc == 0, err
        try:
            rc, _, err = await bench.deploy("v0")
            assert rc == 0, err
            bad = []
            for n in range(args.bad_runs):
                bad.append(await bad_run(bench, n, args.concurrency))
                print(f"  bad run {n + 1}/{args.bad_runs}: {bad[-1]}", flush=True)
            good = await good_runs(bench, args.runs, args.concurrency)
        finally:
            with contextlib.suppress(Exception):
                await bench.baton("down", timeout=120)
    figures: dict[str, Any] = {"hold": args.hold, "concurrency": args.concurrency}
    if bad:
        figures["bad"] = {
            "runs": bad,
            "blast_radius_max": max(b["blast_radius"] for b in bad),
            "blast_radius_60s_max": max(b["blast_radius_60s"] for b in bad),
            "detection_seconds_max": max(b["detection_seconds"] for b in bad),
        }
    figures["good"] = good
    print()
    if bad:
        b = figures["bad"]
        print(
            f"bad canary (30% errors), {len(bad)} runs at ~{bad[0]['rate']:.0f} req/s:"
            f" blast radius max {b['blast_radius_max']:.2%} of the requests during the deploy"
            f" ({b['blast_radius_60s_max']:.3%} of a 60 s window around it; target < 0.5%),"
            f" detection max {b['detection_seconds_max']:.1f}s after the first bad response"
            " (target < 15 s)"
        )
    print(
        f"good canaries with noisy latency: {good['false_aborts']} false aborts in"
        f" {good['runs']} runs ({good['judged_steps']} verdicts, {good['latency_confirmations']}"
        f" latency fails not confirmed by the next window, {good['extensions']} extensions;"
        f" {good['failed_requests']} failed of {good['requests']} requests; target 0)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if good["false_aborts"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
