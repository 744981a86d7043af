"""The runtime interface: where a release's instances run.

A runtime starts an instance of a release and returns its address, stops it (SIGTERM, a
grace period, then SIGKILL), says whether it is still alive, gives its logs, and lists the
instances it owns so the control plane can clean up after a crash. Runtimes are picked by
name from the config (``runtime:``) through ``RUNTIMES``, a registry of import strings (as
uvicorn picks its event loop by name): ``process`` is the embedded default, ``docker`` runs
containers. ``Runtimes`` holds one object per name for a state dir, made on first use, so a
host without Docker never talks to a Docker engine unless an app asks for it. Nothing here
touches the proxy or the store.

Beyond start/stop/alive/logs/owned, each runtime says what differs between them, so the
deploy engine never asks which runtime it has:
- ``spec(cfg, base)``: the spec to start, from the app's config and the runtime-neutral part;
- ``prepare(cfg)``: what must hold before a deployment changes anything (docker: the image
  exists locally or was pulled);
- ``tcp_proves_listening``: whether an accepted TCP connection means the app listens (not
  for docker, whose docker-proxy accepts before the app does);
- ``healthy(instance)``: the runtime's own health verdict (docker: the image HEALTHCHECK),
  None when it has none;
- ``follow_logs(instance)``: new log lines as they come.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from baton.errors import UsageError

if TYPE_CHECKING:
    from baton.config import AppConfig


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
    tcp_proves_listening: bool

    def spec(self, cfg: AppConfig, base: InstanceSpec) -> InstanceSpec:
        """The spec this runtime starts for ``base`` (app, version, index, env...) of ``cfg``."""

    async def prepare(self, cfg: AppConfig) -> None:
        """Before a deployment changes anything; raises ``DeploymentFailed`` if it cannot run."""

    async def healthy(self, instance: Instance) -> bool | None:
        """The runtime's own health verdict; None when it has none for this instance."""

    def follow_logs(self, instance: Instance) -> AsyncIterator[str]:
        """Log lines written from now on, until the instance is gone or the caller stops."""

    def close(self) -> None:
        """Release connections (a later call opens new ones)."""

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


# name -> "module:attribute" of a class taking the state dir. Imported on first use.
RUNTIMES: dict[str, str] = {
    "process": "baton.runtime.process:ProcessRuntime",
    "docker": "baton.runtime.docker:DockerRuntime",
}


def runtime_factory(name: str) -> type[Runtime]:
    """The runtime class registered under ``name``."""
    try:
        target = RUNTIMES[name]
    except KeyError:
        known = ", ".join(sorted(RUNTIMES))
        raise UsageError(f"no runtime named {name!r} (known: {known})") from None
    module, _, attribute = target.partition(":")
    cls: type[Runtime] = getattr(importlib.import_module(module), attribute)
    return cls


class Runtimes:
    """One runtime object per name for one state dir, each made on first use."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._made: dict[str, Runtime] = {}

    def get(self, name: str) -> Runtime:
        runtime = self._made.get(name)
        if runtime is None:
            runtime = runtime_factory(name)(self.state_dir)  # type: ignore[call-arg]
            self._made[name] = runtime
        return runtime

    def add(self, runtime: Runtime) -> None:
        """Use this object for its name (a test's or a benchmark's own)."""
        self._made[runtime.name] = runtime

    def close(self) -> None:
        for runtime in self._made.values():
            runtime.close()
