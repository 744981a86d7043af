"""Old batches retired in the background: a rolling deploy's drain + stop of each old batch.

An old rolling batch is out of the route table from its switch on, so its drain (waiting up
to ``deploy.drain_timeout`` for in-flight requests and open WebSockets) and its stop need not
hold up the next batch: the executor hands them to ``Retiring.start`` as one task per batch
and goes on. ``Retiring`` owns those tasks: ``wait`` (before the release is recorded as
live) awaits every one of them and returns their errors, which the executor reports as
warnings (a failed stop of an old instance never fails a deploy whose new release serves);
``abandon`` (undo, or a control plane going away) cancels each task still *draining* (its
instances still run and are routed again by the undo) and lets each task already
*stopping* finish, so that undo sees each old instance either running or stopped, never
half-way, and starts replacements for the stopped ones (``undo.restart_previous``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar


class Step(Protocol):
    """What a retirement needs of a step (a ``steps.Move``; not imported: steps imports
    deployment, which holds a ``Retiring``)."""

    @property
    def kind(self) -> str: ...


S = TypeVar("S", bound=Step)

Phase = Literal["draining", "stopping", "done"]


@dataclass
class Retirement:
    """One old batch being drained, then stopped, by a background task."""

    batch: int | None
    phase: Phase = "draining"
    task: asyncio.Task[None] | None = None


@dataclass
class Retiring:
    """The background retirements of one deployment (see the module docstring)."""

    batches: list[Retirement] = field(default_factory=list)

    def start(
        self, batch: int | None, moves: Sequence[S], run: Callable[[S], Awaitable[None]]
    ) -> Retirement:
        """Run ``moves`` (a drain, then a stop) one after the other in a task of their own."""
        retirement = Retirement(batch)

        async def retire() -> None:
            try:
                for move in moves:
                    if move.kind == "stop":
                        retirement.phase = "stopping"
                    await run(move)
            finally:
                retirement.phase = "done"

        retirement.task = asyncio.ensure_future(retire())
        self.batches.append(retirement)
        return retirement

    @property
    def pending(self) -> bool:
        return any(r.phase != "done" for r in self.batches)

    async def wait(self) -> list[BaseException]:
        """Await every retirement; return the errors they ended with (and forget them)."""
        batches, self.batches = self.batches, []
        tasks = [r.task for r in batches if r.task is not None]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        ]

    async def abandon(self) -> None:
        """Cancel the retirements still draining, let those stopping finish, await all."""
        batches, self.batches = self.batches, []
        for retirement in batches:
            if retirement.phase == "draining" and retirement.task is not None:
                retirement.task.cancel()
        await asyncio.gather(
            *(r.task for r in batches if r.task is not None), return_exceptions=True
        )
