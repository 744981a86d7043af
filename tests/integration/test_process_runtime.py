"""The process runtime with real child processes: start, serve, stop gracefully, clean up."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from baton.deploy.probes import ProbeError, http_get, wait_ready
from baton.errors import RuntimeFailure
from baton.runtime.base import Instance, InstanceSpec
from baton.runtime.process import ProcessRuntime, parse_ref, pid_alive

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "app"


def example_spec(tmp_path: Path, version: str = "v1", index: int = 0, **env: str) -> InstanceSpec:
    return InstanceSpec(
        app="example",
        version=version,
        index=index,
        command=[sys.executable, "app.py", "--port", "$PORT"],
        cwd=EXAMPLE_DIR,
        env={"APP_VERSION": version, **env},
        log_dir=tmp_path / "logs",
    )


def shell_spec(tmp_path: Path, command: str, index: int = 0) -> InstanceSpec:
    return InstanceSpec(
        app="sh",
        version="v1",
        index=index,
        command=command,
        cwd=tmp_path,
        log_dir=tmp_path / "logs",
    )


async def ready(instance: Instance, runtime: ProcessRuntime) -> None:
    await wait_ready(
        instance.address,
        health_path="/up",
        interval=0.02,
        timeout=2,
        success_threshold=1,
        ready_timeout=20,
        alive=lambda: runtime.alive(instance),
    )


def pid_of(instance: Instance) -> int:
    return parse_ref(instance.ref)[0]


async def eventually(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path / "state")
    yield rt
    for instance in await ProcessRuntime(tmp_path / "state").owned():
        await rt.stop(instance, timeout=0)


async def test_a_started_instance_answers_on_its_loopback_address(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    instance = await runtime.start(example_spec(tmp_path, "v7"))
    assert instance.address.startswith("127.0.0.1:")
    await ready(instance, runtime)
    status, body = await http_get(instance.address, "/", timeout=5)
    assert (status, body) == (200, b"v7\n")
    status, body = await http_get(instance.address, "/version", timeout=5)
    assert b'"instance": "0"' in body
    assert await runtime.alive(instance)
    assert [i.ref for i in await runtime.owned()] == [instance.ref]


async def test_port_is_expanded_by_the_shell_for_string_commands(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    spec = InstanceSpec(
        app="example",
        version="v2",
        index=3,
        command=f"exec {sys.executable} app.py --port $PORT",
        cwd=EXAMPLE_DIR,
        env={"APP_VERSION": "v2"},
        log_dir=tmp_path / "logs",
    )
    instance = await runtime.start(spec)
    await ready(instance, runtime)
    assert await http_get(instance.address, "/", timeout=5) == (200, b"v2\n")


async def test_stop_lets_an_in_flight_request_finish_and_the_app_exits_cleanly(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    instance = await runtime.start(example_spec(tmp_path))
    await ready(instance, runtime)
    slow = asyncio.create_task(http_get(instance.address, "/slow?s=1", timeout=20))
    await asyncio.sleep(0.3)  # the request is in flight
    await runtime.stop(instance, timeout=15)
    assert await slow == (200, b"v1 slept 1\n")
    assert not await runtime.alive(instance)
    log = await runtime.logs(instance)
    assert any("SIGTERM: draining" in line for line in log)
    assert any("stopped" in line for line in log)
    assert await runtime.owned() == []
    with pytest.raises(ProbeError):
        await http_get(instance.address, "/", timeout=2)


async def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)\n"
    (tmp_path / "stubborn.py").write_text(script)
    instance = await runtime.start(shell_spec(tmp_path, f"exec {sys.executable} stubborn.py"))
    assert await eventually(
        lambda: (tmp_path / "logs" / "sh-v1-0.log").read_text().endswith("up\n")
    )
    await runtime.stop(instance, timeout=0.5)
    assert not await runtime.alive(instance)
    assert not pid_alive(pid_of(instance))


async def test_stop_kills_the_whole_process_group_including_grandchildren(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    # The shell forks a grandchild that ignores SIGTERM, and waits for it.
    command = (
        f"{sys.executable} -c 'import signal,time,os; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f' open("grandchild.pid","w").write(str(os.getpid())); time.sleep(600)\' & wait'
    )
    instance = await runtime.start(shell_spec(tmp_path, command))
    pid_file = tmp_path / "grandchild.pid"
    assert await eventually(lambda: pid_file.exists() and pid_file.read_text() != "")
    grandchild = int(pid_file.read_text())
    assert os.getpgid(grandchild) == pid_of(instance)
    await runtime.stop(instance, timeout=0.5)
    assert await eventually(lambda: not pid_alive(grandchild))


async def test_a_group_whose_leader_died_is_still_owned_and_stopped(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    command = f"{sys.executable} -c 'import time; time.sleep(600)' & echo started"
    instance = await runtime.start(shell_spec(tmp_path, command))
    assert await eventually(lambda: not pid_alive(pid_of(instance)))  # the shell exited
    assert not await runtime.alive(instance)
    assert [i.ref for i in await runtime.owned()] == [instance.ref]  # its child still runs
    await runtime.stop(instance, timeout=2)
    assert await runtime.owned() == []


async def test_a_fresh_runtime_on_the_same_state_dir_finds_and_stops_instances(
    tmp_path: Path,
) -> None:
    first = ProcessRuntime(tmp_path / "state")
    started = [await first.start(example_spec(tmp_path, index=i)) for i in range(2)]
    for instance in started:
        await ready(instance, first)
    del first  # the control plane "crashed"; its children live on

    second = ProcessRuntime(tmp_path / "state")
    owned = await second.owned()
    assert sorted(i.ref for i in owned) == sorted(i.ref for i in started)
    assert {i.address for i in owned} == {i.address for i in started}
    assert all(i.log_path is not None and i.log_path.exists() for i in owned)
    for instance in owned:
        assert await second.alive(instance)
        await second.stop(instance, timeout=10)
    for instance in started:
        assert await eventually(lambda i=instance: not pid_alive(pid_of(i)))
    assert await ProcessRuntime(tmp_path / "state").owned() == []


async def test_stop_is_idempotent_and_quiet_for_dead_instances(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    instance = await runtime.start(shell_spec(tmp_path, "exit 0"))
    assert await eventually(lambda: not pid_alive(pid_of(instance)))
    assert not await runtime.alive(instance)
    await runtime.stop(instance, timeout=1)
    await runtime.stop(instance, timeout=1)
    assert await runtime.owned() == []


async def test_a_reused_pid_is_never_signalled(runtime: ProcessRuntime, tmp_path: Path) -> None:
    bystander = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", start_new_session=True
    )
    try:
        # An instance reference with this pid but another start time: not ours.
        forged = Instance("x", "v1", 0, "127.0.0.1:1", ref=f"{bystander.pid}:1")
        assert not await runtime.alive(forged)
        await runtime.stop(forged, timeout=0.1)
        assert bystander.returncode is None and pid_alive(bystander.pid)
    finally:
        bystander.send_signal(signal.SIGKILL)
        await bystander.wait()


async def test_an_instance_that_fails_on_start_is_seen_dead_and_its_output_kept(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    instance = await runtime.start(example_spec(tmp_path, FAIL_ON_START="1"))
    assert await eventually(lambda: not pid_alive(pid_of(instance)))
    assert not await runtime.alive(instance)
    assert await runtime.exit_code(instance) == 1
    assert any("FAIL_ON_START" in line for line in await runtime.logs(instance, 5))


async def test_logs_are_appended_per_instance_and_tailed(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    command = "for i in $(seq 1 500); do echo line $i; done; echo oops >&2"
    instance = await runtime.start(shell_spec(tmp_path, command))
    assert await eventually(lambda: not pid_alive(pid_of(instance)))
    assert instance.log_path == (tmp_path / "logs" / "sh-v1-0.log").absolute()
    assert await runtime.logs(instance, 3) == ["line 499", "line 500", "oops"]
    everything = await runtime.logs(instance)
    assert everything[0].startswith("--- baton: starting sh v1 #0")
    assert len(everything) == 502
    assert await runtime.logs(instance, 0) == []


async def test_the_environment_carries_port_and_instance_identity(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    spec = InstanceSpec(
        app="sh",
        version="v9",
        index=4,
        command="echo $PORT $BATON_APP $BATON_VERSION $BATON_INSTANCE $GREETING",
        cwd=tmp_path,
        env={"GREETING": "hello"},
        log_dir=tmp_path / "logs",
    )
    instance = await runtime.start(spec)
    assert await eventually(lambda: not pid_alive(pid_of(instance)))
    assert await runtime.logs(instance, 1) == [f"{instance.port} sh v9 4 hello"]


async def test_concurrent_starts_get_distinct_ports(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    instances = await asyncio.gather(
        *(runtime.start(example_spec(tmp_path, index=i)) for i in range(4))
    )
    assert len({i.address for i in instances}) == 4
    await asyncio.gather(*(ready(i, runtime) for i in instances))
    await asyncio.gather(*(runtime.stop(i, timeout=10) for i in instances))


async def test_a_missing_program_is_a_runtime_failure(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    spec = InstanceSpec("x", "v1", 0, ["/nonexistent/program"], tmp_path, {}, tmp_path / "logs")
    with pytest.raises(RuntimeFailure, match="not found"):
        await runtime.start(spec)


async def test_the_example_app_keeps_connections_alive_and_closes_idle_ones_on_stop(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    instance = await runtime.start(example_spec(tmp_path, "v5"))
    await ready(instance, runtime)
    reader, writer = await asyncio.open_connection("127.0.0.1", instance.port)
    try:
        for _ in range(3):  # three requests on one connection
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 3" in head
            assert await asyncio.wait_for(reader.readexactly(3), 10) == b"v5\n"
        # The connection is now idle: the app closes it rather than wait out its grace period.
        await runtime.stop(instance, timeout=60)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the app
    finally:
        writer.close()
    log = await runtime.logs(instance)
    assert "grace period over" not in "\n".join(log)
