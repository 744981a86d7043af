"""The example app's database: SQLite (standard library) or PostgreSQL (psycopg), by URL.

``DATABASE_URL`` is ``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``. The schema
story the migration tests tell (expand/contract): release ``SCHEMA=v1`` reads
``items(title, legacy_flag)``; release ``SCHEMA=v2`` reads ``items(title, price)``. The
expand adds ``price`` (v1 still works), the contract drops ``legacy_flag`` (v1 would not).
"""

from __future__ import annotations

import os
from typing import Any

COLUMNS = {"v1": ("title", "legacy_flag"), "v2": ("title", "price")}


def connect(url: str | None = None) -> Any:
    url = url or os.environ["DATABASE_URL"]
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn
    if url.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(url, autocommit=True)
    raise SystemExit(f"DATABASE_URL: expected sqlite:///PATH or postgresql://..., got {url!r}")


def columns(conn: Any) -> list[str]:
    if type(conn).__module__.startswith("sqlite3"):
        return [row[1] for row in conn.execute("PRAGMA table_info(items)").fetchall()]
    cur = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'"
        " ORDER BY ordinal_position"
    )
    return [row[0] for row in cur.fetchall()]


def read_items(conn: Any, schema: str) -> list[tuple[Any, ...]]:
    wanted = ", ".join(COLUMNS[schema])
    return list(conn.execute(f"SELECT {wanted} FROM items ORDER BY id").fetchall())
