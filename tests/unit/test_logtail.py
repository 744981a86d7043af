"""`baton logs` and failure messages show the last lines of a log, from bytes or a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.runtime.logtail import last_lines, tail_file


def test_the_last_lines_of_bytes() -> None:
    data = b"one\ntwo\nthree\n"
    assert last_lines(data, 2) == ["two", "three"]
    assert last_lines(data, None) == ["one", "two", "three"]
    assert last_lines(data, 10) == ["one", "two", "three"]
    assert last_lines(data, 0) == [] and last_lines(data, -1) == []
    assert last_lines(b"caf\xe9\n", 1) == ["caf\ufffd"]  # bad UTF-8 is shown, not an error


@pytest.mark.parametrize("lines", [None, 1, 3, 500, 5000, 20000])
def test_a_file_tail_reads_across_blocks_and_matches_the_whole_file(
    tmp_path: Path, lines: int | None
) -> None:
    path = tmp_path / "app.log"
    written = [f"line {i} " + "x" * (i % 50) for i in range(10000)]
    path.write_text("\n".join(written) + "\n")
    expected = written if lines is None else written[-lines:]
    assert tail_file(path, lines) == expected


def test_a_file_without_a_final_newline_keeps_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"a\nb\npartial")
    assert tail_file(path, 2) == ["b", "partial"]


def test_a_missing_or_unreadable_log_has_no_lines(tmp_path: Path) -> None:
    assert tail_file(tmp_path / "nope.log", 5) == []
    assert tail_file(tmp_path, 5) == []  # a directory
    assert tail_file(tmp_path / "nope.log", None) == []
