"""Does an open dashboard cost the request path anything? bench/proxy.py's matrix, twice.

    .venv/bin/python bench/dashboard.py [--duration 5] [--connections 50] [--rounds 1]

The same backend, nginx, HAProxy and Baton proxy as bench/proxy.py are started once and
measured twice with wrk:

1. **before**: nothing else runs;
2. **with the dashboard open**: a real Baton daemon (its own state dir, the example app
   deployed and served a trickle of requests) serves ``--dashboard`` and ``--metrics``,
   headless Chromium keeps the dashboard open (live over SSE, charts redrawn every
   second), Prometheus-style scrapes hit ``/metrics`` every second, and the benchmarked
   Baton proxy's admin API is polled the way the daemon polls its own proxy for the
   dashboard (``/metrics.json`` and ``/targets``, twice a second).

It prints Baton's ratios to nginx for both. Everything shares one (small, busy) machine,
so the second run also pays for Chromium's and the daemon's CPU: read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import proxy as proxybench
from _common import LOOPBACK, REPO, admin_call, free_port, raise_nofile_limit, require_tools

from tests.support.host import Host

CHROMIUM = "/usr/bin/chromium"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--connections", type=lambda s: [int(x) for x in s.split(",")], default=[50]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baton-cmd", default=f"{REPO / '.venv/bin/baton'} proxy")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.skip_baton = False
    return args


@contextlib.contextmanager
def dashboard_open(workdir: Path) -> Iterator[str]:
    """A daemon with the example app, its dashboard open in Chromium; yields its URL."""
    host = Host(workdir)
    app_port = host.port
    dash, metrics = free_port(), free_port()
    config = host.config({"app": "bench", "instances": 1})
    up = host.run(
        "up", "--detach", "--dashboard", f"{LOOPBACK}:{dash}", "--metrics", f"{LOOPBACK}:{metrics}"
    )
    if up.rc != 0:
        raise SystemExit(f"baton up failed:\n{up}")
    stop = threading.Event()
    try:
        deployed = host.run("deploy", "-c", str(config), "--version", "v1")
        if deployed.rc != 0:
            raise SystemExit(f"deploy failed:\n{deployed}")

        def trickle() -> None:  # ~20 req/s to the app, and a scrape a second
            n = 0
            while not stop.wait(0.05):
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://{LOOPBACK}:{app_port}/", timeout=5).read()
                n += 1
                if n % 20 == 0:
                    with contextlib.suppress(OSError):
                        urllib.request.urlopen(
                            f"http://{LOOPBACK}:{metrics}/metrics", timeout=5
                        ).read()

        threading.Thread(target=trickle, daemon=True).start()
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )  # fmt: skip
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://{LOOPBACK}:{dash}/")
            page.wait_for_selector("[data-chart=rate] canvas", timeout=30_000)
            yield f"http://{LOOPBACK}:{dash}/"
            points = page.get_attribute("[data-chart=rate]", "data-points")
            proxybench.log(f"  the dashboard drew {points} chart points meanwhile")
            browser.close()
    finally:
        stop.set()
        host.down()


@contextlib.contextmanager
def admin_polled(admin: Path) -> Iterator[None]:
    """Poll the benchmarked proxy's admin API as a daemon with a dashboard does."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            for path in ("/metrics.json", "/targets"):
                with contextlib.suppress(OSError):
                    admin_call(str(admin), "GET", path, timeout=5)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tools("wrk", "nginx", "haproxy")
    if not os.access(CHROMIUM, os.X_OK):
        proxybench.log(f"{CHROMIUM} is missing")
        return 2
    nofile = raise_nofile_limit()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="baton-bench-dash-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        ports, _, skipped = proxybench.start_targets(stack, workdir, args, nofile)
        if skipped:
            proxybench.log(f"Baton did not start: {skipped}")
            return 1
        proxybench.log("before (nothing else runs):")
        _, before = proxybench.measure(ports, args)
        proxybench.log("with the dashboard open:")
        with dashboard_open(workdir), admin_polled(workdir / "baton" / "admin.sock"):
            time.sleep(2)  # the page is live and its charts drawing
            _, after = proxybench.measure(ports, args)
        for name, summary in (("before", before), ("dashboard open", after)):
            ratio = proxybench.ratios(summary)
            results[name] = {"summary": summary, "ratios": ratio}
            for conns, r in ratio.items():
                b, n = summary[conns]["baton"], summary[conns]["nginx"]
                print(
                    f"{name:<15} c={conns:<4} Baton {b['rps']:>9,.0f} req/s p99 {b['p99'] * 1e3:6.2f} ms"
                    f" | nginx {n['rps']:>9,.0f} req/s p99 {n['p99'] * 1e3:6.2f} ms"
                    f" | throughput {r['throughput_vs_nginx']:.2f}x, p99 {r['p99_vs_nginx']:.2f}x,"
                    f" errors {r['errors']}"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
