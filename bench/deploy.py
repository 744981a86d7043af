"""Deploy benchmark: Baton's own overhead per deploy, where it goes, and failed requests.

    .venv/bin/python bench/deploy.py [--deploys 20] [--connections 16] [--strategy blue-green]
                                     [--runtime process|docker] [--api-deploys 5]
                                     [--websockets 20]
                                     [--skip-websockets] [--trace] [--json out.json]

One run, in a temp dir, on free 127.0.0.1 ports:

1. The app's own boot time, the peer every figure is measured against: the example app
   (`examples/app/app.py`, stdlib, ready as soon as it listens) started directly, polled on
   its health path at the same interval Baton uses, until the first 2xx; median of 5.
2. `baton up --detach`, then a first deploy (v0).
3. wrk (`-c CONNECTIONS`) runs against the app's public address while `--deploys` deploys
   run back to back through the real CLI (`baton deploy --env APP_VERSION=vN`). For each,
   the time from launching the command to the line saying traffic moved (the switch) and to
   the command's exit, minus the app's boot time: that is Baton's **overhead** (CLI start-up,
   API round trips, starting the instances, readiness polling beyond the app's own boot,
   the switch; to the exit also drain and stop of the old release).
4. Where the overhead goes (medians), from the arrival time of each progress line:
   ``cli`` = the CLI's share: when the deployment's first line reached `baton deploy`, less
   when it reached a client of the API itself (the API deploys below; the CLI's CPU time per
   deploy is reported too; that share also counts the lag of its first lines, shown once it
   has imported what renders them, so how much later its switch comes than an API
   client's is reported as well), ``api`` = from the request to the first progress event (the
   daemon records the deployment; timed on the API deploys below), ``prepare`` = to the start step, ``start + ready - boot`` = starting the
   instances and probing them, minus the app's boot (the peer), ``switch`` = from the switch
   step to the line saying traffic moved. The parts are medians, so they need not add up to
   the total exactly.
   With Docker, the API deploys' start + readiness is split again by the engine's recorded
   container events (``engine_parts``): to the engine's first create, the engine's
   create-to-last-start, and from there to the switch step (Baton's inspect, records and
   readiness rule). Not the CLI's deploys: `baton deploy` shows the first lines only once
   it has imported what renders them, so its step times lag the daemon's (its ``cli``
   share includes that lag, and its ``start + ready - boot`` is short by as much).
   The same parts are also timed on the API deploys, after ``cli_switch_lag`` (how much
   later the CLI's switch comes than an API client's): those add up to the overhead.
   Then ``--api-deploys`` more deploys asked of the daemon's API directly (the CLI's request,
   without the CLI): the control plane's own overhead to the switch.
5. wrk's failed requests (socket errors + non-2xx/3xx) over all the deploys.
6. A rolling deploy with ``--websockets`` WebSockets held open through the proxy vs the same
   rolling deploy without them (`tests/support/backend.py` as the app, 3 instances, one at a
   time, `drain_timeout` 5 s): open tunnels keep an old batch draining until its
   ``drain_timeout``; when the engine drains in the background, the next batch no longer waits
   for it and the two figures get close.

7. With ``--trace``, one more deploy asked of the API, its progress events and (Docker) the
   engine's create/start events printed in order with their times from the request: what
   waits on what.

With ``--runtime docker`` the app is a container: a tiny ``FROM scratch`` busybox httpd
image built here (``tests/support/images.py``, two tags alternating), deployed with
``baton deploy --image``. The app runs ``INSTANCES`` (2) instances, so its own boot (the
peer) is that many containers asked of the Docker Engine API directly and at once, each as
``docker run -d -p 127.0.0.1::8080`` would (create, start, one inspect for the published
port), until the first 2xx on ``/up`` of the last of them, polled at the same interval;
median of 5. The engine starts a second container beside the first markedly slower than one
alone (it serialises part of a start): that cost is the app's (any way of running two
containers pays it), not Baton's, so the headline overhead is judged against the N-container
boot. The overhead against one container's boot (the figure before issue 14's second round,
which counted the engine's second start as Baton's) is printed and recorded too
(``overhead_to_switch_minus_one_container_s``), and so is one container through Baton's
Docker runtime in this process (its cost over the direct start). The process runtime's peer
stays one process: two processes of the stdlib app start side by side in the same time.

Targets (issue 14): median overhead to the switch under 0.25 s for the process runtime and
under 0.5 s for Docker (against the N-container boot measured before the load, as every
peer here; the same boot under the load, which slows the engine's start, is printed too);
zero failed requests. The same
machine runs wrk, the proxy, the control plane and the app, so read the figures as what one
small host does, not as absolutes, and a shared (busy) machine inflates all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import REPO, free_port, parse_wrk, require_tools

from tests.support.host import Host, Result

APP_DIR = REPO / "examples" / "app"
BACKEND = REPO / "tests" / "support" / "backend.py"
# The console script a user runs (`python -m baton.cli` would compile cli.py on every run), and
# the environment of an installed Baton: bytecode cached (PYTHONDONTWRITEBYTECODE, set in some
# dev shells, would make every CLI start compile all its modules from source).
_SCRIPT = Path(sys.executable).parent / "baton"
BATON = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "baton.cli"]
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
HEALTH_INTERVAL = 0.05
INSTANCES = 2  # the benchmark app's instances; with Docker, the peer boots as many at once
STEP = re.compile(r"▸ (\w[\w-]*)")


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
            env={**CHILD_ENV, "SHUTDOWN_GRACE": "1"},
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


def direct_boot_seconds(image: str, count: int = 1, samples: int = 5) -> float:
    """Median time from asking the Docker Engine API directly (no Baton) for ``count``
    containers of ``image`` at once to the first 2xx on /up of the last of them.

    Each container is what ``docker run -d -p 127.0.0.1::8080 IMAGE`` makes: create, start,
    one inspect for the port Docker published; then /up is polled every ``HEALTH_INTERVAL``.
    """
    import docker

    client = docker.from_env(timeout=60)
    api = client.api

    def one(started: float) -> tuple[str, float]:
        container_id = ""
        try:
            host_config = api.create_host_config(port_bindings={8080: ("127.0.0.1", None)})
            created = api.create_container(
                image, ports=[("8080", "tcp")], host_config=host_config, labels={"baton.bench": "1"}
            )
            container_id = str(created["Id"])
            api.start(container_id)
            ports = api.inspect_container(container_id)["NetworkSettings"]["Ports"]
            url = f"http://127.0.0.1:{ports['8080/tcp'][0]['HostPort']}/up"
            deadline = started + 30
            while time.monotonic() < deadline:
                with (
                    contextlib.suppress(OSError, http.client.HTTPException),
                    urllib.request.urlopen(url, timeout=2) as r,
                ):
                    if 200 <= r.status < 300:
                        break
                time.sleep(HEALTH_INTERVAL)
            return container_id, time.monotonic() - started
        except BaseException:
            if container_id:
                with contextlib.suppress(Exception):
                    api.remove_container(container_id, force=True, v=True)
            raise

    times = []
    try:
        with ThreadPoolExecutor(count) as pool:
            for _ in range(samples):
                started = time.monotonic()
                results = list(pool.map(one, [started] * count))
                times.append(max(took for _, took in results))
                for container_id, _ in results:
                    api.remove_container(container_id, force=True, v=True)
    finally:
        client.close()
    return statistics.median(times)


def container_boot_seconds(image: str, samples: int = 5) -> float:
    """Median time from asking Baton's Docker runtime (in this process, no daemon) for a
    container to its first 2xx on /up: the runtime's own cost over ``direct_boot_seconds``."""
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
        "instances": INSTANCES,
        "run": {"env": {"APP_VERSION": "v0", "SHUTDOWN_GRACE": "5"}},
        "health": {"interval": f"{int(HEALTH_INTERVAL * 1000)}ms"},
        "deploy": {"strategy": strategy, "ready_timeout": "30s", "drain_timeout": "10s"},
    }
    if image is not None:
        extra["runtime"] = "docker"
        extra["run"] = {"image": image, "port": 8080, "command": None, "cwd": None, "env": None}
    return host.config(extra)


