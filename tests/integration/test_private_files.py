"""The state dir, its store, logs and sockets are private from the first instant (issue 12).

A Baton host is started under a permissive umask (000): whatever the daemon, the proxy and
the instances create must still be 0700 (directories) and 0600 (files and sockets).
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from baton.state.files import private_dir
from baton.state.store import Store
from tests.support.host import Host


@pytest.fixture
async def permissive_host(tmp_path: Path) -> AsyncIterator[Host]:
    h = Host(tmp_path)
    h.config()
    old = os.umask(0)
    try:
        up = await h.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        yield h
    finally:
        os.umask(old)
        await h.teardown()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_state_dir_store_logs_and_sockets_are_private(permissive_host: Host) -> None:
    host = permissive_host
    assert (await host.deploy("--version", "v1")).rc == 0
    state = host.state_dir
    assert mode(state) == 0o700
    for name in ("baton.db", "baton.db-wal", "baton.db-shm"):
        assert mode(state / name) == 0o600, name
    logs = [p for p in state.rglob("*.log")]
    assert logs, "the daemon, the proxy and the instances write logs"
    for log in logs:
        assert mode(log) == 0o600, log
    sockets = [p for p in state.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
    assert {p.name for p in sockets} >= {"baton.sock", "proxy.sock", "proxy.sock.handoff"}
    for sock in sockets:
        assert mode(sock) == 0o600, sock


def test_store_files_are_created_private_and_old_ones_tightened(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        loose = tmp_path / "old"
        loose.mkdir(mode=0o755)
        db = loose / "baton.db"
        db.touch(mode=0o644)
        private_dir(loose)
        store = Store.open(db)
        try:
            for name in ("baton.db", "baton.db-wal", "baton.db-shm"):
                assert mode(loose / name) == 0o600, name
        finally:
            store.close()
        assert mode(loose) == 0o700
        fresh = private_dir(tmp_path / "new" / "state")
        assert mode(fresh) == 0o700
    finally:
        os.umask(old)
