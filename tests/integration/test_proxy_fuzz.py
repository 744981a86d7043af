"""Fuzzed request bytes through a real proxy to a recording app (issue 12).

Hypothesis builds requests from the parts that matter to framing and forwarding (methods,
targets, versions, Host, Content-Length, Transfer-Encoding, Connection, Upgrade, Expect,
underscore spellings, control bytes, chunked bodies, stray bytes), sometimes mutated
byte by byte, and sends each on its own connection (then half-closes). Whatever the
client sends: the proxy keeps running, every request the app receives is well-framed and
carries Baton's forwarding headers, and the proxy's memory stays bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.h1 import send_raw
from tests.support.proxy import ProxyProcess
from tests.support.scripted import ScriptedUpstream

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"CONNECT", b"G T"]
TARGETS = [b"/", b"/a?b=c", b"*", b"http://app.test/x", b"http://other.test/", b"/%00", b"//x"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"http/1.1"]
NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Upgrade",
    b"Expect",
    b"X-Forwarded-For",
    b"Via",
    b"X-Request-Id",
    b"Transfer_Encoding",
    b"Content_Length",
    b"X_Forwarded_For",
    b"Trailer",
    b"X-Custom",
    b"Cookie",
    b"X-Baton-Release",
]
VALUES = [
    b"app.test",
    b"0",
    b"5",
    b"-1",
    b"5, 5",
    b"chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"close",
    b"keep-alive",
    b"upgrade",
    b"Host",
    b"websocket",
    b"100-continue",
    b"a\x00b",
    b"a\rb",
    b"app.test:99999",
    b"1.2.3.4",
    b"",
]

header = st.tuples(
    st.sampled_from(NAMES) | st.binary(min_size=1, max_size=8),
    st.sampled_from(VALUES) | st.binary(max_size=12),
)


@st.composite
def request_bytes(draw: st.DrawFn) -> bytes:
    head = draw(st.sampled_from(METHODS)) + b" " + draw(st.sampled_from(TARGETS)) + b" "
    head += draw(st.sampled_from(VERSIONS)) + b"\r\n"
    if draw(st.booleans()):
        head += b"Host: app.test\r\n"
    for name, value in draw(st.lists(header, max_size=6)):
        head += name + b": " + value + b"\r\n"
    body = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(0, 20), max_size=3))
        body = b"".join(b"%x\r\n%s\r\n" % (n, b"z" * n) for n in sizes if n) + b"0\r\n\r\n"
    data = head + b"\r\n" + body + draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"\r\n"]))
    for _ in range(draw(st.integers(0, 3))):  # a few byte-level mutations
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(max_size=2)) + data[i + draw(st.integers(0, 2)) :]
    return data


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def check_well_framed(raw: bytes) -> None:
    """What the app received is one well-framed HTTP/1.1 request with Baton's headers."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    assert TOKEN.fullmatch(method) and version == b"HTTP/1.1" and target, lines[0]
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        assert colon and TOKEN.fullmatch(name), line
        assert not re.search(rb"[\x00\r\n]", value), line
        fields.setdefault(name.lower(), []).append(value.strip())
    framing = [n for n in (b"content-length", b"transfer-encoding") if n in fields]
    assert len(framing) <= 1 and all(len(fields[n]) == 1 for n in framing), fields
    if b"content-length" in fields:
        assert len(body) == int(fields[b"content-length"][0])
    elif b"transfer-encoding" in fields:
        assert fields[b"transfer-encoding"] == [b"chunked"] and body.endswith(b"0\r\n\r\n")
    else:
        assert body == b""
    assert len(fields.get(b"host", [])) == 1
    assert fields[b"via"][-1].endswith(b"1.1 baton")
    assert fields[b"x-forwarded-for"] and fields[b"x-request-id"]
    colliding = {b"transfer-encoding", b"content-length", b"x-forwarded-for", b"host", b"via"}
    assert not any(b"_" in n and n.replace(b"_", b"-") in colliding for n in fields), fields


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[tuple[ProxyProcess, ScriptedUpstream]]:
    with (
        ScriptedUpstream(OK) as app,
        ProxyProcess("--header-timeout", "1s") as proxy,
    ):
        proxy.route(("v1", 100, [app.addr]))
        yield proxy, app


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=request_bytes())
def test_fuzzed_requests_never_crash_and_forward_only_well_framed_requests(
    fuzz_target: tuple[ProxyProcess, ScriptedUpstream], data: bytes
) -> None:
    proxy, app = fuzz_target
    seen = len(app.requests)
    send_raw("127.0.0.1", proxy.port, data, timeout=3, half_close=True)
    assert proxy.alive, "the proxy is still running"
    for raw in app.requests[seen:]:
        check_well_framed(raw)


def test_after_the_fuzz_the_proxy_serves_and_its_memory_is_bounded(
    fuzz_target: tuple[ProxyProcess, ScriptedUpstream],
) -> None:
    proxy, app = fuzz_target
    before = rss_kib(proxy.pid)
    # Hostile shapes, many times: endless trailers, huge pipelines, oversized heads.
    trailers = (
        b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        + (b"X-Trailer: " + b"a" * 100 + b"\r\n") * 3000
    )
    pipeline = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n" * 6000
    for _ in range(20):
        send_raw("127.0.0.1", proxy.port, trailers, timeout=3, half_close=True)
        send_raw("127.0.0.1", proxy.port, pipeline, timeout=0.2)
    after = rss_kib(proxy.pid)
    assert after - before < 64 * 1024, f"RSS grew from {before} KiB to {after} KiB"
    ok = send_raw(
        "127.0.0.1", proxy.port, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n", 3, half_close=True
    )
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b"ok")
    for raw in app.requests:
        check_well_framed(raw)
