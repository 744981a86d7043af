"""The process runtime: each instance is a child process group on a loopback port.

Theory of operation. ``start`` picks a free port on 127.0.0.1, spawns the command in a new
session (so the instance and everything it forks form one process group that ``stop`` can
signal as a whole), appends its stdout and stderr to ``<log_dir>/<app>-<version>-<index>.log``
and writes a JSON record to ``<state_dir>/instances/``. The record, not the ``Popen`` object,
is the source of truth: a control plane that crashed and restarted builds a new
``ProcessRuntime`` on the same state dir and finds, checks and stops what the old one started.

Identity. A pid alone can be reused after the process exits, so every record and every
``Instance.ref`` carries the process's start time from ``/proc/PID/stat`` (clock ticks since
boot): ``ref`` is ``"<pid>:<start ticks>"``. A process whose start time differs is somebody
else's and is never signalled.

Bind address. By default instances listen on loopback. A fleet host whose edges route
straight to its instances (``baton up --cluster ... --instance-ip IP``) sets ``bind``: the
port is then picked on that private address, the instance is told it in ``HOST`` (beside
``PORT``) and its address is ``IP:PORT``, reachable from the other hosts.

Reaping. Instances started by this object are our children; we reap them with
``Popen.poll`` whenever we look at them. Instances started by a previous control plane were
re-parented when it died, so their zombies are not ours to reap: a zombie counts as dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.errors import RuntimeFailure
from baton.runtime.base import Instance, InstanceSpec
from baton.runtime.logtail import tail_file
from baton.state.files import open_private, write_private

if TYPE_CHECKING:
    from baton.config import AppConfig

_FOLLOW_POLL = 0.2

_POLL = 0.02  # how often stop() looks for the group to be gone
_KILL_WAIT = 5.0  # after SIGKILL, how long to wait for the kernel to finish the job
LOOPBACK = "127.0.0.1"
_RECENT_PORT_TTL = 60.0  # a port we handed out is not handed out again for this long


def _safe(label: str) -> str:
    """A version label made fit for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", label)[:100] or "_"


@dataclass(frozen=True)
class _ProcStat:
    state: str
    pgrp: int
    start_ticks: int


def _stat(pid: int) -> _ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return _ProcStat(state=fields[0], pgrp=int(fields[2]), start_ticks=int(fields[19]))
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process runs (exists and is not a zombie). Used for Baton's own daemons too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    """Pids of living (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None and st.pgrp == pgid and st.state not in ("Z", "X"):
            members.append(int(entry))
    return members


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _free_port(avoid: set[int], bind: str = LOOPBACK) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((bind, 0))
            port: int = s.getsockname()[1]
        if port not in avoid:
            return port
    raise RuntimeFailure(f"could not find a free port on {bind}")


def parse_ref(ref: str) -> tuple[int, int]:
    """``"<pid>:<start ticks>"`` → (pid, start ticks)."""
    try:
        pid_s, ticks_s = ref.split(":", 1)
        return int(pid_s), int(ticks_s)
    except ValueError:
        raise RuntimeFailure(f"not a process runtime instance reference: {ref!r}") from None


