"""A Docker engine per test host: a dockerd started inside a `NetLab` host's namespace.

A container started by the root namespace's dockerd publishes its port in the root
namespace, which a host's Baton daemon (inside its own namespace) cannot reach, nor can the
other hosts. So each app host of a fleet test gets an engine of its own, started with
``ip netns exec`` in the host's namespace: its own ``--data-root`` (under the test's tmp
dir), ``--exec-root``, ``--pidfile`` and ``-H unix://`` socket (under a short
``/tmp/bdk<test pid>-<host>-<random>`` dir: Unix socket paths are limited to 108 bytes),
``--config-file`` an empty one (the machine's ``/etc/docker/daemon.json`` is not read), and
a containerd it manages itself (started inside the namespace, its socket under the exec
root). Its bridge, its iptables rules and the ports it publishes are the namespace's own,
so a port published on the host's address (``--instance-ip``) is reachable from the other
hosts and nothing in the root namespace changes.

Checked on Debian 12's docker.io (20.10): ``ip netns exec`` gives the command a mount
namespace of its own with a fresh ``/sys`` for the network namespace, which hides
``/sys/fs/cgroup``; dockerd cannot start containers without it. So the engine runs under a
``sh`` that first mounts the cgroup hierarchies the machine has (read from
``/proc/self/mounts``: a tmpfs with each v1 controller, or the v2 hierarchy) in that
private mount namespace, then ``exec``s dockerd. Everything the engine mounts (overlays, the
containers' network namespaces) stays in that mount namespace (``ip netns exec`` makes
``/`` a slave) and goes away with its last process.

``NsDocker(lab, host, root).start()`` waits until the engine answers ``GET /_ping``;
``env()`` is ``DOCKER_HOST`` for the host's Baton daemon; ``build(tag, version, ...)``
builds a ``tests.support.images`` image (FROM scratch + busybox-static) into it and
``copy_image(tag, other)`` moves it to another engine with ``docker save``/``load`` (the
same image ID on every host, as a registry would give). ``stop()`` removes every container,
stops the engine (SIGTERM, then SIGKILL), kills whatever of it is left (containerd, shims,
by the run dir in their command line, and their children), unmounts anything left under its
dirs and deletes them; the ``engines`` context manager does that for every engine started
in it, failed test or not, after first sweeping the engines of test processes that are gone.

Needs root (as the netns lab does): `require_netns` skips without it, or fails in CI
(``BATON_REQUIRE_NETNS=1``); a missing ``dockerd`` does the same.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from baton.runtime.process import pid_alive
from tests.support.images import build_httpd_image
from tests.support.netns import NetLab, require_netns
from tests.support.procs import ManagedProcess

RUN_PREFIX = "bdk"  # /tmp/bdk<test pid>-<host>-<random>: an engine's exec root and socket
_RUN_DIR = re.compile(rf"/tmp/{RUN_PREFIX}(\d+)-[A-Za-z0-9_.-]+")
_MOUNT_FLAGS = {"rw", "ro", "relatime", "noatime", "nodiratime", "nosuid", "nodev", "noexec"}


def require_dockerd() -> None:
    """Skip (or, in CI, fail) unless namespaces and ``dockerd`` are both there."""
    require_netns()
    if shutil.which("dockerd") is None:
        reason = "dockerd is not installed (Debian's docker.io)"
        if os.environ.get("BATON_REQUIRE_NETNS") == "1":
            pytest.fail(f"netns Docker tests required (BATON_REQUIRE_NETNS=1): {reason}")
        pytest.skip(reason)


def cgroup_mounts(mounts: str) -> list[str]:
    """The shell commands that mount, in a fresh mount namespace, the cgroup hierarchies
    ``mounts`` (the text of ``/proc/self/mounts``) has under ``/sys/fs/cgroup``."""
    commands: list[str] = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[1].startswith("/sys/fs/cgroup"):
            continue
        target, kind, options = fields[1], fields[2], fields[3].split(",")
        kept = [o for o in options if o not in _MOUNT_FLAGS]
        if kind == "tmpfs" and target == "/sys/fs/cgroup":
            commands.append("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup")
        elif kind == "cgroup2":
            commands.append(f"mkdir -p {target} && mount -t cgroup2 cgroup2 {target}")
        elif kind == "cgroup":
            if kept and all(o.startswith("name=") for o in kept):
                kept = ["none", *kept]  # a named hierarchy with no controller
            commands.append(
                f"mkdir -p {target} && mount -t cgroup -o {','.join(kept)} cgroup {target}"
            )
    return commands


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid → (parent pid, command line)."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (ppid, cmdline)
    return found


def _kill_tree(roots: set[int]) -> None:
    """SIGKILL ``roots`` and every descendant of them (the containers under the shims)."""
    processes = _processes()
    doomed = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in processes.items():
            if ppid in doomed and pid not in doomed:
                doomed.add(pid)
                grew = True
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _unmount_under(*dirs: Path) -> None:
    """Lazily unmount whatever the root namespace has mounted under ``dirs`` (nothing, when
    the engine kept its mounts in its own namespace, as it should)."""
    prefixes = tuple(str(d) + "/" for d in dirs)
    for line in Path("/proc/self/mounts").read_text().splitlines()[::-1]:
        target = line.split()[1] if len(line.split()) > 1 else ""
        if target.startswith(prefixes):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def sweep_stale() -> None:
    """Kill the engines (and their containers) of test processes that are gone, and delete
    their run dirs."""
    stale: dict[str, set[int]] = {}
    for pid, (_, cmdline) in _processes().items():
        for match in _RUN_DIR.finditer(cmdline):
            if not pid_alive(int(match.group(1))):
                stale.setdefault(match.group(0), set()).add(pid)
    for run_dir, pids in stale.items():
        _kill_tree(pids)
        _unmount_under(Path(run_dir))
    for entry in Path("/tmp").glob(f"{RUN_PREFIX}*-*"):
        ours = _RUN_DIR.fullmatch(str(entry))
        if ours is not None and not pid_alive(int(ours.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _ping(sock: Path, timeout: float = 2.0) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return s.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


class NsDocker:
    """One dockerd inside ``host``'s namespace of ``lab``; its data under ``root``."""

    def __init__(self, lab: NetLab, host: str, root: Path) -> None:
        self.lab, self.host = lab, host
        self.data_root = root / "docker-data"
        self.run_dir = Path(
            tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-{host}-", dir="/tmp")
        )
        self.socket = self.run_dir / "docker.sock"
        self.process: ManagedProcess | None = None
        self._client: Any = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """The environment a Baton daemon on this host needs to use this engine."""
        return {"DOCKER_HOST": self.docker_host}

    def start(self, timeout: float = 90.0) -> Self:
        self.data_root.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "daemon.json"
        config.write_text("{}\n")
        dockerd = [
            "dockerd",
            "--config-file", str(config),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.run_dir / "exec"),
            "--pidfile", str(self.run_dir / "docker.pid"),
            "-H", self.docker_host,
        ]  # fmt: skip
        script = " && ".join(
            [*cgroup_mounts(Path("/proc/self/mounts").read_text()), "exec " + shlex.join(dockerd)]
        )
        self.process = self.lab.run(self.host, ["sh", "-c", script], log_dir=self.run_dir)
        deadline = time.monotonic() + timeout
        while not _ping(self.socket):
            if not self.process.alive or time.monotonic() > deadline:
                raise RuntimeError(
                    f"dockerd in {self.host}'s namespace did not answer within {timeout:g}s"
                    f" (alive: {self.process.alive}):\n{self.log_tail()}"
                )
            time.sleep(0.1)
        return self

    def log_tail(self, size: int = 3000) -> str:
        path = self.process.stderr_path if self.process is not None else None
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")[-size:]

    def client(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=self.docker_host, timeout=120)
        return self._client

    def build(self, tag: str, version: str, **variant: bool) -> str:
        """Build the busybox httpd image ``tag`` answering ``version`` into this engine."""
        return build_httpd_image(tag, version, client=self.client(), **variant)

    def copy_image(self, tag: str, other: NsDocker) -> None:
        """``docker save`` ``tag`` here and ``docker load`` it into ``other`` (same ID)."""
        data = b"".join(self.client().images.get(tag).save(named=True))
        other.client().images.load(data)

    def image_id(self, tag: str) -> str:
        return str(self.client().images.get(tag).id)

    def containers(self, **filters: str) -> list[Any]:
        """Every container of this engine (running or not), optionally by label."""
        labels = [f"{k}={v}" for k, v in filters.items()]
        found = self.client().containers.list(
            all=True, filters={"label": labels} if labels else {}, ignore_removed=True
        )
        return sorted(found, key=lambda c: str(c.name))

    def stop(self) -> None:
        """Remove every container, stop the engine, remove what is left of it."""
        if self.process is not None and self.process.alive:
            with contextlib.suppress(Exception):
                for container in self.containers():
                    with contextlib.suppress(Exception):
                        container.remove(force=True, v=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self.process is not None:
            self.process.stop(timeout=30)
        left = {pid for pid, (_, cmd) in _processes().items() if str(self.run_dir) in cmd}
        _kill_tree(left)
        _unmount_under(self.run_dir, self.data_root)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.data_root, ignore_errors=True)


