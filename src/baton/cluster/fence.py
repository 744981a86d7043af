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
term along: ``roll_out`` does, and the edge cutover can. Outside a controller (a test, a
library caller) the current fence has no term guard; ``with_lock`` still guards on the lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from baton.cluster import keys
from baton.cluster.etcd import Compare, Etcd, TxnResult, get_op, put_op
from baton.errors import Fenced

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


@dataclass(frozen=True)
class Guard:
    """A key the writer holds, and the create revision it holds it at."""

    key: str
    revision: int
    what: str  # for the error: "the controller's term", "the deploy lock of shop"

    def compare(self) -> Compare:
        return Compare.created_at(self.key, self.revision)


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

    async def txn(
        self, ops: Sequence[dict[str, Any]], compare: Sequence[Compare] = ()
    ) -> TxnResult:
        """``ops`` in one transaction if the guards hold and ``compare`` holds.

        A guard that no longer holds raises ``Fenced`` (nothing was written); ``compare``
        alone failing returns the result with ``succeeded`` false, as ``Etcd.txn`` does.
        """
        result = await self.etcd.txn(
            [*(g.compare() for g in self.guards), *compare],
            ops,
            [get_op(g.key) for g in self.guards],
        )
        if result.succeeded:
            return result
        ranges = result.ranges()
        for i, guard in enumerate(self.guards):
            kvs = ranges[i] if i < len(ranges) else []
            if not kvs or kvs[0].create_revision != guard.revision:
                now = (
                    f"now held since revision {kvs[0].create_revision} by"
                    f" {kvs[0].value.decode(errors='replace')}"
                    if kvs
                    else "no longer held"
                )
                raise Fenced(
                    f"write refused: {guard.what} (created at revision {guard.revision}) is"
                    f" {now}; this controller was deposed and stops"
                )
        return result

    async def put(self, key: str, value: str | bytes) -> int:
        """Store ``value`` at ``key`` if the guards hold; the new revision, else ``Fenced``."""
        return (await self.txn([put_op(key, value)])).revision
