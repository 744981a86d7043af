"""The proxy over time: restarts with its last table, waits for a target, knows who the client is.

Real ``baton proxy`` processes, real test backends, real sockets. A restarted proxy must
answer its very first client from the table it had; a request for an app with no healthy
target waits (bounded) and is served the moment one is routed or heals; X-Forwarded-*
headers are believed only from trusted proxies; a ``proxy_protocol`` listener takes the
client address from the PROXY header and refuses connections without one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.proxy.proxy_protocol import v1_header, v2_header
from baton.server.listeners import HeldListeners
from tests.support.h1 import parse_status, send_raw, send_raw_async
from tests.support.load import Load
from tests.support.procs import Backend, free_port
from tests.support.proxy import ProxyProcess

BackendFactory = Callable[..., Backend]

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxy() -> Iterator[ProxyProcess]:
    with ProxyProcess() as p:
        yield p


def request(path: str = "/", extra: bytes = b"", host: bytes = b"app.test") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (
        path.encode(),
        host,
        extra,
    )


def head_and_body(response: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode().lower()] = value.decode().strip()
    return headers, body


def queue_figures(proxy: ProxyProcess, app: str = "web") -> dict[str, int]:
    apps = proxy.ok("GET", "/metrics.json")["apps"]
    figures: dict[str, int] = apps.get(app, {}).get("queue", {})
    return figures


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.02)


# -- a restart is a non-event --------------------------------------------------------------


def _first_answer(port: int, out: list[bytes], stop: threading.Event) -> None:
    """Connect as soon as anything accepts on ``port``; keep the first response."""
    while not stop.is_set():
        try:
            out.append(send_raw("127.0.0.1", port, request(), timeout=10))
            return
        except ConnectionRefusedError:
            time.sleep(0.002)


def test_a_restarted_proxy_answers_its_first_client_from_the_saved_table(
    tmp_path: Path, backend: Backend
) -> None:
    admin = str(tmp_path / "proxy.sock")
    with ProxyProcess(admin=admin) as first:
        generation = first.route(("v1", 100, [backend.addr]))
        saved = json.loads((tmp_path / "proxy.routes.json").read_text())
        assert saved["generation"] == generation
        assert saved["apps"]["web"]["releases"][0]["targets"] == [backend.addr]
        first.kill()  # SIGKILL: nothing gets to say goodbye
        port = first.port
    answers: list[bytes] = []
    stop = threading.Event()
    client = threading.Thread(target=_first_answer, args=(port, answers, stop))
    client.start()  # already knocking before the new proxy exists
    try:
        with ProxyProcess(admin=admin, port=port) as second:
            client.join(15)
            assert answers, "the first client got no answer"
            assert parse_status(answers[0]) == 200, answers[0][:200]
            assert head_and_body(answers[0])[1] == b"v1"
            assert second.ok("GET", "/routes")["generation"] == generation
    finally:
        stop.set()
        client.join(5)


def test_a_client_arriving_while_the_proxy_is_dead_waits_for_the_next_one(
    tmp_path: Path, backend: Backend
) -> None:
    """What the daemon does: hold the proxy's sockets, hand them to its successor."""
    admin = str(tmp_path / "proxy.sock")
    held = HeldListeners()
    try:
        with ProxyProcess(admin=admin) as first:
            first.route(("v1", 100, [backend.addr]))
            held.collect(admin)
            assert list(held.sockets) == [first.listen]
            first.kill()
        with socket.create_connection(("127.0.0.1", first.port), timeout=5) as client:
            client.sendall(request())  # nobody accepts yet: it waits in the accept queue
            fds = held.hold([first.listen])
            with open(tmp_path / "second.log", "wb") as log:
                second = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "baton.proxy",
                        "--admin",
                        admin,
                        "--listen-fd",
                        f"{first.listen}={fds[first.listen]}",
                    ],
                    pass_fds=tuple(fds.values()),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                client.settimeout(30)
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
            finally:
                second.terminate()
                second.wait(30)
        assert parse_status(answer) == 200 and head_and_body(answer)[1] == b"v1", answer
    finally:
        held.close()


def test_a_damaged_saved_table_is_reported_and_the_proxy_starts_empty(
    tmp_path: Path, backend: Backend
) -> None:
    saved = tmp_path / "proxy.routes.json"
    saved.write_text('{"generation": 3, "apps": {"web": {"releases": "nope"}}}')
    with ProxyProcess(admin=str(tmp_path / "proxy.sock")) as proxy:
        assert proxy.ok("GET", "/routes")["apps"] == {}
        assert str(saved) in proxy.stderr_text() and "releases" in proxy.stderr_text()
        proxy.route(("v1", 100, [backend.addr]))
        assert json.loads(saved.read_text())["apps"]["web"]["releases"][0]["name"] == "v1"


