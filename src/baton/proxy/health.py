"""Active health checks of every routed target.

One asyncio task per routed target, reconciled after every table swap: a target that left
the table loses its checker, a new target (or a changed check) gets a fresh one. A check
is a TCP connect, or an HTTP/1.1 GET of the app's health path expecting 2xx, with the
app's interval and time-out; ``Target.record_health`` applies the rise/fall thresholds.
Passive ejection (consecutive connect failures of real requests) lives in ``Target``; the
active checker is what brings an ejected target back.
"""

from __future__ import annotations

import asyncio
import contextlib

from baton.proxy.routing import HealthSpec
from baton.proxy.server import Proxy
from baton.proxy.upstream import Target


async def check_once(target: Target, spec: HealthSpec) -> bool:
    """One check of one target; True when it passes."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            if spec.kind == "tcp":
                return True
            writer.write(
                b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: baton-health\r\n"
                b"Connection: close\r\n\r\n" % (spec.path.encode(), target.address.encode())
                if spec.path
                else b""
            )
            line = await reader.readline()
            parts = line.split(None, 2)
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] == b"2"
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class HealthChecker:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.tasks: dict[str, tuple[HealthSpec, asyncio.Task[None]]] = {}
        proxy.on_table_change.append(self.reconcile)

    def reconcile(self) -> None:
        wanted: dict[str, HealthSpec] = {}
        for app in self.proxy.table.apps.values():
            for rel in app.releases:
                for t in rel.targets:
                    wanted.setdefault(t.address, app.spec.health)
        for address, (spec, task) in list(self.tasks.items()):
            if wanted.get(address) != spec:
                task.cancel()
                del self.tasks[address]
        for address, spec in wanted.items():
            if address not in self.tasks:
                target = self.proxy.targets[address]
                task = self.proxy.loop.create_task(self._run(target, spec))
                self.tasks[address] = (spec, task)

    async def _run(self, target: Target, spec: HealthSpec) -> None:
        while True:
            await asyncio.sleep(spec.interval)
            ok = await check_once(target, spec)
            was = target.healthy
            target.record_health(ok, spec.rise, spec.fall)
            if target.healthy and not was:
                self.proxy.wake_queued()  # requests waiting for this app may go now

    def stop(self) -> None:
        for _, task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
