"""Expand/contract schema migrations: when a contract may run, and what it forbids. Pure.

Theory of operation. A zero-downtime schema change has two halves. ``migrations.expand``
runs during a deploy, after ``pre_deploy`` and before any new instance starts, in the new
release's directory with its env: it only adds (columns, tables, indexes), so the release
that is live and the new one both work against the expanded schema, and a rollback stays a
plain switch. ``migrations.contract`` removes what only older releases needed; once it has
run, a release from before the expanded one would break, so a rollback to it is refused
(``rollback_blocker``) unless forced. A contract is allowed only once the expanded release
has been live for ``contract_after`` without a rollback (``contract_window``): a rollback
and a new switch reset the release's ``live_since``, so the clock starts again.

The engine records an expand per release (``Store.record_expanded``), runs the contract
under the app's deploy lock as a deployment of kind ``contract`` (so it shows in ``baton
history`` with its output), and asks this module what is allowed. Expand and contract
commands must be idempotent: a control plane that dies in the middle of one runs it again
next time rather than guessing how far it got.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from baton.config import format_duration
from baton.state.store import MigrationRow, ReleaseRow

EXPANDED = "expanded"  # the live release expanded; its contract is not allowed yet
PENDING = "pending"  # the contract is allowed now and waits for `baton migrate contract`
CONTRACTED = "contracted"  # the live release's contract ran
NONE = "none"  # the live release has no migration


@dataclass(frozen=True)
class ContractWindow:
    allowed: bool
    seconds_left: float
    why: str


def contract_window(
    live: ReleaseRow | None,
    migration: MigrationRow | None,
    *,
    contract_after: float,
    now: float,
) -> ContractWindow:
    """May the live release's contract run now? If not, why, and how long until it may."""
    if live is None:
        return ContractWindow(False, 0.0, "no release is live")
    if migration is None:
        return ContractWindow(
            False,
            0.0,
            f"{live.version} ran no expand (migrations.expand), so there is nothing to contract",
        )
    if migration.contracted is not None:
        return ContractWindow(False, 0.0, f"the contract of {live.version} already ran")
    since = live.live_since if live.live_since is not None else now
    left = max(0.0, since + contract_after - now)
    if left > 0:
        return ContractWindow(
            False,
            left,
            f"{live.version} has been live for {format_duration(max(0.0, now - since))};"
            f" its contract is allowed after {format_duration(contract_after)} live without a"
            f" rollback, in {format_duration(left)}",
        )
    return ContractWindow(
        True, 0.0, f"{live.version} has been live for {format_duration(now - since)}"
    )


def rollback_blocker(target: ReleaseRow, migrations: Sequence[MigrationRow]) -> MigrationRow | None:
    """The contracted migration that makes ``target`` unsafe to run again, if any.

    A contract removes what releases older than the one that expanded needed, so every
    release created before a contracted one is blocked; later releases are not.
    """
    blockers = [m for m in migrations if m.contracted is not None and m.release_id > target.id]
    return max(blockers, key=lambda m: m.release_id) if blockers else None


def schema_phase(
    live: ReleaseRow | None, migration: MigrationRow | None, window: ContractWindow
) -> str:
    if live is None or migration is None:
        return NONE
    if migration.contracted is not None:
        return CONTRACTED
    return PENDING if window.allowed else EXPANDED
