"""The runtime interface: where a release's instances run.

A runtime starts an instance of a release and returns its address, stops it (SIGTERM, a
grace period, then SIGKILL), says whether it is still alive, gives its logs, and lists the
instances it owns so the control plane can clean up after a crash. Runtimes are picked by
name from the config (``run.runtime``): ``process`` is the embedded default, ``docker``
comes later. Nothing here touches the proxy or the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class InstanceSpec:
    """What to start: one instance of one release of an app."""

    app: str
    version: str
    index: int
    command: str | list[str]  # a string runs through /bin/sh -c; a list is exec'd as is
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = Path(".")


@dataclass(frozen=True)
class Instance:
    """A started instance. ``ref`` is the runtime's own handle (a pid, a container id)."""

    app: str
    version: str
    index: int
    address: str  # "127.0.0.1:PORT", what the proxy connects to
    ref: str
    log_path: Path | None = None

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


class Runtime(Protocol):
    name: str

    async def start(self, spec: InstanceSpec) -> Instance:
        """Start the instance on a free loopback port; return once it is spawned (not ready)."""

    async def stop(self, instance: Instance, timeout: float) -> None:
        """SIGTERM (or the runtime's equivalent), wait ``timeout`` s, then SIGKILL. Idempotent."""

    async def alive(self, instance: Instance) -> bool:
        """Whether the instance's process/container is still running."""

    async def logs(self, instance: Instance, lines: int | None = None) -> list[str]:
        """The instance's last ``lines`` log lines (all of them when None)."""

    async def owned(self) -> list[Instance]:
        """Every instance this runtime started that is still running (for orphan cleanup)."""
