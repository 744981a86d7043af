"""Release snapshots of the process runtime: the app directory, frozen at deploy time.

A process release runs from its own copy of the app directory (``run.cwd``), taken when it
is deployed, so a later edit of the source (or a ``git pull``) never changes what a release
or a rollback runs. The copy lives in ``<state dir>/releases/<app>/<label>/``.

Rules it keeps:
- ``.git`` and ``.baton`` (where ``.baton/secrets`` lives) are never copied, nor anything
  matching a ``run.exclude`` glob: a glob without ``/`` matches a file or directory name at
  any depth (``*.log``, ``node_modules``); one with ``/`` matches the path from the app
  directory (``tmp/cache``, ``logs/*.log``); a trailing ``/`` matches directories only.
  The state dir itself is skipped when it lies inside the app directory.
- Files are *copied*, never hard-linked: a hard link shares its content with the source, so
  an edit in place of the source would change the release. The copy is a reflink (``FICLONE``,
  copy-on-write: instant and free on btrfs/XFS) where the filesystem can, else a kernel copy.
  Modes are kept (executable scripts stay executable); symlinks are copied as symlinks;
  sockets and FIFOs are skipped.
- A snapshot is built under a temporary name and renamed into place, so a half-made one
  never looks like a release.

``excluded`` is pure; ``take`` and ``remove`` do the I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ALWAYS_EXCLUDED = (".git", ".baton")
FICLONE = 0x40049409  # _IOW(0x94, 9, int): clone a whole file, copy-on-write

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def excluded(relpath: str, is_dir: bool, patterns: Iterable[str]) -> bool:
    """Whether the entry at ``relpath`` (``/``-separated, from the app dir) is left out."""
    name = relpath.rsplit("/", 1)[-1]
    if name in ALWAYS_EXCLUDED:
        return True
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        glob = pattern.rstrip("/")
        if dir_only and not is_dir:
            continue
        if "/" in glob:
            if fnmatch.fnmatchcase(relpath, glob.removeprefix("./")):
                return True
        elif fnmatch.fnmatchcase(name, glob):
            return True
    return False


def directory_name(label: str) -> str:
    """A release label as a directory name (labels may hold ``/`` or start with a dot)."""
    safe = _UNSAFE.sub("_", label)
    return safe if safe.strip(".") else f"_{safe}"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    files: int
    bytes: int
    seconds: float
    reflinked: bool  # at least one file was cloned copy-on-write


def _copy_file(src: Path, dst: Path, mode: int) -> bool:
    """Copy one regular file; True when it was a reflink."""
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fout:
            cloned = False
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                cloned = True
            except OSError:
                shutil.copyfileobj(fin, fout, 1 << 20)
    os.chmod(dst, stat.S_IMODE(mode))
    return cloned


def take(
    source: Path, dest: Path, exclude: Iterable[str], *, skip: Iterable[Path] = ()
) -> Snapshot:
    """Copy ``source`` to ``dest`` (which must not exist) honouring the exclusions.

    ``skip``: directories never entered (the state dir when it is inside ``source``).
    Raises ``OSError`` (nothing left behind) when something cannot be read or written.
    """
    started = time.monotonic()
    patterns = list(exclude)
    skipped = {p.resolve() for p in skip}
    source = source.resolve()
    if dest.exists():
        raise FileExistsError(f"{dest} exists already")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    files = size = 0
    reflinked = False
    try:
        tmp.mkdir(mode=0o755)
        stack = [(source, tmp, "")]
        while stack:
            src_dir, dst_dir, rel_dir = stack.pop()
            with os.scandir(src_dir) as entries:
                for entry in entries:
                    rel = f"{rel_dir}{entry.name}"
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if excluded(rel, is_dir, patterns):
                        continue
                    src = Path(entry.path)
                    dst = dst_dir / entry.name
                    if entry.is_symlink():
                        os.symlink(os.readlink(src), dst)
                    elif is_dir:
                        if src.resolve() in skipped:
                            continue
                        dst.mkdir()
                        shutil.copymode(src, dst)
                        stack.append((src, dst, f"{rel}/"))
                    elif entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        reflinked = _copy_file(src, dst, info.st_mode) or reflinked
                        files += 1
                        size += info.st_size
        shutil.copymode(source, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return Snapshot(dest, files, size, time.monotonic() - started, reflinked)


def remove(path: Path) -> None:
    """Delete a snapshot (gone already is fine)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
