"""The daemon's feature flags: every app's current flag set, its versions, and its file.

Theory of operation. ``FlagService`` owns, in memory, the flag set each app serves now
(evaluations never touch the disk or the store) and writes every change to the store as a
new version first (``Store.add_flag_version``), so a restarted daemon serves exactly what
was served before and ``baton flags history`` can say who changed what. Three things change a
set:
- the app's ``flags.yml`` (beside its baton.yml): ``check_files`` (the daemon calls it every
  ``WATCH_INTERVAL``) stats every registered app's file and applies a changed one, so an edit reaches evaluations within a
  second; a file that does not parse is reported (``file_errors``, the daemon log) and the
  set in force stays;
- ``baton flags set/rollout`` (``change``): an edit of one flag, kept until the file
  changes again;
- ``baton flags kill/revive``: the kill switch. A kill is an overlay that survives file
  reloads until revived, since an unrelated file edit must not bring back a flag that an
  operator killed in an incident.

The stored document of a version is ``{"flags": <FlagSet JSON>, "kills": [keys]}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from baton.config import read_yaml
from baton.deploy.analysis import Verdict
from baton.errors import BatonError
from baton.flags.model import (
    Evaluation,
    EvaluationError,
    Flag,
    FlagError,
    FlagSet,
    evaluate,
    parse_flags,
    roll_out,
    serve_everyone,
)
from baton.state.store import Store

log = logging.getLogger("baton.flags")

FLAGS_FILE = "flags.yml"
WATCH_INTERVAL = 0.5


@dataclass(frozen=True)
class AppFlags:
    """One app's flag set as served: the set, the kill overlay, and its version."""

    base: FlagSet
    kills: frozenset[str]
    version: int

    @property
    def served(self) -> FlagSet:
        if not self.kills:
            return self.base
        return FlagSet(
            {
                k: replace(f, killed=True) if k in self.kills else f
                for k, f in self.base.flags.items()
            }
        )

    def document(self) -> dict[str, Any]:
        return {"flags": self.base.to_json(), "kills": sorted(self.kills)}


def _from_document(doc: Mapping[str, Any], version: int) -> AppFlags:
    return AppFlags(
        FlagSet.from_json(doc.get("flags") or {}), frozenset(doc.get("kills") or ()), version
    )


