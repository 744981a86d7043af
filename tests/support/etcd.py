"""A real etcd cluster for tests: three members (or one) on loopback, torn down after.

`EtcdCluster(root, size=3)` starts `etcd` (Debian's etcd-server 3.4) members named m0, m1,
..., each with its own data dir under `root` and its own free client and peer ports on
127.0.0.1, and returns once every member says it is healthy. `kill(i)` SIGKILLs a member
(as if its machine died), `restart(i)` brings it back on the same ports and data dir.
`stop()` ends them all; the `etcd_cluster` fixture does that after the test, failed or not.

Skipped with a clear reason when `etcd` is not installed, except in CI
(`BATON_REQUIRE_ETCD=1`, set by `.ci/run`), where a missing etcd fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import LOOPBACK, ManagedProcess, ProcessError, free_port

READY_TIMEOUT = 30.0


def etcd_binary() -> str:
    """The `etcd` program, or skip (fail in CI) with a reason."""
    found = shutil.which("etcd")
    if found is None:
        reason = "etcd is not installed (Debian: apt-get install etcd-server)"
        if os.environ.get("BATON_REQUIRE_ETCD") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class EtcdCluster:
    def __init__(self, root: Path, size: int = 3, host: str = LOOPBACK) -> None:
        self.root = root
        self.host = host
        self.binary = etcd_binary()
        self.names = [f"m{i}" for i in range(size)]
        self.client_ports = [free_port() for _ in self.names]
        self.peer_ports = [free_port() for _ in self.names]
        self.members: list[ManagedProcess | None] = [None] * size
        self.token = f"baton-test-{os.getpid()}-{time.monotonic_ns()}"

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.host}:{port}" for port in self.client_ports]

    @property
    def endpoints_text(self) -> str:
        return ",".join(self.endpoints)

    def _command(self, i: int, state: str) -> list[str]:
        initial = ",".join(
            f"{name}=http://{self.host}:{port}"
            for name, port in zip(self.names, self.peer_ports, strict=True)
        )
        client = f"http://{self.host}:{self.client_ports[i]}"
        peer = f"http://{self.host}:{self.peer_ports[i]}"
        return [
            self.binary,
            "--name", self.names[i],
            "--data-dir", str(self.root / self.names[i]),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", state,
            # Fast elections on loopback: a killed leader is replaced in well under a second.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
        ]  # fmt: skip

    def _spawn(self, i: int, state: str) -> None:
        member = ManagedProcess(
            self._command(i, state), name=f"etcd-{self.names[i]}", log_dir=self.root
        )
        self.members[i] = member
        member.start()  # ready = alive: a member only serves once a quorum is up

    def start(self) -> EtcdCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(len(self.names)):
                self._spawn(i, "new")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self, i: int) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoints[i]}/health", timeout=1.0) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, members: list[int] | None = None) -> None:
        wanted = list(range(len(self.names))) if members is None else members
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(self.healthy(i) for i in wanted):
            for i in wanted:
                member = self.members[i]
                if member is not None and not member.alive:
                    raise ProcessError(f"etcd member {i} exited\n{member.describe()}")
            if time.monotonic() > deadline:
                raise ProcessError(f"etcd members {wanted} not healthy in {READY_TIMEOUT}s")
            time.sleep(0.05)

    def kill(self, i: int) -> None:
        member = self.members[i]
        if member is not None:
            member.kill()

    def restart(self, i: int) -> None:
        self.kill(i)
        self._spawn(i, "existing")
        self.wait_healthy([i])

    def restart_all(self) -> None:
        """Bring every member back (after the whole cluster went down)."""
        for i in range(len(self.names)):
            self.kill(i)
            self._spawn(i, "existing")
        self.wait_healthy()

    def stop(self) -> None:
        for member in self.members:
            if member is not None:
                member.stop(timeout=5)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster on loopback, own data dirs and ports; stopped after the test."""
    cluster = EtcdCluster(tmp_path / "etcd").start()
    try:
        yield cluster
    finally:
        cluster.stop()