def bench_host(root: Path) -> Host:
    """A Baton host run through the console script, with bytecode caching on."""
    return Host(root, cli=BATON, env=CHILD_ENV)


def must(result: Result, what: str) -> None:
    if result.rc != 0:
        raise SystemExit(f"{what} failed:\n{result}")


class Timeline:
    """When each progress line of one `baton deploy` arrived, in seconds from its launch."""

    def __init__(self) -> None:
        self.header: float | None = None
        self.steps: dict[str, float] = {}  # first arrival of each step
        self.switched: float | None = None
        self.ended = 0.0
        self.cpu = 0.0  # CPU seconds (user + system) of the `baton deploy` process
        self.wall_start = time.time()  # the launch, on the clock the engine's events use
        self.engine_created: float | None = None  # Docker: the engine's first create event
        self.engine_started: float | None = None  # and its last start event before the switch

    def see(self, line: str, at: float) -> None:
        if self.header is None and line.lstrip().startswith(("Deploying", "Rolling back")):
            self.header = at
        if (step := STEP.search(line)) is not None:
            self.steps.setdefault(step.group(1), at)
        if self.switched is None and "traffic:" in line:
            self.switched = at

    def parts(self, boot: float, cli: float) -> dict[str, float]:
        """The overhead to the switch, split; see the module docstring (4)."""
        header = self.header or 0.0
        start = self.steps.get("start", header)
        switch_step = self.steps.get("switch", self.switched or start)
        return {
            "cli": cli,
            "api": header - cli,
            "prepare": start - header,
            "start_ready_minus_boot": switch_step - start - boot,
            "switch": (self.switched or switch_step) - switch_step,
        }


