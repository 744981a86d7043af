"""The control plane's memory: one SQLite database (WAL mode) in the state dir.

The store owns what Baton knows about the host: the apps it was told about, every release of
each app (version, command, env, config and the release's weight in the route table), every
instance Baton started (address, runtime handle, state), every deployment (strategy, the step
it is at, its outcome, the pid holding its lock) and a history of events. It is the single
source of truth: the route table sent to the proxy is always rebuilt from it, so a restarted
proxy or control plane gets back exactly what was routed before.

Rules it keeps:
- At most one deployment per app has status ``running`` (a partial unique index); that row
  *is* the per-app lock, so a second deployment fails with ``DeploymentLocked`` naming it.
- A deployment step is written before the step runs (``set_step``).
- A release's or instance's state and a deployment's status change only as the tables of
  ``baton.state.states`` allow: an illegal change raises ``IllegalTransition`` and writes
  nothing. Rows are read back with their states as those enums.
- The schema lives here, with its migrations: ``MIGRATIONS[n]`` takes the database from
  ``user_version`` n to n + 1, applied in order inside one transaction each.

The store is synchronous (each call is a few milliseconds at most) and used from the control
plane's event-loop thread only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baton.errors import DeploymentLocked
from baton.state.files import private_file
from baton.state.states import (
    DEPLOYMENT_BORN,
    INSTANCE_BORN,
    RELEASE_BORN,
    DeploymentStatus,
    InstanceState,
    ReleaseState,
    check_deployment,
    check_instance,
    check_release,
    deployment_status,
    instance_state,
    release_state,
)

MIGRATIONS: list[str] = [
    # 0 -> 1: the first schema.
    """
    CREATE TABLE apps (
        name        TEXT PRIMARY KEY,
        config      TEXT NOT NULL,          -- JSON of the last registered AppConfig
        config_path TEXT NOT NULL,
        created     REAL NOT NULL,
        updated     REAL NOT NULL
    );
    CREATE TABLE releases (
        id          INTEGER PRIMARY KEY,
        app         TEXT NOT NULL REFERENCES apps(name),
        version     TEXT NOT NULL,
        command     TEXT NOT NULL,          -- JSON: a string (shell) or a list (exec)
        env         TEXT NOT NULL,          -- JSON object
        cwd         TEXT NOT NULL,
        config      TEXT NOT NULL,          -- JSON of the AppConfig this release runs with
        config_hash TEXT NOT NULL,
        state       TEXT NOT NULL,          -- pending | live | warm | stopped | failed
        weight      INTEGER NOT NULL DEFAULT 0,
        live_since  REAL,                   -- last time it took the traffic
        warm_until  REAL,                   -- when a warm release is stopped
        created     REAL NOT NULL
    );
    CREATE INDEX releases_by_app ON releases(app, id);
    CREATE TABLE instances (
        id          INTEGER PRIMARY KEY,
        release_id  INTEGER NOT NULL REFERENCES releases(id),
        idx         INTEGER NOT NULL,
        address     TEXT NOT NULL,
        ref         TEXT NOT NULL,
        log_path    TEXT,
        state       TEXT NOT NULL,          -- starting | ready | routed | draining | stopped | failed
        created     REAL NOT NULL,
        updated     REAL NOT NULL
    );
    CREATE INDEX instances_by_release ON instances(release_id);
    CREATE TABLE deployments (
        id                  INTEGER PRIMARY KEY,
        app                 TEXT NOT NULL,
        kind                TEXT NOT NULL,  -- deploy | rollback
        release_id          INTEGER REFERENCES releases(id),
        previous_release_id INTEGER REFERENCES releases(id),
        strategy            TEXT NOT NULL,
        step                TEXT NOT NULL,
        status              TEXT NOT NULL,  -- running | succeeded | failed | rolled_back | aborted
        started             REAL NOT NULL,
        ended               REAL,
        error               TEXT,
        holder_pid          INTEGER
    );
    CREATE UNIQUE INDEX one_running_deployment_per_app
        ON deployments(app) WHERE status = 'running';
    CREATE TABLE events (
        id            INTEGER PRIMARY KEY,
        deployment_id INTEGER,
        app           TEXT,
        ts            REAL NOT NULL,
        kind          TEXT NOT NULL,
        data          TEXT NOT NULL         -- JSON object
    );
    CREATE INDEX events_by_deployment ON events(deployment_id, id);
    """,
    # 1 -> 2: feature flags, one row per version of an app's flag set (newest = served).
    """
    CREATE TABLE flag_versions (
        id          INTEGER PRIMARY KEY,
        app         TEXT NOT NULL,
        version     INTEGER NOT NULL,
        flags       TEXT NOT NULL,          -- JSON: the whole flag set (baton.flags.model)
        source      TEXT NOT NULL,          -- file | cli | api
        note        TEXT NOT NULL,          -- what changed, in words
        created     REAL NOT NULL,
        UNIQUE(app, version)
    );
    """,
    # 2 -> 3: expand/contract schema migrations, one row per release that expanded.
    """
    CREATE TABLE schema_migrations (
        release_id  INTEGER PRIMARY KEY REFERENCES releases(id),
        app         TEXT NOT NULL,
        expanded    REAL NOT NULL,
        contracted  REAL                    -- null until its contract ran
    );
    """,
    # 3 -> 4 (durable releases): what a release runs, frozen at deploy time, and the app's
    # own --env that later deploys carry on. Secret values are never in this database.
    """
    ALTER TABLE releases ADD COLUMN artifact TEXT NOT NULL DEFAULT '{}';  -- JSON object
    ALTER TABLE apps ADD COLUMN env TEXT NOT NULL DEFAULT '{}'            -- JSON object
    """,
    # 4 -> 5: whether the user stopped an app (`baton app stop`): it stays stopped
    # across `baton up` until `baton app start`. The app's live release (the one with
    # state 'live') is its desired release whether or not its instances run.
    """
    ALTER TABLE apps ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0;
    """,
]

RELEASE_STATES = tuple(ReleaseState)
INSTANCE_STATES = tuple(InstanceState)
DEPLOYMENT_STATUSES = tuple(DeploymentStatus)


@dataclass(frozen=True)
class AppRow:
    name: str
    config: dict[str, Any]
    config_path: str
    created: float
    updated: float
    stopped: bool = False  # by the user: not started again by `baton up` or the watcher


@dataclass(frozen=True)
class ReleaseRow:
    id: int
    app: str
    version: str
    command: str | list[str] | None  # None: a docker release that keeps the image's CMD
    env: dict[str, str]
    cwd: str
    config: dict[str, Any]
    config_hash: str
    state: ReleaseState
    weight: int
    live_since: float | None
    warm_until: float | None
    created: float
    # What the release runs, frozen at deploy time: {"kind": "snapshot", "path": ...} for the
    # process runtime, {"kind": "image", "image": tag, "id": "sha256:..."} for docker; {} for
    # releases recorded before artifacts existed.
    artifact: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceRow:
    id: int
    release_id: int
    index: int
    address: str
    ref: str
    log_path: str | None
    state: InstanceState
    created: float
    updated: float


@dataclass(frozen=True)
class DeploymentRow:
    id: int
    app: str
    kind: str
    release_id: int | None
    previous_release_id: int | None
    strategy: str
    step: str
    status: DeploymentStatus
    started: float
    ended: float | None
    error: str | None
    holder_pid: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            "kind": self.kind,
            "strategy": self.strategy,
            "step": self.step,
            "status": self.status,
            "started": self.started,
            "ended": self.ended,
            "error": self.error,
            "holder_pid": self.holder_pid,
        }


@dataclass(frozen=True)
class FlagVersionRow:
    app: str
    version: int
    flags: dict[str, Any]
    source: str
    note: str
    created: float


@dataclass(frozen=True)
class MigrationRow:
    release_id: int
    app: str
    expanded: float
    contracted: float | None


@dataclass(frozen=True)
class EventRow:
    id: int
    deployment_id: int | None
    app: str | None
    ts: float
    kind: str
    data: dict[str, Any]


def _release(row: sqlite3.Row) -> ReleaseRow:
    return ReleaseRow(
        id=row["id"],
        app=row["app"],
        version=row["version"],
        command=json.loads(row["command"]),
        env=json.loads(row["env"]),
        cwd=row["cwd"],
        config=json.loads(row["config"]),
        config_hash=row["config_hash"],
        state=release_state(row["state"]),
        weight=row["weight"],
        live_since=row["live_since"],
        warm_until=row["warm_until"],
        created=row["created"],
        artifact=json.loads(row["artifact"]),
    )


def _instance(row: sqlite3.Row) -> InstanceRow:
    return InstanceRow(
        id=row["id"],
        release_id=row["release_id"],
        index=row["idx"],
        address=row["address"],
        ref=row["ref"],
        log_path=row["log_path"],
        state=instance_state(row["state"]),
        created=row["created"],
        updated=row["updated"],
    )


def _deployment(row: sqlite3.Row) -> DeploymentRow:
    return DeploymentRow(
        id=row["id"],
        app=row["app"],
        kind=row["kind"],
        release_id=row["release_id"],
        previous_release_id=row["previous_release_id"],
        strategy=row["strategy"],
        step=row["step"],
        status=deployment_status(row["status"]),
        started=row["started"],
        ended=row["ended"],
        error=row["error"],
        holder_pid=row["holder_pid"],
    )


class Store:
    """The SQLite store. Open with ``Store.open(path)``; close with ``close()``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._db = conn
        self.path = path

    @classmethod
    def open(cls, path: Path | str) -> Store:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite opens it: SQLite gives -wal and -shm the db's mode.
        private_file(path)
        for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if side.exists():
                private_file(side)
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        store = cls(conn, path)
        store._migrate()
        return store

    def close(self) -> None:
        self._db.close()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        for version in range(current, len(MIGRATIONS)):
            with self._tx():
                for statement in _statements(MIGRATIONS[version]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={version + 1}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    # -- apps -------------------------------------------------------------------------------

    def upsert_app(self, name: str, config: dict[str, Any], config_path: str) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO apps(name, config, config_path, created, updated) VALUES (?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET config=excluded.config,"
            " config_path=excluded.config_path, updated=excluded.updated",
            (name, json.dumps(config), config_path, now, now),
        )

    def app(self, name: str) -> AppRow | None:
        row = self._db.execute("SELECT * FROM apps WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        return AppRow(
            row["name"],
            json.loads(row["config"]),
            row["config_path"],
            row["created"],
            row["updated"],
            bool(row["stopped"]),
        )

    def app_env(self, name: str) -> dict[str, str]:
        """The app's ``--env`` values that every later deploy carries (no secrets here)."""
        row = self._db.execute("SELECT env FROM apps WHERE name=?", (name,)).fetchone()
        return {} if row is None else dict(json.loads(row["env"]))

    def set_app_env(self, name: str, env: dict[str, str]) -> None:
        self._db.execute("UPDATE apps SET env=? WHERE name=?", (json.dumps(env), name))

    def apps(self) -> list[AppRow]:
        rows = self._db.execute("SELECT name FROM apps ORDER BY name").fetchall()
        return [a for a in (self.app(r["name"]) for r in rows) if a is not None]

    def set_app_stopped(self, name: str, stopped: bool) -> None:
        """Record that the user stopped (or started again) the app."""
        self._db.execute(
            "UPDATE apps SET stopped=?, updated=? WHERE name=?", (int(stopped), time.time(), name)
        )

    def remove_app(self, name: str) -> None:
        """Forget the app: its instances, releases, deployments, events, schema migrations,
        flag versions and itself."""
        with self._tx() as db:
            releases = "SELECT id FROM releases WHERE app=?"
            db.execute(f"DELETE FROM instances WHERE release_id IN ({releases})", (name,))
            deployments = "SELECT id FROM deployments WHERE app=?"
            db.execute(f"DELETE FROM events WHERE deployment_id IN ({deployments})", (name,))
            db.execute("DELETE FROM events WHERE app=?", (name,))
            db.execute("DELETE FROM deployments WHERE app=?", (name,))
            db.execute("DELETE FROM schema_migrations WHERE app=?", (name,))
            db.execute("DELETE FROM flag_versions WHERE app=?", (name,))
            db.execute("DELETE FROM releases WHERE app=?", (name,))
            db.execute("DELETE FROM apps WHERE name=?", (name,))

    # -- deployments (and the per-app lock) ---------------------------------------------------

    def begin_deployment(
        self,
        *,
        app: str,
        app_config: dict[str, Any] | None,
        config_path: str | None,
        kind: str,
        strategy: str,
        release: dict[str, Any] | None,
        release_id: int | None = None,
        previous_release_id: int | None,
        holder_pid: int,
    ) -> tuple[int, int]:
        """Take the app's lock and record the deployment and its release, atomically.

        ``release`` holds the new release's fields (version, command, env, cwd, config,
        config_hash); pass ``release_id`` instead to deploy an existing release again.
        Returns ``(deployment_id, release_id)``. Raises ``DeploymentLocked`` naming the
        running deployment when there is one.
        """
        now = time.time()
        with self._tx() as db:
            holder = db.execute(
                "SELECT * FROM deployments WHERE app=? AND status=?",
                (app, DeploymentStatus.RUNNING),
            ).fetchone()
            if holder is not None:
                raise DeploymentLocked(_lock_message(_deployment(holder), self))
            if app_config is not None and config_path is not None:
                self.upsert_app(app, app_config, config_path)
            if release is not None:
                cur = db.execute(
                    "INSERT INTO releases(app, version, command, env, cwd, config, config_hash,"
                    " state, weight, created) VALUES (?,?,?,?,?,?,?,?, 0, ?)",
                    (
                        app,
                        release["version"],
                        json.dumps(release["command"]),
                        json.dumps(release["env"]),
                        release["cwd"],
                        json.dumps(release["config"]),
                        release["config_hash"],
                        RELEASE_BORN,
                        now,
                    ),
                )
                assert cur.lastrowid is not None
                release_id = cur.lastrowid
            if release_id is None:
                raise ValueError("begin_deployment needs a release or a release_id")
            cur = db.execute(
                "INSERT INTO deployments(app, kind, release_id, previous_release_id, strategy,"
                " step, status, started, holder_pid) VALUES (?,?,?,?,?, 'lock', ?, ?, ?)",
                (
                    app,
                    kind,
                    release_id,
                    previous_release_id,
                    strategy,
                    DEPLOYMENT_BORN,
                    now,
                    holder_pid,
                ),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid, release_id

    def set_step(self, deployment_id: int, step: str) -> None:
        self._db.execute("UPDATE deployments SET step=? WHERE id=?", (step, deployment_id))

    def finish_deployment(self, deployment_id: int, status: str, error: str | None = None) -> None:
        """End a running deployment with a final ``status`` (which releases the app's lock).

        Raises ``ValueError`` for a status that is not final, ``IllegalTransition`` for a
        deployment that already ended; nothing is written then.
        """
        if deployment_status(status) == DeploymentStatus.RUNNING:
            raise ValueError(f"not a final deployment status: {status!r}")
        row = self._db.execute(
            "SELECT app, status FROM deployments WHERE id=?", (deployment_id,)
        ).fetchone()
        if row is not None:
            check_deployment(row["app"], f"deployment #{deployment_id}", row["status"], status)
        self._db.execute(
            "UPDATE deployments SET status=?, error=?, ended=? WHERE id=?",
            (status, error, time.time(), deployment_id),
        )

    def deployment(self, deployment_id: int) -> DeploymentRow | None:
        row = self._db.execute("SELECT * FROM deployments WHERE id=?", (deployment_id,)).fetchone()
        return None if row is None else _deployment(row)

    def running_deployments(self) -> list[DeploymentRow]:
        rows = self._db.execute(
            "SELECT * FROM deployments WHERE status=? ORDER BY id", (DeploymentStatus.RUNNING,)
        )
        return [_deployment(r) for r in rows]

    def running_deployment(self, app: str) -> DeploymentRow | None:
        row = self._db.execute(
            "SELECT * FROM deployments WHERE app=? AND status=?", (app, DeploymentStatus.RUNNING)
        ).fetchone()
        return None if row is None else _deployment(row)

    def deployments(self, app: str | None = None, limit: int = 50) -> list[DeploymentRow]:
        if app is None:
            rows = self._db.execute("SELECT * FROM deployments ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute(
                "SELECT * FROM deployments WHERE app=? ORDER BY id DESC LIMIT ?", (app, limit)
            )
        return [_deployment(r) for r in rows]

    # -- releases ----------------------------------------------------------------------------

    def release(self, release_id: int) -> ReleaseRow | None:
        row = self._db.execute("SELECT * FROM releases WHERE id=?", (release_id,)).fetchone()
        return None if row is None else _release(row)

    def releases(self, app: str, states: tuple[str, ...] | None = None) -> list[ReleaseRow]:
        rows = self._db.execute("SELECT * FROM releases WHERE app=? ORDER BY id", (app,)).fetchall()
        found = [_release(r) for r in rows]
        if states is not None:
            found = [r for r in found if r.state in states]
        return found

    def update_release(
        self,
        release_id: int,
        *,
        state: str | None = None,
        weight: int | None = None,
        live_since: float | None = None,
        warm_until: float | None = None,
        clear_warm_until: bool = False,
    ) -> None:
        """Change a release's state, weight, or the time it went live / stops being warm.

        A state change the table does not allow raises ``IllegalTransition``; a word that is
        no release state, ``ValueError``. Nothing is written then.
        """
        sets: list[str] = []
        args: list[Any] = []
        if state is not None:
            to = release_state(state)
            row = self._db.execute(
                "SELECT app, version, state FROM releases WHERE id=?", (release_id,)
            ).fetchone()
            if row is not None:
                what = f"release {row['version']} (#{release_id})"
                to = check_release(row["app"], what, row["state"], to)
            sets.append("state=?")
            args.append(to)
        if weight is not None:
            sets.append("weight=?")
            args.append(weight)
        if live_since is not None:
            sets.append("live_since=?")
            args.append(live_since)
        if clear_warm_until:
            sets.append("warm_until=NULL")
        elif warm_until is not None:
            sets.append("warm_until=?")
            args.append(warm_until)
        if not sets:
            return
        args.append(release_id)
        self._db.execute(f"UPDATE releases SET {', '.join(sets)} WHERE id=?", args)

    def set_artifact(
        self, release_id: int, artifact: dict[str, Any], *, cwd: str | None = None
    ) -> None:
        """Record what a release runs (and, for a snapshot, the directory it runs in)."""
        if cwd is None:
            self._db.execute(
                "UPDATE releases SET artifact=? WHERE id=?", (json.dumps(artifact), release_id)
            )
        else:
            self._db.execute(
                "UPDATE releases SET artifact=?, cwd=? WHERE id=?",
                (json.dumps(artifact), cwd, release_id),
            )

    # -- instances ---------------------------------------------------------------------------

    def add_instance(
        self,
        release_id: int,
        index: int,
        address: str,
        ref: str,
        log_path: str | None,
        state: str = INSTANCE_BORN,
    ) -> int:
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO instances(release_id, idx, address, ref, log_path, state, created, updated)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (release_id, index, address, ref, log_path, state, now, now),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_instance_state(self, instance_id: int, state: str) -> None:
        """Change an instance's state. A change the table does not allow raises
        ``IllegalTransition``; a word that is no instance state, ``ValueError``. Nothing is
        written then."""
        to = instance_state(state)
        row = self._db.execute(
            "SELECT r.app, r.version, i.idx, i.state FROM instances i"
            " JOIN releases r ON r.id = i.release_id WHERE i.id=?",
            (instance_id,),
        ).fetchone()
        if row is not None:
            what = f"instance {row['version']}#{row['idx']} (#{instance_id})"
            to = check_instance(row["app"], what, row["state"], to)
        self._db.execute(
            "UPDATE instances SET state=?, updated=? WHERE id=?", (to, time.time(), instance_id)
        )

    def set_instances_state(self, instance_ids: list[int], state: str) -> None:
        """Change several instances at once (one transaction: one table change)."""
        with self._tx():
            for instance_id in instance_ids:
                self.set_instance_state(instance_id, state)

    def instance(self, instance_id: int) -> InstanceRow | None:
        row = self._db.execute("SELECT * FROM instances WHERE id=?", (instance_id,)).fetchone()
        return None if row is None else _instance(row)

    def instances(
        self, release_id: int, states: tuple[str, ...] | None = None
    ) -> list[InstanceRow]:
        rows = self._db.execute(
            "SELECT * FROM instances WHERE release_id=? ORDER BY id", (release_id,)
        ).fetchall()
        found = [_instance(r) for r in rows]
        if states is not None:
            found = [i for i in found if i.state in states]
        return found

    def active_instances(self) -> list[tuple[ReleaseRow, InstanceRow]]:
        """Every instance Baton believes is running (not stopped or failed), with its release."""
        rows = self._db.execute(
            "SELECT * FROM instances WHERE state NOT IN (?, ?) ORDER BY id",
            (InstanceState.STOPPED, InstanceState.FAILED),
        ).fetchall()
        out: list[tuple[ReleaseRow, InstanceRow]] = []
        for row in rows:
            inst = _instance(row)
            rel = self.release(inst.release_id)
            if rel is not None:
                out.append((rel, inst))
        return out

    # -- transactions spanning several updates -------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several updates so a crash never leaves half of them written."""
        with self._tx():
            yield

    # -- events ------------------------------------------------------------------------------

    def add_event(
        self, deployment_id: int | None, app: str | None, kind: str, data: dict[str, Any]
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO events(deployment_id, app, ts, kind, data) VALUES (?,?,?,?,?)",
            (deployment_id, app, time.time(), kind, json.dumps(data)),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def events(self, deployment_id: int) -> list[EventRow]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE deployment_id=? ORDER BY id", (deployment_id,)
        )
        return [
            EventRow(
                r["id"], r["deployment_id"], r["app"], r["ts"], r["kind"], json.loads(r["data"])
            )
            for r in rows
        ]

    # -- feature flags ----------------------------------------------------------------------

    def add_flag_version(self, app: str, flags: dict[str, Any], source: str, note: str) -> int:
        """Record a new version of ``app``'s flag set (it is served from now on)."""
        with self._tx():
            row = self._db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM flag_versions WHERE app=?", (app,)
            ).fetchone()
            version = int(row[0]) + 1
            self._db.execute(
                "INSERT INTO flag_versions(app, version, flags, source, note, created)"
                " VALUES (?,?,?,?,?,?)",
                (app, version, json.dumps(flags, sort_keys=True), source, note, time.time()),
            )
        return version

    def latest_flags(self) -> list[FlagVersionRow]:
        """The newest flag-set version of every app that has one."""
        rows = self._db.execute(
            "SELECT * FROM flag_versions f WHERE version ="
            " (SELECT MAX(version) FROM flag_versions WHERE app = f.app) ORDER BY app"
        )
        return [_flag_row(r) for r in rows]

    def flag_apps(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT DISTINCT app FROM flag_versions")}

    def flag_history(self, app: str, limit: int = 50) -> list[FlagVersionRow]:
        rows = self._db.execute(
            "SELECT * FROM flag_versions WHERE app=? ORDER BY version DESC LIMIT ?", (app, limit)
        )
        return [_flag_row(r) for r in rows]

    def forget_flags(self, app: str) -> None:
        with self._tx():
            self._db.execute("DELETE FROM flag_versions WHERE app=?", (app,))

    # -- schema migrations ------------------------------------------------------------------

    def record_expanded(self, app: str, release_id: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO schema_migrations(release_id, app, expanded) VALUES (?,?,?)",
            (release_id, app, time.time()),
        )

    def record_contracted(self, release_id: int) -> None:
        self._db.execute(
            "UPDATE schema_migrations SET contracted=? WHERE release_id=?",
            (time.time(), release_id),
        )

    def schema_migrations(self, app: str) -> list[MigrationRow]:
        rows = self._db.execute(
            "SELECT * FROM schema_migrations WHERE app=? ORDER BY release_id", (app,)
        )
        return [
            MigrationRow(r["release_id"], r["app"], r["expanded"], r["contracted"]) for r in rows
        ]


def _flag_row(r: sqlite3.Row) -> FlagVersionRow:
    return FlagVersionRow(
        r["app"], r["version"], json.loads(r["flags"]), r["source"], r["note"], r["created"]
    )


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside our statements)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _lock_message(holder: DeploymentRow, store: Store) -> str:
    release = store.release(holder.release_id) if holder.release_id is not None else None
    version = f" of version {release.version}" if release is not None else ""
    started = time.strftime("%H:%M:%S", time.localtime(holder.started))
    return (
        f"another deployment of {holder.app} is running: deployment #{holder.id}{version}"
        f" ({holder.kind}, {holder.strategy}, at step {holder.step!r}, started {started},"
        f" held by the control plane pid {holder.holder_pid})"
    )
