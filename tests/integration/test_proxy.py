"""The proxy as users rely on it: real sockets, real backends, real load."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.h1 import parse_status, send_raw, send_raw_async
from tests.support.load import Load
from tests.support.procs import Backend, free_port
from tests.support.proxy import ProxyProcess

BackendFactory = Callable[..., Backend]


@pytest.fixture
def proxy() -> Iterator[ProxyProcess]:
    with ProxyProcess() as p:
        yield p


def get(proxy: ProxyProcess, path: str = "/", host: str = "app.test", extra: bytes = b"") -> bytes:
    return send_raw(
        "127.0.0.1",
        proxy.port,
        b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
        % (path.encode(), host.encode(), extra),
    )


def body(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


# -- cutover ----------------------------------------------------------------------------


async def test_cutover_under_load_loses_nothing_and_serves_only_new_release(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    proxy.route(("v1", 100, [v1.addr]))
    load = await Load().start(proxy.url, concurrency=16, max_requests=60_000, max_seconds=30)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(proxy.route, ("v2", 100, [v2.addr]))
    cutover = load.marker("cutover")
    await asyncio.sleep(1.5)
    result = await load.stop()
    assert result.failures == [], result.summary()
    assert result.statuses.keys() == {200}
    after = result.bodies_sent_after(cutover)
    assert sum(after.values()) > 100
    assert set(after) == {"v2"}, after
    assert result.bodies["v1"] > 0


async def test_repeated_cutovers_under_load_lose_nothing(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    releases = [backend_factory("v1"), backend_factory("v2")]
    proxy.route(("v1", 100, [releases[0].addr]))
    load = await Load().start(proxy.url, concurrency=16, max_requests=100_000, max_seconds=40)
    for i in range(10):
        await asyncio.sleep(0.3)
        new = releases[(i + 1) % 2]
        await asyncio.to_thread(proxy.route, (new.backend_name, 100, [new.addr]))
    cutover = load.marker("last")
    await asyncio.sleep(0.5)
    result = await load.stop()
    assert result.failures == [], result.summary()
    assert set(result.bodies_sent_after(cutover)) == {"v1"}


async def test_split_by_weight_reaches_both_releases(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    proxy.route(("v1", 50, [v1.addr]), ("v2", 50, [v2.addr]))
    result = await Load().run(proxy.url, concurrency=4, max_requests=400, max_seconds=20)
    assert result.failures == []
    assert result.bodies["v1"] > 100 and result.bodies["v2"] > 100, result.bodies
    # weight 0 gets nothing
    proxy.route(("v1", 100, [v1.addr]), ("v2", 0, [v2.addr]))
    result = await Load().run(proxy.url, concurrency=4, max_requests=200, max_seconds=20)
    assert set(result.bodies) == {"v1"}


# -- never lose a request -----------------------------------------------------------------


async def test_target_killed_mid_load_is_retried_around(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    a, b = backend_factory("v1"), backend_factory("v1")
    proxy.route(("v1", 100, [a.addr, b.addr]))
    load = await Load().start(proxy.url, concurrency=16, max_requests=60_000, max_seconds=30)
    await asyncio.sleep(1.0)
    a.kill()
    killed = load.marker("killed")
    await asyncio.sleep(2.0)
    result = await load.stop()
    assert result.failures == [], result.summary()
    assert result.statuses.keys() == {200}, result.statuses
    assert len(result.sent_after(killed)) > 100
    targets = proxy.ok("GET", "/targets")["targets"]
    assert targets[a.addr]["healthy"] is False  # passively ejected after connect failures
    assert proxy.release_metrics("v1")["retries"] >= 1


async def test_idle_pooled_connection_closed_by_app_is_retried(
    backend_factory: BackendFactory,
) -> None:
    """The app restarts between two requests: the pooled connection is dead, not the request."""
    port = free_port()
    with ProxyProcess("--upstream-idle-timeout", "60s") as proxy:
        first = backend_factory("v1", port=port)
        proxy.route(("v1", 100, [first.addr]))
        assert body(get(proxy)) == b"v1"
        first.stop()
        backend_factory("v1b", port=port)
        assert body(get(proxy)) == b"v1b"


def test_unreachable_upstream_gets_502_after_retries(proxy: ProxyProcess) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proxy.route(("v1", 100, [dead]), queue_timeout=0)  # (with a queue it would wait)
    response = get(proxy)
    assert parse_status(response) == 502
    assert b"unreachable" in body(response)
    assert proxy.release_metrics("v1")["upstream_errors"] == 1


def test_slow_upstream_gets_504(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]), response_timeout=1.0)
    response = get(proxy, "/slow?s=4")
    assert parse_status(response) == 504
    assert b"did not answer in time" in body(response)


def test_no_route_is_404_and_keeps_the_connection(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]), hosts=["shop.test"])
    both = send_raw(
        "127.0.0.1",
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    first, _, second = both.partition(b"HTTP/1.1 200")
    assert parse_status(first) == 404 and b"no route" in first
    assert second.endswith(b"v1")


def test_release_without_healthy_target_is_503_not_reset(proxy: ProxyProcess) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proxy.route(
        ("v1", 100, [dead]), health={"kind": "tcp", "interval": 0.05, "fall": 1}, queue_timeout=0
    )
    deadline = time.monotonic() + 10
    while proxy.ok("GET", "/targets")["targets"][dead]["healthy"]:
        assert time.monotonic() < deadline, "health check never marked the target down"
        time.sleep(0.05)
    response = get(proxy)
    assert parse_status(response) == 503
    assert b"no healthy target" in body(response)


# -- draining ----------------------------------------------------------------------------


async def test_drain_reports_zero_only_after_slow_request_finishes(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    proxy.route(("v1", 100, [v1.addr]))
    sent = time.monotonic()
    slow = asyncio.create_task(
        send_raw_async(
            "127.0.0.1",
            proxy.port,
            b"GET /slow?s=2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            timeout=15,
        )
    )
    await asyncio.sleep(0.5)
    proxy.route(("v2", 100, [v2.addr]))  # v1 leaves the table with one request in flight
    now = proxy.ok("POST", "/drain", {"targets": [v1.addr]})
    assert now == {
        "drained": False,
        "targets": {v1.addr: {"in_flight": 1, "tunnels": 0}},
        "tunnels_closed": 0,
    }
    waited = await asyncio.to_thread(proxy.ok, "POST", "/drain", {"targets": [v1.addr], "wait": 20})
    drained_at = time.monotonic()
    assert waited["drained"] is True
    # The app answers /slow?s=2 after 2 s: a drain that answered sooner did not wait for it.
    # (The client may read the answer's last bytes a moment after the drain's answer: the
    # proxy counts a request out of its target once the target has answered it.)
    assert drained_at - sent >= 2.0, "drain answered before the slow request finished"
    response = await asyncio.wait_for(slow, 10)
    assert parse_status(response) == 200 and body(response) == b"v1"
    assert body(get(proxy)) == b"v2"


def test_draining_target_gets_no_new_requests(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    a, b = backend_factory("a"), backend_factory("b")
    proxy.route(("v1", 100, [a.addr, b.addr]))
    proxy.ok("POST", "/drain", {"targets": [a.addr]})
    assert {body(get(proxy)) for _ in range(20)} == {b"b"}
    proxy.ok("POST", "/undrain", {"targets": [a.addr]})
    assert {body(get(proxy)) for _ in range(20)} == {b"a", b"b"}


# -- protocols ---------------------------------------------------------------------------


async def test_websocket_echo_through_the_proxy(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        assert (await ws.receive_str(timeout=5)) == "v1"
        for i in range(20):
            await ws.send_str(f"message {i}")
            assert (await ws.receive_str(timeout=5)) == f"message {i}"
        await ws.send_bytes(b"\x00\x01binary")
        assert (await ws.receive_bytes(timeout=5)) == b"\x00\x01binary"
        open_now = proxy.release_metrics("v1")["tunnels"]
        targets = proxy.ok("GET", "/targets")["targets"]
        assert open_now == 1 and targets[backend.addr]["tunnels"] == 1
    deadline = time.monotonic() + 5
    while proxy.release_metrics("v1")["tunnels"] != 0:
        assert time.monotonic() < deadline, "tunnel count never went back to zero"
        await asyncio.sleep(0.05)
    assert proxy.release_metrics("v1")["requests"]["1xx"] == 1


async def test_sse_stream_is_not_buffered(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /stream?n=4&interval=0.6 HTTP/1.1\r\nHost: a\r\n\r\n")
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"text/event-stream" in head
    first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    first_at = time.monotonic() - started
    assert b"data: 0" in first
    rest = b""
    while not rest.endswith(b"0\r\n\r\n"):
        rest += await asyncio.wait_for(reader.read(65536), 10)
    all_at = time.monotonic() - started
    writer.close()
    assert b"data: 3" in rest
    # The stream takes ~1.8 s; the first event must arrive well before its end.
    assert first_at < all_at - 1.0


async def test_large_bodies_stream_both_ways(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    payload = bytes(range(256)) * 40_000  # ~10 MB
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.url}/echo", data=payload) as resp:
            assert resp.status == 200
            assert await resp.read() == payload

        async def chunks() -> object:
            for i in range(0, len(payload), 100_000):
                yield payload[i : i + 100_000]

        async with session.post(f"{proxy.url}/echo", data=chunks()) as resp:  # chunked upload
            assert resp.status == 200
            assert await resp.read() == payload
        async with session.get(f"{proxy.url}/big?kb=20000") as resp:
            assert len(await resp.read()) == 20000 * 1024


def test_forwarding_headers(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    response = get(
        proxy,
        "/headers",
        host="shop.test:8080",
        extra=b"X-Forwarded-For: 10.9.9.9\r\nKeep-Alive: timeout=5\r\nX-Drop: 1\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nX-Request-Id: req-123\r\n",
    )
    seen = json.loads(body(response))
    assert seen["x-forwarded-for"] == "127.0.0.1"  # replaced: the client is no trusted proxy
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.test:8080"
    assert seen["x-request-id"] == "req-123"
    assert seen["via"] == "1.1 baton"
    for hop in ("keep-alive", "proxy-connection", "te"):
        assert hop not in seen, hop
    assert b"Via: 1.1 baton" in response
    generated = json.loads(body(get(proxy, "/headers")))["x-request-id"]
    again = json.loads(body(get(proxy, "/headers")))["x-request-id"]
    assert generated and again and generated != again


def test_connection_named_headers_are_dropped(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    response = get(proxy, "/headers", extra=b"X-Secret-Hop: 1\r\nConnection: X-Secret-Hop\r\n")
    assert "x-secret-hop" not in json.loads(body(response))


# -- routing -----------------------------------------------------------------------------


def test_routes_by_host_wildcard_and_longest_prefix(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    exact, wild, api, anyhost = (backend_factory(n) for n in ("exact", "wild", "api", "any"))
    proxy.route(("r", 100, [exact.addr]), app="exact", hosts=["shop.test"])
    proxy.route(("r", 100, [wild.addr]), app="wild", hosts=["*.shop.test"])
    proxy.route(("r", 100, [api.addr]), app="api", hosts=["shop.test"], path_prefix="/api")
    proxy.route(("r", 100, [anyhost.addr]), app="any")
    assert body(get(proxy, "/", "shop.test")) == b"exact"
    assert body(get(proxy, "/", "SHOP.test:80")) == b"exact"
    assert body(get(proxy, "/api/users", "shop.test")) == b"api"
    assert body(get(proxy, "/api", "shop.test")) == b"api"
    assert body(get(proxy, "/apix", "shop.test")) == b"exact"
    assert body(get(proxy, "/", "eu.shop.test")) == b"wild"
    assert body(get(proxy, "/", "elsewhere.test")) == b"any"


# -- health and metrics ------------------------------------------------------------------


def test_failing_health_check_takes_target_out_and_recovery_brings_it_back(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    good = backend_factory("good")
    sick = backend_factory("sick", up_status=500)
    proxy.route(
        ("v1", 100, [good.addr, sick.addr]),
        health={
            "kind": "http",
            "path": "/up",
            "interval": 0.05,
            "timeout": 1,
            "rise": 2,
            "fall": 2,
        },
    )
    deadline = time.monotonic() + 10
    while proxy.ok("GET", "/targets")["targets"][sick.addr]["healthy"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert {body(get(proxy)) for _ in range(20)} == {b"good"}


def test_metrics_count_requests_by_release_and_class(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    for _ in range(5):
        get(proxy)
    get(proxy, "/status/503")
    get(proxy, "/status/404")
    m = proxy.release_metrics("v1")
    assert m["requests"]["2xx"] == 5
    assert m["requests"]["5xx"] == 1 and m["requests"]["4xx"] == 1
    assert m["total"]["count"] == 7 and m["ttfb"]["count"] == 7
    assert sum(m["total"]["counts"]) == 7
    status, text = proxy.call("GET", "/metrics")
    assert status == 200
    assert 'baton_requests_total{app="web",release="v1",class="2xx"} 5' in text
    assert 'baton_request_duration_seconds_count{app="web",release="v1"} 7' in text


# -- admin API ---------------------------------------------------------------------------

BAD_ADMIN_BODIES: list[tuple[str, str, object]] = [
    ("not-json", "/routes", b"{nope"),
    ("not-object", "/routes", []),
    ("unknown-top", "/routes", {"apps": {}, "extra": 1}),
    ("apps-not-object", "/routes", {"apps": []}),
    ("no-releases", "/routes", {"apps": {"web": {"releases": []}}}),
    ("weight-too-big", "/apps/web", {"releases": [{"name": "a", "weight": 101, "targets": []}]}),
    ("weight-negative", "/apps/web", {"releases": [{"name": "a", "weight": -1, "targets": []}]}),
    ("weight-string", "/apps/web", {"releases": [{"name": "a", "weight": "50", "targets": []}]}),
    ("target-no-port", "/apps/web", {"releases": [{"name": "a", "targets": ["127.0.0.1"]}]}),
    ("target-bad-port", "/apps/web", {"releases": [{"name": "a", "targets": ["127.0.0.1:99999"]}]}),
    (
        "dup-release",
        "/apps/web",
        {"releases": [{"name": "a", "targets": []}, {"name": "a", "targets": []}]},
    ),
    ("unknown-app-key", "/apps/web", {"releases": [{"name": "a", "targets": []}], "colour": "red"}),
    ("bad-host", "/apps/web", {"hosts": ["bad host"], "releases": [{"name": "a", "targets": []}]}),
    ("bad-prefix", "/apps/web", {"path_prefix": "api", "releases": [{"name": "a", "targets": []}]}),
    (
        "http-health-no-path",
        "/apps/web",
        {"health": {"kind": "http"}, "releases": [{"name": "a", "targets": []}]},
    ),
    ("bad-listen", "/apps/web", {"listen": "nowhere", "releases": [{"name": "a", "targets": []}]}),
]


@pytest.mark.parametrize(
    ("path", "payload"), [c[1:] for c in BAD_ADMIN_BODIES], ids=[c[0] for c in BAD_ADMIN_BODIES]
)
def test_malformed_admin_input_is_400_and_changes_nothing(
    proxy: ProxyProcess, backend: Backend, path: str, payload: object
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    before = proxy.ok("GET", "/routes")
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    status, answer = proxy.call("PUT", path, raw=raw)
    assert status == 400, answer
    assert isinstance(answer, dict) and answer["error"]
    assert proxy.ok("GET", "/routes") == before
    assert body(get(proxy)) == b"v1"


def test_bad_drain_body_is_400(proxy: ProxyProcess) -> None:
    payloads: list[Any] = [{"targets": "x"}, {"targets": ["a:1"], "wait": -1}, {"wat": 1}, []]
    for payload in payloads:
        status, answer = proxy.call("POST", "/drain", payload)
        assert status == 400 and answer["error"], payload


def test_conflicting_routes_are_rejected(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]), app="one", hosts=["a.test"])
    status, answer = proxy.call(
        "PUT",
        "/apps/two",
        {"listen": proxy.listen, "hosts": ["a.test"], "releases": [{"name": "x", "targets": []}]},
    )
    assert status == 400 and "already used by app 'one'" in answer["error"]


def test_new_listen_address_is_opened_and_busy_one_refused(
    proxy: ProxyProcess, backend: Backend
) -> None:
    port = free_port()
    proxy.ok(
        "PUT",
        "/apps/other",
        {"listen": f"127.0.0.1:{port}", "releases": [{"name": "v1", "targets": [backend.addr]}]},
    )
    assert (
        body(send_raw("127.0.0.1", port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        == b"v1"
    )
    before = proxy.ok("GET", "/routes")
    status, answer = proxy.call(
        "PUT",
        "/apps/third",
        {"listen": backend.addr, "releases": [{"name": "v1", "targets": [backend.addr]}]},
    )
    assert status == 409, answer
    assert proxy.ok("GET", "/routes") == before


# -- canary traffic: stickiness and pinning ----------------------------------------------


def test_cookie_stickiness_keeps_a_client_on_its_release(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    stable, canary = backend_factory("stable"), backend_factory("canary")
    proxy.route(("stable", 50, [stable.addr]), ("canary", 50, [canary.addr]), stickiness="cookie")
    first = get(proxy)
    assert b"Set-Cookie: baton_release=" in first
    cookie = first.split(b"Set-Cookie: ", 1)[1].split(b";", 1)[0]
    got = body(first)
    seen = {body(get(proxy, extra=b"Cookie: " + cookie + b"\r\n")) for _ in range(40)}
    assert seen == {got}
    # Weights move (a canary step): the client still stays where it was.
    proxy.route(("stable", 75, [stable.addr]), ("canary", 25, [canary.addr]), stickiness="cookie")
    again = get(proxy, extra=b"Cookie: " + cookie + b"\r\n")
    assert body(again) == got and b"Set-Cookie" not in again
    # Clients without the cookie are still split by weight.
    assert {body(get(proxy)) for _ in range(60)} == {b"stable", b"canary"}


def test_header_and_client_ip_stickiness_are_consistent(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    stable, canary = backend_factory("stable"), backend_factory("canary")
    releases = (("stable", 50, [stable.addr]), ("canary", 50, [canary.addr]))
    proxy.route(*releases, stickiness="header:X-User")
    by_user = {
        user: {body(get(proxy, extra=b"X-User: %d\r\n" % user)) for _ in range(5)}
        for user in range(12)
    }
    assert all(len(seen) == 1 for seen in by_user.values()), by_user
    assert {next(iter(s)) for s in by_user.values()} == {b"stable", b"canary"}
    proxy.route(*releases, stickiness="client-ip")
    assert len({body(get(proxy)) for _ in range(20)}) == 1


def test_release_header_needs_the_secret_or_a_trusted_network(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    stable, canary = backend_factory("stable"), backend_factory("canary")
    secret = b"s3cret-s3cret-s3cret"
    proxy.route(
        ("stable", 100, [stable.addr]), ("canary", 0, [canary.addr]), release_secret=secret.decode()
    )
    assert {body(get(proxy)) for _ in range(10)} == {b"stable"}
    # Loopback alone is not trusted: behind a local TLS terminator it is every client.
    assert body(get(proxy, extra=b"X-Baton-Release: canary\r\n")) == b"stable"
    wrong = b"X-Baton-Release: canary\r\nX-Baton-Secret: nope-nope-nope-nope\r\n"
    assert body(get(proxy, extra=wrong)) == b"stable"
    pin = b"X-Baton-Release: canary\r\nX-Baton-Secret: " + secret + b"\r\n"
    assert body(get(proxy, extra=pin)) == b"canary"
    unknown = get(proxy, extra=b"X-Baton-Release: nope\r\nX-Baton-Secret: " + secret + b"\r\n")
    assert parse_status(unknown) == 503 and b"'nope'" in body(unknown)
    seen = json.loads(body(get(proxy, "/headers", extra=pin)))
    assert "x-baton-secret" not in seen  # never forwarded
    # A configured trusted network may pin without the secret.
    proxy.route(
        ("stable", 100, [stable.addr]), ("canary", 0, [canary.addr]), pin_from=["127.0.0.0/8"]
    )
    assert body(get(proxy, extra=b"X-Baton-Release: canary\r\n")) == b"canary"
    proxy.route(
        ("stable", 100, [stable.addr]), ("canary", 0, [canary.addr]), pin_from=["10.0.0.0/8"]
    )
    assert body(get(proxy, extra=b"X-Baton-Release: canary\r\n")) == b"stable"


# -- long-lived connections --------------------------------------------------------------


async def test_websocket_survives_the_switch_and_gets_1001_at_the_drain_deadline(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    v1, v2 = backend_factory("v1"), backend_factory("v2")
    proxy.route(("v1", 100, [v1.addr]))
    async with aiohttp.ClientSession() as session:
        old = await session.ws_connect(f"{proxy.url}/ws")
        assert await old.receive_str(timeout=5) == "v1"
        proxy.route(("v2", 100, [v2.addr]))  # the switch
        for i in range(5):
            await old.send_str(f"still here {i}")
            assert await old.receive_str(timeout=5) == f"still here {i}"
        new = await session.ws_connect(f"{proxy.url}/ws")
        assert await new.receive_str(timeout=5) == "v2"
        drained = await asyncio.to_thread(
            proxy.ok, "POST", "/drain", {"targets": [v1.addr], "wait": 1}
        )
        assert drained["tunnels_closed"] == 1 and drained["drained"] is True
        closing = await old.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001
        # The new release's WebSocket is untouched.
        await new.send_str("on v2")
        assert await new.receive_str(timeout=5) == "on v2"
        await new.close()


async def test_max_connection_age_bounds_a_websocket(proxy: ProxyProcess, backend: Backend) -> None:
    proxy.route(("v1", 100, [backend.addr]), max_connection_age=1.0)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{proxy.url}/ws") as ws:
        assert await ws.receive_str(timeout=5) == "v1"
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001


async def test_stopping_proxy_ends_websockets_with_1001(backend: Backend) -> None:
    with ProxyProcess("--drain-deadline", "1s") as proxy:
        proxy.route(("v1", 100, [backend.addr]))
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{proxy.url}/ws")
            assert await ws.receive_str(timeout=5) == "v1"
            assert proxy.proc is not None
            proxy.proc.terminate()
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001
            assert await asyncio.to_thread(proxy.proc.wait, 15) == 0


async def test_idle_tunnel_is_closed_after_the_tunnel_idle_timeout(backend: Backend) -> None:
    with ProxyProcess("--tunnel-idle-timeout", "1s") as proxy:
        proxy.route(("v1", 100, [backend.addr]))
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{proxy.url}/ws", autoping=False) as busy,
        ):
            assert await busy.receive_str(timeout=5) == "v1"
            # A tunnel with traffic stays open past the idle time-out...
            for i in range(8):
                await busy.send_str(f"m{i}")
                assert await busy.receive_str(timeout=5) == f"m{i}"
                await asyncio.sleep(0.3)
            # ...and once idle it is closed politely (1001).
            closing = await busy.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1001
