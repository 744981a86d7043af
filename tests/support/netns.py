"""Test hosts as Linux network namespaces on a private subnet the test creates and deletes.

`NetLab(subnet_index)` builds, for one test:

    root namespace (the test, etcd)        hub namespace: bridge br0
      bv<pid>r  10.213.N.1/24  ─── veth ───  r ─┐
                                               ├─ br0
    namespace baton<pid>-web1                  │
      eth0      10.213.N.11/24 ─── veth ───  h1 ─┘   (one veth per host)

The bridge lives in a namespace of its own because the root namespace's firewall (Docker
sets ``FORWARD DROP`` and bridge netfilter) would drop bridged traffic; the hub's tables are
empty. The test reaches every host at its address from the root namespace, and hosts reach
services in the root namespace (etcd) at ``lab.gateway``. Nothing else is routed: traffic
goes only to addresses the lab created. While the lab exists its /24 is the one subnet
besides loopback that `tests.support.load` accepts as a target.

`add_host(name)` makes a namespace (loopback up, one address), `run(name, cmd)` starts a
`ManagedProcess` inside it (``ip netns exec``), `cut(name)` / `restore(name)` take its link
down and up (a partition: its processes keep running and keep serving locally), and
`delete()` removes every namespace and link; the `netlab` fixture does that after the test,
failed or not, and first sweeps namespaces left by test processes that no longer exist.

Needs root and `ip` (iproute2). Otherwise the fixture skips with the reason, except in CI
(`BATON_REQUIRE_NETNS=1`, set by `.ci/run`), where it fails.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.load import allow_lab_network, forbid_lab_network
from tests.support.procs import ManagedProcess

SUBNET = "10.213"  # 10.213.N.0/24, N picked per lab
_OURS = re.compile(r"^baton(\d+)-")


class NetnsError(RuntimeError):
    """An `ip` command failed; carries its output."""


def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def netns_unavailable() -> str | None:
    """Why this machine cannot run netns tests, or None when it can."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def require_netns() -> None:
    reason = netns_unavailable()
    if reason is None:
        return
    if os.environ.get("BATON_REQUIRE_NETNS") == "1":
        pytest.fail(f"netns tests required (BATON_REQUIRE_NETNS=1): {reason}")
    pytest.skip(reason)


def sweep_stale() -> None:
    """Delete namespaces (and with them their links) left by test processes that are gone."""
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = _OURS.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
            continue  # its test still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        fields = line.split(":")
        link = fields[1].strip().split("@")[0] if len(fields) > 1 else ""
        match = re.match(r"^bv(\d+)r$", link)
        if match is not None:
            try:
                os.kill(int(match.group(1)), 0)
            except ProcessLookupError:
                _ip("link", "del", link, check=False)
            except PermissionError:
                pass


def _free_subnet() -> int:
    used = set(re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", _ip("-4", "-o", "addr")))
    choices = [n for n in range(1, 255) if str(n) not in used]
    if not choices:
        raise NetnsError(f"every {SUBNET}.N.0/24 subnet is in use")
    return random.choice(choices)


@dataclass(frozen=True)
class NetHost:
    name: str
    namespace: str
    address: str
    index: int


class NetLab:
    def __init__(self) -> None:
        self.tag = str(os.getpid())
        self.subnet = _free_subnet()
        self.gateway = f"{SUBNET}.{self.subnet}.1"
        self.network = f"{SUBNET}.{self.subnet}.0/24"
        self.hub = f"baton{self.tag}-hub"
        self.root_link = f"bv{self.tag}r"
        self.hosts: dict[str, NetHost] = {}
        self._processes: list[ManagedProcess] = []
        if self.hub in _ip("netns", "list"):
            raise NetnsError(f"a lab already runs in this process ({self.hub})")
        try:
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "set", "lo", "up")
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            _ip(
                "link",
                "add",
                self.root_link,
                "type",
                "veth",
                "peer",
                "name",
                "r",
                "netns",
                self.hub,
            )
            _ip("-n", self.hub, "link", "set", "r", "master", "br0", "up")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.root_link)
            _ip("link", "set", self.root_link, "up")
            allow_lab_network(self.network)
        except BaseException:
            self.delete()
            raise

    def add_host(self, name: str) -> NetHost:
        index = len(self.hosts) + 1
        host = NetHost(
            name, f"baton{self.tag}-{name}", f"{SUBNET}.{self.subnet}.{10 + index}", index
        )
        _ip("netns", "add", host.namespace)
        self.hosts[name] = host
        _ip("-n", host.namespace, "link", "set", "lo", "up")
        _ip(
            "-n", self.hub, "link", "add", f"h{index}", "type", "veth",
            "peer", "name", "eth0", "netns", host.namespace,
        )  # fmt: skip
        _ip("-n", self.hub, "link", "set", f"h{index}", "master", "br0", "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        return host

    def run(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> ManagedProcess:
        """Start ``cmd`` inside host ``name``'s namespace (ready = alive; wait yourself)."""
        host = self.hosts[name]
        proc = ManagedProcess(
            ["ip", "netns", "exec", host.namespace, *cmd],
            env=env,
            cwd=cwd,
            name=f"{name}-{Path(cmd[0]).name}",
            log_dir=log_dir,
        )
        self._processes.append(proc)
        return proc.start()

    def exec(self, name: str, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` to completion inside host ``name``."""
        return subprocess.run(
            ["ip", "netns", "exec", self.hosts[name].namespace, *cmd],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def cut(self, name: str) -> None:
        """Take host ``name``'s link down: it can reach nobody and nobody can reach it."""
        _ip("-n", self.hub, "link", "set", f"h{self.hosts[name].index}", "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.hub, "link", "set", f"h{self.hosts[name].index}", "up")

    def delete(self) -> None:
        for proc in reversed(self._processes):
            proc.close()
        for host in self.hosts.values():
            _ip("netns", "del", host.namespace, check=False)
        _ip("link", "del", self.root_link, check=False)
        _ip("netns", "del", self.hub, check=False)
        forbid_lab_network(self.network)
        self.hosts.clear()


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A private network of namespaces for one test; everything deleted after it."""
    require_netns()
    sweep_stale()
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.delete()
