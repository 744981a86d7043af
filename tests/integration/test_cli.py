"""The `baton` command line: exit codes and messages a script or a person relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.host import Host

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(
    ("extra", "raw", "expected"),
    [
        ({"instances": 0}, None, ["instances", "≥ 1"]),
        ({"surprise": 1}, None, ["surprise"]),
        ({"health": {"interval": "fast"}}, None, ["health.interval", "duration"]),
        ({"deploy": {"strategy": "recreate"}}, None, ["deploy.strategy"]),
        (None, "app: [unclosed\n", ["invalid YAML"]),
    ],
)
async def test_a_bad_config_exits_2_naming_the_file_and_key_and_changes_nothing(
    host: Host, extra: dict[str, object] | None, raw: str | None, expected: list[str]
) -> None:
    path = host.config(extra, name="bad.yml")
    if raw is not None:
        path.write_text(raw)
    result = await host.deploy("--version", "v1", config=path)
    assert result.rc == 2, result
    assert "bad.yml" in result.err
    for word in expected:
        assert word in result.err, result
    assert (await host.status())["apps"] == {}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--env", "NOEQUALS"], "--env"),
        (["--env", "PORT=1"], "PORT"),
        (["--strategy", "recreate"], "recreate"),
        (["-c", "missing.yml"], "file not found"),
    ],
)
async def test_bad_flags_exit_2(host: Host, args: list[str], expected: str) -> None:
    result = await host.baton("deploy", *args)
    assert result.rc == 2, result
    assert expected in result.err, result
    assert (await host.status())["apps"] == {}


async def test_deploy_status_history_and_logs(host: Host) -> None:
    deployed = await host.deploy("--version", "v1")
    assert deployed.rc == 0, deployed
    for word in ("start", "ready", "switch", "instance 0", "traffic: v1 100%"):
        assert word in deployed.out, deployed

    status = await host.status()
    shop = status["apps"]["shop"]
    assert shop["live"] == "v1"
    assert shop["listen"] == f"127.0.0.1:{host.port}"
    (release,) = shop["releases"]
    assert (release["version"], release["state"], release["weight"]) == ("v1", "live", 100)
    assert [i["health"] for i in release["instances"]] == ["healthy", "healthy"]
    assert shop["deployment"] is None
    text = await host.baton("status")
    assert text.rc == 0 and "live: v1" in text.out

    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    assert [(d["version"], d["status"], d["kind"]) for d in history] == [
        ("v1", "succeeded", "deploy")
    ]

    logs = await host.baton("logs")
    assert logs.rc == 0, logs
    assert "[v1#0]" in logs.out and "[v1#1]" in logs.out
    missing = await host.baton("logs", "--version", "nope")
    assert missing.rc == 2 and "nope" in missing.err


async def test_reusing_the_label_of_the_live_release_exits_2(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    again = await host.deploy("--version", "v1")
    assert again.rc == 2, again
    assert "already has a live release 'v1'" in again.err


async def test_rollback_without_a_previous_release_exits_2(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    result = await host.baton("rollback")
    assert result.rc == 2, result
    assert "no previous release" in result.err


async def test_without_a_daemon_commands_exit_3(tmp_path: Path) -> None:
    lonely = Host(tmp_path)
    lonely.config()
    for args in (["status"], ["deploy", "--version", "v1"], ["history"], ["rollback", "v1"]):
        result = await lonely.baton(*args)
        assert result.rc == 3, (args, result)
        assert "baton up" in result.err


async def test_check_validates_and_prints_the_checklist(tmp_path: Path) -> None:
    lonely = Host(tmp_path)
    good = lonely.config()
    result = await lonely.baton("check", "-c", str(good))
    assert result.rc == 0, result
    assert "is valid" in result.out
    bad = lonely.config({"instances": 0}, name="bad.yml")
    result = await lonely.baton("check", "-c", str(bad))
    assert result.rc == 2 and "instances" in result.err
