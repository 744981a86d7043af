"""Deploy benchmark: Baton's own overhead per deploy, and failed requests under wrk.

    .venv/bin/python bench/deploy.py [--deploys 20] [--connections 16] [--strategy blue-green]
                                     [--runtime process|docker] [--json out.json]

One run, in a temp dir, on free 127.0.0.1 ports:

1. The app's own boot time, the peer every figure is measured against: the example app
   (`examples/app/app.py`, stdlib, ready as soon as it listens) started directly, polled on
   its health path at the same interval Baton uses, until the first 2xx; median of 5.
2. `baton up --detach`, then a first deploy (v0).
3. wrk (`-c CONNECTIONS`) runs against the app's public address while `--deploys` deploys
   run back to back through the real CLI (`baton deploy --env APP_VERSION=vN`). For each,
   the time from launching the command to the line saying traffic moved (the switch) and to
   the command's exit, minus the app's boot time: that is Baton's overhead (CLI start-up,
   readiness polling, the switch, drain and stop of the old release).
4. wrk's failed requests (socket errors + non-2xx/3xx) over all the deploys.

With ``--runtime docker`` the app is a container: a tiny ``FROM scratch`` busybox httpd
image built here (``tests/support/images.py``, two tags alternating), deployed with
``baton deploy --image``. Its boot time (the peer) is a container started through the
Docker runtime directly (create, start, port published) until the first 2xx on ``/up``,
polled at the same interval; median of 5.

Target: overhead to the switch under 1 s for a blue-green deploy of an app that is ready
at once; zero failed requests. The same machine runs wrk, the proxy, the control plane and
the app, so read the figures as what one small host does, not as absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import free_port, parse_wrk, require_tools

from tests.support.host import APP_DIR, BATON, Host

HEALTH_INTERVAL = 0.05


def app_boot_seconds(samples: int = 5) -> float:
    """Median time from spawning the app to its first 2xx on /up (the app's own boot)."""
    times = []
    for _ in range(samples):
        port = free_port()
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=APP_DIR,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "SHUTDOWN_GRACE": "1"},
        )
        try:
            deadline = started + 30
            while time.monotonic() < deadline:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/up", timeout=2) as r,
                ):
                    if 200 <= r.status < 300:
                        break
                time.sleep(HEALTH_INTERVAL)
            times.append(time.monotonic() - started)
        finally:
            proc.terminate()
            proc.wait(10)
    return statistics.median(times)


def container_boot_seconds(image: str, samples: int = 5) -> float:
    """Median time from asking the Docker runtime for a container to its first 2xx on /up."""
    import asyncio

    from baton.deploy.probes import ProbeError, http_get
    from baton.runtime.docker import DockerInstanceSpec, DockerRuntime

    async def one(runtime: DockerRuntime, n: int, log_dir: Path) -> float:
        started = time.monotonic()
        spec = DockerInstanceSpec(
            app="bench-boot", version="boot", index=n, image=image, port=8080, log_dir=log_dir
        )
        instance = await runtime.start(spec)
        try:
            deadline = started + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(ProbeError):
                    status, _ = await http_get(instance.address, "/up", 2.0)
                    if 200 <= status < 300:
                        break
                await asyncio.sleep(HEALTH_INTERVAL)
            return time.monotonic() - started
        finally:
            await runtime.stop(instance, 5)

    async def run() -> list[float]:
        with tempfile.TemporaryDirectory(prefix="baton-bench-boot-") as tmp:
            runtime = DockerRuntime(Path(tmp))
            try:
                return [await one(runtime, n, Path(tmp)) for n in range(samples)]
            finally:
                runtime.close()

    return statistics.median(asyncio.run(run()))


def bench_config(host: Host, strategy: str, image: str | None = None) -> Path:
    """The benchmark's baton.yml: two instances, fast readiness polling, no verify window."""
    extra: dict[str, Any] = {
        "app": "bench",
        "run": {"env": {"APP_VERSION": "v0", "SHUTDOWN_GRACE": "5"}},
        "health": {"interval": f"{int(HEALTH_INTERVAL * 1000)}ms"},
        "deploy": {"strategy": strategy, "ready_timeout": "30s", "drain_timeout": "10s"},
    }
    if image is not None:
        extra["runtime"] = "docker"
        extra["run"] = {"image": image, "port": 8080, "command": None, "cwd": None, "env": None}
    return host.config(extra)


