"""Fenced writes: what the controller writes to etcd only lands while it still leads.

A leader whose lease lapsed without it knowing (its process paused by SIGSTOP or a long GC,
its host partitioned) would otherwise go on writing desired releases, deployment records and
edge routes on top of the new leader's. ``Fence`` makes each such write one etcd transaction
that also compares the keys the writer holds: ``/baton/controller``'s create revision (the
leader's *term*: a new leader's key has a new one) and, during a rollout, the app's deploy
lock's create revision. When a compare fails the write changes nothing and ``Fenced`` is
raised, which cancels the rollout; the controller then stops leading.

The controller sets its term for everything it runs (``leading``, a context variable), so
any code on the controller's path writes through ``Fence.current(etcd)`` without passing the
term along: ``roll_out`` does. Code that takes an etcd client is handed ``fence.client()``, a
view of the client whose every write is fenced: the controller runs the edge cutover with
one, so the edge routes and records it publishes are fenced too. Outside a controller (a
test, a library caller) the current fence has no term guard; ``with_lock`` still guards on
the lock. The compare-and-refuse itself is ``Etcd.guarded`` (``baton.cluster.etcd``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from baton.cluster import keys
from baton.cluster.etcd import Compare, Etcd, Guard, TxnResult

__all__ = ["Fence", "Guard", "current_term", "leading"]

_TERM: ContextVar[int] = ContextVar("baton_fleet_term", default=0)


@contextlib.contextmanager
def leading(term: int) -> Iterator[None]:
    """Within this block (and the tasks it starts) ``Fence.current`` is fenced on ``term``."""
    token = _TERM.set(term)
    try:
        yield
    finally:
        _TERM.reset(token)


def current_term() -> int:
    """The term the running code writes under (0: none, not on a controller's path)."""
    return _TERM.get()


class Fence:
    """Writes that land only while every guard still holds; ``Fenced`` otherwise."""

    def __init__(self, etcd: Etcd, guards: Sequence[Guard] = ()) -> None:
        self.etcd = etcd
        self.guards = tuple(guards)

    @classmethod
    def for_term(cls, etcd: Etcd, term: int, key: str = keys.CONTROLLER) -> Fence:
        """Fenced on the leader's term (none when ``term`` is 0)."""
        guards = [Guard(key, term, f"the controller's term {term}")] if term else []
        return cls(etcd, guards)

    @classmethod
    def current(cls, etcd: Etcd) -> Fence:
        """Fenced on the term of the controller this code runs for (see ``leading``)."""
        return cls.for_term(etcd, current_term())

    def with_lock(self, key: str, revision: int, what: str) -> Fence:
        """This fence, also guarded on a lock key created at ``revision``."""
        return Fence(self.etcd, [*self.guards, Guard(key, revision, what)])

    def client(self) -> Etcd:
        """The etcd client as seen through this fence: every put, delete and txn made with
        it is fenced (``Etcd.guarded``). For code that takes a client, e.g. the edge
        cutover: the controller hands it this, so its edge routes and records are fenced."""
        return self.etcd.guarded(self.guards)

    async def txn(
        self, ops: Sequence[dict[str, Any]], compare: Sequence[Compare] = ()
    ) -> TxnResult:
        """``ops`` in one transaction if the guards hold and ``compare`` holds.

        A guard that no longer holds raises ``Fenced`` (nothing was written); ``compare``
        alone failing returns the result with ``succeeded`` false, as ``Etcd.txn`` does.
        """
        return await self.client().txn(compare, ops)

    async def put(self, key: str, value: str | bytes) -> int:
        """Store ``value`` at ``key`` if the guards hold; the new revision, else ``Fenced``."""
        return await self.client().put(key, value)
