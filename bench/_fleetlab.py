"""What the fleet benchmarks share (bench/fleet.py, bench/edge.py): N Baton hosts on loopback
joined to an etcd cluster, a deploy through the fleet's controller timed to its recorded
outcome, and the sequential peer (each host's daemon API, one host after the other).

Every host is a ``tests.support.host.Host`` (own temp state dir, daemon, proxy on a free
127.0.0.1 port, one instance of the example app), stopped by the caller's ``teardown()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from baton.cluster import keys  # noqa: E402
from baton.cluster.agent import LocalDaemon  # noqa: E402
from baton.cluster.controller import outcome, submit  # noqa: E402
from baton.cluster.etcd import Etcd  # noqa: E402
from tests.support.etcd import EtcdCluster  # noqa: E402
from tests.support.host import Host  # noqa: E402

TIMEOUT = 600.0


async def start_host(root: Path, name: str, endpoints: str, *flags: str) -> Host:
    """One host ``name`` (``baton up --cluster``, ``flags`` added) under ``root / name``."""
    h = Host(root / name)
    h.root.mkdir(parents=True)
    h.config({"instances": 1})
    up = await h.baton(
        "up", "--detach", "--cluster", endpoints, "--host-name", name,
        "--advertise", f"127.0.0.1:{h.port}", *flags, timeout=120,
    )  # fmt: skip
    if up.rc != 0:
        await h.teardown()
        raise RuntimeError(f"baton up failed on {name}: {up}")
    return h


async def fleet_of(n: int, root: Path, endpoints: str) -> list[Host]:
    """N app hosts h1..hN, every one a controller candidate."""
    hosts: list[Host] = []
    try:
        for i in range(n):
            hosts.append(await start_host(root, f"h{i + 1}", endpoints))
    except BaseException:
        for h in hosts:
            await h.teardown()
        raise
    return hosts


async def controller_deploy(
    etcd: Etcd, hosts: list[Host], version: str, deployment: str, **request: Any
) -> float:
    """One fleet deployment of ``version`` to ``hosts`` asked of the elected controller
    (``request``: the rest of the ``DeployRequest``, e.g. ``hosts_at_once``, ``edge``);
    the seconds from the request to its recorded outcome, ``RuntimeError`` if it failed."""
    names = tuple(f"h{i + 1}" for i in range(len(hosts)))
    release = keys.DesiredRelease(
        "shop", version, deployment, "(per host)", env={"APP_VERSION": version}
    )
    configs = {name: str(h.root / "baton.yml") for name, h in zip(names, hosts, strict=True)}
    started = time.monotonic()
    await submit(etcd, keys.DeployRequest(release, names, configs=configs, **request))
    record = await outcome(etcd, "shop", deployment, TIMEOUT)
    took = time.monotonic() - started
    if record.get("state") != "succeeded":
        raise RuntimeError(f"fleet deploy {version} failed: {record}")
    return took


async def sequential_api(hosts: list[Host], version: str) -> float:
    """Each host deployed through its daemon's API, one after the other (no CLI start-up):
    the fair peer of a fleet deployment."""
    started = time.monotonic()
    for h in hosts:
        daemon = LocalDaemon(h.state_dir / "baton.sock")
        body = {
            "config": str(h.root / "baton.yml"),
            "version": version,
            "env": {"APP_VERSION": version},
        }
        try:
            events = [e async for e in daemon.deploy("/deploy", body)]
        finally:
            await daemon.close()
        if not events or not events[-1].get("ok"):
            raise RuntimeError(f"deploy {version} failed: {events[-1:]}")
    return time.monotonic() - started


def arguments(doc: str) -> tuple[list[int], str | None]:
    """The fleet sizes (``--hosts``) and the JSON output path (``--json``) asked for."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--hosts", default="3,6", help="fleet sizes, comma-separated")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    return [int(s) for s in args.hosts.split(",")], args.json_out


async def each_size(
    sizes: list[int],
    prefix: str,
    one_size: Callable[[int, Path, EtcdCluster], Awaitable[dict[str, Any]]],
    json_out: str | None,
) -> list[dict[str, Any]]:
    """``one_size`` for each fleet size, in a temp dir with one 3-member etcd cluster on
    loopback; each row printed as it comes, all of them written to ``json_out`` if given."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cluster = EtcdCluster(Path(tmp) / "etcd").start()
        try:
            for n in sizes:
                rows.append(await one_size(n, Path(tmp) / f"fleet{n}", cluster))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            cluster.stop()
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=2))
    print()
    return rows