class Engines:
    """The engines of one test, by host name; all stopped at the end of ``engines()``."""

    def __init__(self, lab: NetLab, root: Path) -> None:
        self.lab, self.root = lab, root
        self.by_host: dict[str, NsDocker] = {}
        self.repository = f"baton-ns-{uuid.uuid4().hex[:8]}/httpd"

    def start(self, host: str) -> NsDocker:
        engine = NsDocker(self.lab, host, self.root / host)
        self.by_host[host] = engine
        return engine.start()

    def image(self, version: str, hosts: list[str] | None = None, **variant: bool) -> str:
        """``REPOSITORY:VERSION`` on every engine (or on ``hosts``): built once, copied."""
        tag = f"{self.repository}:{version}"
        targets = [self.by_host[h] for h in (hosts or list(self.by_host))]
        targets[0].build(tag, version, **variant)
        for other in targets[1:]:
            targets[0].copy_image(tag, other)
        return tag

    def stop(self) -> None:
        """Stop every engine (each one's log tail printed first: shown when a test fails)."""
        for host, engine in self.by_host.items():
            print(f"--- {host} dockerd log (tail)\n{engine.log_tail()}")
            engine.stop()


@contextlib.contextmanager
def engines(lab: NetLab, root: Path) -> Iterator[Engines]:
    """Engines started in the block (``Engines.start(host)``), all stopped after it."""
    require_dockerd()
    sweep_stale()
    started = Engines(lab, root)
    try:
        yield started
    finally:
        started.stop()
