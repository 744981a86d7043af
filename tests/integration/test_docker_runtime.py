"""The Docker runtime against a real Docker engine, with tiny images built from busybox.

Every test is marked ``docker`` (skipped without an engine, an error in CI). Each test runs
its runtime on its own state dir under ``tmp_path`` and uses an app name of its own, and a
fixture removes every container labelled with a state dir under ``tmp_path`` afterwards,
whatever happened, so tests running concurrently on the same engine never meet.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import docker
except ImportError:  # the SDK is a dependency; a venv made before it was added lacks it
    if os.environ.get("BATON_REQUIRE_DOCKER") == "1":
        raise
    pytest.skip("the docker SDK is not installed", allow_module_level=True)

from baton.deploy.probes import ProbeError, http_get, wait_ready
from baton.errors import DaemonUnreachable, DeploymentFailed, ImageNotFound, RuntimeFailure
from baton.runtime.base import Instance, InstanceSpec
from baton.runtime.docker import (
    LABEL_STATE_DIR,
    DockerInstanceSpec,
    DockerRuntime,
    container_name,
)
from tests.support.images import ImageCache

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


@pytest.fixture(scope="session")
def images() -> Iterator[ImageCache]:
    cache = ImageCache()  # builds lazily, so nothing happens when the tests skip
    yield cache
    cache.close()


@pytest.fixture
def client() -> Iterator[Any]:
    c = docker.from_env(timeout=60)
    yield c
    c.close()


@pytest.fixture
def cleanup(client: Any, tmp_path: Path) -> Iterator[None]:
    """Remove every container whose state-dir label is under this test's tmp_path."""
    yield
    listed = client.containers.list(
        all=True, filters={"label": LABEL_STATE_DIR}, ignore_removed=True
    )
    for container in listed:
        if container.labels.get(LABEL_STATE_DIR, "").startswith(str(tmp_path)):
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def app() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def runtime(tmp_path: Path, cleanup: None) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(tmp_path / "state")
    yield rt
    rt.close()


