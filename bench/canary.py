"""Canary benchmark: what a bad canary costs users, how fast it is aborted, false aborts.

    .venv/bin/python bench/canary.py [--mode low|high|both] [--runs 5] [--bad-runs 2]
                                     [--rate 100] [--hold 5] [--concurrency 16] [--json out.json]

One run, in a temp dir, on free 127.0.0.1 ports, through the real CLI, daemon, proxy and the
example app (2 instances per release), with the issue's step weights (5 %, 25 %, 50 %, each
held ``--hold`` seconds) and the default analysis (1 % error ceiling; the proxy's fuse judges
the canary's last 200 answers once it has 20, retry on stable for GET/HEAD/OPTIONS). Every
release runs with noisy latency: ``LATENCY_MS=2`` plus an exponentially distributed
``LATENCY_JITTER_MS=5`` on average, so the p95 of identical releases wanders.

1. ``--bad-runs`` canaries of a release that answers 500 to 30 % of its requests
   (``ERROR_RATE=0.3``) in each mode:
   - ``low``: an open-ish load of about ``--rate`` requests per second (the bounded load
     generator, paced), every answer recorded;
   - ``high``: ``wrk`` unthrottled (``--concurrency`` connections) for the whole deploy.
   Figures: failed requests (5xx or no answer) as a share of every request sent (low: during
   the deploy; high: wrk's whole 25 s run around it) (target < 0.05 %), and time to abort: from the first canary step (traffic moved)
   to the abort the daemon recorded (target < 2 s), and from the fuse's trip to that abort.
2. ``--runs`` canaries of good releases (the same app, new version label each time), one
   after the other under the closed-loop load: a false abort is any that does not end
   promoted (the fuse included).

The fuse needs 20 canary answers: at ``--rate`` 100 and a 5 % first step that is about 4 s of
traffic, so at low rates the time to abort is the time the canary takes to get 20 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import parse_wrk, wrk_command  # noqa: E402

from tests.support.host import Host  # noqa: E402
from tests.support.load import Load, LoadResult  # noqa: E402

NOISE = {"LATENCY_MS": "2", "LATENCY_JITTER_MS": "5"}


class Bench(Host):
    """A Baton host (``tests/support/host.py``) running a canary app, with the bench's knobs."""

    def __init__(self, root: Path, hold: float, noise: bool = True, retry: bool = True) -> None:
        super().__init__(root)
        steps = [{"weight": w, "hold": f"{hold:g}s"} for w in (5, 25, 50)]
        self.config_file = self.config(
            {
                "app": "bench",
                "run": {"env": {"APP_VERSION": "v0", **(NOISE if noise else {})}},
                "deploy": {
                    "strategy": "canary",
                    "ready_timeout": "60s",
                    "canary": {"retry_on_stable": retry, "steps": steps},
                },
            }
        )

    async def deploy_version(self, version: str, *env: str) -> tuple[int, str, str]:
        flags = [x for e in (f"APP_VERSION={version}", *env) for x in ("--env", e)]
        done = await self.baton(
            "deploy", "-c", str(self.config_file), "--version", version, *flags, timeout=600.0
        )
        return done.rc, done.out, done.err

    async def last_deployment(self) -> dict[str, Any]:
        done = await self.baton("history", "--json", "-n", "1")
        assert done.rc == 0, done
        found: dict[str, Any] = json.loads(done.out)["deployments"][0]
        return found


def share(result: LoadResult, since: float, until: float) -> tuple[int, int]:
    sent = [s for s in result.timeline if since <= s.sent < until]
    return sum(1 for s in sent if s.status is not None and s.status >= 500), len(sent)


def abort_times(dep: dict[str, Any]) -> dict[str, Any]:
    """Seconds from the first canary step to the abort, and from the fuse's trip to it."""
    events = dep["canary"]
    abort = next(e for e in events if e.get("decision") == "abort")
    first_step = next(e for e in events if e["kind"] == "step" and e.get("step") == "canary#0")
    tripped = abort.get("figures", {}).get("tripped_at")
    return {
        "abort_seconds": round(abort["ts"] - first_step["ts"], 2),
        "trip_to_abort_seconds": round(abort["ts"] - tripped, 3) if tripped else None,
        "by": "fuse" if abort.get("fuse") else "guard" if abort.get("guard") else "verdict",
    }