def timed_deploy(
    host: Host, config: Path, version: str, image: str | None = None
) -> tuple[float, float]:
    """(seconds to the switch line, seconds to exit) of one `baton deploy`."""
    what = ["--image", image] if image is not None else ["--env", f"APP_VERSION={version}"]
    started = time.monotonic()
    proc = subprocess.Popen(
        host.command("deploy", "-c", str(config), "--version", version, *what),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    switched = None
    output = []
    for line in proc.stdout:
        output.append(line)
        if switched is None and "traffic:" in line:
            switched = time.monotonic() - started
    code = proc.wait(120)
    ended = time.monotonic() - started
    if code != 0 or switched is None:
        raise SystemExit(f"deploy {version} failed (exit {code}):\n{''.join(output)}")
    return switched, ended


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploys", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--strategy", choices=["blue-green", "rolling"], default="blue-green")
    parser.add_argument("--runtime", choices=["process", "docker"], default="process")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    require_tools("wrk")

    images = None
    tags: list[str | None] = [None, None]
    if args.runtime == "docker":
        from tests.support.images import ImageCache

        images = ImageCache()
        tags = [images.get("a"), images.get("b")]
        print(f"built {tags[0]} and {tags[1]} (busybox httpd, FROM scratch)")
    try:
        return run(args, tags)
    finally:
        if images is not None:
            images.close()


def run(args: argparse.Namespace, tags: list[str | None]) -> int:
    docker = tags[0] is not None
    boot = container_boot_seconds(str(tags[0])) if docker else app_boot_seconds()
    cli_start = statistics.median(
        [
            _timed(lambda: subprocess.run([*BATON, "--version"], capture_output=True))
            for _ in range(3)
        ]
    )
    print(
        f"app boot ({'container' if docker else 'spawn'} to first healthy answer): {boot:.3f}s;"
        f" `baton --version`: {cli_start:.3f}s"
    )

    with tempfile.TemporaryDirectory(prefix="baton-bench-deploy-") as tmp:
        host = Host(Path(tmp))
        port = host.port
        config = bench_config(host, args.strategy, tags[0])
        up = host.run("up", "--detach", timeout=60)
        if up.rc != 0:
            raise SystemExit(f"baton up failed:\n{up}")
        wrk: subprocess.Popen[str] | None = None
        try:
            timed_deploy(host, config, "v0", tags[0])
            wrk = subprocess.Popen(
                ["wrk", "-t2", f"-c{args.connections}", "-d3600s", "--timeout=5s", "--latency",
                 f"http://127.0.0.1:{port}/"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            time.sleep(1.0)
            switch, end = [], []
            for n in range(1, args.deploys + 1):
                to_switch, to_end = timed_deploy(host, config, f"v{n}", tags[n % 2])
                switch.append(to_switch - boot)
                end.append(to_end - boot)
                print(f"  deploy {n:2d}: switch +{to_switch:.3f}s, done +{to_end:.3f}s", flush=True)
            # The peer again, under the same load: what starting the app costs on this busy
            # host without Baton (the deploy figures above pay that cost too).
            boot_loaded = container_boot_seconds(str(tags[0]), 3) if docker else app_boot_seconds(3)
            time.sleep(1.0)
            wrk.send_signal(signal.SIGINT)  # wrk prints its report on SIGINT
            out, _ = wrk.communicate(timeout=30)
            result = parse_wrk(out)
        finally:
            if wrk is not None and wrk.poll() is None:
                wrk.kill()
            host.down()

    report: dict[str, Any] = {
        "runtime": args.runtime,
        "strategy": args.strategy,
        "deploys": args.deploys,
        "app_boot_s": boot,
        "app_boot_under_load_s": boot_loaded,
        "cli_start_s": cli_start,
        "overhead_to_switch_s": summary(switch),
        "overhead_to_end_s": summary(end),
        "overhead_to_switch_minus_loaded_boot_s": summary([x + boot - boot_loaded for x in switch]),
        "wrk": result.as_dict(),
    }
    s, e = report["overhead_to_switch_s"], report["overhead_to_end_s"]
    print(
        f"\n{args.deploys} {args.strategy} deploys ({args.runtime}) under wrk -c{args.connections}:"
    )
    print(f"  Baton overhead to the switch (minus app boot): median {s['median']:.3f}s,"
          f" p90 {s['p90']:.3f}s, max {s['max']:.3f}s  (target < 1 s)")  # fmt: skip
    print(f"  Baton overhead to the end    (minus app boot): median {e['median']:.3f}s,"
          f" p90 {e['p90']:.3f}s, max {e['max']:.3f}s")  # fmt: skip
    ls = report["overhead_to_switch_minus_loaded_boot_s"]
    print(f"  app boot under the same load: {boot_loaded:.3f}s; overhead to the switch minus"
          f" that: median {ls['median']:.3f}s, p90 {ls['p90']:.3f}s")  # fmt: skip
    print(f"  wrk: {result.requests} requests, {result.rps:.0f} req/s, failed: {result.errors}"
          f" (socket errors {result.socket_errors or 0}, non-2xx/3xx {result.non_2xx_3xx})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if result.errors == 0 else 1


def _timed(fn: Any) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
