"""An agent's progress writes, fenced on the deployment its host is asked for.

Each host writes only its own ``/baton/progress/HOST/APP``, but a host can be late: one cut
off from etcd (its lease lapsed, the controller gave up on it and unwound, or moved on to a
newer deployment) finishes its local deploy and, once etcd answers again, reports it. That
report must not land on top of the progress of the deployment the fleet is at now: the
controller waiting for the host's ``-undo`` (or the next deployment) would read a stale
``done`` or ``failed``, and ``baton status``/``history`` would show it.

So a progress report is written only while the host's desired release
(``/baton/desired/HOST/APP``) still names the report's fleet deployment: the agent reads the
desired release, checks its deployment, and writes in one etcd transaction that compares the
desired key's mod revision with the one it read, so a controller's write in between (a new
deployment, an unwind) makes it fail; then it reads again (the controller may only have
moved a canary's weight, same deployment). A refused report is dropped, not kept for later:
the controller no longer waits for it. The host's own lease is not compared: a host whose
lease lapsed and that is still asked for the same deployment reports what the controller
(or a new leader resuming the deployment) wants to know.

``stale_reason`` is the pure check, ``write_progress`` the transaction.
"""

from __future__ import annotations

import contextlib

from baton.cluster import keys
from baton.cluster.etcd import Compare, Etcd, KeyValue, put_op

ATTEMPTS = 5  # reads of the desired release before giving up (each beaten by a new write)


def stale_reason(progress: keys.Progress, desired: keys.DesiredRelease | None) -> str | None:
    """Why ``progress`` must not be written when the host is asked for ``desired``, or None
    (pure)."""
    if desired is None:
        return "the host is asked for no release of the app"
    if desired.deployment != progress.deployment:
        return f"the host is now asked for deployment {desired.deployment}"
    return None


def _desired(kv: KeyValue | None) -> keys.DesiredRelease | None:
    if kv is None:
        return None
    with contextlib.suppress(ValueError):
        return keys.DesiredRelease.from_json(kv.value, f"etcd key {kv.key}")
    return None


async def write_progress(etcd: Etcd, host: str, progress: keys.Progress) -> str | None:
    """Write ``progress`` as ``host``'s report on its app if the host is still asked for the
    report's deployment; None when written, else why it was refused (nothing written).
    ``EtcdUnavailable``/``EtcdError`` when etcd does not answer."""
    desired_key = keys.desired_key(host, progress.app)
    for _ in range(ATTEMPTS):
        kv = await etcd.get(desired_key)
        why = stale_reason(progress, _desired(kv))
        if why is not None or kv is None:
            return why or "the host is asked for no release of the app"
        written = await etcd.txn(
            [Compare.modified_at(desired_key, kv.mod_revision)],
            [put_op(keys.progress_key(host, progress.app), progress.to_json())],
        )
        if written.succeeded:
            return None
    return f"the desired release changed {ATTEMPTS} times while it was written"
