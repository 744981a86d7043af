"""Feature-flag evaluations per second and their p99, in process and over OFREP.

    .venv/bin/python bench/flags.py [--duration 5] [--connections 16]

1. In process: ``baton.flags.model.evaluate`` on a flag with two targeting rules and a
   sticky 10% rollout, over 200,000 distinct contexts (what one evaluation costs).
2. Over HTTP: a real daemon (`baton server --flags`) with that flag, loaded by `wrk` with a
   POST to `/apps/bench/ofrep/v1/evaluate/flags/new-checkout` (a different targeting key
   each request), next to the same daemon's trivial `GET .../ofrep/v1/configuration`
   measured in the same run — the peer that shows what the evaluation itself adds to a
   request through the same HTTP stack.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LOOPBACK, ManagedProcess, free_port, parse_wrk, require_tools

from baton.flags.model import Evaluation, evaluate, parse_flag

FLAG = {
    "variants": {"on": True, "off": False},
    "default": "off",
    "rules": [
        {"when": {"email": {"ends_with": "@example.com"}}, "serve": "on"},
        {"when": {"country": {"in": ["FR", "DE"]}, "plan": "pro"}, "rollout": {"on": "50%"}},
    ],
    "rollout": {"on": "10%"},
}

POST_LUA = """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"context": {"targetingKey": "user-' .. counter .. '", "country": "FR"}}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""


def in_process(n: int = 200_000) -> dict[str, float]:
    flag = parse_flag("new-checkout", FLAG)
    contexts = [{"targetingKey": f"user-{i}", "country": "FR", "plan": "free"} for i in range(n)]
    samples: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    for ctx in contexts:
        t = clock()
        result = evaluate(flag, ctx)
        samples.append(clock() - t)
        assert isinstance(result, Evaluation)
    total = (clock() - started) / 1e9
    samples.sort()
    return {
        "evaluations_per_s": n / total,
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[int(n * 0.99)] / 1000,
    }


def wrk(url: str, connections: int, seconds: float, script: Path | None) -> dict[str, float]:
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(url)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    done = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    result = parse_wrk(done.stdout)
    return {"rps": result.rps, "p99_ms": result.p99 * 1000, "errors": result.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    require_tools("wrk")

    local = in_process()
    print(
        f"in process: {local['evaluations_per_s']:,.0f} evaluations/s,"
        f" p50 {local['p50_us']:.1f} µs, p99 {local['p99_us']:.1f} µs"
    )

    with tempfile.TemporaryDirectory(prefix="baton-bench-flags-") as tmp:
        root = Path(tmp)
        (root / "baton.yml").write_text("app: bench\nrun:\n  command: 'true'\n")
        (root / "flags.yml").write_text(json.dumps({"flags": {"new-checkout": FLAG}}))
        (root / "post.lua").write_text(POST_LUA)
        port = free_port()
        state = root / "state"
        baton = [sys.executable, "-m", "baton.cli", "--state-dir", str(state)]
        with ManagedProcess(
            [*baton, "server", "--flags", f"{LOOPBACK}:{port}"], port=port, name="baton server"
        ):
            subprocess.run(
                [*baton, "flags", "apply", "-c", str(root / "baton.yml")],
                check=True,
                capture_output=True,
                timeout=60,
            )
            base = f"http://{LOOPBACK}:{port}/apps/bench/ofrep/v1"
            peer = wrk(f"{base}/configuration", args.connections, args.duration, None)
            over_http = wrk(
                f"{base}/evaluate/flags/new-checkout",
                args.connections,
                args.duration,
                root / "post.lua",
            )
    print(
        f"OFREP evaluate over HTTP (-c{args.connections}): {over_http['rps']:,.0f} req/s,"
        f" p99 {over_http['p99_ms']:.2f} ms, errors {over_http['errors']:.0f}"
    )
    print(
        f"peer, GET configuration on the same daemon: {peer['rps']:,.0f} req/s,"
        f" p99 {peer['p99_ms']:.2f} ms"
    )
    print(
        f"evaluate / peer: {over_http['rps'] / peer['rps']:.2f}x req/s,"
        f" {over_http['p99_ms'] / peer['p99_ms']:.2f}x p99"
    )


if __name__ == "__main__":
    main()
