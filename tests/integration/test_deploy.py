"""`baton deploy` end to end: the real CLI, daemon, proxy and app processes, under real load.

Every test gets its own state dir and a free port, runs `baton up --detach`, and tears down
everything it started (daemon, proxy, instances) even when it fails. Configs use short
intervals and time-outs so the whole file stays within a few minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time

import pytest

from baton.runtime.process import pid_alive
from tests.support.host import (
    Host,
    assert_no_failures,
    served_after,
    start_load,
)

pytestmark = pytest.mark.timeout(240)


# -- the happy path ------------------------------------------------------------------------------


async def test_ten_deploys_under_load_serve_every_request_and_then_only_the_new_version(
    host: Host,
) -> None:
    first = await host.deploy("--version", "v0", "--env", "APP_VERSION=v0")
    assert first.rc == 0, first
    load = await start_load(host, seconds=200)
    windows: list[tuple[str, float, float]] = []
    done_at = time.monotonic()
    for n in range(1, 11):
        strategy = "blue-green" if n % 2 else "rolling"
        started = time.monotonic()
        windows.append((f"v{n - 1}\n", done_at, started))
        result = await host.deploy(
            "--version", f"v{n}", "--env", f"APP_VERSION=v{n}", "--strategy", strategy
        )
        assert result.rc == 0, result
        assert f"shop v{n} is live" in result.out
        done_at = time.monotonic()
        await asyncio.sleep(0.3)  # a few requests between deploys
    windows.append(("v10\n", done_at, time.monotonic()))
    outcome = await load.stop()
    assert_no_failures(outcome)
    for body, since, until in windows:
        assert served_after(outcome, since, until) <= {body}, (body, outcome.summary())
    assert served_after(outcome, windows[-1][1]) == {"v10\n"}
    status = await host.status()
    assert status["apps"]["shop"]["live"] == "v10"
    assert len(await host.running_instances()) == 2


# -- failed deployments leave users on the previous release -----------------------------------------

SMOKE = (
    f'{sys.executable} -c "import os, urllib.request as u; '
    "raise SystemExit(b'bad' in u.urlopen(os.environ['BATON_TARGET_URL'] + '/').read())\""
)


@pytest.mark.parametrize(
    ("case", "env", "expected"),
    [
        ("crash_on_start", ["FAIL_ON_START=1"], "FAIL_ON_START"),
        ("never_healthy", ["NEVER_HEALTHY=1"], "never became ready"),
        ("smoke_test", [], "smoke_test hook"),
        ("pre_deploy", [], "pre_deploy hook"),
    ],
)
async def test_a_release_that_fails_before_the_switch_leaves_users_on_the_old_one(
    host: Host, case: str, env: list[str], expected: str
) -> None:
    config = host.config(
        {
            "deploy": {"ready_timeout": "3s"},
            "hooks": {"pre_deploy": 'test "$APP_VERSION" != early', "smoke_test": SMOKE},
        }
    )
    assert (await host.deploy("--version", "v1", config=config)).rc == 0
    load = await start_load(host)
    flags = [x for pair in (("--env", e) for e in env) for x in pair]
    version = {"smoke_test": "bad", "pre_deploy": "early"}.get(case, "v2")
    result = await host.deploy("--version", version, "--env", f"APP_VERSION={version}", *flags)
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 1, result
    assert expected in result.err, result
    assert "users are still on v1" in result.err
    if case not in ("smoke_test", "pre_deploy"):
        assert "last log lines of instance" in result.err
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v1\n"}, outcome.summary()
    assert served_after(outcome, after) == {"v1\n"}
    status = await host.status()
    assert status["apps"]["shop"]["live"] == "v1"
    assert [r["version"] for r in status["apps"]["shop"]["releases"]] == ["v1"]
    assert len(await host.running_instances()) == 2


@pytest.mark.parametrize("strategy", ["blue-green", "rolling"])
async def test_a_release_answering_500s_after_the_switch_is_rolled_back_by_verify(
    host: Host, strategy: str
) -> None:
    host.config({"deploy": {"verify": "4s", "strategy": strategy}})
    assert (await host.deploy("--version", "v1")).rc == 0
    load = await start_load(host)
    result = await host.deploy(
        "--version", "v2", "--env", "APP_VERSION=v2", "--env", "ERROR_RATE=0.5"
    )
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 1, result
    assert "failed verification" in result.err, result
    assert_no_failures(outcome)
    assert 500 in outcome.statuses  # the bad release did answer for a while
    assert served_after(outcome, after) == {"v1\n"}, outcome.summary()
    status = await host.status()
    assert status["apps"]["shop"]["live"] == "v1"
    assert len(await host.running_instances()) == 2
    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    assert history[0]["status"] == "rolled_back" and history[0]["version"] == "v2"


# -- rollback ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_previous", ["0s", "1m"])
async def test_rollback_restores_the_previous_version(host: Host, keep_previous: str) -> None:
    host.config({"deploy": {"keep_previous": keep_previous}})
    assert (await host.deploy("--version", "v1")).rc == 0
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    load = await start_load(host)
    await asyncio.sleep(0.3)
    result = await host.baton("rollback")
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert result.rc == 0, result
    assert "shop v1 is live" in result.out
    # Still warm: one switch, no new instance; else a full zero-downtime deploy of v1.
    assert ("(switch," in result.out) == (keep_previous != "0s"), result.out
    assert_no_failures(outcome)
    assert served_after(outcome, after) == {"v1\n"}
    assert (await host.status())["apps"]["shop"]["live"] == "v1"
    # And forward again, by name.
    again = await host.baton("rollback", "v2")
    assert again.rc == 0, again
    assert (await host.get())[1] == "v2\n"


async def test_a_warm_release_is_stopped_once_keep_previous_runs_out(host: Host) -> None:
    host.config({"deploy": {"keep_previous": "2s"}})
    assert (await host.deploy("--version", "v1")).rc == 0
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    releases = (await host.status())["apps"]["shop"]["releases"]
    assert [(r["version"], r["state"], r["weight"]) for r in releases] == [
        ("v1", "warm", 0),
        ("v2", "live", 100),
    ]
    assert len(await host.running_instances()) == 4
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(await host.running_instances()) > 2:
        await asyncio.sleep(0.2)
    releases = (await host.status())["apps"]["shop"]["releases"]
    assert [(r["version"], r["state"]) for r in releases] == [("v2", "live")]
    assert len(await host.running_instances()) == 2
    assert (await host.get())[1] == "v2\n"


# -- the lock -----------------------------------------------------------------------------------------


async def test_a_second_deploy_of_the_same_app_exits_3_and_names_the_holder(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    slow = asyncio.create_task(
        host.deploy("--version", "v2", "--env", "APP_VERSION=v2", "--env", "BOOT_DELAY=3")
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (await host.status())["apps"]["shop"]["deployment"]:
            break
        await asyncio.sleep(0.1)
    second = await host.deploy("--version", "v3", "--env", "APP_VERSION=v3")
    assert second.rc == 3, second
    assert "another deployment of shop is running" in second.err
    assert "v2" in second.err
    first = await slow
    assert first.rc == 0, first
    assert (await host.get())[1] == "v2\n"


# -- the daemon and the proxy can die ------------------------------------------------------------------


@pytest.mark.parametrize(("step", "live_after"), [("ready", "v1"), ("verify", "v1")])
async def test_sigkill_of_the_daemon_mid_deploy_then_up_leaves_a_consistent_state(
    host: Host, step: str, live_after: str
) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    load = await start_load(host)
    boot = "2" if step == "ready" else "0"
    host.config({"deploy": {"verify": "20s" if step == "verify" else "0s"}})
    deploying = asyncio.create_task(
        host.deploy("--version", "v2", "--env", "APP_VERSION=v2", "--env", f"BOOT_DELAY={boot}")
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dep = (await host.status())["apps"]["shop"]["deployment"]
        if dep and dep["step"] == step:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the deployment never reached {step}")
    pid = host.server_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = await deploying
    assert killed.rc == 3, killed
    assert (await host.baton("up", "--detach", timeout=60)).rc == 0
    after = time.monotonic()
    await asyncio.sleep(0.5)
    outcome = await load.stop()
    assert_no_failures(outcome)
    assert served_after(outcome, after) == {f"{live_after}\n"}
    status = (await host.status())["apps"]["shop"]
    assert status["live"] == live_after
    assert status["deployment"] is None
    live = [r for r in status["releases"] if r["weight"] > 0]
    assert [r["version"] for r in live] == [live_after]
    routed = sorted(i["address"] for r in status["releases"] for i in r["instances"])
    assert routed == await host.running_instances()  # nothing orphaned, nothing missing
    assert all(i["health"] != "down" for r in status["releases"] for i in r["instances"])
    history = json.loads((await host.baton("history", "--json")).out)["deployments"]
    assert history[0]["status"] == "aborted" and "restarted" in history[0]["error"]
    # The host deploys again as usual.
    host.config()
    assert (await host.deploy("--version", "v3", "--env", "APP_VERSION=v3")).rc == 0


async def test_the_daemon_restarts_a_dead_proxy_with_the_current_routes(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    assert (await host.deploy("--version", "v2", "--env", "APP_VERSION=v2")).rc == 0
    old = host.proxy_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    answer: tuple[int, str] | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, IndexError, ValueError, asyncio.TimeoutError):
            answer = await host.get()
            if answer == (200, "v2\n"):
                break
        await asyncio.sleep(0.1)
    assert answer == (200, "v2\n")
    assert host.proxy_pid not in (None, old)
    status = await host.status()
    assert status["proxy"]["restarts"] >= 1


async def test_down_stops_every_instance_and_the_proxy(host: Host) -> None:
    assert (await host.deploy("--version", "v1")).rc == 0
    proxy = host.proxy_pid
    server = host.server_pid
    assert await host.running_instances()
    down = await host.baton("down", timeout=90)
    assert down.rc == 0, down
    assert await host.running_instances() == []
    assert proxy is not None and not pid_alive(proxy)
    assert server is not None and not pid_alive(server)
    with pytest.raises(OSError):
        await host.get()
    unreachable = await host.baton("status")
    assert unreachable.rc == 3 and "baton up" in unreachable.err