def engine_events(client: Any, state_dir: Path, timeline: Timeline) -> None:
    """Fill ``timeline``'s engine times from Docker's recorded container events of
    ``state_dir``: the first create and the last start before the switch."""
    until = timeline.wall_start + timeline.ended + 1.0
    switched = timeline.switched if timeline.switched is not None else math.inf
    creates, starts = [], []
    for event in client.api.events(
        since=timeline.wall_start,
        until=until,
        decode=True,
        filters={"type": "container", "label": f"baton.state_dir={state_dir}"},
    ):
        at = event["timeNano"] / 1e9 - timeline.wall_start
        if 0 <= at <= switched:
            if event.get("Action") == "create":
                creates.append(at)
            elif event.get("Action") == "start":
                starts.append(at)
    timeline.engine_created = min(creates, default=None)
    timeline.engine_started = max(starts, default=None)


def engine_parts(timelines: list[Timeline]) -> dict[str, float]:
    """Where a Docker deploy's start + readiness goes (medians), from the engine's events:
    ``to_create`` = the start step to the engine's first create (Baton: a thread hop, the
    request), ``engine`` = first create to last start (the engine's own, which the peer's
    boot also pays), ``after_start`` = last start to the switch step (Baton:
    the inspect, the records, readiness with its ``success_threshold`` rule)."""
    rows = [
        t
        for t in timelines
        if t.engine_created is not None and t.engine_started is not None and "start" in t.steps
    ]
    if not rows:
        return {}

    def median(values: list[float]) -> float:
        return statistics.median(values)

    return {
        "to_create": median([(t.engine_created or 0.0) - t.steps["start"] for t in rows]),
        "engine": median([(t.engine_started or 0.0) - (t.engine_created or 0.0) for t in rows]),
        "after_start": median(
            [t.steps.get("switch", t.switched or 0.0) - (t.engine_started or 0.0) for t in rows]
        ),
    }


def deploy_command(host: Host, config: Path, version: str, image: str | None) -> list[str]:
    what = ["--image", image] if image is not None else ["--env", f"APP_VERSION={version}"]
    return host.command("deploy", "-c", str(config), "--version", version, *what)


