"""Deploy hooks run as real shell commands: output, exit codes, time-outs, process groups."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from baton.deploy.hooks import HookResult, raise_for_hook, run_hook
from baton.errors import DeploymentFailed
from baton.runtime.process import pid_alive


async def test_a_successful_hook_streams_its_output_and_sees_cwd_and_env(tmp_path: Path) -> None:
    lines: list[str] = []
    result = await run_hook(
        "pre_deploy",
        'echo "in $(pwd)"; echo "target=$BATON_TARGET_URL" >&2; echo done',
        cwd=tmp_path,
        env={"BATON_TARGET_URL": "http://127.0.0.1:1234"},
        log=lines.append,
    )
    assert result.ok and result.exit_code == 0 and not result.timed_out
    assert lines == [f"in {tmp_path}", "target=http://127.0.0.1:1234", "done"]
    assert result.output_tail == lines
    assert result.duration >= 0
    raise_for_hook(result)  # no error


async def test_a_relative_script_runs_from_the_app_directory(tmp_path: Path) -> None:
    script = tmp_path / "migrate.sh"
    script.write_text("#!/bin/sh\necho migrating\nexit 3\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    result = await run_hook("pre_deploy", "./migrate.sh", cwd=tmp_path, env={})
    assert result.exit_code == 3 and result.output_tail == ["migrating"]
    with pytest.raises(DeploymentFailed) as caught:
        raise_for_hook(result)
    assert str(caught.value) == "pre_deploy hook './migrate.sh' exited 3: migrating"
    assert caught.value.exit_code == 1


async def test_the_error_shows_the_last_lines_of_a_long_failing_hook(tmp_path: Path) -> None:
    result = await run_hook(
        "smoke_test", "for i in $(seq 1 100); do echo line $i; done; exit 7", cwd=tmp_path, env={}
    )
    assert result.output_lines == 100 and len(result.output_tail) == 20
    with pytest.raises(DeploymentFailed) as caught:
        raise_for_hook(result, lines=3)
    assert str(caught.value).endswith("exited 7:\n    line 98\n    line 99\n    line 100")


async def test_a_hook_past_its_timeout_is_killed_with_its_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    command = (
        f"{sys.executable} -c 'import os,time,signal; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f' open("child.pid","w").write(str(os.getpid())); time.sleep(600)\' & echo started; wait'
    )
    started = time.monotonic()
    result = await run_hook("post_deploy", command, cwd=tmp_path, env={}, timeout=1)
    assert time.monotonic() - started < 60
    assert result.timed_out and not result.ok
    assert result.output_tail == ["started"]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not pid_alive(child)
    with pytest.raises(
        DeploymentFailed, match=r"post_deploy hook .* timed out after 1s and was killed"
    ):
        raise_for_hook(result)


async def test_a_background_child_holding_the_output_open_does_not_hang_the_hook(
    tmp_path: Path,
) -> None:
    result = await run_hook("post_deploy", "sleep 30 & echo notified", cwd=tmp_path, env={})
    assert result.ok and result.output_tail == ["notified"]
    assert result.duration < 25


async def test_a_hook_killed_by_a_signal_says_so(tmp_path: Path) -> None:
    result = await run_hook("smoke_test", "kill -9 $$", cwd=tmp_path, env={})
    with pytest.raises(DeploymentFailed, match="was killed by SIGKILL"):
        raise_for_hook(result)


async def test_a_missing_directory_fails_the_deployment_clearly(tmp_path: Path) -> None:
    with pytest.raises(DeploymentFailed, match="could not start"):
        await run_hook("pre_deploy", "true", cwd=tmp_path / "gone", env={})


async def test_a_hook_without_output_and_a_missing_command(tmp_path: Path) -> None:
    result = await run_hook("pre_deploy", "exit 2", cwd=tmp_path, env={})
    with pytest.raises(DeploymentFailed, match=r"exited 2 \(no output\)"):
        raise_for_hook(result)
    missing = await run_hook("pre_deploy", "./nope.sh", cwd=tmp_path, env={})
    assert missing.exit_code == 127
    assert any("nope.sh" in line for line in missing.output_tail)


async def test_long_lines_and_unterminated_output_are_kept(tmp_path: Path) -> None:
    result = await run_hook(
        "smoke_test", "head -c 200000 /dev/zero | tr '\\0' x; printf tail", cwd=tmp_path, env={}
    )
    assert result.output_tail == ["x" * 200000 + "tail"]


def test_hook_results_report_ok() -> None:
    assert HookResult("pre_deploy", 0, [], 0.1).ok
    assert not HookResult("pre_deploy", 1, [], 0.1).ok
    assert os.path.exists("/bin/sh")
