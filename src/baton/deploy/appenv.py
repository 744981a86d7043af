"""An app's env and secrets as the API shows and changes them (``baton env``/``secrets``).

The plain env an app's instances get is its release's ``env`` (baton.yml's ``run.env`` plus
the ``--env`` values that deploys gave, which the store keeps per app and later deploys
carry). Secrets are listed by name only: which names baton.yml asks for, and whether the
control plane holds a value for each. ``change_secrets`` sets or removes values (from
``baton secrets set/unset``); they reach instances at the next deploy or rollback. Nothing
here returns a secret value.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from baton.errors import UsageError
from baton.state.states import ReleaseState

if TYPE_CHECKING:
    from baton.deploy.engine import Engine

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = {"PORT", "BATON_APP", "BATON_VERSION", "BATON_INSTANCE"}


def _known(engine: Engine, app: str) -> dict[str, Any]:
    row = engine.store.app(app)
    if row is None:
        raise UsageError(f"no app named {app!r} was ever deployed on this host")
    return row.config


def app_env(engine: Engine, app: str) -> dict[str, Any]:
    """The live (else newest) release's plain env and which names came from ``--env``."""
    _known(engine, app)
    releases = engine.store.releases(app)
    live = [r for r in releases if r.state == ReleaseState.LIVE]
    chosen = live[-1] if live else (releases[-1] if releases else None)
    return {
        "app": app,
        "release": chosen.version if chosen else None,
        "env": dict(chosen.env) if chosen else {},
        "from_deploy": engine.store.app_env(app),
    }


def unset_env(engine: Engine, app: str, names: object) -> dict[str, Any]:
    """Stop carrying these ``--env`` values into later deploys (the live release keeps them)."""
    _known(engine, app)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UsageError("unset: expected a non-empty list of names")
    kept = engine.store.app_env(app)
    gone = [n for n in names if n not in kept]
    if gone:
        shown = ", ".join(sorted(kept)) or "none"
        raise UsageError(
            f"{app} has no --env value {gone[0]} to unset (--env values kept: {shown};"
            " run.env values are changed in baton.yml)"
        )
    engine.store.set_app_env(app, {k: v for k, v in kept.items() if k not in names})
    return app_env(engine, app)


def secret_names(engine: Engine, app: str) -> dict[str, Any]:
    config = _known(engine, app)
    stored = engine.secrets.read(app)
    listed = list(config.get("secrets") or [])
    return {
        "app": app,
        "secrets": [{"name": n, "set": n in stored} for n in listed],
        "unlisted": sorted(n for n in stored if n not in listed),
    }


def change_secrets(engine: Engine, app: str, set_: object, unset: object) -> dict[str, Any]:
    _known(engine, app)
    values = set_ if set_ is not None else {}
    names = unset if unset is not None else []
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in values.items()
    ):
        raise UsageError("set: expected an object of NAME: string value")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UsageError("unset: expected a list of names")
    for name in [*values, *names]:
        if not _NAME.match(name) or name in _RESERVED:
            raise UsageError(f"{name!r} is not a name a secret can have (like DB_PASSWORD)")
    if not values and not names:
        raise UsageError("nothing to change: give set or unset")
    stored = engine.secrets.read(app)
    gone = [n for n in names if n not in stored]
    if gone:
        raise UsageError(f"{app} has no secret {gone[0]} to unset")
    stored.update(values)
    for name in names:
        stored.pop(name)
    engine.secrets.write(app, stored)
    return secret_names(engine, app)
