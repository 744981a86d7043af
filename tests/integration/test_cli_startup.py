"""`baton deploy` starts fast: it does not import the daemon, proxy or aiohttp stack.

Every deploy pays for the CLI's start-up before anything else happens, so the commands that
only talk to the daemon must not import what only the daemon runs. Checked in a real child
process (a fresh interpreter), through the real command, against a state dir where no
daemon answers (exit 3, the documented code).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# What `baton deploy` must leave unimported (the daemon's and the proxy's stacks).
HEAVY = (
    "aiohttp",
    "uvloop",
    "httptools",
    "docker",
    "baton.server",
    "baton.deploy.engine",
    "rich.table",  # the status views' tables
)

PROBE = """
import json, sys
from baton.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported_by(*args: str) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return int(result["code"]), set(result["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_deploy_and_version_do_not_import_the_daemon_stack(tmp_path: Path) -> None:
    config = tmp_path / "baton.yml"
    config.write_text("app: shop\nrun:\n  command: exec true\n")
    code, modules = imported_by(
        "--state-dir", str(tmp_path / "state"), "deploy", "-c", str(config), "--version", "v1"
    )
    assert code == 3  # no daemon answers there
    assert "baton.config" in modules  # it did get as far as reading the config
    assert heavy(modules) == []

    code, modules = imported_by("--version")
    assert code == 0
    assert heavy(modules) == []
