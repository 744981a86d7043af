"""Starting and stopping the daemon's optional HTTP endpoints (metrics, dashboard).

``start`` binds what ``Endpoints`` asks for on the running loop and answers the runners to
clean up; a port that cannot be bound is a ``UsageError`` naming the flag, raised before
the daemon reports itself up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from baton.errors import UsageError
from baton.observe.endpoints import Endpoints, metrics_app
from baton.observe.metrics import METRICS

if TYPE_CHECKING:
    from baton.deploy.engine import Engine


class Running(Protocol):
    async def cleanup(self) -> None: ...


class Restarts(Protocol):
    """What the metrics need of the daemon's proxy supervisor: how often it restarted one."""

    @property
    def restarts(self) -> int: ...


class _Stopper:
    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop

    async def cleanup(self) -> None:
        await asyncio.to_thread(self._stop)  # flushes what is still batched


async def start(endpoints: Endpoints, engine: Engine, supervisor: Restarts) -> list[Running]:
    METRICS.register_gauge(
        "baton_proxy_restarts_total",
        "Times the control plane restarted a dead or hung proxy.",
        lambda: [({}, float(supervisor.restarts))],
        kind="counter",
    )
    runners: list[Running] = []
    try:
        if endpoints.otlp is not None:
            from baton.observe import otlp

            runners.append(_Stopper(otlp.start(endpoints.otlp)))
        if endpoints.metrics is not None:
            runner: web.AppRunner = web.AppRunner(
                metrics_app(engine.proxy_client(), endpoints.metrics_token), access_log=None
            )
            await _bind(runner, "--metrics", *endpoints.metrics)
            runners.append(runner)
        if endpoints.dashboard is not None:
            from baton.dashboard.app import dashboard_app

            tls = endpoints.tls()
            runner = web.AppRunner(
                dashboard_app(engine, endpoints.dashboard_token, secure=tls is not None),
                access_log=None,
            )
            await _bind(runner, "--dashboard", *endpoints.dashboard, tls=tls)
            runners.append(runner)
    except BaseException:
        for started in runners:
            await started.cleanup()
        raise
    return runners


async def _bind(runner: web.AppRunner, flag: str, host: str, port: int, tls: object = None) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()  # type: ignore[arg-type]
    except OSError as exc:
        await runner.cleanup()
        raise UsageError(f"{flag} {host}:{port}: cannot listen there: {exc.strerror}") from None
