"""Immutable releases: what each release runs, frozen when it is deployed, and which are kept.

A release is its artifact plus its command and env. For the process runtime the artifact is
a snapshot of the app directory (``baton.runtime.snapshot``) and the release runs with that
snapshot as its working directory; for docker it is the image's ID, resolved from the tag at
deploy time, and every instance (and every rollback) runs that ID, so moving the tag later
changes nothing. The artifact is recorded in the release's ``artifact`` column:

- ``{"kind": "snapshot", "path": ..., "source": ..., "files": n, "bytes": n, "seconds": s}``
  (``"pruned": true`` once ``deploy.keep_releases`` removed it);
- ``{"kind": "image", "image": "shop:1.4", "id": "sha256:...", "digest": "shop@sha256:..."}``
  (``digest`` when the image came from a registry and Docker knows its RepoDigest).

Rules it keeps: a release whose snapshot is gone cannot run again (a rollback to it is refused
naming the kept ones); the live, warm and pending releases are never pruned; a label that
names a kept release is not reused for different code. The decisions are pure functions;
``make_artifact`` and ``prune`` do the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from baton.config import AppConfig
from baton.errors import DeploymentFailed, UsageError
from baton.runtime import snapshot
from baton.state.states import ACTIVE_RELEASE_STATES, ReleaseState
from baton.state.store import ReleaseRow, Store

PROTECTED_STATES = ACTIVE_RELEASE_STATES  # a release that may take traffic again is never pruned


# -- pure --------------------------------------------------------------------------------------


def runnable(release: ReleaseRow) -> bool:
    """Whether the release's artifact is still there to run (legacy releases: yes)."""
    art = release.artifact
    if art.get("kind") == "snapshot":
        return not art.get("pruned") and Path(str(art.get("path"))).is_dir()
    return True


def kept_labels(releases: Iterable[ReleaseRow]) -> list[str]:
    """Labels of the releases that can still run, oldest first (for error messages)."""
    seen: list[str] = []
    for release in releases:
        if (
            release.state != ReleaseState.FAILED
            and runnable(release)
            and release.version not in seen
        ):
            seen.append(release.version)
    return seen


def to_prune(releases: list[ReleaseRow], keep: int) -> list[ReleaseRow]:
    """The snapshot releases to remove: all but the newest ``keep`` snapshots, never a live,
    warm or pending one (those are kept on top of the count when they are older)."""
    snapshots = [
        r for r in releases if r.artifact.get("kind") == "snapshot" and not r.artifact.get("pruned")
    ]
    snapshots.sort(key=lambda r: r.id, reverse=True)
    return [r for r in snapshots[keep:] if r.state not in PROTECTED_STATES]


def label_clash(releases: Iterable[ReleaseRow], version: str) -> ReleaseRow | None:
    """An earlier release with this label that still runs or can be rolled back to: a new
    deploy must not hide different code behind the same label."""
    for release in releases:
        if (
            release.version == version
            and release.state != ReleaseState.FAILED
            and release.artifact
            and runnable(release)
        ):
            return release
    return None


def pinned(cfg: AppConfig, artifact: dict[str, Any]) -> AppConfig:
    """The config instances start with: docker runs the recorded image ID, not the tag."""
    image_id = artifact.get("id") if artifact.get("kind") == "image" else None
    if not image_id or cfg.run.image == image_id:
        return cfg
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"image": image_id})})


def describe(artifact: dict[str, Any]) -> dict[str, Any]:
    """The artifact as ``baton status``/``history`` show it."""
    kind = artifact.get("kind")
    if kind == "snapshot":
        return {
            "kind": "snapshot",
            "path": artifact.get("path"),
            "kept": not artifact.get("pruned"),
            "files": artifact.get("files"),
            "bytes": artifact.get("bytes"),
            "seconds": artifact.get("seconds"),
        }
    if kind == "image":
        return {
            "kind": "image",
            "image": artifact.get("image"),
            "id": artifact.get("id"),
            "digest": artifact.get("digest"),
        }
    return {}


# -- I/O ---------------------------------------------------------------------------------------


def snapshot_dir(state_dir: Path, app: str, version: str, release_id: int) -> Path:
    base = state_dir / "releases" / app
    path = base / snapshot.directory_name(version)
    if path.exists():  # a label reused after its snapshot was pruned and recreated elsewhere
        path = base / f"{snapshot.directory_name(version)}-{release_id}"
    return path


async def make_artifact(
    store: Store, state_dir: Path, release: ReleaseRow, cfg: AppConfig, resolve_image: Any
) -> ReleaseRow:
    """Freeze what ``release`` runs; return the updated row.

    Process: snapshot ``release.cwd`` (the app dir) and run from the snapshot. Docker:
    ``resolve_image(tag)`` gives ``(id, repo_digest)``. Raises ``DeploymentFailed``.
    """
    if cfg.runtime == "docker":
        assert cfg.run.image is not None
        image_id, digest = await resolve_image(cfg.run.image)
        artifact: dict[str, Any] = {"kind": "image", "image": cfg.run.image, "id": image_id}
        if digest:
            artifact["digest"] = digest
        store.set_artifact(release.id, artifact)
    else:
        source = Path(release.cwd)
        dest = snapshot_dir(state_dir, release.app, release.version, release.id)
        try:
            snap = await asyncio.to_thread(
                snapshot.take, source, dest, cfg.run.exclude, skip=[state_dir]
            )
        except OSError as exc:
            raise DeploymentFailed(f"could not snapshot {source} into {dest}: {exc}") from exc
        artifact = {
            "kind": "snapshot",
            "path": str(snap.path),
            "source": str(source),
            "files": snap.files,
            "bytes": snap.bytes,
            "seconds": round(snap.seconds, 3),
            "reflink": snap.reflinked,
        }
        store.set_artifact(release.id, artifact, cwd=str(snap.path))
    updated = store.release(release.id)
    assert updated is not None
    return updated


def discard(store: Store, release: ReleaseRow) -> None:
    """Remove a release's snapshot (a failed deployment's, or a pruned one)."""
    art = release.artifact
    if art.get("kind") != "snapshot" or art.get("pruned"):
        return
    snapshot.remove(Path(str(art["path"])))
    store.set_artifact(release.id, {**art, "pruned": True})


def prune(store: Store, app: str, keep: int) -> list[str]:
    """Apply ``deploy.keep_releases``: the labels whose snapshots were removed."""
    removed = []
    for release in to_prune(store.releases(app), keep):
        discard(store, release)
        removed.append(release.version)
    return removed


def refuse_if_gone(store: Store, target: ReleaseRow) -> None:
    """A rollback to a release whose snapshot is gone: exit 2 naming the kept ones."""
    if runnable(target):
        return
    kept = kept_labels(store.releases(target.app))
    raise UsageError(
        f"{target.app} {target.version} can no longer run: its snapshot was removed"
        f" (deploy.keep_releases); releases kept: {', '.join(kept) or 'none'}"
    )