class FlagService:
    def __init__(
        self,
        store: Store,
        config_paths: Callable[[], Mapping[str, str]],
        canary_version: Callable[[str], str | None] = lambda app: None,
    ) -> None:
        self._store = store
        self._config_paths = config_paths
        self._canary_version = canary_version
        self._apps: dict[str, AppFlags] = {}
        self._served: dict[str, FlagSet] = {}
        self._file_stamps: dict[str, tuple[int, int, int] | None] = {}
        self.file_errors: dict[str, str] = {}
        # (app, flag, variant) -> the judge's last verdict on that cohort (flags.judge)
        self.last_verdicts: dict[tuple[str, str, str], Verdict] = {}
        for row in store.latest_flags():
            try:
                self._set(row.app, _from_document(row.flags, row.version))
            except FlagError as exc:  # written by an older Baton with other rules
                log.error("flags of %s (version %s) no longer load: %s", row.app, row.version, exc)

    # -- reading ----------------------------------------------------------------------------

    def apps(self) -> list[str]:
        return sorted(self._apps)

    def app_flags(self, app: str) -> AppFlags | None:
        return self._apps.get(app)

    def served(self, app: str) -> FlagSet | None:
        return self._served.get(app)

    def evaluate(
        self, app: str, key: str, context: Mapping[str, Any]
    ) -> Evaluation | EvaluationError:
        flags = self._served.get(app)
        flag = flags.flags.get(key) if flags is not None else None
        if flag is None:
            return EvaluationError(key, "FLAG_NOT_FOUND", f"no flag {key!r} for app {app!r}")
        return evaluate(flag, context, canary=self._canary_version(app))

    def evaluate_all(
        self, app: str, context: Mapping[str, Any]
    ) -> list[Evaluation | EvaluationError]:
        flags = self._served.get(app)
        if flags is None:
            return []
        canary = self._canary_version(app)
        return [evaluate(flag, context, canary=canary) for _, flag in sorted(flags.flags.items())]

    def history(self, app: str, limit: int = 50) -> list[dict[str, Any]]:
        return [
            {
                "version": row.version,
                "source": row.source,
                "note": row.note,
                "created": row.created,
                "flags": row.flags.get("flags", {}),
                "kills": row.flags.get("kills", []),
            }
            for row in self._store.flag_history(app, limit)
        ]

    # -- changing ---------------------------------------------------------------------------

    def _set(self, app: str, flags: AppFlags) -> None:
        self._apps[app] = flags
        self._served[app] = flags.served

    def _commit(self, app: str, base: FlagSet, kills: Iterable[str], source: str, note: str) -> int:
        candidate = AppFlags(base, frozenset(k for k in kills if k in base.flags), 0)
        version = self._store.add_flag_version(app, candidate.document(), source, note)
        self._set(app, replace(candidate, version=version))
        log.info("flags of %s: version %s (%s): %s", app, version, source, note)
        return version

    def apply(self, app: str, raw: object, *, file: str | None, source: str) -> int:
        """Replace ``app``'s whole set with ``raw`` (flags.yml data). Kills stay."""
        base = parse_flags(raw, file=file)
        current = self._apps.get(app)
        kills = current.kills if current is not None else frozenset()
        if current is not None and current.base == base:
            return current.version
        return self._commit(app, base, kills, source, f"applied {file or 'a flag set'}")

    def apply_file(self, app: str, path: Path, *, source: str = "file") -> int:
        raw = read_yaml(path, what="a flags.yml file")
        version = self.apply(app, raw, file=str(path), source=source)
        self.file_errors.pop(app, None)
        return version

    def _flag(self, app: str, key: str) -> tuple[AppFlags, Flag]:
        current = self._apps.get(app)
        if current is None:
            raise FlagError(f"app {app!r} has no flags (add {FLAGS_FILE} beside its baton.yml)")
        return current, current.base.get(key)

    def set_variant(self, app: str, key: str, variant: str, *, source: str = "cli") -> int:
        current, flag = self._flag(app, key)
        changed = serve_everyone(flag, variant)
        return self._commit(
            app,
            current.base.with_flag(changed),
            current.kills,
            source,
            f"{key}: {variant} for everyone",
        )

    def rollout(
        self, app: str, key: str, variant: str, share: float, *, source: str = "cli"
    ) -> int:
        current, flag = self._flag(app, key)
        changed = roll_out(flag, variant, share)
        note = f"{key}: {variant} for {share * 100:.4g}% of contexts"
        return self._commit(app, current.base.with_flag(changed), current.kills, source, note)

    def kill(self, app: str, key: str, *, source: str = "cli", why: str = "") -> int:
        current, _ = self._flag(app, key)
        note = f"{key}: killed" + (f" ({why})" if why else "")
        return self._commit(app, current.base, current.kills | {key}, source, note)

    def revive(self, app: str, key: str, *, source: str = "cli") -> int:
        current, _ = self._flag(app, key)
        if key not in current.kills:
            raise FlagError(f"flag {key!r} of {app!r} is not killed")
        return self._commit(app, current.base, current.kills - {key}, source, f"{key}: revived")

    def forget(self, app: str) -> None:
        self._apps.pop(app, None)
        self._served.pop(app, None)
        self._store.forget_flags(app)

    # -- the files --------------------------------------------------------------------------

    def check_files(self) -> None:
        """Apply every registered app's flags.yml that changed since the last look; drop
        the flags of an app that was removed (``baton app remove`` deletes its versions)."""
        stored = self._store.flag_apps()
        for gone in [app for app in self._apps if app not in stored]:
            self._apps.pop(gone, None)
            self._served.pop(gone, None)
            self._file_stamps.pop(gone, None)
        for app, config_path in self._config_paths().items():
            path = Path(config_path).parent / FLAGS_FILE
            try:
                st = path.stat()
                stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                stamp = None
            if app in self._file_stamps and self._file_stamps[app] == stamp:
                continue
            self._file_stamps[app] = stamp
            if stamp is None:
                continue  # no file (or it went away): the set in force stays
            try:
                self.apply_file(app, path)
            except BatonError as exc:
                self.file_errors[app] = str(exc)
                log.error("flags of %s: %s (the flags in force stay)", app, exc)