class ProcessRuntime:
    """Runs instances as local child processes. See the module docstring."""

    name = "process"
    tcp_proves_listening = True  # the port is the app's own socket

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.bind = LOOPBACK  # the IPv4 address instances listen on (see the module docstring)
        self.records_dir = self.state_dir / "instances"
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._recent_ports: dict[int, float] = {}
        self._exit_codes: dict[int, int] = {}  # children we reaped (pid -> status)

    # ----------------------------------------------------------------- records

    def _record_path(self, pid: int, ticks: int) -> Path:
        return self.records_dir / f"{pid}-{ticks}.json"

    def _write_record(self, instance: Instance, pgid: int, started_at: float) -> None:
        pid, ticks = parse_ref(instance.ref)
        record = {
            "runtime": self.name,
            "pid": pid,
            "pgid": pgid,
            "start_ticks": ticks,
            "started_at": started_at,
            "app": instance.app,
            "version": instance.version,
            "index": instance.index,
            "address": instance.address,
            "log_path": str(instance.log_path) if instance.log_path else None,
        }
        # Atomic, not fsync'ed: the record outlives a crashed control plane (the page cache
        # keeps it), and a power loss ends the process it describes anyway; an fsync per
        # instance cost every deploy milliseconds (~10 ms each on a busy disk).
        path = self._record_path(pid, ticks)
        write_private(path, json.dumps(record, indent=1).encode(), durable=False)

    def _read_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if not self.records_dir.is_dir():
            return records
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                record["_path"] = path
                records.append(record)
            except (OSError, ValueError):
                continue  # a half-written or foreign file: not ours to interpret
        return records

    @staticmethod
    def _instance_from(record: dict[str, Any]) -> Instance:
        log_path = record.get("log_path")
        return Instance(
            app=record["app"],
            version=record["version"],
            index=int(record["index"]),
            address=record["address"],
            ref=f"{record['pid']}:{record['start_ticks']}",
            log_path=Path(log_path) if log_path else None,
        )

    def _remove_record(self, pid: int, ticks: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(pid, ticks).unlink()

    # ----------------------------------------------------------------- liveness

    def _reap(self, pid: int) -> None:
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            self._exit_codes[pid] = child.returncode

    def _leader_alive(self, pid: int, ticks: int) -> bool:
        self._reap(pid)
        st = _stat(pid)
        return st is not None and st.start_ticks == ticks and st.state not in ("Z", "X")

    def _group_alive(self, pid: int, ticks: int) -> bool:
        """Whether anything of the instance's process group still runs."""
        self._reap(pid)
        st = _stat(pid)
        if st is not None and st.start_ticks != ticks:
            return False  # the pid was reused: the group we started is gone
        if st is not None and st.state not in ("Z", "X"):
            return True
        # The leader is gone but its children may live on; the kernel keeps the pid number
        # reserved while the group it names has members, so those members are ours.
        return bool(_group_members(pid))

    # ----------------------------------------------------------------- interface

    def spec(self, cfg: AppConfig, base: InstanceSpec) -> InstanceSpec:
        if not base.command:
            raise RuntimeFailure(f"{base.app} {base.version}: the process runtime needs a command")
        return base

    async def prepare(self, cfg: AppConfig) -> None:
        return None

    async def healthy(self, instance: Instance) -> bool | None:
        return None  # no health verdict of its own: the probes are the whole story

    def close(self) -> None:
        return None

    async def follow_logs(self, instance: Instance) -> AsyncIterator[str]:
        """Lines appended to the instance's log file from now on (polled)."""
        path = instance.log_path
        if path is None:
            return
        try:
            offset = path.stat().st_size
        except OSError:
            offset = 0
        partial = b""
        while True:
            await asyncio.sleep(_FOLLOW_POLL)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(1 << 20)
            except OSError:
                continue
            if not chunk:
                continue
            offset += len(chunk)
            *complete, partial = (partial + chunk).split(b"\n")
            for raw in complete:
                yield raw.decode(errors="replace")

    async def start(self, spec: InstanceSpec) -> Instance:
        now = time.monotonic()
        self._recent_ports = {
            p: t for p, t in self._recent_ports.items() if now - t < _RECENT_PORT_TTL
        }
        avoid = set(self._recent_ports)
        for record in self._read_records():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                avoid.add(int(str(record["address"]).rsplit(":", 1)[1]))
        port = _free_port(avoid, self.bind)
        self._recent_ports[port] = now

        env = dict(os.environ)
        env.update(spec.env)
        env.update(
            PORT=str(port),
            BATON_APP=spec.app,
            BATON_VERSION=spec.version,
            BATON_INSTANCE=str(spec.index),
        )
        if self.bind != LOOPBACK:
            env["HOST"] = self.bind
        if isinstance(spec.command, str):
            argv = ["/bin/sh", "-c", spec.command]  # the shell expands $PORT from env
        else:
            argv = [
                a.replace("${PORT}", str(port)).replace("$PORT", str(port)) for a in spec.command
            ]
        if not argv:
            raise RuntimeFailure(f"{spec.app} {spec.version}: empty command")

        log_dir = Path(spec.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = (log_dir / f"{spec.app}-{_safe(spec.version)}-{spec.index}.log").absolute()
        started_at = time.time()
        with open_private(log_path) as log:
            log.write(
                f"--- baton: starting {spec.app} {spec.version} #{spec.index} on "
                f"{self.bind}:{port} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()
            )
            log.flush()
            try:
                child = subprocess.Popen(
                    argv,
                    cwd=spec.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except FileNotFoundError as exc:
                missing = exc.filename or argv[0]
                raise RuntimeFailure(
                    f"{spec.app} {spec.version} #{spec.index}: cannot start: "
                    f"{missing} not found (cwd {spec.cwd})"
                ) from None
            except (PermissionError, NotADirectoryError, OSError) as exc:
                raise RuntimeFailure(
                    f"{spec.app} {spec.version} #{spec.index}: cannot start {argv[0]!r}: "
                    f"{exc.strerror or exc}"
                ) from None
        self._children[child.pid] = child
        self._exit_codes.pop(child.pid, None)
        st = _stat(child.pid)
        # The child exists until we reap it, so its stat is readable even if it already exited.
        ticks = st.start_ticks if st is not None else 0
        instance = Instance(
            app=spec.app,
            version=spec.version,
            index=spec.index,
            address=f"{self.bind}:{port}",
            ref=f"{child.pid}:{ticks}",
            log_path=log_path,
        )
        self._write_record(instance, pgid=child.pid, started_at=started_at)
        return instance

    async def stop(self, instance: Instance, timeout: float) -> None:
        pid, ticks = parse_ref(instance.ref)
        if self._group_alive(pid, ticks):
            # start_new_session made the leader's pid the group id.
            _killpg(pid, signal.SIGTERM)
            await self._wait_gone(pid, ticks, timeout)
            if self._group_alive(pid, ticks):
                _killpg(pid, signal.SIGKILL)
                await self._wait_gone(pid, ticks, _KILL_WAIT)
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._exit_codes[pid] = await asyncio.to_thread(child.wait, _KILL_WAIT)
        self._remove_record(pid, ticks)

    async def _wait_gone(self, pid: int, ticks: int, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while self._group_alive(pid, ticks) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)

    async def alive(self, instance: Instance) -> bool:
        pid, ticks = parse_ref(instance.ref)
        return self._leader_alive(pid, ticks)

    async def exit_code(self, instance: Instance) -> int | None:
        """The exit status if this runtime started the instance and it has exited, else None."""
        pid, _ = parse_ref(instance.ref)
        self._reap(pid)
        return self._exit_codes.get(pid)

    async def logs(self, instance: Instance, lines: int | None = None) -> list[str]:
        path = instance.log_path
        if path is None:
            pid, ticks = parse_ref(instance.ref)
            for record in self._read_records():
                if record.get("pid") == pid and record.get("start_ticks") == ticks:
                    path = self._instance_from(record).log_path
        if path is None:
            return []
        return await asyncio.to_thread(tail_file, path, lines)

    async def owned(self) -> list[Instance]:
        found = []
        for record in self._read_records():
            try:
                instance = self._instance_from(record)
                pid, ticks = int(record["pid"]), int(record["start_ticks"])
            except (KeyError, TypeError, ValueError):
                continue
            if self._group_alive(pid, ticks):
                found.append(instance)
            else:
                with contextlib.suppress(FileNotFoundError):
                    record["_path"].unlink()
        return found
