"""Immutable releases and durable env/secrets, end to end: the real CLI, daemon, proxy and apps.

A process release runs from a snapshot of the app directory taken at deploy time, so a
rollback serves the code of back then even after the files changed; ``hooks.build`` runs in
the snapshot; ``deploy.keep_releases`` bounds the snapshots kept. Secrets named in baton.yml
and given once (``.baton/secrets``, mode 0600) reach every later release, and their value is
nowhere in the state dir but the 0600 secrets file, nor in ``history``/``status`` output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.host import (
    APP_DIR,
    Host,
    assert_no_failures,
    served_after,
    start_load,
)

pytestmark = pytest.mark.timeout(240)


def own_app(host: Host, version: str = "v1") -> Path:
    """A copy of the example app in the test's dir, answering ``version`` (in its code)."""
    app_dir = host.root / "app"
    app_dir.mkdir(exist_ok=True)
    set_code_version(app_dir, version)
    return app_dir


def set_code_version(app_dir: Path, version: str) -> None:
    """Edit the app's code in place: its default version becomes ``version``."""
    code = (APP_DIR / "app.py").read_text()
    code = code.replace(
        'os.environ.get("APP_VERSION", "v1")', f'os.environ.get("APP_VERSION", "{version}")'
    )
    assert f'"{version}")' in code
    (app_dir / "app.py").write_text(code)


