"""A restart is a non-event: the control plane, `baton down`/`up`, a reboot, the app verbs.

Each test runs the real CLI, daemon, proxy and app processes in its own state dir with free
ports, under continuous load where traffic is involved, and tears everything down after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from baton.runtime.process import ProcessRuntime, parse_ref, pid_alive
from tests.support.host import (
    BATON,
    Host,
    assert_no_failures,
    served_after,
    start_load,
)
from tests.support.procs import ctrl_c_default

pytestmark = pytest.mark.timeout(240)


async def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if pid_alive(p)]}"
        await asyncio.sleep(0.05)


async def _instance_pids(host: Host) -> list[int]:
    return [parse_ref(i.ref)[0] for i in await ProcessRuntime(host.state_dir).owned()]


# -- the control plane restarts; the data plane does not notice ------------------------------------


async def test_sigterm_to_the_control_plane_then_up_loses_no_request(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    instances = await host.running_instances()
    proxy = host.proxy_pid
    load = await start_load(host)
    await asyncio.sleep(0.5)
    server = host.server_pid
    assert server is not None
    os.kill(server, signal.SIGTERM)  # what `systemctl stop` sends
    await _wait_gone([server])
    assert proxy is not None and pid_alive(proxy), "the proxy must outlive the control plane"
    assert await host.running_instances() == instances
    gone = time.monotonic()
    await asyncio.sleep(1.0)  # served while no control plane runs
    up = await host.baton("up", "--detach", timeout=60)
    assert up.rc == 0, up
    back = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1\n"}, outcome.summary()
    assert host.proxy_pid == proxy  # adopted, not replaced
    assert await host.running_instances() == instances
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1" and not status["stopped"]
    gap = [x for x in outcome.timeline if gone <= x.sent < back]
    print(f"\nSIGTERM + up: {len(gap)} requests while no control plane ran, {outcome.summary()}")
    # And it deploys as usual afterwards.
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    assert (await host.get())[1] == "v2\n"


async def test_ctrl_c_on_a_foreground_up_leaves_the_proxy_and_apps_serving(
    tmp_path: Path,
) -> None:
    h = Host(tmp_path)
    h.config()
    # A terminal's Ctrl-C signals its whole foreground process group.
    foreground = subprocess.Popen(
        [*BATON, "--state-dir", str(h.state_dir), "up"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "up.log").open("wb"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (await h.baton("status")).rc != 0:
            assert foreground.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert (await h.deploy("--version", "v1")).rc == 0
        load = await start_load(h)
        await asyncio.sleep(0.3)
        os.killpg(foreground.pid, signal.SIGINT)
        await asyncio.to_thread(foreground.wait, 30)
        await asyncio.sleep(1.0)
        outcome = await load.stop()
        assert_no_failures(outcome)
        assert set(outcome.bodies) == {"v1\n"}
        assert h.proxy_pid is not None and pid_alive(h.proxy_pid)
        assert len(await h.running_instances()) == 2
        assert "keep serving" in (tmp_path / "up.log").read_text()
    finally:
        if foreground.poll() is None:
            foreground.kill()
            foreground.wait(10)
        await h.teardown()


async def test_up_replaces_an_adopted_instance_that_runs_but_does_not_answer(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    server = host.server_pid
    assert server is not None
    os.kill(server, signal.SIGTERM)
    await _wait_gone([server])
    before = await ProcessRuntime(host.state_dir).owned()
    hung = before[0]
    pid = parse_ref(hung.ref)[0]
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
    try:
        up = await host.baton("up", "--detach", timeout=90)
        assert up.rc == 0, up
        status = (await host.status())["apps"]["shop"]
        routed = {i["address"] for r in status["releases"] for i in r["instances"]}
        assert hung.address not in routed
        assert before[1].address in routed and len(routed) == 2
        assert not pid_alive(pid)
        assert await host.get() == (200, "v1\n")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def test_sigterm_mid_deploy_leaves_it_for_the_next_control_plane(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    load = await start_load(host)
    deploying = asyncio.create_task(
        host.deploy("--version", "v2", "--env", "APP_VERSION=v2", "--env", "BOOT_DELAY=2")
    )
    deadline = time.monotonic() + 60
    while not (await host.status())["apps"]["shop"]["deployment"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    server = host.server_pid
    assert server is not None
    os.kill(server, signal.SIGTERM)
    await _wait_gone([server])
    interrupted = await deploying
    assert interrupted.rc == 3, interrupted
    assert (await host.baton("up", "--detach", timeout=60)).rc == 0
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert served_after(outcome, after) == {"v1\n"}
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1" and status["deployment"] is None
    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    assert history[0]["status"] == "aborted" and "restarted" in history[0]["error"]


# -- baton down keeps the desired state; a reboot loses nothing that was live -----------------------


async def test_down_then_up_brings_every_app_back(host: Host) -> None:
    assert (await host.deploy("--version", "v1", "--env", "APP_VERSION=shop-v1")).rc == 0
    other = Host(host.root)
    other.state_dir = host.state_dir
    blog = host.config({"app": "blog", "proxy": {"listen": f"127.0.0.1:{other.port}"}}, "blog.yml")
    host.config()
    assert (
        await host.deploy("--version", "b1", "--env", "APP_VERSION=blog-b1", config=blog)
    ).rc == 0
    assert (await host.get())[1] == "shop-v1\n"
    assert (await other.get())[1] == "blog-b1\n"
    down = await host.baton("down", timeout=90)
    assert down.rc == 0, down
    assert await host.running_instances() == []
    with pytest.raises(OSError):
        await host.get()
    up = await host.baton("up", "--detach", timeout=90)
    assert up.rc == 0, up
    # `up` returns once the apps are served again: no waiting here.
    assert await host.get() == (200, "shop-v1\n")
    assert await other.get() == (200, "blog-b1\n")
    load = await start_load(host, seconds=2)
    outcome = await load.wait()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"shop-v1\n"}
    status = await host.status()
    assert {n: a["live"] for n, a in status["apps"].items()} == {"shop": "v1", "blog": "b1"}
    assert len(await host.running_instances()) == 4


async def test_down_mid_rolling_deploy_then_up_serves_the_previous_release_alone(
    host: Host,
) -> None:
    host.config({"deploy": {"strategy": "rolling"}})
    assert (await host.deploy("--version", "v1")).rc == 0
    host.config({"deploy": {"strategy": "rolling", "verify": "30s"}})
    deploying = asyncio.create_task(host.deploy("--version", "v2", "--env", "APP_VERSION=v2"))
    deadline = time.monotonic() + 60
    while True:
        dep = (await host.status())["apps"]["shop"]["deployment"]
        if dep and dep["step"] == "verify#0":  # one batch of v2 switched, one of v1 left
            break
        assert time.monotonic() < deadline, dep
        await asyncio.sleep(0.05)
    assert (await host.baton("down", timeout=90)).rc == 0
    assert (await deploying).rc != 0
    assert (await host.baton("up", "--detach", timeout=90)).rc == 0
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1"
    assert [(r["version"], r["weight"], len(r["instances"])) for r in status["releases"]] == [
        ("v1", 100, 2)
    ]
    load = await start_load(host, seconds=2)
    outcome = await load.wait()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1\n"}


async def test_a_reboot_then_up_serves_the_live_release_again(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    server, proxy = host.server_pid, host.proxy_pid
    assert server is not None and proxy is not None
    everything = [server, proxy, *await _instance_pids(host)]
    assert len(everything) == 4
    for pid in everything:  # the machine goes away: no one gets to clean up
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    await _wait_gone(everything)
    started = time.monotonic()
    up = await host.baton("up", "--detach", timeout=90)
    assert up.rc == 0, up
    assert await host.get() == (200, "v2\n")
    print(f"\nreboot: `baton up` served v2 again after {time.monotonic() - started:.2f}s")
    load = await start_load(host, seconds=2)
    outcome = await load.wait()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v2\n"}, outcome.summary()
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v2"
    assert [(r["version"], r["state"]) for r in status["releases"]] == [("v2", "live")]
    assert all(i["health"] != "down" for i in status["releases"][0]["instances"])
    assert len(await host.running_instances()) == 2
    # A rollback still knows v1.
    assert (await host.baton("rollback")).rc == 0
    assert (await host.get())[1] == "v1\n"


# -- rolling, verified per batch ------------------------------------------------------------------


async def test_rolling_with_a_release_failing_after_the_switch_never_reaches_the_second_batch(
    host: Host,
) -> None:
    host.config({"instances": 3, "deploy": {"strategy": "rolling", "max_surge": 1, "verify": "3s"}})
    assert (await host.deploy("--version", "v1")).rc == 0
    load = await start_load(host)
    result = await host.deploy(
        "--version", "v2", "--env", "APP_VERSION=v2", "--env", "ERROR_RATE=1"
    )
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 1, result
    assert "failed verification in batch 1" in result.err, result
    assert "switch (batch 1)" in result.out
    assert "(batch 2)" not in result.out, result.out  # never started, never switched
    assert_no_failures(outcome)
    assert served_after(outcome, after) == {"v1\n"}, outcome.summary()
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == "v1"
    assert len(await host.running_instances()) == 3
    # v2 never had more than its first batch's one instance.
    logs = list((host.state_dir / "logs" / "shop").glob("shop-v2-*.log"))
    assert [p.name for p in logs] == ["shop-v2-0.log"]


# -- the app verbs ------------------------------------------------------------------------------


async def test_app_stop_start_and_remove(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    stop = await host.baton("app", "stop", "shop")
    assert stop.rc == 0, stop
    assert "shop stopped (2 instance(s))" in stop.out
    assert await host.running_instances() == []
    assert (await host.get())[0] != 200
    status = (await host.status())["apps"]["shop"]
    assert status["stopped"] and status["desired"] == "v1"
    text = await host.baton("status")
    assert "stopped by `baton app stop`" in text.out, text
    # Stopped by the user: it stays stopped across down + up.
    assert (await host.baton("down", timeout=90)).rc == 0
    assert (await host.baton("up", "--detach", timeout=60)).rc == 0
    assert await host.running_instances() == []
    start = await host.baton("app", "start", "shop")
    assert start.rc == 0, start
    assert "shop v1 is serving" in start.out
    assert await host.get() == (200, "v1\n")
    assert len(await host.running_instances()) == 2
    assert not (await host.status())["apps"]["shop"]["stopped"]
    unknown = await host.baton("app", "stop", "nope")
    assert unknown.rc == 2 and "no app named 'nope'" in unknown.err
    remove = await host.baton("app", "remove", "shop")
    assert remove.rc == 0, remove
    assert await host.running_instances() == []
    assert (await host.status())["apps"] == {}
    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    assert history == []
    # A removed app can be deployed again from scratch.
    assert (await host.deploy("--version", "v1")).rc == 0
    assert await host.get() == (200, "v1\n")


# -- Ctrl-C and baton watch -----------------------------------------------------------------------


async def test_ctrl_c_leaves_the_deploy_running_and_watch_reattaches(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    cli = await asyncio.create_subprocess_exec(
        *BATON,
        "--state-dir",
        str(host.state_dir),
        "deploy",
        "-c",
        str(host.root / "baton.yml"),
        "--version",
        "v2",
        "--env",
        "APP_VERSION=v2",
        "--env",
        "BOOT_DELAY=3",
        cwd=host.root,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        preexec_fn=ctrl_c_default,
    )
    assert cli.stdout is not None
    header = await asyncio.wait_for(cli.stdout.readline(), 30)
    assert b"Deploying shop v2" in header
    cli.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(cli.communicate(), 30)
    assert cli.returncode == 130, (out, err)
    assert b"baton watch shop" in err and b"goes on in the daemon" in err
    assert (await host.status())["apps"]["shop"]["deployment"] is not None
    watched = await host.baton("watch", "shop")
    assert watched.rc == 0, watched
    assert "Deploying shop v2" in watched.out and "shop v2 is live" in watched.out
    assert (await host.get())[1] == "v2\n"
    # Once it is over, watch shows the last outcome, with deploy's exit code.
    again = await host.baton("watch")
    assert again.rc == 0 and "shop v2 is live" in again.out, again
    failed = await host.deploy("--version", "v3", "--env", "FAIL_ON_START=1")
    assert failed.rc == 1
    last = await host.baton("watch", "shop")
    assert last.rc == 1 and "users are still on v2" in last.err, last