def timed_deploy(host: Host, config: Path, version: str, image: str | None = None) -> Timeline:
    """The timeline of one `baton deploy` (it must succeed and say traffic moved)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timeline = Timeline()
    started = time.monotonic()
    proc = subprocess.Popen(
        deploy_command(host, config, version, image),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**CHILD_ENV, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        timeline.see(line, time.monotonic() - started)
    code = proc.wait(120)
    timeline.ended = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timeline.cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if code != 0 or timeline.switched is None:
        raise SystemExit(f"deploy {version} failed (exit {code}):\n{''.join(output)}")
    return timeline


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("baton", timeout=120)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.unix_path))
        self.sock = sock


def api_deploy(state_dir: Path, config: Path, version: str, image: str | None) -> Timeline:
    """The same deploy as `baton deploy`, asked of the daemon's API directly (no CLI): what
    the control plane itself adds, timed by the arrival of its progress events."""
    body: dict[str, Any] = {"config": str(config), "version": version}
    if image is not None:
        body["image"] = image
    else:
        body["env"] = {"APP_VERSION": version}
    timeline = Timeline()
    started = time.monotonic()
    conn = _UnixHTTPConnection(state_dir / "baton.sock")
    try:
        conn.request("POST", "/deploy", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        result: dict[str, Any] = {}
        for raw in resp:
            at = time.monotonic() - started
            event = json.loads(raw)
            kind = event.get("event")
            if kind == "deployment" and timeline.header is None:
                timeline.header = at
            elif kind == "step":
                timeline.steps.setdefault(str(event.get("step")), at)
            elif kind == "switch" and timeline.switched is None:
                timeline.switched = at
            elif kind == "result":
                result = event
    finally:
        conn.close()
    timeline.ended = time.monotonic() - started
    if not result.get("ok") or timeline.switched is None:
        raise SystemExit(f"API deploy {version} failed: {result}")
    return timeline


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
    parser.add_argument("--api-deploys", type=int, default=5, help="deploys without the CLI")
    parser.add_argument("--websockets", type=int, default=20, help="open during the rolling run")
    parser.add_argument("--skip-websockets", action="store_true", help="skip part 6")
    parser.add_argument(
        "--trace", action="store_true", help="print one more API deploy's timeline (see 7)"
    )
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
        report = run(args, tags)
    finally:
        if images is not None:
            images.close()
    if not args.skip_websockets:
        report["rolling_websockets"] = rolling_with_websockets(args.websockets)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["wrk"]["errors"] == 0 else 1


def run(args: argparse.Namespace, tags: list[str | None]) -> dict[str, Any]:
    docker = tags[0] is not None
    peers: dict[str, float] = {}
    if docker:
        # The peer is the app's own boot with its INSTANCES instances: that many containers
        # asked of the engine at once (it starts a second one beside the first slower than
        # one alone). One container's boot is measured and reported too.
        one = direct_boot_seconds(str(tags[0]))
        boot = direct_boot_seconds(str(tags[0]), count=INSTANCES)
        peers["app_boot_one_container_s"] = one
        peers["app_boot_through_the_runtime_s"] = container_boot_seconds(str(tags[0]))
        print(
            f"container boot, directly through the Engine API: {one:.3f}s for one,"
            f" {boot:.3f}s for {INSTANCES} at once (the peer); through Baton's Docker"
            f" runtime: {peers['app_boot_through_the_runtime_s']:.3f}s for one"
        )
    else:
        boot = app_boot_seconds()
    cli_start = statistics.median(
        [_timed(lambda: bench_host(Path(tempfile.gettempdir())).run("--version")) for _ in range(3)]
    )
    print(
        f"app boot ({f'{INSTANCES} containers at once' if docker else 'spawn'} to first healthy"
        f" answer): {boot:.3f}s;"
        f" `baton --version`: {cli_start:.3f}s"
    )

    with tempfile.TemporaryDirectory(prefix="baton-bench-deploy-") as tmp:
        host = bench_host(Path(tmp))
        config = bench_config(host, args.strategy, tags[0])
        must(host.run("up", "--detach", timeout=60), "baton up")
        wrk: subprocess.Popen[str] | None = None
        engine: Any = None
        if docker:  # to read the engine's container events of each deploy
            import docker as docker_sdk

            engine = docker_sdk.from_env(timeout=30)
        try:
            timed_deploy(host, config, "v0", tags[0])
            wrk = subprocess.Popen(
                ["wrk", "-t2", f"-c{args.connections}", "-d3600s", "--timeout=5s", "--latency",
                 host.url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            time.sleep(1.0)
            timelines = []
            for n in range(1, args.deploys + 1):
                timeline = timed_deploy(host, config, f"v{n}", tags[n % 2])
                if engine is not None:
                    engine_events(engine, host.state_dir, timeline)
                timelines.append(timeline)
                print(
                    f"  deploy {n:2d}: switch +{timeline.switched:.3f}s,"
                    f" done +{timeline.ended:.3f}s",
                    flush=True,
                )
            # The same deploys without the CLI: the control plane's own overhead.
            by_api = []
            for n in range(args.deploys + 1, args.deploys + 1 + args.api_deploys):
                timeline = api_deploy(host.state_dir, config, f"v{n}", tags[n % 2])
                if engine is not None:
                    engine_events(engine, host.state_dir, timeline)
                by_api.append(timeline)
                print(
                    f"  API deploy {n:2d}: switch +{timeline.switched:.3f}s,"
                    f" done +{timeline.ended:.3f}s",
                    flush=True,
                )
            # The peer again, under the same load: what starting the app costs on this busy
            # host without Baton (the deploy figures above pay that cost too).
            if docker:
                boot_loaded = direct_boot_seconds(str(tags[0]), INSTANCES, 5)
                peers["app_boot_one_container_under_load_s"] = direct_boot_seconds(
                    str(tags[0]), 1, 3
                )
            else:
                boot_loaded = app_boot_seconds(3)
            if args.trace:
                trace_deploy(host.state_dir, config, f"v{args.deploys + args.api_deploys + 1}",
                             tags[(args.deploys + args.api_deploys + 1) % 2])  # fmt: skip
            time.sleep(1.0)
            wrk.send_signal(signal.SIGINT)  # wrk prints its report on SIGINT
            out, _ = wrk.communicate(timeout=30)
            result = parse_wrk(out)
        finally:
            if wrk is not None and wrk.poll() is None:
                wrk.kill()
            if engine is not None:
                engine.close()
            host.run("down", timeout=120)

    # The CLI's share: when the deployment's header line reached `baton deploy`, less when it
    # reached a client of the API itself (no CLI start-up, no request building).
    api_header = statistics.median((t.header or 0.0) for t in by_api) if by_api else 0.0
    cli = statistics.median((t.header or 0.0) for t in timelines) - api_header
    cli_cpu = statistics.median(t.cpu for t in timelines)
    # The same deploys' switch through the CLI less through the API: the CLI's cost to the
    # switch. ``cli`` above also counts the lag of its first lines (it shows them once it
    # has imported what renders them, while the daemon works), which delays no switch.
    cli_switch = (
        statistics.median((t.switched or 0.0) for t in timelines)
        - statistics.median((t.switched or 0.0) for t in by_api)
        if by_api
        else float("nan")
    )
    print(f"`baton deploy` up to its request: {cli:.3f}s; its CPU per deploy: {cli_cpu:.3f}s;"
          f" its switch later than an API client's (medians): {cli_switch:.3f}s")  # fmt: skip
    switch = [(t.switched or 0.0) - boot for t in timelines]
    end = [t.ended - boot for t in timelines]
    parts = [t.parts(boot, cli) for t in timelines]
    breakdown = {name: statistics.median(p[name] for p in parts) for name in parts[0]}
    if by_api:  # measured directly there, rather than as a difference of two noisy figures
        breakdown["api"] = statistics.median((t.header or 0.0) for t in by_api)
    # The same parts timed on the API deploys (their events arrive as the daemon sends them),
    # with the CLI's cost to the switch in front: these add up to the overhead.
    api_parts = [t.parts(boot, 0.0) for t in by_api]
    breakdown_api = {"cli_switch_lag": cli_switch}
    for name in ("api", "prepare", "start_ready_minus_boot", "switch"):
        if api_parts:
            breakdown_api[name] = statistics.median(p[name] for p in api_parts)
    report: dict[str, Any] = {
        "runtime": args.runtime,
        "strategy": args.strategy,
        "deploys": args.deploys,
        "app_boot_s": boot,
        "app_boot_under_load_s": boot_loaded,
        **peers,
        "cli_start_s": cli_start,
        "cli_to_request_s": cli,
        "cli_to_request_cpu_s": cli_cpu,
        "cli_switch_later_than_api_s": cli_switch,
        "overhead_to_switch_s": summary(switch),
        "overhead_to_end_s": summary(end),
        "overhead_to_switch_minus_loaded_boot_s": summary([x + boot - boot_loaded for x in switch]),
        "overhead_breakdown_median_s": breakdown,
        "overhead_breakdown_api_median_s": breakdown_api,
        "api_overhead_to_switch_s": summary(
            [(t.switched or 0.0) - boot for t in by_api] or [float("nan")]
        ),
        "wrk": result.as_dict(),
    }
    target = 0.5 if docker else 0.25
    s, e = report["overhead_to_switch_s"], report["overhead_to_end_s"]
    print(
        f"\n{args.deploys} {args.strategy} deploys ({args.runtime}) under wrk -c{args.connections}:"
    )
    print(f"  Baton overhead to the switch (minus app boot): median {s['median']:.3f}s,"
          f" p90 {s['p90']:.3f}s, max {s['max']:.3f}s  (target < {target} s)")  # fmt: skip
    print(f"  Baton overhead to the end    (minus app boot): median {e['median']:.3f}s,"
          f" p90 {e['p90']:.3f}s, max {e['max']:.3f}s")  # fmt: skip
    ls = report["overhead_to_switch_minus_loaded_boot_s"]
    print(f"  app boot under the same load{f' ({INSTANCES} containers)' if docker else ''}:"
          f" {boot_loaded:.3f}s; overhead to the switch minus"
          f" that: median {ls['median']:.3f}s, p90 {ls['p90']:.3f}s")  # fmt: skip
    if docker:
        # The API deploys only: `baton deploy` prints a step's line late while it imports
        # what renders it, which the engine's own clock would count as Baton's.
        split = engine_parts(by_api)
        report["start_ready_split_median_s"] = split
        if split:
            print(f"  start + readiness of the API deploys (medians, from the engine's events):"
                  f" start step to the engine's first create {split['to_create']:.3f}s,"
                  f" first create to last start (the engine's) {split['engine']:.3f}s,"
                  f" last start to the switch step {split['after_start']:.3f}s")  # fmt: skip
        one = peers["app_boot_one_container_s"]
        vs_one = summary([x + boot - one for x in switch])
        report["overhead_to_switch_minus_one_container_s"] = vs_one
        print(f"  one container's boot alone: {one:.3f}s; overhead to the switch minus that"
              f" (the engine's cost of the second container counted as Baton's): median"
              f" {vs_one['median']:.3f}s, p90 {vs_one['p90']:.3f}s")  # fmt: skip
    a = report["api_overhead_to_switch_s"]
    print(f"  the same through the API, without the CLI: median {a['median']:.3f}s,"
          f" p90 {a['p90']:.3f}s  (the control plane's own overhead)")  # fmt: skip
    print("  where the overhead to the switch goes (medians): "
          + ", ".join(f"{name} {value:.3f}s" for name, value in breakdown.items()))  # fmt: skip
    print("  the same timed on the API deploys, after the CLI's switch lag (medians): "
          + ", ".join(f"{name} {value:.3f}s" for name, value in breakdown_api.items()))  # fmt: skip
    print(f"  wrk: {result.requests} requests, {result.rps:.0f} req/s, failed: {result.errors}"
          f" (socket errors {result.socket_errors or 0}, non-2xx/3xx {result.non_2xx_3xx})")  # fmt: skip
    return report


# ------------------------------------------------------------------ one deploy traced


def trace_deploy(state_dir: Path, config: Path, version: str, image: str | None) -> None:
    """One API deploy up to its switch: each progress event as it arrived and, for Docker,
    each container event the engine recorded (create, start), in seconds from the request:
    what waits on what."""
    body: dict[str, Any] = {"config": str(config), "version": version}
    if image is not None:
        body["image"] = image
    else:
        body["env"] = {"APP_VERSION": version}
    since = time.time()
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    conn = _UnixHTTPConnection(state_dir / "baton.sock")
    try:
        conn.request("POST", "/deploy", json.dumps(body), {"Content-Type": "application/json"})
        for raw in conn.getresponse():
            at = time.monotonic() - started
            event = json.loads(raw)
            kind = str(event.get("event"))
            what = {
                "step": str(event.get("step")),
                "instance": f"#{event.get('index')} {event.get('state')}",
                "probe": f"#{event.get('index')} {event.get('message')}",
            }.get(kind, "")
            lines.append((at, f"baton  {kind} {what}".rstrip()))
    finally:
        conn.close()
    if image is not None:
        import docker

        client = docker.from_env(timeout=30)
        try:
            for event in client.api.events(
                since=since,
                until=time.time(),
                decode=True,
                filters={"type": "container", "label": f"baton.state_dir={state_dir}"},
            ):
                at = event["timeNano"] / 1e9 - since
                instance = (event.get("Actor") or {}).get("Attributes", {}).get("baton.instance")
                if event.get("Action") in ("create", "start") and at >= 0:
                    lines.append((at, f"engine {event['Action']} #{instance}"))
        finally:
            client.close()
    print(f"\none API deploy ({version}) traced, seconds from the request:")
    switched = next((at for at, line in lines if line.startswith("baton  switch")), math.inf)
    for at, line in sorted(lines):
        if at <= switched:
            print(f"  {at:6.3f}  {line}")


# ------------------------------------------------------------------ rolling with WebSockets

WS_INSTANCES = 3
WS_DRAIN = 5.0


def open_websocket(port: int) -> socket.socket:
    """A WebSocket through the proxy to the app's /ws, held open (never read again)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("a WebSocket handshake through the proxy got no answer")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"the WebSocket handshake was refused: {head[:80]!r}")
    return sock