def configure(host: Host, app_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """baton.yml beside the app (run.cwd "."), without APP_VERSION: the code says it."""
    path = host.config(extra)
    data = yaml.safe_load(path.read_text())
    data["run"]["cwd"] = "."
    data["run"]["env"] = {"SHUTDOWN_GRACE": "5", **(extra or {}).get("run", {}).get("env", {})}
    data["run"]["env"].pop("APP_VERSION", None)
    target = app_dir / "baton.yml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


async def test_rollback_after_the_app_files_changed_serves_the_old_files(host: Host) -> None:
    app_dir = own_app(host, "v1")
    config = configure(host, app_dir)
    assert (await host.deploy("--version", "v1", config=config)).rc == 0
    assert (await host.get())[1] == "v1\n"
    set_code_version(app_dir, "v2")  # the user edits the code (a git pull) ...
    assert (await host.deploy("--version", "v2", config=config)).rc == 0
    assert (await host.get())[1] == "v2\n"
    load = await start_load(host)
    await asyncio.sleep(0.3)
    result = await host.baton("rollback", "v1")  # not warm (keep_previous 0s): started afresh
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 0, result
    assert_no_failures(outcome)
    assert served_after(outcome, after) == {"v1\n"}  # ... and v1 still serves v1's code
    status = (await host.status())["apps"]["shop"]
    live = next(r for r in status["releases"] if r["version"] == "v1")
    snapshot = Path(live["artifact"]["path"])
    assert snapshot.parent == host.state_dir / "releases" / "shop"
    assert 'get("APP_VERSION", "v1")' in (snapshot / "app.py").read_text()


async def test_a_label_naming_a_kept_release_is_not_reused_for_new_code(host: Host) -> None:
    app_dir = own_app(host, "v1")
    config = configure(host, app_dir)
    assert (await host.deploy("--version", "v1", config=config)).rc == 0
    set_code_version(app_dir, "v2")
    assert (await host.deploy("--version", "v2", config=config)).rc == 0
    set_code_version(app_dir, "v1-edited")
    again = await host.deploy("--version", "v1", config=config)
    assert again.rc == 2, again
    assert "releases are immutable" in again.err and "baton rollback v1" in again.err
    assert (await host.get())[1] == "v2\n"


async def test_build_hook_runs_in_the_snapshot_and_its_failure_changes_nothing(
    host: Host,
) -> None:
    app_dir = own_app(host, "v1")
    build = "test -f app.py && echo built > built.txt"  # in the snapshot's directory
    config = configure(host, app_dir, {"hooks": {"build": build}})
    assert (await host.deploy("--version", "v1", config=config)).rc == 0
    snapshot = host.state_dir / "releases" / "shop" / "v1"
    assert (snapshot / "built.txt").read_text() == "built\n"
    assert not (app_dir / "built.txt").exists()  # the source directory is never written
    before = sorted(await host.running_instances())

    set_code_version(app_dir, "v2")
    broken = configure(host, app_dir, {"hooks": {"build": "echo no compiler; exit 3"}})
    load = await start_load(host)
    result = await host.deploy("--version", "v2", config=broken)
    outcome = await load.stop()
    assert result.rc == 1, result
    assert "build hook" in result.err and "no compiler" in result.err
    assert_no_failures(outcome)
    assert {s.value for s in outcome.timeline} == {"v1\n"}
    assert sorted(await host.running_instances()) == before  # no v2 instance ever started
    assert not (host.state_dir / "releases" / "shop" / "v2").exists()  # snapshot removed
    assert (await host.status())["apps"]["shop"]["live"] == "v1"
    # The label of a release that failed is free again.
    fixed = configure(host, app_dir)
    assert (await host.deploy("--version", "v2", config=fixed)).rc == 0
    assert (await host.get())[1] == "v2\n"


async def test_keep_releases_prunes_old_snapshots_but_never_the_live_or_warm_one(
    host: Host,
) -> None:
    app_dir = own_app(host, "v1")
    config = configure(
        host, app_dir, {"deploy": {"keep_releases": 1, "keep_previous": "5m"}, "instances": 1}
    )
    for n in range(1, 5):
        set_code_version(app_dir, f"v{n}")
        result = await host.deploy("--version", f"v{n}", config=config)
        assert result.rc == 0, result
    releases = host.state_dir / "releases" / "shop"
    # Newest one kept by the count (v4, live), v3 kept because it is warm; v1, v2 removed.
    assert sorted(p.name for p in releases.iterdir()) == ["v3", "v4"]
    refused = await host.baton("rollback", "v1")
    assert refused.rc == 2, refused
    assert "v1" in refused.err and "snapshot was removed" in refused.err
    assert "releases kept: v3, v4" in refused.err
    assert (await host.get())[1] == "v4\n"
    # The warm one rolls back at once, from its snapshot.
    back = await host.baton("rollback", "v3")
    assert back.rc == 0, back
    assert (await host.get())[1] == "v3\n"
    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    assert history[0]["artifact"]["path"] == str(releases / "v3")


def _write_secrets(app_dir: Path, text: str, mode: int = 0o600) -> Path:
    path = app_dir / ".baton" / "secrets"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _files_under(root: Path, skip: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and skip not in p.parents]


async def test_a_secret_given_once_survives_later_deploys_and_never_leaks(host: Host) -> None:
    value = "s3cr3t-" + secrets.token_hex(12)
    digest = hashlib.sha256(value.encode()).hexdigest()
    app_dir = own_app(host, "v1")
    config = configure(
        host,
        app_dir,
        {
            "secrets": ["DB_PASSWORD"],
            # A careless hook that prints its environment: its output is redacted.
            "hooks": {"pre_deploy": 'echo "connecting with $DB_PASSWORD"; env | grep DB_'},
        },
    )
    given = _write_secrets(app_dir, f'DB_PASSWORD="{value}"\n')
    first = await host.deploy("--version", "v1", "--env", "GREETING=hi", config=config)
    assert first.rc == 0, first
    given.unlink()  # given once: later deploys have no file and nothing in the environment
    outputs = [first.out + first.err]
    for n in (2, 3, 4):
        set_code_version(app_dir, f"v{n}")
        result = await host.deploy("--version", f"v{n}", config=config)
        assert result.rc == 0, result
        outputs.append(result.out + result.err)
        assert (await host.get("/env-hash?name=DB_PASSWORD")) == (200, digest + "\n")
        assert (await host.get("/"))[1] == f"v{n}\n"
    assert "connecting with [secret]" in outputs[-1]
    # --env is the app's too: v4 still has GREETING from v1's deploy.
    env = json.loads((await host.baton("env", "--json")).out)
    assert env["release"] == "v4" and env["env"]["GREETING"] == "hi"
    unset = await host.baton("env", "--app", "shop", "unset", "GREETING")
    assert unset.rc == 0, unset
    env = json.loads((await host.baton("env", "--json")).out)
    assert env["from_deploy"] == {}  # the next deploy no longer carries it
    listed = await host.baton("secrets", "--app", "shop")
    assert listed.rc == 0 and "DB_PASSWORD" in listed.out and "set" in listed.out
    # A failing hook that echoes it: the error (shown, and kept in the history) is redacted.
    failing = configure(
        host,
        app_dir,
        {"secrets": ["DB_PASSWORD"], "hooks": {"pre_deploy": 'echo "bad $DB_PASSWORD"; exit 4'}},
    )
    failed = await host.deploy("--version", "v5", config=failing)
    assert failed.rc == 1, failed
    assert "bad [secret]" in failed.err
    outputs.append(failed.out + failed.err)
    history = await host.baton("history", "--json")
    assert "bad [secret]" in json.loads(history.out)["deployments"][0]["error"]
    status = await host.baton("status", "--json")
    texts = {"history --json": history.out, "status --json": status.out, "secrets": listed.out}
    texts.update({f"deploy #{n}": out for n, out in enumerate(outputs, 1)})
    for what, text in texts.items():
        assert value not in text, what
    secret_dir = host.state_dir / "secrets"
    stored = secret_dir / "shop.env"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(host.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((host.state_dir / "baton.db").stat().st_mode) == 0o600
    assert value in stored.read_text()
    # baton.db (and its -wal), the daemon's and proxy's logs, snapshots: not one byte of it.
    scanned = _files_under(host.state_dir, skip=secret_dir)
    assert any(p.name == "baton.db" for p in scanned)
    assert any(p.suffix == ".log" for p in scanned)
    for path in scanned:
        assert value.encode() not in path.read_bytes(), path


async def test_a_secrets_file_others_can_read_is_refused(host: Host) -> None:
    app_dir = own_app(host, "v1")
    config = configure(host, app_dir, {"secrets": ["DB_PASSWORD"]})
    path = _write_secrets(app_dir, "DB_PASSWORD=hunter2hunter2\n", mode=0o644)
    result = await host.deploy("--version", "v1", config=config)
    assert result.rc == 2, result
    assert str(path) in result.err and "0644" in result.err
    assert "hunter2hunter2" not in result.err + result.out
    assert (await host.status())["apps"] == {}


async def test_a_secret_with_no_value_fails_the_deploy_before_anything_changes(
    host: Host,
) -> None:
    app_dir = own_app(host, "v1")
    assert (await host.deploy("--version", "v1", config=configure(host, app_dir))).rc == 0
    config = configure(host, app_dir, {"secrets": ["API_KEY"]})
    result = await host.deploy("--version", "v2", config=config)
    assert result.rc == 2, result
    assert "API_KEY" in result.err
    status = (await host.status())["apps"]["shop"]
    assert [r["version"] for r in status["releases"]] == ["v1"]
    assert not (host.state_dir / "releases" / "shop" / "v2").exists()
    # `baton secrets set` gives it (from stdin); the next deploy then runs.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "baton.cli",
        "--state-dir",
        str(host.state_dir),
        "secrets",
        "--app",
        "shop",
        "set",
        "API_KEY",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"key-from-stdin\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert b"key-from-stdin" not in out + err
    assert (await host.deploy("--version", "v2", config=config)).rc == 0
    digest = hashlib.sha256(b"key-from-stdin").hexdigest()
    assert (await host.get("/env-hash?name=API_KEY")) == (200, digest + "\n")
