"""Retiring: old rolling batches drained and stopped in the background (deploy.background)."""

from __future__ import annotations

import asyncio

from baton.deploy.background import Retiring
from baton.deploy.steps import Move


def _batch(n: int) -> list[Move]:
    return [Move("drain", old=(n,), batch=n), Move("stop", old=(n,), batch=n)]


async def test_wait_runs_drain_then_stop_and_returns_the_errors() -> None:
    done: list[str] = []

    async def run(move: Move) -> None:
        done.append(move.stored)
        if move.kind == "stop" and move.batch == 1:
            raise RuntimeError("stop failed")

    retiring = Retiring()
    retiring.start(0, _batch(0), run)
    retiring.start(1, _batch(1), run)
    errors = await retiring.wait()
    assert [str(e) for e in errors] == ["stop failed"]
    assert sorted(done) == ["drain#0", "drain#1", "stop#0", "stop#1"]
    assert done.index("drain#0") < done.index("stop#0")
    assert not retiring.pending


async def test_abandon_cancels_a_drain_and_lets_a_stop_finish() -> None:
    stopping = asyncio.Event()
    release_stop = asyncio.Event()
    done: list[str] = []

    async def run(move: Move) -> None:
        if move.batch == 0 and move.kind == "drain":
            await asyncio.sleep(3600)  # an old batch with a WebSocket that never ends
        if move.batch == 1 and move.kind == "stop":
            stopping.set()
            await release_stop.wait()
        done.append(move.stored)

    retiring = Retiring()
    draining = retiring.start(0, _batch(0), run)
    stopped = retiring.start(1, _batch(1), run)
    await asyncio.wait_for(stopping.wait(), 10)
    assert (draining.phase, stopped.phase) == ("draining", "stopping")
    abandon = asyncio.ensure_future(retiring.abandon())
    await asyncio.sleep(0)
    assert not abandon.done()  # the stop in progress is awaited, not cut short
    release_stop.set()
    await asyncio.wait_for(abandon, 10)
    assert done == ["drain#1", "stop#1"]  # batch 0 never got to its stop
    assert draining.task is not None and draining.task.cancelled()
