"""`baton deploy` of container images end to end: the real CLI, daemon, proxy and Docker engine.

Images are tiny busybox httpd images built ``FROM scratch`` (``tests/support/images.py``);
``GET /`` answers the version label, ``/up`` is the health path. Every test runs its own
Baton host (state dir, free port) and an app name of its own, so container names never
meet; teardown runs ``baton down``, then removes every container labelled with the test's
state dir, whatever happened. Tests that need the engine are marked ``docker``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import docker
except ImportError:  # the SDK is a dependency; a venv made before it was added lacks it
    if os.environ.get("BATON_REQUIRE_DOCKER") == "1":
        raise
    pytest.skip("the docker SDK is not installed", allow_module_level=True)

from baton.runtime.docker import LABEL_APP, LABEL_STATE_DIR, DockerInstanceSpec, DockerRuntime
from tests.support.host import (
    Host,
    _merge,
    assert_no_failures,
    served_after,
    start_load,
)
from tests.support.images import ImageCache

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="session")
def images() -> Iterator[ImageCache]:
    cache = ImageCache()  # builds lazily: harmless when the engine is missing
    yield cache
    cache.close()


class DockerHost(Host):
    """A Baton host whose app runs as containers of ``images``."""

    def __init__(self, root: Path, images: ImageCache, env: dict[str, str] | None = None) -> None:
        super().__init__(root)
        self.images = images
        self.app = f"d{uuid.uuid4().hex[:8]}"
        self.env = env or {}

    def config(self, extra: dict[str, Any] | None = None, name: str = "baton.yml") -> Path:
        import yaml

        base: dict[str, Any] = {
            "app": self.app,
            "runtime": "docker",
            "proxy": {"listen": f"127.0.0.1:{self.port}"},
            "run": {"image": self.images.repository + ":v1", "port": 8080},
            "instances": 2,
            "health": {"path": "/up", "interval": "50ms", "timeout": "2s", "success_threshold": 2},
            "deploy": {
                "strategy": "blue-green",
                "ready_timeout": "20s",
                "drain_timeout": "5s",
                "stop_timeout": "5s",
                "keep_previous": "0s",
                "verify": "0s",
            },
        }
        merged = _merge(base, extra or {})
        merged["run"] = {k: v for k, v in merged["run"].items() if v is not None}  # None: leave out
        path = self.root / name
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
        return path

    async def baton(self, *args: str, timeout: float = 120.0) -> Any:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # the CLI (and a daemon it starts) inherit it
        try:
            return await super().baton(*args, timeout=timeout)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def containers(self, running_only: bool = True) -> list[Any]:
        client = docker.from_env(timeout=60)
        try:
            found = client.containers.list(
                all=not running_only,
                filters={
                    "label": [f"{LABEL_APP}={self.app}", f"{LABEL_STATE_DIR}={self.state_dir}"]
                },
                ignore_removed=True,
            )
            return sorted(found, key=lambda c: c.name)
        finally:
            client.close()

    async def teardown(self) -> None:
        await super().teardown()
        if "DOCKER_HOST" in self.env:
            return
        for container in await asyncio.to_thread(self.containers, False):
            try:
                await asyncio.to_thread(container.remove, force=True, v=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
async def dhost(tmp_path: Path, images: ImageCache) -> AsyncIterator[DockerHost]:
    h = DockerHost(tmp_path, images)
    for version in ("v1", "v2", "v3"):
        await asyncio.to_thread(images.get, version)
    h.config()
    try:
        up = await h.baton("up", "--detach", timeout=60)
        assert up.rc == 0, up
        yield h
    finally:
        await h.teardown()


def image(h: DockerHost, version: str, **variant: bool) -> str:
    return h.images.get(version, **variant)


# -- deploys between image versions ------------------------------------------------------------


@pytest.mark.docker
async def test_blue_green_and_rolling_deploys_between_images_serve_every_request(
    dhost: DockerHost,
) -> None:
    first = await dhost.deploy("--image", image(dhost, "v1"))
    assert first.rc == 0, first
    assert f"{dhost.app} v1 is live" in first.out  # --version defaults to the image tag
    load = await start_load(dhost)
    windows: list[tuple[str, float, float]] = []
    done_at = time.monotonic()
    for version, strategy in (("v2", "blue-green"), ("v3", "rolling")):
        started = time.monotonic()
        windows.append((windows[-1][0] if windows else "v1", done_at, started))
        result = await dhost.deploy("--image", image(dhost, version), "--strategy", strategy)
        assert result.rc == 0, result
        assert f"{dhost.app} {version} is live" in result.out
        done_at = time.monotonic()
        windows[-1] = (windows[-1][0], windows[-1][1], started)
        windows.append((version, done_at, done_at))
        await asyncio.sleep(0.5)
    last = time.monotonic()
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert served_after(outcome, windows[0][1], windows[0][2]) <= {"v1"}
    assert served_after(outcome, windows[-1][1]) == {"v3"}, outcome.summary()
    assert {"v1", "v2", "v3"} <= set(outcome.bodies)
    assert last > windows[-1][1]

    status = (await dhost.status())["apps"][dhost.app]
    assert status["runtime"] == "docker" and status["live"] == "v3"
    (release,) = status["releases"]
    assert [i["health"] for i in release["instances"]] == ["healthy", "healthy"]
    running = dhost.containers()
    assert [c.labels["baton.version"] for c in running] == ["v3", "v3"]
    assert all(c.name.startswith(f"baton-{dhost.app}-v3-") for c in running)
    assert dhost.containers(running_only=False) == running  # the old ones were removed
    history = json.loads((await dhost.baton("history", "--json")).out)["deployments"]
    assert [d["version"] for d in history] == ["v3", "v2", "v1"]


# -- failed releases leave users where they were ---------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ({"exit_at_once": True}, "exited"),
        ({"healthcheck": True, "healthy": False}, "does not report it healthy"),
    ],
    ids=["exits_at_once", "never_healthy"],
)
async def test_a_bad_image_leaves_users_on_the_old_release(
    dhost: DockerHost, variant: dict[str, bool], expected: str
) -> None:
    dhost.config({"deploy": {"ready_timeout": "5s"}})
    assert (await dhost.deploy("--image", image(dhost, "v1"))).rc == 0
    before = {c.id for c in dhost.containers()}
    load = await start_load(dhost)
    result = await dhost.deploy("--image", image(dhost, "v2", **variant), "--version", "v2")
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 1, result
    assert expected in result.err, result
    assert "users are still on v1" in result.err
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1"}, outcome.summary()
    assert served_after(outcome, after) == {"v1"}
    assert (await dhost.status())["apps"][dhost.app]["live"] == "v1"
    assert {c.id for c in dhost.containers(running_only=False)} == before  # v2's are gone


@pytest.mark.docker
async def test_a_missing_image_fails_fast_naming_it_and_changes_nothing(dhost: DockerHost) -> None:
    assert (await dhost.deploy("--image", image(dhost, "v1"))).rc == 0
    before = {c.id for c in dhost.containers()}
    missing = dhost.images.missing()
    started = time.monotonic()
    result = await dhost.deploy("--image", missing)
    assert result.rc == 1, result
    assert time.monotonic() - started < 60
    assert f"image {missing!r} not found locally and could not be pulled" in result.err, result
    assert "users are still on v1" in result.err
    assert {c.id for c in dhost.containers(running_only=False)} == before
    assert (await dhost.get())[1] == "v1"


# -- the daemon keeps the live release whole -----------------------------------------------------------


@pytest.mark.docker
async def test_a_container_killed_behind_batons_back_is_replaced(dhost: DockerHost) -> None:
    assert (await dhost.deploy("--image", image(dhost, "v1"))).rc == 0
    victim, survivor = dhost.containers()
    load = await start_load(dhost)
    await asyncio.sleep(0.3)
    await asyncio.to_thread(victim.kill)
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (await dhost.status())["apps"][dhost.app]
        if status["replaced"]:
            break
        await asyncio.sleep(0.2)
    replaced_at = time.monotonic()
    await asyncio.sleep(1.0)
    outcome = await load.stop()
    assert status["replaced"], status
    (replaced,) = status["replaced"]
    assert replaced["version"] == "v1" and len(replaced["dead"]) == len(replaced["new"]) == 1
    assert outcome.statuses.keys() == {200} and set(outcome.bodies) == {"v1"}
    after = [s for s in outcome.timeline if s.sent >= replaced_at]
    assert after and all(s.ok for s in after), outcome.summary()  # serving goes on
    (release,) = status["releases"]
    assert [i["health"] for i in release["instances"]] == ["healthy", "healthy"]
    running = dhost.containers()
    assert len(running) == 2 and survivor.id in {c.id for c in running}
    assert victim.id not in {c.id for c in dhost.containers(running_only=False)}
    assert (await dhost.get())[1] == "v1"
    # docker-proxy accepts, then closes at once while the container dies: the proxy treats
    # that as a request never answered and retries it on the surviving instance.
    assert outcome.failures == [], outcome.summary()


@pytest.mark.docker
async def test_restarting_the_daemon_removes_orphans_and_keeps_the_live_containers(
    dhost: DockerHost,
) -> None:
    assert (await dhost.deploy("--image", image(dhost, "v1"))).rc == 0
    live = {c.id for c in dhost.containers()}
    # A container of this app that no release knows (a crashed deploy's leftover).
    runtime = DockerRuntime(dhost.state_dir)
    orphan = await runtime.start(
        DockerInstanceSpec(
            app=dhost.app,
            version="v0",
            index=0,
            image=image(dhost, "v2"),
            port=8080,
            log_dir=dhost.state_dir / "logs",
        )
    )
    runtime.close()
    load = await start_load(dhost)
    pid = dhost.server_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    up = await dhost.baton("up", "--detach", timeout=60)
    assert up.rc == 0, up
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1"}
    status = await dhost.status()
    cleaned = status["apps"][dhost.app]["cleaned"]
    assert [(c["runtime"], c["version"], c["ref"]) for c in cleaned] == [
        ("docker", "v0", orphan.ref)
    ]
    assert status["reconcile"]["cleaned"] == cleaned
    assert {c.id for c in dhost.containers(running_only=False)} == live
    assert status["apps"][dhost.app]["live"] == "v1"
    text = await dhost.baton("status")
    assert "cleaned at start: docker v0#0" in text.out, text


# -- logs and check ---------------------------------------------------------------------------------------


@pytest.mark.docker
async def test_logs_show_the_containers_output(dhost: DockerHost) -> None:
    script = "echo hello from $BATON_INSTANCE; exec /busybox httpd -f -p $PORT -h /www"
    dhost.config({"run": {"command": ["/busybox", "sh", "-c", script]}})
    assert (await dhost.deploy("--image", image(dhost, "v1"))).rc == 0
    logs = await dhost.baton("logs")
    assert logs.rc == 0, logs
    assert "[v1#0] hello from 0" in logs.out and "[v1#1] hello from 1" in logs.out, logs


@pytest.mark.docker
async def test_check_warns_about_docker_readiness_and_stop_timeout(
    tmp_path: Path, images: ImageCache
) -> None:
    h = DockerHost(tmp_path, images)
    plain = h.config(
        {
            "run": {"image": await asyncio.to_thread(images.get, "v1")},
            "health": {"path": None},
            "deploy": {"stop_timeout": "2s", "drain_timeout": "10s"},
        }
    )
    result = await h.baton("check", "-c", str(plain))
    assert result.rc == 0, result
    assert "no HEALTHCHECK" in result.out and "set health.path" in result.out, result
    assert "stop_timeout (2s) is shorter than deploy.drain_timeout (10s)" in result.out
    checked = h.config(
        {"run": {"image": await asyncio.to_thread(images.get, "v1", healthcheck=True)}},
        name="checked.yml",
    )
    result = await h.baton("check", "-c", str(checked))
    assert result.rc == 0, result
    assert "with a HEALTHCHECK" in result.out and "HEALTHCHECK healthy" in result.out, result
    absent = images.missing()
    missing = h.config({"run": {"image": absent}}, name="missing.yml")
    result = await h.baton("check", "-c", str(missing))
    assert result.rc == 0, result
    assert f"run.image {absent} is not present locally" in result.out, result


# -- errors without an engine -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "args", "expected"),
    [
        ({"run": {"image": None}}, [], ["run.image", "required key is missing"]),
        ({"run": {"port": None}}, [], ["run.port", "required key is missing"]),
        ({"run": {"volumes": ["data"]}}, [], ["run.volumes[0]", "SOURCE:/TARGET"]),
        ({"run": {"memory": "lots"}}, [], ["run.memory", "256m"]),
        ({"run": {"network": "host"}}, [], ["run.network", "user-defined"]),
        ({"runtime": "process", "run": {"command": "x"}}, [], ["run.image", "only for runtime"]),
        ({}, ["--image", "not an image!"], ["--image", "image reference"]),
    ],
)
async def test_bad_docker_configs_exit_2_naming_the_file_and_key(
    tmp_path: Path, extra: dict[str, Any], args: list[str], expected: list[str]
) -> None:
    h = DockerHost(tmp_path, ImageCache())
    path = h.config(extra, name="bad.yml")
    result = await h.deploy(*args, config=path)  # no daemon: the CLI refuses first
    assert result.rc == 2, result
    if not args:
        assert "bad.yml" in result.err
    for word in expected:
        assert word in result.err, result


async def test_image_is_refused_for_a_process_app(tmp_path: Path) -> None:
    h = Host(tmp_path)
    path = h.config()
    result = await h.deploy("--image", "shop:2", config=path)
    assert result.rc == 2, result
    assert "--image: only for apps with runtime: docker" in result.err


async def test_an_unreachable_docker_engine_exits_3_with_a_clear_message(
    tmp_path: Path, images: ImageCache
) -> None:
    h = DockerHost(tmp_path, images, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    h.config()
    try:
        assert (await h.baton("up", "--detach", timeout=60)).rc == 0
        result = await h.deploy()
        assert result.rc == 3, result
        assert "Docker engine not reachable at unix:///nonexistent/docker.sock" in result.err
        assert "Traceback" not in result.err + result.out
        assert (await h.status())["apps"][h.app]["live"] is None
    finally:
        await h.teardown()


def test_the_python_running_the_tests_is_the_one_baton_runs_with() -> None:
    assert Path(sys.executable).exists()