def spec(
    app: str, image: str, tmp_path: Path, version: str = "v1", index: int = 0, **kw: Any
) -> DockerInstanceSpec:
    kw.setdefault("port", 8080)
    return DockerInstanceSpec(
        app=app,
        version=version,
        index=index,
        image=image,
        log_dir=tmp_path / "logs",
        env={"APP_VERSION": version},
        **kw,
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def served(instance: Instance, path: str = "/", timeout: float = 20.0) -> bytes:
    """The body of the first 200 answer to ``GET path`` (docker-proxy accepts connections
    before the app listens, so a refused or reset first try is normal)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = await http_get(instance.address, path, timeout=2)
            if status == 200:
                return body
            last = f"status {status}"
        except ProbeError as exc:
            last = str(exc)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{instance.address}{path} never answered 200: {last}")


def gone(client: Any, ref: str) -> bool:
    try:
        client.containers.get(ref)
    except docker.errors.NotFound:
        return True
    return False


# --------------------------------------------------------------------------- start and stop


async def test_start_serves_the_version_on_loopback_with_labels_and_name(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    image = images.get("v1")
    instance = await runtime.start(spec(app, image, tmp_path, index=2))
    assert instance.address.startswith("127.0.0.1:")
    assert (instance.app, instance.version, instance.index) == (app, "v1", 2)
    assert await served(instance) == b"v1"
    assert await runtime.alive(instance)

    container = client.containers.get(instance.ref)
    assert container.name == f"baton-{app}-v1-2" == container_name(app, "v1", 2)
    labels = container.labels
    assert labels["baton.managed"] == "1"
    assert (labels["baton.app"], labels["baton.version"], labels["baton.instance"]) == (
        app,
        "v1",
        "2",
    )
    bindings = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(instance.port)}]
    assert container.attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    assert env["PORT"] == "8080"
    assert env["APP_VERSION"] == "v1"
    assert env["BATON_INSTANCE"] == "2"

    started = time.monotonic()
    await runtime.stop(instance, timeout=10)
    assert time.monotonic() - started < 8, "the image's SIGTERM handling should stop it at once"
    assert gone(client, instance.ref)
    assert not await runtime.alive(instance)
    await runtime.stop(instance, timeout=10)  # idempotent
    assert await runtime.owned() == []
    with pytest.raises(ProbeError):
        await http_get(instance.address, "/", timeout=2)


async def test_port_env_and_command_override(
    runtime: DockerRuntime, images: ImageCache, app: str, tmp_path: Path
) -> None:
    image = images.get("v2")
    # The image honours $PORT: run it on 8081 inside the container.
    on_8081 = await runtime.start(spec(app, image, tmp_path, "v2", 0, port=8081))
    # A string command is split with shlex ($PORT becomes the container port)...
    as_string = await runtime.start(
        spec(app, image, tmp_path, "v2", 1, port=8082, command="/busybox httpd -f -p $PORT -h /www")
    )
    # ...and a list is passed as is (there is a shell in the image to ask for).
    as_list = await runtime.start(
        spec(
            app,
            image,
            tmp_path,
            "v2",
            2,
            port=8083,
            command=[
                "/busybox",
                "sh",
                "-c",
                "echo hello from $PORT; exec /busybox httpd -f -p $PORT -h /www",
            ],
        )
    )
    for instance in (on_8081, as_string, as_list):
        assert await served(instance) == b"v2"
    assert "hello from 8083" in await runtime.logs(as_list)
    await asyncio.gather(*(runtime.stop(i, 5) for i in (on_8081, as_string, as_list)))


async def test_a_version_label_docker_would_refuse_is_sanitised(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    image = images.get("v1")
    instance = await runtime.start(spec(app, image, tmp_path, "feature/x+1"))
    container = client.containers.get(instance.ref)
    assert container.name.startswith(f"baton-{app}-feature_x_1-")
    assert container.name.endswith("-0")
    assert container.labels["baton.version"] == "feature/x+1"
    # A version that sanitises to the same characters still gets a container of its own.
    other = await runtime.start(spec(app, image, tmp_path, "feature_x_1"))
    assert client.containers.get(other.ref).name == f"baton-{app}-feature_x_1-0"
    assert await runtime.alive(instance)
    await runtime.stop(instance, 5)
    await runtime.stop(other, 5)


async def test_a_leftover_container_of_the_same_instance_is_replaced_but_foreign_ones_are_not(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    image = images.get("v1")
    first = await runtime.start(spec(app, image, tmp_path))
    # A control plane that crashed and came back starts the same instance again.
    second = await DockerRuntime(tmp_path / "state").start(spec(app, image, tmp_path))
    assert second.ref != first.ref
    assert gone(client, first.ref)
    assert await served(second) == b"v1"

    # A container with the name but no baton labels is somebody else's: never touched.
    name = container_name(app, "v9", 0)
    foreign = client.containers.create(image, name=name, labels={LABEL_STATE_DIR: str(tmp_path)})
    with pytest.raises(RuntimeFailure, match="Baton does not manage it"):
        await runtime.start(spec(app, image, tmp_path, "v9"))
    assert client.containers.get(foreign.id).name == name

    # One of another Baton state dir is not touched either.
    other = DockerRuntime(tmp_path / "other-state")
    theirs = await other.start(spec(app, image, tmp_path, "v8"))
    with pytest.raises(RuntimeFailure, match="not touching it"):
        await runtime.start(spec(app, image, tmp_path, "v8"))
    assert await other.alive(theirs)


async def test_stop_kills_a_container_that_ignores_sigterm_after_the_grace_period(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    stubborn = "trap '' TERM; echo stubborn; while :; do /busybox sleep 1; done"
    instance = await runtime.start(
        spec(app, images.get("v1"), tmp_path, command=["/busybox", "sh", "-c", stubborn])
    )
    assert await eventually(lambda: _has_line(runtime, instance, "stubborn"))
    started = time.monotonic()
    await runtime.stop(instance, timeout=1)
    took = time.monotonic() - started
    assert 0.9 < took < 10, took
    assert gone(client, instance.ref)
    # The logs outlive the container.
    assert "stubborn" in await runtime.logs(instance)
    assert instance.log_path is not None and instance.log_path.is_file()


async def _has_line(runtime: DockerRuntime, instance: Instance, line: str) -> bool:
    return line in await runtime.logs(instance)


# --------------------------------------------------------------------------- failures


async def test_a_container_that_exits_by_itself_is_not_alive(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    script = "echo about to fail; /busybox sleep 1; echo failing >&2; exit 3"
    instance = await runtime.start(
        spec(app, images.get("v1"), tmp_path, command=["/busybox", "sh", "-c", script])
    )
    assert await runtime.alive(instance)
    assert await runtime.exit_code(instance) is None

    async def dead() -> bool:
        return not await runtime.alive(instance)

    assert await eventually(dead)
    assert await runtime.exit_code(instance) == 3
    assert {"about to fail", "failing"} <= set(await runtime.logs(instance))
    assert await runtime.logs(instance, lines=1) in (["about to fail"], ["failing"])
    # Exited containers are still listed (with the address they had), so they get cleaned up.
    assert [(i.ref, i.address) for i in await runtime.owned()] == [(instance.ref, instance.address)]
    await runtime.stop(instance, 5)
    assert gone(client, instance.ref)


async def test_an_image_whose_container_exits_at_once_fails_clearly_and_leaves_nothing(
    runtime: DockerRuntime, images: ImageCache, app: str, tmp_path: Path
) -> None:
    image = images.get("v1", exit_at_once=True)
    try:
        instance = await runtime.start(spec(app, image, tmp_path))
    except RuntimeFailure as exc:
        # The usual case: it exited before Docker published its port.
        assert "exited at once with status 3" in str(exc)
        assert "giving up" in str(exc)
        assert await runtime.owned() == []
        return
    # It lived long enough to get a port: then it is reported dead right after.
    assert await eventually(lambda: _not_alive(runtime, instance))
    assert await runtime.exit_code(instance) == 3


async def _not_alive(runtime: DockerRuntime, instance: Instance) -> bool:
    return not await runtime.alive(instance)


async def test_a_missing_image_fails_fast_naming_the_image(
    runtime: DockerRuntime, images: ImageCache, app: str, tmp_path: Path
) -> None:
    missing = images.missing()
    started = time.monotonic()
    with pytest.raises(DeploymentFailed) as failure:
        await runtime.ensure_image(missing)
    assert time.monotonic() - started < 30
    assert f"image {missing!r} not found locally and could not be pulled" in str(failure.value)

    await runtime.ensure_image(images.get("v1"))  # present: nothing to do

    with pytest.raises(ImageNotFound, match=f"image {missing!r} not found locally"):
        await runtime.start(spec(app, missing, tmp_path))
    with pytest.raises(ImageNotFound, match=f"image {missing!r} not found locally"):
        await runtime.image_healthcheck(missing)
    assert await runtime.owned() == []

    with pytest.raises(RuntimeFailure, match="needs a DockerInstanceSpec"):
        await runtime.start(InstanceSpec(app=app, version="v1", index=0, command="x", cwd=tmp_path))


async def test_an_unreachable_engine_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    runtime = DockerRuntime(tmp_path / "state")
    started = time.monotonic()
    message = "Docker engine not reachable at unix:///nonexistent.sock: No such file or directory"
    with pytest.raises(DaemonUnreachable, match=message) as failure:
        await runtime.owned()
    assert failure.value.exit_code == 3
    with pytest.raises(DaemonUnreachable, match="not reachable"):
        await runtime.ensure_image("anything:1")
    with pytest.raises(DaemonUnreachable, match="not reachable"):
        await runtime.start(spec(app, "anything:1", tmp_path))
    with pytest.raises(DaemonUnreachable, match="not reachable"):
        await runtime.stop(Instance(app, "v1", 0, "127.0.0.1:1", "0123abcd"), 1)
    assert time.monotonic() - started < 10


# --------------------------------------------------------------------------- health


async def test_healthy_follows_the_image_healthcheck(
    runtime: DockerRuntime, images: ImageCache, app: str, tmp_path: Path
) -> None:
    good = await runtime.start(spec(app, images.get("v1", healthcheck=True), tmp_path, index=0))
    sick = await runtime.start(
        spec(app, images.get("v1", healthcheck=True, healthy=False), tmp_path, index=1)
    )
    plain = await runtime.start(spec(app, images.get("v1"), tmp_path, index=2))

    async def is_healthy() -> bool:
        return await runtime.healthy(good) is True

    assert await eventually(is_healthy)
    assert await runtime.healthy(plain) is None
    assert await runtime.image_healthcheck(images.get("v1")) is None
    assert await runtime.image_healthcheck(images.get("v1", healthcheck=True)) is not None

    def status() -> str:
        attrs = docker.from_env().api.inspect_container(sick.ref)
        return str(attrs["State"]["Health"]["Status"])

    async def sick_reported() -> bool:
        return await asyncio.to_thread(status) == "unhealthy"

    assert await eventually(sick_reported)
    assert await runtime.healthy(sick) is False
    assert await served(sick) == b"v1"  # serving, yet Docker says unhealthy

    await runtime.stop(good, 5)
    assert await runtime.healthy(good) is False  # gone is not healthy
    await runtime.stop(sick, 5)
    await runtime.stop(plain, 5)


# --------------------------------------------------------------------------- resources


async def test_limits_volumes_and_a_user_network(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("from the volume")
    network = client.networks.create(f"baton-test-{app}", driver="bridge")
    try:
        instance = await runtime.start(
            spec(
                app,
                images.get("v1"),
                tmp_path,
                memory="64m",
                cpus=0.5,
                volumes=["./site:/www:ro"],
                cwd=tmp_path,
                network=network.name,
            )
        )
        assert await served(instance) == b"from the volume"
        attrs = client.containers.get(instance.ref).attrs
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert list(attrs["NetworkSettings"]["Networks"]) == [network.name]
        assert attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
        await runtime.stop(instance, 5)
    finally:
        for c in client.containers.list(all=True, filters={"network": network.id}):
            c.remove(force=True)
        network.remove()

    bad_options: list[tuple[dict[str, Any], str]] = [
        ({"network": "host"}, "user-defined network"),
        ({"volumes": ["nocolon"]}, "SOURCE:/TARGET"),
        ({"memory": "lots"}, "cannot create container"),
        ({"port": 0}, "not a TCP port"),
    ]
    for bad, message in bad_options:
        with pytest.raises(RuntimeFailure, match=message):
            await runtime.start(spec(app, images.get("v1"), tmp_path, **bad))
    assert await runtime.owned() == []


# --------------------------------------------------------------------------- recovery


async def test_owned_survives_a_new_runtime_and_remove_orphans_keeps_what_it_is_told(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    started = [
        await runtime.start(spec(app, images.get("v1"), tmp_path, "v1", 0)),
        await runtime.start(spec(app, images.get("v1"), tmp_path, "v1", 1)),
        await runtime.start(spec(app, images.get("v2"), tmp_path, "v2", 0)),
    ]
    # Another state dir's container must never be listed nor removed.
    other = DockerRuntime(tmp_path / "other-state")
    theirs = await other.start(spec(app, images.get("v1"), tmp_path, "v7", 0))

    recovered = DockerRuntime(tmp_path / "state")  # as after a crash of the control plane
    owned = await recovered.owned()
    assert {(i.app, i.version, i.index, i.address, i.ref) for i in owned} == {
        (i.app, i.version, i.index, i.address, i.ref) for i in started
    }
    assert all(i.log_path is not None for i in owned)

    keep = started[2]
    removed = await recovered.remove_orphans({keep.ref}, timeout=5)
    assert {i.ref for i in removed} == {started[0].ref, started[1].ref}
    assert [i.ref for i in await recovered.owned()] == [keep.ref]
    assert gone(client, started[0].ref) and gone(client, started[1].ref)
    assert await served(keep) == b"v2"
    assert await other.alive(theirs)
    assert await recovered.remove_orphans({keep.ref}) == []


# --------------------------------------------------------------------------- readiness


async def ready(runtime: DockerRuntime, instance: Instance, ready_timeout: float = 30) -> list[str]:
    """The engine's readiness wait for one container; returns its progress lines."""
    seen: list[str] = []

    async def alive() -> bool:
        return await runtime.alive(instance)

    async def runtime_healthy() -> str | None:
        verdict = await runtime.healthy(instance)
        return None if verdict is None or verdict else "not healthy (yet)"

    await wait_ready(
        instance.address,
        health_path="/up",
        interval=0.1,
        timeout=2,
        success_threshold=2,
        ready_timeout=ready_timeout,
        alive=alive,
        on_progress=seen.append,
        http_on_tcp=not runtime.tcp_proves_listening,
        runtime_healthy=runtime_healthy,
    )
    return seen


async def test_a_container_killed_or_turned_unhealthy_is_noticed_from_the_events_stream(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    plain = await runtime.start(spec(app, images.get("v1"), tmp_path, index=0))
    checked = await runtime.start(spec(app, images.get("v1", healthcheck=True), tmp_path, index=1))
    assert await runtime.alive(plain)

    async def is_healthy() -> bool:
        return await runtime.healthy(checked) is True

    assert await eventually(is_healthy)
    assert runtime.states.live  # the answers come from the events stream, not inspects
    assert runtime.states.get(plain.ref) is not None

    # Killed behind Baton's back: alive turns False.
    await asyncio.to_thread(lambda: client.containers.get(plain.ref).kill())

    async def dead() -> bool:
        return not await runtime.alive(plain)

    assert await eventually(dead)
    assert await runtime.healthy(plain) is None  # no HEALTHCHECK: no verdict, still

    # Its health file removed: Docker's HEALTHCHECK fails, and healthy turns False.
    await asyncio.to_thread(
        lambda: client.containers.get(checked.ref).exec_run(["/busybox", "rm", "/www/up"])
    )

    async def sick() -> bool:
        return await runtime.healthy(checked) is False

    assert await eventually(sick)
    assert await runtime.alive(checked)

    # A new runtime on the same state dir (a restarted control plane) sees the same.
    again = DockerRuntime(tmp_path / "state")
    try:
        assert not await again.alive(plain)
        assert await again.healthy(checked) is False
    finally:
        again.close()
    # A runtime of another state dir gets no events for these: it must not answer stale.
    stranger = DockerRuntime(tmp_path / "elsewhere")
    try:
        assert await stranger.alive(checked)  # starts its events stream
        assert await asyncio.to_thread(stranger.states.wait_connected, 20)
        assert await stranger.alive(checked)  # asked again with its stream connected
        await runtime.stop(plain, 5)
        await runtime.stop(checked, 5)
        assert await stranger.alive(checked) is False
    finally:
        stranger.close()
    assert await runtime.alive(checked) is False
    assert await runtime.healthy(checked) is False


async def test_readiness_waits_for_a_slow_container_and_fails_for_one_that_dies(
    runtime: DockerRuntime, images: ImageCache, app: str, tmp_path: Path
) -> None:
    slow_script = "/busybox sleep 1; exec /busybox httpd -f -p $PORT -h /www"
    slow = await runtime.start(
        spec(
            app, images.get("v1"), tmp_path, index=0, command=["/busybox", "sh", "-c", slow_script]
        )
    )
    seen = await ready(runtime, slow)
    # Never ready before the app answers: docker-proxy accepted first, the probes failed,
    # and the health path answers now that readiness returned.
    assert any(line.startswith("GET /up: ") for line in seen), seen
    status, _ = await http_get(slow.address, "/up", 2)
    assert status == 200
    assert seen[-1] == "GET /up → 200 (2/2)"

    dying_script = "/busybox sleep 1; exit 4"
    dying = await runtime.start(
        spec(
            app, images.get("v1"), tmp_path, index=1, command=["/busybox", "sh", "-c", dying_script]
        )
    )
    with pytest.raises(DeploymentFailed, match="exited before it became ready"):
        await ready(runtime, dying, ready_timeout=60)
    await runtime.stop(slow, 5)
    await runtime.stop(dying, 5)


# --------------------------------------------------------------------------- round trips


def _counting_client(calls: list[str]) -> Callable[[], Any]:
    """A real client that notes every Engine API request it makes (method and path)."""

    def factory() -> Any:
        c = docker.from_env(timeout=60)

        def note(response: Any, *args: Any, **kwargs: Any) -> None:
            request = response.request
            path = str(request.path_url).split("?", 1)[0]
            calls.append(f"{request.method} {path.split('/', 2)[-1]}")

        c.api.hooks["response"].append(note)
        return c

    return factory


async def test_two_containers_start_become_ready_and_stop_with_one_inspect_each(
    images: ImageCache, client: Any, app: str, tmp_path: Path, cleanup: None
) -> None:
    """Start = create, start, one inspect (its port, which also seeds the events stream's
    view); readiness then answers alive/healthy from the events stream, not inspects; and
    stop needs no inspect to know the container is Baton's."""
    calls: list[str] = []
    rt = DockerRuntime(tmp_path / "state", client_factory=_counting_client(calls))
    try:
        warm = await rt.start(spec(app, images.get("v1"), tmp_path, index=9))
        assert await asyncio.to_thread(rt.states.wait_connected, 20)
        await rt.stop(warm, 5)
        calls.clear()

        script = "echo hello from $BATON_INSTANCE; exec /busybox httpd -f -p $PORT -h /www"
        command = ["/busybox", "sh", "-c", script]
        pair = await asyncio.gather(
            *(
                rt.start(spec(app, images.get("v1"), tmp_path, "v2", i, command=command))
                for i in (0, 1)
            )
        )
        for instance in pair:
            await ready(rt, instance)
            assert await served(instance) == b"v1"  # the image's page says the image tag
        await asyncio.gather(*(rt.stop(instance, 5) for instance in pair))
        assert all(gone(client, instance.ref) for instance in pair)
        for i in (0, 1):  # the output is saved before the container goes
            saved = (tmp_path / "logs" / f"{app}-v2-{i}.log").read_text()
            assert saved.splitlines() == [f"hello from {i}"]
        inspects = [c for c in calls if c.startswith("GET ") and c.endswith("/json")]
        assert len(inspects) == 2, calls
        assert sum(c.endswith("/create") for c in calls) == 2, calls
        assert sum(c.endswith("/start") for c in calls) == 2, calls
        assert sum(c.endswith("/stop") for c in calls) == 2, calls
    finally:
        rt.close()


async def _counting_socket(path: Path, engine: str) -> tuple[asyncio.Server, list[int]]:
    """A unix socket at ``path`` passing every connection on to the engine's socket
    ``engine``, byte for byte; the list counts the connections accepted."""
    accepted: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        up_reader, up_writer = await asyncio.open_unix_connection(engine)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_unix_server(serve, path=str(path))
    return server, accepted


async def test_the_engine_socket_connections_are_kept_alive_across_containers(
    images: ImageCache, client: Any, app: str, tmp_path: Path, cleanup: None
) -> None:
    """Two containers started, probed ready and stopped, then two more: the runtime reuses
    its connections to the engine's unix socket (the SDK alone opened one per new URL: a
    new container id, so about one per request: 26 for these two cycles)."""
    engine = DockerRuntime(tmp_path / "probe").host
    if not engine.startswith("unix://"):
        pytest.skip(f"the engine is not on a unix socket here ({engine})")
    server, accepted = await _counting_socket(tmp_path / "engine.sock", engine[len("unix://") :])

    def factory() -> Any:
        return docker.DockerClient(base_url=f"unix://{tmp_path / 'engine.sock'}", timeout=60)

    rt = DockerRuntime(tmp_path / "state", client_factory=factory)
    try:
        for version in ("v1", "v2"):
            pair = await asyncio.gather(
                *(rt.start(spec(app, images.get("v1"), tmp_path, version, i)) for i in (0, 1))
            )
            for instance in pair:
                await ready(rt, instance)
            await asyncio.gather(*(rt.stop(instance, 5) for instance in pair))
            assert all(gone(client, instance.ref) for instance in pair)
        # The client's first request (its API version), the events stream, and one each for
        # the two starts and stops run side by side: 4, and some slack for an events stream
        # that reconnects on a busy engine. Without keep_alive: 26.
        assert len(accepted) <= 6, f"{len(accepted)} connections to the engine"
    finally:
        rt.close()
        server.close()


async def test_a_container_killed_right_after_start_fails_readiness(
    runtime: DockerRuntime, images: ImageCache, client: Any, app: str, tmp_path: Path
) -> None:
    """The state seeded by start's own inspect says running; the kill that follows still
    reaches readiness (through the events stream), which fails instead of waiting."""
    warm = await runtime.start(spec(app, images.get("v1"), tmp_path, index=9))
    assert await asyncio.to_thread(runtime.states.wait_connected, 20)
    await runtime.stop(warm, 5)
    slow_script = "/busybox sleep 30; exec /busybox httpd -f -p $PORT -h /www"
    instance = await runtime.start(
        spec(app, images.get("v1"), tmp_path, command=["/busybox", "sh", "-c", slow_script])
    )
    await asyncio.to_thread(lambda: client.containers.get(instance.ref).kill())
    with pytest.raises(DeploymentFailed, match="exited before it became ready"):
        await ready(runtime, instance, ready_timeout=25)  # noticed, not waited out
    await runtime.stop(instance, 5)


async def test_a_deploys_prepare_inspects_its_image_once_and_a_later_one_again(
    images: ImageCache, tmp_path: Path
) -> None:
    calls: list[str] = []
    rt = DockerRuntime(tmp_path / "state", client_factory=_counting_client(calls))
    image = images.get("v1")
    try:
        await rt.ensure_image(image)
        image_id, _ = await rt.resolve_image(image)
        assert image_id.startswith("sha256:")
        assert sum(c.startswith("GET images/") for c in calls) == 1, calls
        # The next deploy asks again (a tag may have moved since).
        image_id_again, _ = await rt.resolve_image(image)
        assert image_id_again == image_id
        assert sum(c.startswith("GET images/") for c in calls) == 2, calls
    finally:
        rt.close()
