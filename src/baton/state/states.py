"""The states of releases, instances and deployments, and the changes between them. Pure.

Theory of operation. This module owns the vocabulary of the store's ``state`` and ``status``
columns and the rules for changing them, as h11's ``_state.py`` does for its protocol
states: each kind of object has a ``StrEnum`` of its states and a table of the states it
may go to from each one. The store (``baton.state.store``) asks ``check`` before it writes
a state and raises ``IllegalTransition`` (naming app, object, from and to) instead of
writing one the table does not allow, so an impossible history never reaches the database.
Writing the state an object already has is always allowed (it changes nothing).

The tables are the changes the deploy engine, its recovery and the app lifecycle really
make (read from their code and checked against the deploy integration tests), not an ideal:

Releases. A release is born ``pending`` (the deployment that starts it is running); only the
store's insert makes that state, nothing goes back to it.
- ``pending`` -> ``live`` (it took the traffic and passed verification), ``failed`` (undone,
  or found with nothing running after a restart), ``stopped`` (``baton down``, the app
  stopped, or a newer release went live meanwhile).
- ``live`` -> ``warm`` (kept running with weight 0 for ``keep_previous``), ``stopped`` (a
  newer release went live), ``failed`` (a deployment of the live release itself undone).
- ``warm`` -> ``live`` (rolled back to), ``stopped`` (expired, an instance died, ``down``).
- ``stopped`` and ``failed`` -> ``live`` (a rollback or a recovery made it the app's
  release again), and ``stopped`` -> ``failed`` (a rollback to it was undone). A ``failed``
  release is never merely ``stopped`` nor ``warm``.

Instances. An instance is born ``starting``; nothing goes back to it.
- ``starting`` -> ``ready`` (its readiness checks passed), ``failed``, ``draining`` (its
  deployment was undone), ``stopped`` (``baton down``), ``routed`` (a recovery kept it).
- ``ready`` -> ``routed`` (switched in), ``draining``, ``stopped``, ``failed``.
- ``routed`` -> ``draining`` (leaving the table), ``stopped``, ``failed`` (found dead).
- ``draining`` -> ``routed`` (switched back, or kept after a recovery), ``stopped``,
  ``failed`` (stopped as part of an undo, or found dead).
- ``failed`` -> ``draining`` only (a failed readiness leaves the process running; an undo
  drains it, then marks it ``failed`` again once stopped). A failed instance is never
  routed again.
- ``stopped`` is final.

Deployments. A deployment is born ``running`` (it holds the app's lock) and ends once, in
one of the final statuses; a final status never changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from baton.errors import IllegalTransition


class ReleaseState(StrEnum):
    PENDING = "pending"
    LIVE = "live"
    WARM = "warm"
    STOPPED = "stopped"
    FAILED = "failed"


class InstanceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    ROUTED = "routed"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class DeploymentStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


_R, _I, _D = ReleaseState, InstanceState, DeploymentStatus

RELEASE_TRANSITIONS: Mapping[ReleaseState, frozenset[ReleaseState]] = {
    _R.PENDING: frozenset({_R.LIVE, _R.FAILED, _R.STOPPED}),
    _R.LIVE: frozenset({_R.WARM, _R.STOPPED, _R.FAILED}),
    _R.WARM: frozenset({_R.LIVE, _R.STOPPED}),
    _R.STOPPED: frozenset({_R.LIVE, _R.FAILED}),
    _R.FAILED: frozenset({_R.LIVE}),
}

INSTANCE_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    _I.STARTING: frozenset({_I.READY, _I.ROUTED, _I.DRAINING, _I.STOPPED, _I.FAILED}),
    _I.READY: frozenset({_I.ROUTED, _I.DRAINING, _I.STOPPED, _I.FAILED}),
    _I.ROUTED: frozenset({_I.DRAINING, _I.STOPPED, _I.FAILED}),
    _I.DRAINING: frozenset({_I.ROUTED, _I.STOPPED, _I.FAILED}),
    _I.FAILED: frozenset({_I.DRAINING}),
    _I.STOPPED: frozenset(),
}

DEPLOYMENT_TRANSITIONS: Mapping[DeploymentStatus, frozenset[DeploymentStatus]] = {
    _D.RUNNING: frozenset({_D.SUCCEEDED, _D.FAILED, _D.ROLLED_BACK, _D.ABORTED}),
    _D.SUCCEEDED: frozenset(),
    _D.FAILED: frozenset(),
    _D.ROLLED_BACK: frozenset(),
    _D.ABORTED: frozenset(),
}

# What each kind of object starts as (the store's inserts).
RELEASE_BORN = _R.PENDING
INSTANCE_BORN = _I.STARTING
DEPLOYMENT_BORN = _D.RUNNING

# Instances that run (or may still run) a process: everything but stopped and failed.
RUNNING_INSTANCE_STATES: tuple[InstanceState, ...] = (_I.STARTING, _I.READY, _I.ROUTED, _I.DRAINING)
# Releases that are an app's present or possible future: never pruned, ended by `app stop`.
ACTIVE_RELEASE_STATES: tuple[ReleaseState, ...] = (_R.PENDING, _R.LIVE, _R.WARM)


S = TypeVar("S", ReleaseState, InstanceState, DeploymentStatus)


def allowed(table: Mapping[S, frozenset[S]], old: S, new: S) -> bool:
    """Whether ``table`` lets an object go from ``old`` to ``new`` (staying put always may)."""
    return old == new or new in table[old]


def release_state(value: str) -> ReleaseState:
    """``value`` as a release state; ``ValueError`` naming the known ones otherwise."""
    return _parse(ReleaseState, value, "a release state")


def instance_state(value: str) -> InstanceState:
    """``value`` as an instance state; ``ValueError`` naming the known ones otherwise."""
    return _parse(InstanceState, value, "an instance state")


def deployment_status(value: str) -> DeploymentStatus:
    """``value`` as a deployment status; ``ValueError`` naming the known ones otherwise."""
    return _parse(DeploymentStatus, value, "a deployment status")


def check_release(app: str, what: str, old: str, new: str) -> ReleaseState:
    """The release ``what`` of ``app`` may go from ``old`` to ``new``: ``new`` as a state.

    Raises ``ValueError`` for a word that is no release state, ``IllegalTransition`` for a
    change the table does not allow.
    """
    to = release_state(new)
    _check(RELEASE_TRANSITIONS, app, what, release_state(old), to)
    return to


def check_instance(app: str, what: str, old: str, new: str) -> InstanceState:
    """As ``check_release``, for an instance."""
    to = instance_state(new)
    _check(INSTANCE_TRANSITIONS, app, what, instance_state(old), to)
    return to


def check_deployment(app: str, what: str, old: str, new: str) -> DeploymentStatus:
    """As ``check_release``, for a deployment's status."""
    to = deployment_status(new)
    _check(DEPLOYMENT_TRANSITIONS, app, what, deployment_status(old), to)
    return to


def _check(table: Mapping[S, frozenset[S]], app: str, what: str, old: S, new: S) -> None:
    if allowed(table, old, new):
        return
    can = ", ".join(sorted(table[old])) or "nothing (it is final)"
    raise IllegalTransition(app=app, what=what, old=old.value, new=new.value, allowed=can)


def _parse(kind: type[S], value: str, name: str) -> S:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(m.value for m in kind)
        raise ValueError(f"not {name}: {value!r} (one of {known})") from None
