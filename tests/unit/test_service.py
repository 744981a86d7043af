"""`baton install-service`: the systemd unit's content, where it goes, and systemd's opinion."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli import main
from baton.service import ServiceSpec, unit_text


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_the_unit_signals_only_the_control_plane_so_the_proxy_and_apps_survive(
    tmp_path: Path,
) -> None:
    unit = _parse(unit_text(ServiceSpec(tmp_path / "state", user_unit=False, run_as="deploy")))
    service = unit["Service"]
    assert service["KillMode"] == "process"
    assert service["ExecStart"] == (
        f"{sys.executable} -m baton.cli --state-dir {tmp_path / 'state'} server"
    )
    assert service["Restart"] == "on-failure"
    assert service["User"] == "deploy"
    assert "ExecStop" not in service  # `systemctl stop` must not run `baton down`
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "docker.service" in unit["Unit"]["After"]


def test_a_user_unit_starts_with_the_user_session_and_has_no_user_line(tmp_path: Path) -> None:
    unit = _parse(unit_text(ServiceSpec(tmp_path, user_unit=True, run_as="deploy")))
    assert unit["Install"]["WantedBy"] == "default.target"
    assert "User" not in unit["Service"]
    assert unit["Service"]["KillMode"] == "process"


def test_a_state_dir_with_spaces_is_quoted(tmp_path: Path) -> None:
    unit = _parse(unit_text(ServiceSpec(tmp_path / "my state", user_unit=True)))
    assert f"'{tmp_path / 'my state'}'" in unit["Service"]["ExecStart"]


def test_install_service_writes_the_unit_and_print_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "units"
    runner = CliRunner()
    printed = runner.invoke(
        main, ["install-service", "--user", "--state-dir", str(tmp_path / "s"), "--print"]
    )
    assert printed.exit_code == 0, printed.output
    assert "KillMode=process" in printed.output
    assert not out.exists()
    written = runner.invoke(
        main,
        ["install-service", "--user", "--state-dir", str(tmp_path / "s"), "--output-dir", str(out)],
    )
    assert written.exit_code == 0, written.output
    assert (out / "baton.service").read_text() == printed.output
    assert "systemctl --user daemon-reload" in written.output


def test_install_service_into_a_dir_it_cannot_write_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["install-service", "--output-dir", str(blocker / "x")])
    assert result.exit_code == 2
    assert "--output-dir" in result.output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("user_unit", [False, True])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, user_unit: bool) -> None:
    path = tmp_path / "baton.service"
    path.write_text(unit_text(ServiceSpec(tmp_path / "state", user_unit=user_unit)))
    # System mode: `--user` verification needs a user manager, which a test host may lack.
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "baton.service" not in done.stderr, done.stderr  # no warning about our unit