def rolling_seconds(websockets: int) -> float:
    """Seconds of one rolling deploy (launch to exit) with ``websockets`` held open."""
    with tempfile.TemporaryDirectory(prefix="baton-bench-ws-") as tmp:
        host = bench_host(Path(tmp))
        config = host.config(
            {
                "app": "wsbench",
                "run": {
                    "command": f"exec {sys.executable} {BACKEND} --grace 1",
                    "cwd": None,
                    "env": {"APP_VERSION": "v0"},
                },
                "instances": WS_INSTANCES,
                "health": {"interval": f"{int(HEALTH_INTERVAL * 1000)}ms"},
                "deploy": {
                    "strategy": "rolling",
                    "max_surge": 1,
                    "ready_timeout": "30s",
                    "drain_timeout": f"{WS_DRAIN:g}s",
                },
            }
        )
        must(host.run("up", "--detach", timeout=60), "baton up")
        sockets: list[socket.socket] = []
        try:
            timed_deploy(host, config, "v0")
            sockets = [open_websocket(host.port) for _ in range(websockets)]
            return timed_deploy(host, config, "v1").ended
        finally:
            for sock in sockets:
                sock.close()
            host.run("down", timeout=120)


def rolling_with_websockets(websockets: int) -> dict[str, Any]:
    without = rolling_seconds(0)
    with_ws = rolling_seconds(websockets)
    print(
        f"\nrolling deploy ({WS_INSTANCES} instances, one at a time, drain_timeout"
        f" {WS_DRAIN:g}s): {without:.2f}s without WebSockets, {with_ws:.2f}s with {websockets}"
        f" open ({with_ws / without:.1f}x)"
    )
    return {
        "instances": WS_INSTANCES,
        "drain_timeout_s": WS_DRAIN,
        "websockets": websockets,
        "without_s": without,
        "with_s": with_ws,
    }


def _timed(fn: Any) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
