"""The request-head scanner: it takes only heads httptools reads the same way, never rejects.

Every head the scanner takes must be what httptools (llhttp, as the proxy runs it) reports
for the same bytes: method, target, fields, HTTP/1.1, keep-alive. Every head it declines
goes to httptools, whose verdicts stay as they are; so a head Baton rejects is either
declined here or rejected by ``http.scan_request`` on the fields found here with the same
status.
"""

from __future__ import annotations

import random

import httptools
import pytest

from baton.proxy.headscan import ScannedHead, scan_head
from baton.proxy.http import RequestRejected, scan_request
from tests.integration.test_proxy_rejects import REJECTED

LIMIT = 64 * 1024
MAX_HEADERS = 100
BROWSER = (
    b"GET /api/items?page=2 HTTP/1.1\r\n"
    b"Host: app.test\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


Parsed = tuple[bytes, bytes, list[tuple[bytes, bytes]], str, bool]


def httptools_head(data: bytes) -> Parsed | None:
    """What httptools reports for the head at the start of ``data`` (None: an error)."""
    seen = _Collect()
    parser = httptools.HttpRequestParser(seen)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if not seen.complete:
        return None
    return (
        parser.get_method(),
        seen.url,
        seen.headers,
        parser.get_http_version(),
        parser.should_keep_alive(),
    )


def as_parsed(head: ScannedHead) -> Parsed:
    return (head.method, head.url, head.headers, "1.1", True)


def scan(data: bytes) -> ScannedHead | None:
    return scan_head(data, LIMIT, MAX_HEADERS)


TAKEN = [
    BROWSER,
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # (no Host: taken, and rejected by scan_request)
    b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: a\r\n\r\n",
    b"DELETE /a/b HTTP/1.1\r\nhost: a:8080\r\n\r\n",
    b"OPTIONS /* HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PUT /a HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
    b"PATCH /a HTTP/1.1\r\nHost: a\r\nX-Ws:\t  v a l  \t\r\n\r\n",  # leading OWS dropped
    b'GET /a?b=c&d="e"#frag HTTP/1.1\r\nHost: a\r\n\r\n',
    b"GET / HTTP/1.1\r\nHost: a\r\nconnection: Keep-Alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",  # dropped later
    b"GET / HTTP/1.1\r\nHost: a\r\nX!#$%&'*+-.^_`|~: v\r\n\r\n",  # every tchar
]

DECLINED = {
    "incomplete": b"GET / HTTP/1.1\r\nHost: a\r\n",
    "http10": b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    "http09-ish": b"GET /\r\n\r\n",
    "unknown-version": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "lower-case-method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "uncommon-method": b"PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
    "connect": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "absolute-form": b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "double-space": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    "space-after-version": b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    "url-space": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "url-control": b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    "url-obs-text": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    "leading-crlf": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare-lf-line": b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    "bare-lf-field": b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
    "bare-cr-field": b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    "bare-cr-value": b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: one\r\n two\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: a\r\nX: one\r\n\ttwo: x\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
    "tab-before-colon": b"GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n",
    "name-separator": b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
    "no-colon": b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
    "value-control": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    "value-del": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
    "value-obs-text": b"GET / HTTP/1.1\r\nHost: a\r\nX: \xff\r\n\r\n",
    "value-nul": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    "content-length-odd-case": b"POST / HTTP/1.1\r\nHost: a\r\ncONTENT-lENGTH: 1\r\n\r\nx",
    "transfer-encoding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    "upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "upgrade-alone": b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
    "connection-close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "connection-list": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x\r\n\r\n",
    "proxy-connection": b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n",
}


@pytest.mark.parametrize("data", TAKEN)
def test_a_plain_head_is_taken_as_httptools_reads_it(data: bytes) -> None:
    head = scan(data)
    assert head is not None
    assert head.end == len(data)
    assert as_parsed(head) == httptools_head(data)


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_anything_unusual_is_left_to_httptools(name: str) -> None:
    assert scan(DECLINED[name]) is None


@pytest.mark.parametrize(("case", "data", "status"), REJECTED, ids=[c[0] for c in REJECTED])
def test_every_head_baton_rejects_is_declined_or_rejected_alike(
    case: str, data: bytes, status: int
) -> None:
    head = scan(data[:4096])  # (the proxy parses at most this much of a read at a time)
    if head is None:
        return  # httptools parses it, as before
    with pytest.raises(RequestRejected) as caught:
        scan_request(head.headers, True)
    assert caught.value.status == status


def test_a_head_split_anywhere_is_taken_only_once_it_is_whole() -> None:
    for cut in range(len(BROWSER)):
        assert scan(BROWSER[:cut]) is None, cut
    head = scan(BROWSER)
    assert head is not None and head.end == len(BROWSER)


def test_the_bytes_after_a_head_are_the_next_requests() -> None:
    second = b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
    data = BROWSER + second + b"POST /three HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    first = scan(data)
    assert first is not None and first.end == len(BROWSER)
    rest = data[first.end :]
    nxt = scan(rest)
    assert nxt is not None and nxt.url == b"/two" and nxt.end == len(second)
    assert scan(rest[nxt.end :]) is None  # a body: httptools' to frame


def test_oversized_reads_and_too_many_fields_are_left_to_httptools() -> None:
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 300 + b"\r\n\r\n"
    assert scan_head(big, len(big), MAX_HEADERS) is not None
    assert scan_head(big, len(big) - 1, MAX_HEADERS) is None
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(9))
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    assert scan_head(many, LIMIT, 10) is not None
    assert scan_head(many, LIMIT, 9) is None


_NOISE = list(b" \t\r\n:/?#\"<>\\^`{|}()[],;=@!$%&'*+-.~_\x00\x01\x7f\x80\xffAazZ09") + list(
    b"HTTP/1.0GETCONNECTContent-LengthTransfer-EncodingUpgradeConnectioncloseKeep-Alive"
)


def test_mutated_heads_the_scanner_takes_read_the_same_to_httptools() -> None:
    rng = random.Random(14)
    taken = 0
    for _ in range(20_000):
        data = bytearray(rng.choice(TAKEN))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            roll = rng.random()
            if roll < 0.4:
                data[at:at] = bytes([rng.choice(_NOISE)])
            elif roll < 0.7:
                del data[at : at + 1]
            elif at < len(data):
                data[at] = rng.choice(_NOISE)
        head = scan(bytes(data))
        if head is None:
            continue
        taken += 1
        assert as_parsed(head) == httptools_head(bytes(data[: head.end])), bytes(data)
    assert taken > 1000  # (the corpus is mostly still plain heads after a few mutations)
