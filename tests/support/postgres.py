"""A throwaway PostgreSQL cluster for tests: `initdb` in a temp dir, `pg_ctl` on a loopback port.

Debian's `postgresql` package puts the server programs in /usr/lib/postgresql/<major>/bin.
PostgreSQL refuses to run as root, so when the tests run as root (CI) the cluster belongs
to the `postgres` user the package creates, and its directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import free_port


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a cluster in a temp dir; yields its URL (database ``postgres``); stops it.

    The dir is made directly under the system temp dir (not pytest's 0700 tree), so the
    ``postgres`` user can reach it when the tests run as root.
    """
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="baton-pg-"))
    os.chmod(root, 0o755)
    data = root / "pgdata"
    sockets = root / "pgsock"
    sockets.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    prefix: list[str] = []
    if os.getuid() == 0:
        user = "postgres"
        pw = pwd.getpwnam(user)
        for path in (root, sockets):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", user, "--"]

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "--no-sync")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-w",
        "-t",
        "60",
        "-l",
        str(root / "postgres.log"),
        "start",
    )
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
