"""The load generator sees exactly what clients see: nothing lost when all is well, every
failure when a backend dies. Direct to a test backend, no proxy in between."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.load import Load
from tests.support.procs import Backend

CONNECTION_FAILURES = {"reset", "refused", "closed_before_response", "closed_idle_keepalive"}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/", "v1"), ("/stream?n=3&interval=0", "data: 0\n\ndata: 1\n\ndata: 2\n\n")],
    ids=["content-length", "chunked"],
)
async def test_healthy_backend_serves_every_request(backend: Backend, path: str, body: str) -> None:
    result = await Load().run(backend.url + path, concurrency=4, max_requests=400, max_seconds=20)

    assert result.failures == []
    assert result.total == 400
    assert result.statuses == {200: 400}
    assert result.bodies == {body: 400}


async def test_connection_close_after_a_complete_response_is_not_a_failure(
    backend: Backend,
) -> None:
    result = await Load().run(
        backend.url,
        concurrency=2,
        max_requests=100,
        max_seconds=20,
        headers={"Connection": "close"},
    )

    assert result.failures == []
    assert result.bodies == {"v1": 100}


async def test_backend_killed_hard_shows_up_as_failures(backend: Backend) -> None:
    load = await Load().start(backend.url, concurrency=4, max_requests=50_000, max_seconds=20)
    await asyncio.sleep(0.5)
    killed = load.marker("killed")
    backend.kill()
    await asyncio.sleep(0.5)
    result = await load.stop()

    assert result.bodies["v1"] > 0, result.summary()
    assert result.failures, result.summary()
    assert set(result.failure_kinds()) <= CONNECTION_FAILURES, result.summary()
    assert all(not s.ok for s in result.sent_after(killed)), result.summary()
