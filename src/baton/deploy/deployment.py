"""One deployment while it runs: what it deploys, what it started, and its event stream.

``Deployment`` is the working record of one deployment (a deploy, a rollback, a contract,
or the replacement of dead instances): the release it puts in, the release it replaces,
the instances it started so far and whether any traffic moved. The executor, the
strategies and undo all read and update it; nothing here does I/O. ``DeploymentRun`` is
its public face: the events emitted so far, kept for any number of followers (the CLI, the
dashboard), and the outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.config import AppConfig
from baton.deploy.background import Retiring
from baton.errors import DeploymentFailed
from baton.events import UNSET, Event, Result
from baton.observe import hub as observe_hub
from baton.runtime.base import Instance
from baton.state.store import InstanceRow, ReleaseRow


def runtime_name(config: dict[str, Any]) -> str:
    """The runtime a stored config runs on (configs from before runtimes existed: process)."""
    return str(config.get("runtime") or "process")


def instance_of(release: ReleaseRow, row: InstanceRow) -> Instance:
    """The runtime's view of a stored instance."""
    return Instance(
        app=release.app,
        version=release.version,
        index=row.index,
        address=row.address,
        ref=row.ref,
        log_path=Path(row.log_path) if row.log_path else None,
    )


class DeploymentRun:
    """A deployment in progress: its events, kept for every follower, and its outcome."""

    def __init__(self, deployment_id: int, app: str, version: str, kind: str) -> None:
        self.id = deployment_id
        self.app = app
        self.version = version
        self.kind = kind
        self.events: list[Event] = []
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def emit(self, event: Event) -> None:
        if event.ts is UNSET:
            event.ts = time.time()
        self.events.append(event)
        observe_hub.publish(self.id, self.app, self.version, event.to_dict())
        self._wake.set()
        self._wake = asyncio.Event()

    def finish(self, result: Result) -> None:
        self.emit(result)
        self.finished = True
        self._wake.set()

    async def follow(self) -> AsyncIterator[Event]:
        """Every event so far, then each new one, until the result."""
        seen = 0
        while True:
            while seen < len(self.events):
                yield self.events[seen]
                seen += 1
            if self.finished:
                return
            await self._wake.wait()


class InstanceFailed(DeploymentFailed):
    """An instance did not start or never became ready; its last log lines come along."""

    def __init__(self, message: str, index: int | None, logs: list[str]) -> None:
        super().__init__(message)
        self.index = index
        self.logs = logs


@dataclass
class Deployment:
    """A deployment's working record (see the module docstring)."""

    run: DeploymentRun
    app: str
    release: ReleaseRow
    cfg: AppConfig
    previous: ReleaseRow | None
    kind: str  # deploy | rollback | contract | replace
    strategy: str  # as configured; the strategy that runs it may differ (see strategies)
    warm_switch: bool = False  # a rollback to a release kept warm: one switch, no start
    switched: bool = False  # some traffic went to the new release
    started: dict[int, tuple[int, Instance]] = field(default_factory=dict)
    finalized: bool = False
    # Old rolling batches draining and stopping in the background (see deploy.background).
    retiring: Retiring = field(default_factory=Retiring)
    app_env: dict[str, str] | None = None  # the app's --env to keep once this deploy succeeds
    secrets: dict[str, str] | None = None  # every secret value of the app, for this deploy
    # A canary driven from outside (a fleet canary without edges): its first weight; then it
    # holds until told a new weight, promote or abort (``baton.deploy.canary.drive``).
    canary_weight: int | None = None
