"""Secret values: reading them, keeping them owner-only, and keeping them out of text."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.errors import ConfigError, UsageError
from baton.secrets import (
    SecretStore,
    check_given,
    format_dotenv,
    gather,
    parse_dotenv,
    read_user_secrets,
    redact,
)


def test_dotenv_lines() -> None:
    text = '# comment\n\nexport A=1\nB = two words \nC="q\\"uote\\n"\nD=\'raw\\n\'\nE=\n'
    assert parse_dotenv(text, file="f") == {
        "A": "1",
        "B": "two words",
        "C": 'q"uote\n',
        "D": "raw\\n",
        "E": "",
    }


def test_a_bad_line_names_the_line_but_not_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dotenv("A=1\nthis is hunter2\n", file="/x/.baton/secrets")
    assert "line 2" in str(caught.value) and "/x/.baton/secrets" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), st.text()))
def test_the_state_file_reads_back_what_was_written(values: dict[str, str]) -> None:
    assert parse_dotenv(format_dotenv(values), file="f") == values


def _secrets_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / ".baton" / "secrets"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_may_read_is_refused_naming_it_and_its_mode(
    tmp_path: Path, mode: int
) -> None:
    path = _secrets_file(tmp_path, "A=1\n", mode)
    with pytest.raises(ConfigError) as caught:
        read_user_secrets(tmp_path)
    assert str(path) in str(caught.value) and f"{mode:04o}" in str(caught.value)


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    _secrets_file(tmp_path, "A=from-file\nB=from-file\nC=unlisted\n", 0o600)
    got = gather(["A", "B", "D"], tmp_path, {"A": "from-env"})
    assert got == {"A": "from-env", "B": "from-file"}
    assert gather([], tmp_path / "nowhere", {}) == {}


def test_given_secrets_must_be_listed_and_errors_never_show_values() -> None:
    assert check_given({"A": "v"}, ["A"], "shop") == {"A": "v"}
    with pytest.raises(UsageError) as caught:
        check_given({"B": "value-xyz"}, ["A"], "shop")
    assert "B" in str(caught.value) and "value-xyz" not in str(caught.value)
    with pytest.raises(UsageError):
        check_given({"A": 1}, ["A"], "shop")


def test_redaction_hides_every_value_longest_first() -> None:
    text = "url=postgres://u:pw-long@db token=pw"
    assert redact(text, ["pw", "pw-long", ""]) == "url=postgres://u:[secret]@db token=[secret]"


def test_the_state_file_is_owner_only_and_replaced_atomically(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.write("shop", {"A": "1"})
    store.write("shop", {"A": "2", "B": "x"})
    assert store.read("shop") == {"A": "2", "B": "x"}
    assert stat.S_IMODE(store.path("shop").stat().st_mode) == 0o600
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert [p.name for p in store.dir.iterdir()] == ["shop.env"]
    assert store.read("other") == {}