# -- the request queue ---------------------------------------------------------------------


async def test_requests_wait_for_a_target_and_are_served_once_one_is_routed(
    proxy: ProxyProcess, backend_factory: BackendFactory
) -> None:
    proxy.route(("v1", 100, []), queue_timeout=30)
    waiting = [
        asyncio.create_task(send_raw_async("127.0.0.1", proxy.port, request(), timeout=40))
        for _ in range(3)  # (threads of the default executor: a few, the machine is small)
    ]
    await asyncio.to_thread(
        wait_for, lambda: queue_figures(proxy).get("queued") == 3, what="3 queued"
    )
    assert not any(t.done() for t in waiting)
    assert proxy.ok("GET", "/health")["queued"] == 3
    text = proxy.ok("GET", "/metrics")
    assert 'baton_queued{app="web"} 3' in text
    backend = await asyncio.to_thread(backend_factory, "v1")
    await asyncio.to_thread(proxy.route, ("v1", 100, [backend.addr]), queue_timeout=30)
    answers = await asyncio.gather(*waiting)
    assert [parse_status(a) for a in answers] == [200] * 3
    assert {head_and_body(a)[1] for a in answers} == {b"v1"}
    assert queue_figures(proxy) == {"queued": 0, "queue_timeouts": 0, "queue_rejected": 0}


async def test_under_load_requests_wait_while_the_only_target_is_down_then_all_succeed(
    proxy: ProxyProcess,
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    proxy.route(("v1", 100, [address]), health={"kind": "tcp", "interval": 0.1, "rise": 1})
    load = await Load().start(proxy.url, concurrency=4, max_requests=20_000, max_seconds=40)
    await asyncio.to_thread(
        wait_for, lambda: queue_figures(proxy).get("queued", 0) >= 4, what="queued"
    )
    came_up = load.marker("backend up")
    with Backend("v1", port=port):
        # The health check sees it and wakes the queue: no table change needed.
        await asyncio.sleep(1.0)
        result = await load.stop()
    assert result.failures == [], result.summary()
    assert result.statuses.keys() == {200}, result.summary()
    assert any(s.sent < came_up for s in result.timeline)  # some of them had waited
    assert queue_figures(proxy)["queue_timeouts"] == 0


def test_a_full_queue_and_a_timed_out_wait_get_503_with_retry_after(
    proxy: ProxyProcess,
) -> None:
    proxy.route(("v1", 100, []), queue_timeout=1, queue_limit=2)
    answers: list[bytes] = []
    waiters = [
        threading.Thread(
            target=lambda: answers.append(send_raw("127.0.0.1", proxy.port, request(), 20))
        )
        for _ in range(2)
    ]
    for t in waiters:
        t.start()
    wait_for(lambda: queue_figures(proxy).get("queued") == 2, what="2 queued")
    t0 = time.monotonic()
    refused = send_raw("127.0.0.1", proxy.port, request(), timeout=20)
    headers, body = head_and_body(refused)
    assert parse_status(refused) == 503 and headers["retry-after"] == "1"
    assert b"2 requests waiting" in body
    for t in waiters:
        t.join(20)
    assert len(answers) == 2
    for answer in answers:
        headers, body = head_and_body(answer)
        assert parse_status(answer) == 503, answer
        assert headers["retry-after"] == "1"
        assert b"no healthy target for app 'web' within" in body
    assert time.monotonic() - t0 < 15  # the wait is bounded (generous: a shared machine)
    assert queue_figures(proxy) == {"queued": 0, "queue_timeouts": 2, "queue_rejected": 1}
    assert 'baton_queue_timeouts_total{app="web"} 2' in proxy.ok("GET", "/metrics")


def test_queue_timeout_zero_answers_503_at_once(proxy: ProxyProcess) -> None:
    proxy.route(("v1", 100, []), queue_timeout=0)
    answer = send_raw("127.0.0.1", proxy.port, request(), timeout=20)
    headers, body = head_and_body(answer)
    assert parse_status(answer) == 503 and headers["retry-after"] == "1"
    assert body.startswith(b"503 Service Unavailable: no healthy target for app 'web'")
    assert queue_figures(proxy)["queued"] == 0


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"queue_timeout": -1}, "apps.web.queue_timeout"),
        ({"queue_limit": "many"}, "apps.web.queue_limit"),
        ({"trusted_proxies": ["300.0.0.0/8"]}, "apps.web.trusted_proxies[0]"),
        ({"proxy_protocol": 1}, "apps.web.proxy_protocol"),
    ],
)
def test_bad_queue_and_forwarding_fields_get_400_and_change_nothing(
    proxy: ProxyProcess, backend: Backend, fields: dict[str, Any], words: str
) -> None:
    proxy.route(("v1", 100, [backend.addr]))
    before = proxy.ok("GET", "/routes")
    spec = {
        "listen": proxy.listen,
        "releases": [{"name": "v2", "weight": 100, "targets": [backend.addr]}],
        **fields,
    }
    status, answer = proxy.call("PUT", "/apps/web", spec)
    assert status == 400 and words in answer["error"], answer
    assert proxy.ok("GET", "/routes") == before


