"""Tiny Docker images for the Docker runtime tests, built here because nothing can be pulled.

Every image is ``FROM scratch`` with Debian's statically linked ``/bin/busybox`` (package
``busybox-static``) copied in as ``/busybox``, and a ``/www`` directory holding ``index.html``
(the version label, no newline) and ``up`` (a health file). By default the image runs
busybox ``httpd`` in the foreground on ``$PORT`` (8080 unless the runtime sets it), serving
``/www``. A busybox ``sh`` wrapper lets it honour ``$PORT`` and stays PID 1 with a trap that
passes ``docker stop``'s SIGTERM to httpd (PID 1 without a handler would ignore it and
``docker stop`` would wait for its SIGKILL).

Variants: ``healthcheck=True`` adds a Docker ``HEALTHCHECK`` that fetches ``/up`` (or
``/down``, a 404, when ``healthy=False``) every 200 ms; ``exit_at_once=True`` replaces the
server by a script that prints a line to stdout and one to stderr and exits 3.

``ImageCache`` builds each tag once per test session and removes them all at the end.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")


def _client() -> Any:
    import docker

    return docker.from_env(timeout=120)


def httpd_dockerfile(
    *, healthcheck: bool = False, healthy: bool = True, exit_at_once: bool = False
) -> str:
    """The Dockerfile text for one variant (see the module docstring)."""
    lines = ["FROM scratch", "COPY busybox /busybox", "COPY www /www", "ENV PORT=8080"]
    if exit_at_once:
        script = "echo starting $APP_VERSION; echo giving up >&2; exit 3"
    else:
        # httpd as PID 1 would never see SIGTERM (the kernel drops signals PID 1 has no
        # handler for), so a shell with a trap stays PID 1 and passes the signal on.
        script = (
            '/busybox httpd -f -p "$PORT" -h /www & pid=$!; '
            "trap 'kill -TERM $pid' TERM INT; wait $pid; wait $pid"
        )
    lines.append("CMD " + json.dumps(["/busybox", "sh", "-c", script]))
    if healthcheck:
        path = "/up" if healthy else "/down"
        probe = f"/busybox wget -q -O /dev/null http://127.0.0.1:$PORT{path}"
        lines.append(
            "HEALTHCHECK --interval=200ms --timeout=2s --retries=2 CMD "
            + json.dumps(["/busybox", "sh", "-c", probe])
        )
    return "\n".join(lines) + "\n"


def build_httpd_image(
    tag: str,
    version: str,
    *,
    healthcheck: bool = False,
    healthy: bool = True,
    exit_at_once: bool = False,
    client: Any = None,
) -> str:
    """Build the image, tag it ``tag`` and return ``tag``. Needs a Docker engine."""
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    client = client if client is not None else _client()
    with tempfile.TemporaryDirectory(prefix="baton-image-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(BUSYBOX, ctx / "busybox")
        www = ctx / "www"
        www.mkdir()
        (www / "index.html").write_text(version)
        (www / "up").write_text("ok\n")
        (ctx / "Dockerfile").write_text(
            httpd_dockerfile(healthcheck=healthcheck, healthy=healthy, exit_at_once=exit_at_once)
        )
        client.images.build(
            path=str(ctx), tag=tag, rm=True, forcerm=True, labels={"baton.test": "1"}
        )
    return tag


class ImageCache:
    """Builds each (version, variant) once per session under a session-unique repository.

    Nothing touches the engine until the first ``get``, so a session fixture holding an
    ``ImageCache`` is harmless where the engine is missing (the tests then skip).
    """

    def __init__(self) -> None:
        self.repository = f"baton-test-{uuid.uuid4().hex[:8]}/httpd"
        self._built: dict[str, str] = {}
        self._lock = threading.Lock()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client()
        return self._client

    def get(
        self,
        version: str,
        *,
        healthcheck: bool = False,
        healthy: bool = True,
        exit_at_once: bool = False,
    ) -> str:
        variant = "".join(
            [
                "-hc" if healthcheck else "",
                "-sick" if healthcheck and not healthy else "",
                "-exit" if exit_at_once else "",
            ]
        )
        tag = f"{self.repository}:{version}{variant}"
        with self._lock:
            if tag not in self._built:
                self._built[tag] = build_httpd_image(
                    tag,
                    version,
                    healthcheck=healthcheck,
                    healthy=healthy,
                    exit_at_once=exit_at_once,
                    client=self.client,
                )
            return self._built[tag]

    def missing(self) -> str:
        """A well-formed image name that exists nowhere."""
        return f"{self.repository}-missing:{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        if self._client is None:
            return
        import docker

        for tag in self._built:
            try:
                self._client.images.remove(tag, force=True)
            except docker.errors.DockerException:
                pass
        self._built.clear()
        self._client.close()
        self._client = None
