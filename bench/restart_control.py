"""Restart benchmark: requests lost while Baton's control plane restarts, and after a reboot.

    .venv/bin/python bench/restart_control.py [--restarts 5] [--connections 16] [--seconds 20]

One run, in a temp state dir with a free 127.0.0.1 port: `baton up --detach`, a deploy of
examples/app (2 instances), then two phases under `wrk -t2 -cN --latency`:

- **baseline**: `--seconds` of load with nothing happening (the peer of the next phase);
- **restarts**: the same load while the control plane is restarted `--restarts` times the
  way `systemctl restart` does it (SIGTERM to `server.pid`, wait until it exits, then
  `baton up --detach`), one every few seconds.

Reported: per phase wrk's requests, socket errors and non-2xx answers, and the ratio of the
restarts phase's throughput to the baseline's. Then a simulated reboot: the daemon, the
proxy and every instance SIGKILLed together, and the time `baton up --detach` takes until
the app answers again (it returns once the live release is started, ready and routed).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from _common import WrkResult, parse_wrk, require_tools, wrk_command

from baton.runtime.process import pid_alive
from tests.support.host import Host


def baton(host: Host, *args: str, timeout: float = 300) -> str:
    done = host.run(*args, timeout=timeout)
    if done.rc != 0:
        raise RuntimeError(f"baton {' '.join(args)}: exit {done.rc}\n{done.err}")
    return done.out


def pid_of(path: Path) -> int:
    return int(path.read_text().strip())


def wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.02)
    raise TimeoutError(f"pid {pid} still runs")


def wrk_during(url: str, connections: int, seconds: float, action: object = None) -> WrkResult:
    proc = subprocess.Popen(
        wrk_command(url, connections, seconds), stdout=subprocess.PIPE, text=True
    )
    if callable(action):
        worker = threading.Thread(target=action)
        worker.start()
        worker.join()
    out, _ = proc.communicate(timeout=seconds + 60)
    return parse_wrk(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    require_tools("wrk")
    with tempfile.TemporaryDirectory(prefix="baton-bench-restart-") as tmp:
        host = Host(Path(tmp))
        state = host.state_dir
        url = host.url
        config = host.config(
            {
                "app": "bench",
                "run": {"env": {"SHUTDOWN_GRACE": "2"}},
                "deploy": {"ready_timeout": "60s", "drain_timeout": "30s", "stop_timeout": "10s"},
            }
        )
        baton(host, "up", "--detach")
        try:
            baton(host, "deploy", "-c", str(config), "--version", "v1")
            base = wrk_during(url, args.connections, args.seconds)

            def restarts() -> None:
                gap = args.seconds / (args.restarts + 1)
                for _ in range(args.restarts):
                    time.sleep(gap * 0.5)
                    server = pid_of(state / "server.pid")
                    os.kill(server, signal.SIGTERM)
                    wait_gone(server)
                    baton(host, "up", "--detach")
                    time.sleep(gap * 0.5)

            during = wrk_during(url, args.connections, args.seconds, restarts)
            for name, r in (("baseline", base), (f"{args.restarts} restarts", during)):
                print(
                    f"{name:>12}: {r.requests} requests, {r.rps:.0f} req/s, socket errors"
                    f" {r.socket_errors or 0}, non-2xx {r.non_2xx_3xx}, p99 {r.p99 * 1000:.1f} ms"
                )
            print(f"throughput during restarts / baseline: {during.rps / base.rps:.2f}")

            pids = [pid_of(state / "server.pid"), pid_of(state / "proxy.pid")]
            pids += [int(p.name.split("-")[0]) for p in (state / "instances").glob("*.json")]
            for pid in pids:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            for pid in pids:
                wait_gone(pid)
            started = time.monotonic()
            baton(host, "up", "--detach")
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.status == 200
            print(
                f"reboot ({len(pids)} processes SIGKILLed): `baton up` served the live"
                f" release again after {time.monotonic() - started:.2f} s"
            )
        finally:
            host.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
