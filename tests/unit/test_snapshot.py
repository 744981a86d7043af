"""Release snapshots: which files a release is made of, and that it is a copy, not a link."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from baton.config import parse_config
from baton.deploy.releases import label_clash, pinned, to_prune
from baton.runtime.snapshot import directory_name, excluded, take
from baton.state.states import ReleaseState
from baton.state.store import ReleaseRow


@pytest.mark.parametrize(
    ("relpath", "is_dir", "patterns", "out"),
    [
        (".git", True, [], True),
        ("sub/.git", True, [], True),
        (".baton", True, [], True),
        (".gitignore", False, [], False),
        ("app.py", False, [], False),
        ("debug.log", False, ["*.log"], True),
        ("logs/deep/debug.log", False, ["*.log"], True),
        ("node_modules", True, ["node_modules/"], True),
        ("node_modules", False, ["node_modules/"], False),  # dir-only pattern, a file
        ("web/node_modules", True, ["node_modules"], True),
        ("tmp/cache", True, ["tmp/cache"], True),
        ("other/tmp/cache", True, ["tmp/cache"], False),  # with a '/', anchored at the top
        ("tmp/cache", True, ["./tmp/cache"], True),
        ("logs/a.log", False, ["logs/*.log"], True),
        ("a.log", False, ["logs/*.log"], False),
    ],
)
def test_exclusion_rules(relpath: str, is_dir: bool, patterns: list[str], out: bool) -> None:
    assert excluded(relpath, is_dir, patterns) is out


def test_labels_become_safe_directory_names() -> None:
    assert directory_name("v1.2.3") == "v1.2.3"
    assert directory_name("feature/x") == "feature_x"
    assert directory_name("..") == "_.."
    assert directory_name("a b") == "a_b"


def test_a_snapshot_is_a_copy_honouring_exclusions_and_modes(tmp_path: Path) -> None:
    src = tmp_path / "app"
    (src / ".git").mkdir(parents=True)
    (src / ".git" / "HEAD").write_text("ref")
    (src / ".baton").mkdir()
    (src / ".baton" / "secrets").write_text("A=b")
    (src / "lib").mkdir()
    (src / "lib" / "code.py").write_text("one")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "debug.log").write_text("noise")
    (src / "link").symlink_to("lib/code.py")
    state = src / "state"  # the state dir inside the app dir is never copied into itself
    state.mkdir()
    (state / "baton.db").write_text("db")
    snap = take(src, tmp_path / "releases" / "v1", ["*.log"], skip=[state])
    dest = snap.path
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert files == ["lib", "lib/code.py", "link", "run.sh"]
    assert os.access(dest / "run.sh", os.X_OK)
    assert os.readlink(dest / "link") == "lib/code.py"
    assert snap.files == 2
    # Editing the source in place (same inode) leaves the snapshot as it was.
    with open(src / "lib" / "code.py", "r+") as f:
        f.write("TWO")
    assert (dest / "lib" / "code.py").read_text() == "one"
    assert not list((tmp_path / "releases").glob(".*partial"))


def test_a_snapshot_never_overwrites_an_existing_one(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "v1").mkdir()
    with pytest.raises(FileExistsError):
        take(tmp_path / "app", tmp_path / "v1", [])


def _release(rid: int, version: str, state: str, artifact: dict[str, Any]) -> ReleaseRow:
    return ReleaseRow(
        id=rid,
        app="shop",
        version=version,
        command="x",
        env={},
        cwd="/",
        config={},
        config_hash="",
        state=ReleaseState(state),
        weight=0,
        live_since=None,
        warm_until=None,
        created=0.0,
        artifact=artifact,
    )


def test_pruning_keeps_the_newest_and_never_live_warm_or_pending(tmp_path: Path) -> None:
    snap = {"kind": "snapshot", "path": str(tmp_path)}
    rows = [
        _release(1, "v1", "warm", snap),
        _release(2, "v2", "stopped", snap),
        _release(3, "v3", "stopped", {**snap, "pruned": True}),
        _release(4, "v4", "stopped", snap),
        _release(5, "v5", "live", snap),
        _release(6, "v6", "pending", snap),
    ]
    assert [r.version for r in to_prune(rows, 3)] == ["v2"]  # v6, v5, v4 newest; v1 warm
    assert [r.version for r in to_prune(rows, 1)] == ["v4", "v2"]  # v5 live, v1 warm
    assert to_prune(rows, 10) == []


def test_a_label_of_a_kept_release_clashes_but_not_a_failed_or_pruned_one(
    tmp_path: Path,
) -> None:
    snap = {"kind": "snapshot", "path": str(tmp_path)}
    assert label_clash([_release(1, "v1", "stopped", snap)], "v1") is not None
    assert label_clash([_release(1, "v1", "failed", snap)], "v1") is None
    gone = {**snap, "pruned": True}
    assert label_clash([_release(1, "v1", "stopped", gone)], "v1") is None
    assert label_clash([_release(1, "v1", "stopped", snap)], "v2") is None


def test_docker_releases_run_the_recorded_image_id() -> None:
    cfg = parse_config({"app": "a", "runtime": "docker", "run": {"image": "a:1", "port": 80}})
    art = {"kind": "image", "image": "a:1", "id": "sha256:" + "ab" * 32}
    assert pinned(cfg, art).run.image == "sha256:" + "ab" * 32
    assert pinned(cfg, {}).run.image == "a:1"
