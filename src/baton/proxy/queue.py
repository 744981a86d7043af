"""Requests waiting for an app that has no healthy target right now.

Theory of operation. When an app has no target to send a request to (its single instance
is being replaced, the first seconds after a reboot), the proxy parks the request here
instead of answering 503, for up to the app's ``queue_timeout``. ``WaitQueues`` holds one
FIFO per app, bounded by the app's ``queue_limit``; it knows nothing about sockets: a
waiter is any object, and the proxy decides what "dispatch" and "time out" mean. Three
events drive it, none of them a poll: a route-table swap and a target turning healthy (or
undrained) call ``take`` for the proxy to try every waiter again, in arrival order (those
still without a target go back, keeping their place and deadline); the proxy's sweeper
calls ``expired`` for the waiters whose time is up (they get 503 with ``Retry-After``).
A waiter whose client went away is dropped by ``prune`` (``gone`` says which).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

W = TypeVar("W")


class Waiting(NamedTuple, Generic[W]):
    app: str
    deadline: float
    waiter: W


class WaitQueues(Generic[W]):
    """Per-app FIFO queues of waiters, each with a deadline, bounded per app."""

    def __init__(self) -> None:
        self._by_app: dict[str, deque[Waiting[W]]] = {}
        self.timeouts: dict[str, int] = {}  # per app: waiters that timed out (a counter)
        self.overflows: dict[str, int] = {}  # per app: requests refused because it was full

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_app.values())

    def __bool__(self) -> bool:
        return bool(self._by_app)

    def waiting(self, app: str) -> int:
        """How many waiters ``app`` has (the ``queued`` gauge)."""
        q = self._by_app.get(app)
        return len(q) if q is not None else 0

    def apps(self) -> list[str]:
        return sorted(self._by_app)

    def push(self, app: str, waiter: W, deadline: float, limit: int) -> bool:
        """Queue ``waiter`` at the back; False (nothing queued) when ``app`` has ``limit``."""
        q = self._by_app.get(app)
        if q is None:
            if limit <= 0:
                self.overflows[app] = self.overflows.get(app, 0) + 1
                return False
            q = self._by_app[app] = deque()
        elif len(q) >= limit:
            self.overflows[app] = self.overflows.get(app, 0) + 1
            return False
        q.append(Waiting(app, deadline, waiter))
        return True

    def take(self) -> list[Waiting[W]]:
        """Every waiter of every app, oldest first per app; the queues are left empty.

        The caller dispatches each one or gives it back with ``put_back`` (which does not
        count against the limit: it already had its place).
        """
        taken = [w for q in self._by_app.values() for w in q]
        self._by_app.clear()
        return taken

    def put_back(self, waiting: Waiting[W]) -> None:
        self._by_app.setdefault(waiting.app, deque()).append(waiting)

    def expired(self, now: float) -> list[Waiting[W]]:
        """Remove and return the waiters whose deadline is at or before ``now``."""
        out: list[Waiting[W]] = []
        for app, q in list(self._by_app.items()):
            if not any(w.deadline <= now for w in q):
                continue
            kept = deque(w for w in q if w.deadline > now)
            out.extend(w for w in q if w.deadline <= now)
            self.timeouts[app] = self.timeouts.get(app, 0) + len(q) - len(kept)
            if kept:
                self._by_app[app] = kept
            else:
                del self._by_app[app]
        return out

    def prune(self, gone: Callable[[W], bool]) -> int:
        """Drop waiters for which ``gone`` is true (their client left); returns how many."""
        dropped = 0
        for app, q in list(self._by_app.items()):
            kept = deque(w for w in q if not gone(w.waiter))
            dropped += len(q) - len(kept)
            if kept:
                self._by_app[app] = kept
            else:
                del self._by_app[app]
        return dropped


def retry_after(queue_timeout: float) -> int:
    """The ``Retry-After`` seconds on a 503 for an app with no healthy target."""
    return max(1, min(30, round(queue_timeout) or 1))


__all__ = ["WaitQueues", "Waiting", "retry_after"]
