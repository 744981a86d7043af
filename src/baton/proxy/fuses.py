"""The fuses of one route table: which canary releases have one armed, and the table with
every tripped release at weight 0.

``fuse.py`` owns one fuse (its spec, the trip rule); this module binds them to the apps of a
table (``arm``), applies trips to a table's specs (``enforce``) and keeps the trip events
``GET /fuses`` lists. It imports the table's types; ``fuse.py`` imports nothing of the table,
so the route table can parse fuse specs without an import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from baton.proxy.fuse import MAX_EVENTS, Fuse, renormalise
from baton.proxy.routing import AppSpec


class Fuses:
    """Every canary release's fuse, kept across table swaps, and the trips so far."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Fuse] = {}
        self.events: list[dict[str, Any]] = []
        self.trips = 0  # the number of the last trip event

    def arm(self, specs: Mapping[str, AppSpec]) -> None:
        """Bind the fuses a new table asks for: keep a running fuse, reset one whose
        deployment changed, drop those of releases that are no longer canaries."""
        keep: set[tuple[str, str]] = set()
        for app in specs.values():
            for rel in app.releases:
                if rel.fuse is None:
                    continue
                key = (app.name, rel.name)
                keep.add(key)
                fuse = self.by_key.get(key)
                if fuse is None or fuse.spec.deployment != rel.fuse.deployment:
                    self.by_key[key] = Fuse(rel.fuse)
                elif fuse.spec != rel.fuse and not fuse.tripped:
                    self.by_key[key] = Fuse(rel.fuse)  # new settings: a fresh window
        for key in list(self.by_key):
            if key not in keep:
                del self.by_key[key]

    def get(self, app: str, release: str) -> Fuse | None:
        return self.by_key.get((app, release))

    def tripped(self, app: str, release: str) -> bool:
        fuse = self.by_key.get((app, release))
        return fuse is not None and fuse.tripped

    def enforce(self, specs: Mapping[str, AppSpec]) -> dict[str, AppSpec]:
        """``specs`` with every tripped release at weight 0, the others renormalised."""
        out: dict[str, AppSpec] = {}
        for name, app in specs.items():
            tripped = {r.name for r in app.releases if self.tripped(app.name, r.name)}
            if not tripped or all(r.weight == 0 for r in app.releases if r.name in tripped):
                out[name] = app
                continue
            others = [r for r in app.releases if r.name not in tripped]
            weights = renormalise([r.weight for r in others], [bool(r.targets) for r in others])
            new = dict(zip((r.name for r in others), weights, strict=True))
            releases = tuple(
                dataclasses.replace(r, weight=new.get(r.name, 0)) for r in app.releases
            )
            out[name] = dataclasses.replace(app, releases=releases)
        return out

    def record_trip(self, app: str, release: str, now: float) -> dict[str, Any]:
        """The event for a trip that just happened (kept for ``GET /fuses``)."""
        fuse = self.by_key[(app, release)]
        self.trips += 1
        event = {
            "id": self.trips,
            "app": app,
            "release": release,
            "deployment": fuse.spec.deployment,
            "ts": now,
            **(fuse.trip or {}),
        }
        self.events.append(event)
        del self.events[:-MAX_EVENTS]
        return event

    def since(self, after: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["id"] > after]

    def to_json(self) -> dict[str, Any]:
        apps: dict[str, Any] = {}
        for (app, release), fuse in sorted(self.by_key.items()):
            apps.setdefault(app, {})[release] = fuse.to_json()
        return {"trips": self.trips, "apps": apps, "events": self.events[-50:]}
