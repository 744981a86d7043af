"""Route publishing: the route table, always rebuilt from the store, sent to the proxy.

``Router`` owns what the proxy is told: for each app, its releases with routed instances as
weighted pools (``plan.app_route``), the newest release's options, and a running canary's
fuse. It pushes one app or the whole table at a time (a lock keeps pushes in order), so the
store and the proxy never disagree for long; a proxy being restarted is waited for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from baton.deploy.plan import (
    ArmedFuse,
    Pool,
    app_route,
    primary_release,
    release_options,
    route_table,
)
from baton.deploy.proxyclient import ProxyClient, ProxyUnavailable
from baton.state.states import InstanceState
from baton.state.store import ReleaseRow, Store


class Router:
    """Builds route tables from the store and sends them to the proxy, one at a time."""

    def __init__(self, store: Store, proxy: ProxyClient) -> None:
        self.store = store
        self.proxy = proxy
        self._lock = asyncio.Lock()
        self.fuses: dict[str, ArmedFuse] = {}  # app -> its running canary's fuse
        self.acme_dir: str | None = None  # where ACME certificates live (server/certs.py)

    def pools(self, app: str) -> list[tuple[ReleaseRow, Pool]]:
        pools = []
        for release in self.store.releases(app):
            targets = tuple(
                i.address for i in self.store.instances(release.id, (InstanceState.ROUTED,))
            )
            if targets:
                pools.append((release, Pool(release.version, release.weight, targets)))
        return pools

    def weights(self, app: str) -> dict[str, int]:
        """Each routed release's weight, as the switch events show them."""
        return {p.release: p.weight for _, p in self.pools(app)}

    def live_config(self, app: str) -> dict[str, Any] | None:
        """The config of the release that sets the app's routing (None when nothing routes)."""
        pools = self.pools(app)
        primary = primary_release([p for _, p in pools])
        return next((dict(r.config) for r, p in pools if p.release == primary), None)

    def app_route(self, app: str) -> dict[str, Any] | None:
        pools = self.pools(app)
        primary = primary_release([p for _, p in pools])
        config = next((r.config for r, p in pools if p.release == primary), None)
        if config is None:
            return None
        route = app_route(config, [p for _, p in pools], self.acme_dir)
        if route is not None:
            route.update(release_options(pools[-1][0].config))  # the newest release decides
            armed = self.fuses.get(app)
            if armed is not None and any(r.id == armed.release_id for r, _ in pools):
                armed.apply(route)
        return route

    def table(self) -> dict[str, Any]:
        return route_table({a.name: self.app_route(a.name) for a in self.store.apps()})

    def listens(self) -> list[str]:
        table = self.table()
        # HTTPS listeners are opened by the table itself (they need its certificates).
        return sorted({r["listen"] for r in table["apps"].values() if "tls" not in r})

    async def push_app(self, app: str, *, retry_for: float = 15.0) -> None:
        """Send one app's routes; wait (bounded) for a proxy that is being restarted."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                async with self._lock:
                    route = self.app_route(app)
                    if route is None:
                        await self.proxy.delete_app(app)
                    else:
                        await self.proxy.put_app(app, route)
                return
            except ProxyUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def push_all(self) -> None:
        async with self._lock:
            await self.proxy.put_routes(self.table())
