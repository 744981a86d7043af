"""The proxy's canary fuse and retry on stable: a real proxy, a real stable backend and the
example app as a canary that fails on purpose (``ERROR_RATE``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.h1 import parse_status, send_raw
from tests.support.load import Load
from tests.support.procs import Backend, ManagedProcess, free_port
from tests.support.proxy import ProxyProcess

APP = Path(__file__).resolve().parents[2] / "examples" / "app" / "app.py"
SECRET = "s" * 24


@pytest.fixture
def proxy() -> Iterator[ProxyProcess]:
    with ProxyProcess() as p:
        yield p


@pytest.fixture
def failing_app() -> Iterator[Callable[[float], ManagedProcess]]:
    """``start(error_rate)``: the example app as release "v2", failing that share of GET /."""
    started: list[ManagedProcess] = []

    def start(error_rate: float) -> ManagedProcess:
        port = free_port()
        proc = ManagedProcess(
            [sys.executable, str(APP), "--port", str(port)],
            port=port,
            env={"APP_VERSION": "v2", "ERROR_RATE": str(error_rate), "SHUTDOWN_GRACE": "1"},
            name="canary-app",
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in reversed(started):
        proc.close()


def canary_route(
    proxy: ProxyProcess, stable: str, canary: str, weight: int, deployment: str = "41", **more: Any
) -> dict[str, Any]:
    spec = {
        "listen": proxy.listen,
        "release_secret": SECRET,
        "retry_on_stable": ["GET", "HEAD", "OPTIONS"],
        "releases": [
            {"name": "v1", "weight": 100 - weight, "targets": [stable]},
            {
                "name": "v2",
                "weight": weight,
                "targets": [canary],
                "fuse": {"max_error_rate": 0.01, "min_requests": 20, "deployment": deployment},
            },
        ],
        **more,
    }
    proxy.ok("PUT", "/apps/web", spec)
    return spec


def route_weights(proxy: ProxyProcess) -> dict[str, int]:
    app = proxy.ok("GET", "/routes")["apps"]["web"]
    return {r["name"]: r["weight"] for r in app["releases"]}


def addr(proc: ManagedProcess) -> str:
    return f"127.0.0.1:{proc.port}"


async def test_a_failing_canary_costs_users_nothing_and_its_fuse_sends_everyone_to_stable(
    proxy: ProxyProcess,
    backend_factory: Callable[..., Backend],
    failing_app: Callable[[float], ManagedProcess],
) -> None:
    stable, canary = backend_factory("v1"), failing_app(1.0)  # the canary fails every GET
    canary_route(proxy, stable.addr, addr(canary), 50)
    result = await Load().run(proxy.url, concurrency=8, max_requests=600, max_seconds=30)
    # Every canary 500 was retried on stable before a byte of it reached the client.
    assert result.failures == [], result.summary()
    assert set(result.statuses) == {200} and set(result.bodies) == {"v1"}, result.summary()
    # The fuse tripped at its minimum sample, and the canary got nothing after that.
    m = proxy.release_metrics("v2")
    assert m["fuse"]["tripped"] is True
    assert m["fuse"]["trip"]["requests"] == 20 and m["fuse"]["trip"]["errors"] == 20
    assert 20 <= m["requests"]["5xx"] <= 20 + 8  # those in flight at the trip, at most
    assert m["stable_retries"] == m["requests"]["5xx"]
    assert route_weights(proxy) == {"v1": 100, "v2": 0}
    fuses = proxy.ok("GET", "/fuses")
    assert fuses["trips"] == 1
    (event,) = fuses["events"]
    assert (event["app"], event["release"], event["deployment"]) == ("web", "v2", "41")
    text = proxy.ok("GET", "/metrics")
    assert 'baton_release_fuse_tripped{app="web",release="v2"} 1' in text
    assert "canary fuse tripped: app web release v2" in proxy.stderr_text()
    # The control plane, not knowing yet, pushes its next step: the trip is not undone.
    canary_route(proxy, stable.addr, addr(canary), 75)
    assert route_weights(proxy) == {"v1": 100, "v2": 0}
    # A watcher that waits for trips after the first one is told of none.
    assert proxy.ok("GET", "/fuses?after=1&wait=0.2")["new"] == []
    # A new deployment of the release arms a fresh fuse.
    canary_route(proxy, stable.addr, addr(canary), 75, deployment="42")
    assert route_weights(proxy) == {"v1": 25, "v2": 75}


def test_a_pinned_request_to_a_failing_canary_is_answered_by_stable(
    proxy: ProxyProcess,
    backend_factory: Callable[..., Backend],
    failing_app: Callable[[float], ManagedProcess],
) -> None:
    stable, canary = backend_factory("v1"), failing_app(1.0)
    canary_route(proxy, stable.addr, addr(canary), 10)
    pinned = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Baton-Release: v2\r\nX-Baton-Secret: "
        + SECRET.encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    answer = send_raw("127.0.0.1", proxy.port, pinned)
    assert parse_status(answer) == 200 and answer.endswith(b"v1"), answer
    m = proxy.release_metrics("v2")
    assert m["requests"]["5xx"] == 1 and m["stable_retries"] == 1  # the judge still sees it
    # With retry on stable off, the pinned client gets the canary's answer as it is.
    canary_route(proxy, stable.addr, addr(canary), 10, retry_on_stable=[])
    answer = send_raw("127.0.0.1", proxy.port, pinned)
    assert parse_status(answer) == 500, answer


def test_a_method_not_in_retry_on_stable_gets_the_canary_answer_as_it_is(
    proxy: ProxyProcess,
    backend_factory: Callable[..., Backend],
    failing_app: Callable[[float], ManagedProcess],
) -> None:
    stable, canary = backend_factory("v1"), failing_app(1.0)
    canary_route(proxy, stable.addr, addr(canary), 10, retry_on_stable=["GET"])
    head = b"X-Baton-Release: v2\r\nX-Baton-Secret: " + SECRET.encode() + b"\r\n"
    # HEAD is not in this app's list: the canary's 500 reaches the client.
    answer = send_raw(
        "127.0.0.1",
        proxy.port,
        b"HEAD / HTTP/1.1\r\nHost: a\r\n" + head + b"Connection: close\r\n\r\n",
    )
    assert parse_status(answer) == 500, answer
    assert proxy.release_metrics("v2")["stable_retries"] == 0


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"fuse": {"max_error_rate": 2, "deployment": "1"}}, "fuse.max_error_rate"),
        ({"fuse": {"max_error_rate": 0.01}}, "fuse.deployment"),
        ({"fuse": {"max_error_rate": 0.01, "deployment": "1", "x": 1}}, "unknown field 'x'"),
    ],
)
def test_a_bad_fuse_is_refused_with_400_and_the_table_is_unchanged(
    proxy: ProxyProcess, backend: Backend, change: dict[str, Any], error: str
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    before = proxy.ok("GET", "/routes")
    bad = {
        "listen": proxy.listen,
        "releases": [{"name": "v1", "weight": 100, "targets": [backend.addr], **change}],
    }
    status, payload = proxy.call("PUT", "/apps/web", bad)
    assert status == 400 and error in payload["error"], payload
    status, payload = proxy.call(
        "PUT",
        "/apps/web",
        {**bad, "releases": before["apps"]["web"]["releases"], "retry_on_stable": ["POST"]},
    )
    assert status == 400 and "retry_on_stable[0]" in payload["error"], payload
    status, payload = proxy.call("GET", "/fuses?wait=600")
    assert status == 400 and "wait" in payload["error"], payload
    assert proxy.ok("GET", "/routes") == before


def test_a_canary_that_cannot_be_reached_is_answered_by_stable_not_502(
    proxy: ProxyProcess, backend_factory: Callable[..., Backend]
) -> None:
    stable = backend_factory("v1")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: connect refused
    canary_route(proxy, stable.addr, dead, 10)
    pinned = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Baton-Release: v2\r\nX-Baton-Secret: "
        + SECRET.encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    answer = send_raw("127.0.0.1", proxy.port, pinned)
    assert parse_status(answer) == 200 and answer.endswith(b"v1"), answer
    m = proxy.release_metrics("v2")
    assert m["requests"]["5xx"] == 1 and m["upstream_errors"] == 1 and m["stable_retries"] == 1
