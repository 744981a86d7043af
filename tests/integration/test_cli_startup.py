"""`baton deploy` starts fast: it does not import the daemon, proxy or aiohttp stack.

Every deploy pays for the CLI's start-up before anything else happens, so the commands that
only talk to the daemon must not import what only the daemon runs. Checked in a real child
process (a fresh interpreter), through the real command, against a state dir where no
daemon answers (exit 3, the documented code), and against a real daemon (the `host` fixture),
where `baton deploy` leaves validating baton.yml to it: no pydantic models; and what it had
imported when its request reached the daemon's socket: not rich, http.client, the event
classes nor asyncio (they come while the daemon works on the deploy).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.support.host import Host

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

# What `baton deploy` imports, if at all, only once its request is on its way to the daemon
# (rendering the answer needs them; sending it does not), and `baton --version` never.
AFTER_REQUEST = ("rich", "http.client", "baton.events", "asyncio")

# What no `baton` start imports: those, the fleet's records, importlib's machinery, tempfile,
# subprocess and logging.
START_UP = (
    *AFTER_REQUEST,
    "baton.cluster.keys",
    "importlib.abc",
    "importlib.resources",
    "tempfile",
    "subprocess",
    "logging",
)

# Nor, before its request, does `baton deploy` import hashlib: a compiled install hashes its
# hot modules' sources when it first imports one (`baton --version` looks them up), never
# for a command that only talks to the daemon.
HASHING = ("hashlib",)

# What `baton deploy` must also leave unimported when a daemon answers: it validates baton.yml.
VALIDATION = ("pydantic", "baton.config")

# The modules imported by the end, and those imported when the first request to the daemon
# was written to its socket (null when none was).
PROBE = """
import json, socket, sys
at_request = None
send = socket.socket.sendall
def sendall(sock, data, *args):
    global at_request
    if sock.family == socket.AF_UNIX and at_request is None:
        at_request = sorted(sys.modules)
    return send(sock, data, *args)
socket.socket.sendall = sendall
from baton.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules), "at_request": at_request}))
"""


def imported_by(*args: str) -> tuple[int, set[str]]:
    code, modules, _ = probe(*args)
    return code, modules


def probe(*args: str) -> tuple[int, set[str], str]:
    """``baton ARGS`` in a fresh interpreter: its exit code, the modules it imported, stderr."""
    code, modules, _, err = probe_request(*args)
    return code, modules, err


def probe_request(*args: str) -> tuple[int, set[str], set[str] | None, str]:
    """``probe``, and also the modules imported when the request to the daemon was sent."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    at_request = result["at_request"]
    sent = None if at_request is None else set(at_request)
    return int(result["code"]), set(result["modules"]), sent, done.stderr


def heavy(modules: set[str], names: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in names))


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
    assert heavy(modules, HEAVY + START_UP) == []


async def test_deploy_sends_its_request_before_importing_what_renders_the_answer(
    host: Host,
) -> None:
    """Every deploy waits for the CLI up to its request: rich, http.client, the event classes
    come after it, while the daemon works; the deployment is still shown as before."""
    code, modules, at_request, err = await asyncio.to_thread(
        probe_request,
        "--state-dir", str(host.state_dir), "deploy", "-c", str(host.root / "baton.yml"),
        "--version", "v1",
    )  # fmt: skip
    assert code == 0, err
    assert at_request is not None
    assert "yaml" in at_request  # it read baton.yml first
    assert heavy(at_request, HEAVY + VALIDATION + START_UP + HASHING) == []
    assert {"rich.console", "baton.events", "http.client"} <= modules  # it rendered the answer
    assert heavy(modules, HEAVY + VALIDATION) == []
    status, body = await host.get("/")
    assert status == 200 and "v1" in body


async def test_deploy_leaves_validation_to_the_daemon_and_keeps_its_errors(host: Host) -> None:
    state = str(host.state_dir)
    good = host.root / "baton.yml"
    code, modules, err = await asyncio.to_thread(
        probe, "--state-dir", state, "deploy", "-c", str(good), "--version", "v1"
    )
    assert code == 0, err
    assert heavy(modules, HEAVY + VALIDATION) == []
    status, body = await host.get("/")
    assert status == 200 and "v1" in body

    # A bad key: the daemon's answer is shown as the CLI showed it (exit 2, file and key
    # named), still without the models, and nothing changed.
    bad = host.config({"deploy": {"drain_timeout": "soon"}}, name="bad.yml")
    code, modules, err = await asyncio.to_thread(
        probe, "--state-dir", state, "deploy", "-c", str(bad), "--version", "v2"
    )
    assert code == 2
    assert f"{bad}: deploy.drain_timeout" in " ".join(err.split())
    assert heavy(modules, HEAVY + VALIDATION) == []
    assert [r["version"] for r in (await host.status())["apps"]["shop"]["releases"]] == ["v1"]

    # With no daemon, the same bad file still exits 2 with the same message (not 3).
    code, _, err_alone = await asyncio.to_thread(
        probe, "--state-dir", str(host.root / "none"), "deploy", "-c", str(bad)
    )
    assert code == 2
    assert " ".join(err_alone.split()) == " ".join(err.split())
