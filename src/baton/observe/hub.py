"""Where deployment events go besides the CLI: metrics, structured logs, live dashboards.

The engine calls ``publish`` once per event it emits (``DeploymentRun.emit``). This module
owns the list of listeners and the one ``ControlMetrics`` of the process; a listener that
raises is logged and skipped, so watching a deployment can never break it. ``changed`` is an
``asyncio.Event``-like pulse that dashboards wait on to push a fresh view at once instead of
on their next tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from baton.observe.metrics import METRICS
from baton.observe.signals import SIGNALS

log = logging.getLogger("baton.deploy")

Listener = Callable[[int, str, str, Mapping[str, Any]], None]

_listeners: list[Listener] = []
_pulse: list[asyncio.Event] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener(deployment_id, app, version, event)`` for every event; returns the
    function that unsubscribes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def publish(deployment_id: int, app: str, version: str, event: Mapping[str, Any]) -> None:
    METRICS.observe(deployment_id, app, event)
    SIGNALS.on_event(deployment_id, app, version, event)
    _log_event(deployment_id, app, version, event)
    for listener in list(_listeners):
        try:
            listener(deployment_id, app, version, event)
        except Exception:
            log.exception("a deployment event listener failed; going on")
    for pulse in _pulse:
        pulse.set()


def pulse() -> asyncio.Event:
    """An event set whenever a deployment event is published (clear it after waking)."""
    event = asyncio.Event()
    _pulse.append(event)
    return event


def forget_pulse(event: asyncio.Event) -> None:
    if event in _pulse:
        _pulse.remove(event)


# Events worth a line at INFO; the rest (probes, instance progress) at DEBUG.
_NOTABLE = ("deployment", "step", "switch", "verdict", "canary", "verify", "warning", "result")
# Event fields safe and short enough for a log line (never env, command or hook output).
_LOGGED = ("step", "batch", "strategy", "previous", "status", "verdict", "decision", "message")


def _log_event(deployment_id: int, app: str, version: str, event: Mapping[str, Any]) -> None:
    kind = str(event.get("event"))
    if kind in ("output", "log", "hook_output", "progress"):
        return
    parts = [f"{k}={event[k]}" for k in _LOGGED if event.get(k) not in (None, "")]
    log.log(
        logging.INFO if kind in _NOTABLE else logging.DEBUG,
        "deployment #%s %s %s: %s %s",
        deployment_id,
        app,
        version,
        kind,
        " ".join(parts),
        extra={"deployment_id": deployment_id, "app": app, "version": version, "event": kind},
    )