async def bad_run_low(bench: Bench, n: int, rate: float) -> dict[str, Any]:
    """A bad canary under about ``rate`` req/s; every answer the clients got is counted."""
    concurrency = 8
    load = await Load().start(
        bench.url,
        concurrency=concurrency,
        max_requests=10_000_000,
        max_seconds=600,
        delay=max(0.0, concurrency / rate - 0.012),  # minus a request's own time, about
    )
    await asyncio.sleep(2.0)
    started = time.monotonic()
    rc, _, err = await bench.deploy_version(f"badlow{n}", "ERROR_RATE=0.3")
    done = time.monotonic()
    await asyncio.sleep(1.0)
    result = await load.stop()
    assert rc == 1, err
    dep = await bench.last_deployment()
    failed, total = share(result, started, done)
    failed += sum(1 for s in result.timeline if started <= s.sent < done and s.error is not None)
    return {
        "mode": "low",
        "failed": failed,
        "requests": total,
        "failed_share": failed / max(total, 1),
        "rate": round(total / (done - started), 1),
        "deploy_seconds": round(done - started, 2),
        **abort_times(dep),
    }


async def bad_run_high(bench: Bench, n: int, connections: int) -> dict[str, Any]:
    """A bad canary under unthrottled wrk that lasts the whole deploy (and a bit more)."""
    seconds = 25
    cmd = wrk_command(bench.url, connections, seconds)
    wrk = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(2.0)
    started = time.monotonic()
    rc, _, err = await bench.deploy_version(f"badhigh{n}", "ERROR_RATE=0.3")
    done = time.monotonic()
    out, werr = await asyncio.wait_for(wrk.communicate(), seconds + 60)
    assert rc == 1, err
    assert wrk.returncode == 0, werr.decode()
    assert done - started < seconds - 3, "the deploy outlasted wrk: raise its duration"
    w = parse_wrk(out.decode())
    dep = await bench.last_deployment()
    return {
        "mode": "high",
        "failed": w.errors,
        "requests": w.requests,
        "failed_share": w.errors / max(w.requests, 1),
        "rate": round(w.rps, 1),
        "deploy_seconds": round(done - started, 2),
        "socket_errors": w.socket_errors,
        **abort_times(dep),
    }


async def good_runs(bench: Bench, runs: int, concurrency: int) -> dict[str, Any]:
    load = await Load().start(
        bench.url,
        concurrency=concurrency,
        max_requests=100_000_000,
        max_seconds=7200,
    )
    outcomes: list[dict[str, Any]] = []
    for n in range(runs):
        started = time.monotonic()
        rc, out, err = await bench.deploy_version(f"good{n}")
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
    parser.add_argument("--mode", choices=("low", "high", "both"), default="both")
    parser.add_argument("--runs", type=int, default=5, help="good canaries (false aborts)")
    parser.add_argument("--bad-runs", type=int, default=2, help="bad canaries per mode")
    parser.add_argument("--rate", type=float, default=100.0, help="low mode: requests/s")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds per step")
    parser.add_argument("--concurrency", type=int, default=16, help="load clients / wrk conns")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--noise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="noisy app latency (--no-noise: the app answers at once, for a higher rate)",
    )
    parser.add_argument(
        "--retry",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="retry on stable (--no-retry: the fuse alone bounds what clients see)",
    )
    args = parser.parse_args()
    modes = ("low", "high") if args.mode == "both" else (args.mode,)
    bad: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="baton-bench-canary-") as tmp:
        bench = Bench(Path(tmp), args.hold, noise=args.noise, retry=args.retry)
        up = await bench.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        try:
            rc, _, err = await bench.deploy_version("v0")
            assert rc == 0, err
            for mode in modes:
                for n in range(args.bad_runs):
                    if mode == "low":
                        bad.append(await bad_run_low(bench, n, args.rate))
                    else:
                        bad.append(await bad_run_high(bench, n, args.concurrency))
                    print(f"  bad run ({mode}) {n + 1}/{args.bad_runs}: {bad[-1]}", flush=True)
            good = await good_runs(bench, args.runs, args.concurrency)
        finally:
            await bench.teardown()
    figures: dict[str, Any] = {
        "hold": args.hold,
        "concurrency": args.concurrency,
        "noise": args.noise,
        "retry_on_stable": args.retry,
        "bad": bad,
    }
    figures["good"] = good
    print()
    for mode in modes:
        runs = [b for b in bad if b["mode"] == mode]
        if not runs:
            continue
        print(
            f"bad canary (30% errors), {mode} rate, {len(runs)} runs at"
            f" ~{statistics.mean(b['rate'] for b in runs):.0f} req/s: failed"
            f" {max(b['failed'] for b in runs)} of {min(b['requests'] for b in runs)}+ requests,"
            f" max share {max(b['failed_share'] for b in runs):.4%} (target < 0.05%);"
            f" abort max {max(b['abort_seconds'] for b in runs):.2f}s after the first step"
            f" (target < 2 s), trip to abort max"
            f" {max(b['trip_to_abort_seconds'] or 0 for b in runs):.3f}s, by"
            f" {sorted({b['by'] for b in runs})}"
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