# -- who the client is ---------------------------------------------------------------------

FORWARDED = (
    b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: shop.example.com\r\n"
)


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [
        (
            ["127.0.0.0/8"],
            {
                "x-forwarded-for": "203.0.113.9, 127.0.0.1",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "shop.example.com",
            },
        ),
        (
            ["10.0.0.0/8"],
            {
                "x-forwarded-for": "127.0.0.1",
                "x-forwarded-proto": "http",
                "x-forwarded-host": "app.test",
            },
        ),
    ],
    ids=["trusted peer", "untrusted peer"],
)
def test_forwarded_headers_are_kept_from_trusted_proxies_only(
    proxy: ProxyProcess, backend: Backend, trusted: list[str], expected: dict[str, str]
) -> None:
    proxy.route(("v1", 100, [backend.addr]), trusted_proxies=trusted)
    answer = send_raw("127.0.0.1", proxy.port, request("/headers", FORWARDED), timeout=20)
    seen = json.loads(head_and_body(answer)[1])
    assert {k: v for k, v in seen.items() if k.startswith("x-forwarded-")} == expected


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (v1_header(("203.0.113.7", 51234), ("127.0.0.1", 80)), "203.0.113.7"),
        (v2_header(("198.51.100.4", 40000), ("127.0.0.1", 80)), "198.51.100.4"),
        (v2_header(("2001:db8::7", 40000), ("::1", 80)), "2001:db8::7"),
        (v2_header(None, None), "127.0.0.1"),  # LOCAL: the balancer's own health check
    ],
    ids=["v1", "v2 ipv4", "v2 ipv6", "v2 LOCAL"],
)
def test_proxy_protocol_gives_the_app_the_real_client_address(
    proxy: ProxyProcess, backend: Backend, header: bytes, client: str
) -> None:
    proxy.route(("v1", 100, [backend.addr]), proxy_protocol=True)
    # Two requests on one connection: the header comes once, before the first.
    two = request("/headers").replace(b"Connection: close\r\n", b"") + request("/headers")
    answer = send_raw("127.0.0.1", proxy.port, header + two, timeout=20)
    first, _, rest = answer.partition(b"HTTP/1.1 200")[2].partition(b"HTTP/1.1 200")
    assert rest, answer[:300]
    for part in (first, rest):
        body = head_and_body(b"HTTP/1.1 200" + part)[1]
        seen = json.loads(body.split(b"\r\n")[0] if b"\r\n" in body else body)
        assert seen["x-forwarded-for"] == client


@pytest.mark.parametrize(
    "opening",
    [
        request("/headers"),  # plain HTTP, as if the balancer were bypassed
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51234\r\n" + request(),  # a field missing
        b"PROXY TCP4 " + b"9" * 200,  # no end in sight
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04" + request(),  # truncated v2
    ],
    ids=["missing", "malformed v1", "oversized v1", "short v2 addresses"],
)
def test_a_proxy_protocol_listener_refuses_connections_without_a_valid_header(
    proxy: ProxyProcess, backend: Backend, opening: bytes
) -> None:
    proxy.route(("v1", 100, [backend.addr]), proxy_protocol=True)
    answer = send_raw("127.0.0.1", proxy.port, opening, timeout=20)
    assert parse_status(answer) == 400, answer
    assert b"PROXY" in answer
    assert proxy.release_metrics("v1").get("requests", {}).get("2xx", 0) == 0  # never forwarded


def test_a_client_that_leaves_while_waiting_frees_its_place(proxy: ProxyProcess) -> None:
    # A client that resets its connection has left. (One that only half-closes may still
    # be reading: it keeps its place and is answered, see test_proxy_rejects.)
    proxy.route(("v1", 100, []), queue_timeout=30, queue_limit=1)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(request())
        wait_for(lambda: queue_figures(proxy).get("queued") == 1, what="1 queued")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_for(lambda: queue_figures(proxy).get("queued") == 0, what="place freed")
    assert queue_figures(proxy)["queue_timeouts"] == 0


@pytest.mark.parametrize(
    ("value", "words"),
    [("127.0.0.1:8080=notanfd", "inherited listening socket"), ("nowhere=3", "--listen-fd")],
)
def test_a_bad_listen_fd_is_refused_by_name(tmp_path: Path, value: str, words: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton.proxy",
            "--admin",
            str(tmp_path / "p.sock"),
            "--listen-fd",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert not (tmp_path / "p.sock").exists()
