"""The data plane: client connections, exchanges, listeners and the route-table swap.

Theory of operation. ``Proxy`` owns the current ``RouteTable`` (one reference, swapped
whole), the target registry, the metrics registry, the listening sockets and every client
connection. A ``ClientConnection`` parses requests with httptools (a whole plain head in one
read, compiled: with Baton's own scanner, ``headscan.py``, which leaves everything else to
httptools); when a request's headers are complete it becomes an ``Exchange``, is matched
against the table current at that moment, assigned a release (by weight) and a target (least
in-flight, then round-robin), and forwarded on a pooled or new ``UpstreamConnection``. The
exchange stays on its target until the response is complete, whatever the table does
meanwhile. The choice itself is pure (``choice.py``); the exchange holds its in-flight
counts (``exchange.py``) and ends through ``_finish``; why the client is not being read is
kept by ``flow.py``; the upstream side reports back through ``upstream.UpstreamEvents``.

Rules the code keeps:
- A request never answered (connect refused/reset, or the upstream closed before one
  response byte) is retried on another target of the same release, or once on the same
  target after a short back-off, if ``http.replayable`` says so: the upstream provably saw
  nothing of it, or it is idempotent with its body (at most ``REPLAY_LIMIT`` bytes) still
  held. Nothing is retried once a response byte arrived.
- A client is read no further while a pipelined request waits for its turn: the bytes
  after it are held raw (``held``) and parsed when its turn comes. Bad bytes after
  requests read whole are rejected only once those are answered (``deferred``); a client
  that half-closes after its requests still gets their answers.
- Every head (also a next one on a keep-alive connection) must arrive within the header
  time-out; header fields and a chunked body's framing and trailers are bounded by the
  header limits.
- Every request Baton cannot forward gets a short local answer: 404 no route, 503 no
  healthy target, 502 upstream unreachable, 504 upstream time-out, 4xx bad request.
- Back-pressure: while one side's write buffer is full, the other side is not read.
- One sweeper task enforces deadlines (header time-out, keep-alive idle time, upstream
  response time-out) and closes pooled connections idle for too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, cast

import httptools

from baton.errors import ProxyProtocolError
from baton.proxy import tls as tls_module
from baton.proxy.accesslog import AccessLog, AccessLogSpec
from baton.proxy.choice import Chooser, LiveApp, LiveRelease, LiveTable, may_pin
from baton.proxy.exchange import NO_BODY, Exchange
from baton.proxy.failures import FailureLog
from baton.proxy.flow import (
    PAUSE_BUFFER,
    PAUSE_DEFERRED,
    PAUSE_PIPELINE,
    PAUSE_UPSTREAM,
    FlowControl,
)
from baton.proxy.forwarded import is_trusted
from baton.proxy.fuses import Fuses
from baton.proxy.headscan import COMPILED, ScannedHead, scan_head
from baton.proxy.http import (
    CONTINUE_100,
    FRAME_CHUNKED,
    LAST_CHUNK,
    RequestRejected,
    ResponseInfo,
    absolute_form,
    chunk,
    client_head,
    flag_cohorts,
    local_response,
    replayable,
    scan_request,
    short_response,
    upgrade_refused,
    upstream_head,
)
from baton.proxy.metrics import MetricsRegistry, ReleaseMetrics
from baton.proxy.proxy_protocol import parse_header
from baton.proxy.queue import Waiting, WaitQueues, retry_after
from baton.proxy.routing import (
    AppSpec,
    RouteTable,
    normalise_host,
    parse_address,
)
from baton.proxy.tls import (
    ACME_CHALLENGE_PREFIX,
    POLL_INTERVAL,
    TlsManager,
    hsts_header,
    https_location,
    protocol_for_alpn,
)
from baton.proxy.upstream import BadResponse, Target, UpstreamConnection
from baton.proxy.websocket import FrameCursor, close_frame

log = logging.getLogger("baton.proxy")

REPLAY_LIMIT: Final = 64 * 1024
MAX_ATTEMPTS: Final = 4
SAME_TARGET_BACKOFF: Final = 0.05
STOPPING_IDLE_GRACE: Final = 1.0
HANDSHAKES_TRACKED: Final = 1024  # above this many, stale entries (failed handshakes) are dropped
TUNNEL_CLOSE_GRACE: Final = 2.0  # after close frames: longest wait before TCP is closed anyway

# What a connection's deadline means when it passes.
NO_DEADLINE: Final = 0
HEADER_DEADLINE: Final = 1  # request headers incomplete: 408
IDLE_DEADLINE: Final = 2  # keep-alive connection idle: close quietly
UPSTREAM_DEADLINE: Final = 3  # waiting for the response head: 504

# Client bytes are parsed at most this many at a time outside a body (a body: BODY_STEP), so
# that parsing stops soon after a pipelined request and the rest is held as raw bytes.
FEED_STEP: Final = 4096
BODY_STEP: Final = 65536
# Whether whole plain request heads go to Baton's scanner rather than httptools: when it
# runs compiled (interpreted, httptools is cheaper; ``headscan.COMPILED``).
SCAN_HEADS: Final = COMPILED


@dataclass
class ProxySettings:
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_header_size: int = 64 * 1024
    upstream_idle_timeout: float = 2.0
    upstream_max_idle: int = 256
    eject_after: int = 3
    drain_deadline: float = 30.0
    max_headers: int = 100
    max_connections: int = 10000  # per listener; beyond it: 503 and close
    tunnel_idle_timeout: float = 3600.0
    access_log: AccessLogSpec | None = None  # off by default


class _WebSocketTunnel:
    """Frame boundaries of both directions, and how far a polite close has got."""

    __slots__ = ("app_closed", "client_closed", "ending", "to_app", "to_client")

    def __init__(self) -> None:
        self.to_app = FrameCursor()
        self.to_client = FrameCursor()
        self.ending = False
        self.app_closed = False  # a close frame was sent to the app
        self.client_closed = False  # a close frame was sent to the client


class ClientConnection(asyncio.Protocol):
    """One client TCP connection: parses requests, runs exchanges, or tunnels bytes."""

    __slots__ = (
        "active",
        "began",
        "begin_offset",
        "client_ip",
        "closed",
        "counted",
        "current_parse",
        "deadline",
        "deadline_kind",
        "deferred",
        "early",
        "eof",
        "feed_len",
        "head_size",
        "head_started",
        "headers",
        "held",
        "last_io",
        "line_at",
        "line_piece",
        "listen",
        "loopback",
        "max_header_size",
        "max_headers",
        "parser",
        "paused",
        "pending",
        "piece_body",
        "proxy",
        "reading",
        "tls",
        "trailer_count",
        "trailer_size",
        "transport",
        "tunnel",
        "upgrading",
        "url",
        "write_paused",
        "ws",
    )

    def __init__(self, proxy: Proxy, listen: str) -> None:
        self.proxy = proxy
        self.listen = listen
        self.tls = listen in proxy.tls_servers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.loopback = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.max_headers = proxy.settings.max_headers
        self.max_header_size = proxy.settings.max_header_size
        self.head_size = 0
        self.feed_len = 0
        self.reading = False  # a request head is being parsed (not yet complete)
        self.active: Exchange | None = None
        self.pending: deque[Exchange] = deque()
        self.current_parse: Exchange | None = None
        self.tunnel: UpstreamConnection | None = None
        self.ws: _WebSocketTunnel | None = None  # set when the tunnel carries WebSocket
        self.upgrading = False
        self.early: list[bytes] = []
        self.paused = FlowControl()
        self.write_paused = False
        self.closed = False
        self.deadline = 0.0
        self.deadline_kind = NO_DEADLINE
        self.counted = False
        self.held = b""  # raw bytes after a pipelined request, parsed when its turn comes
        self.deferred: tuple[int, str] | None = None  # a rejection owed after earlier answers
        self.eof = False  # the client shut its write side
        self.began = False
        self.begin_offset = 0
        self.piece_body = 0
        self.head_started = 0.0
        self.trailer_size = 0
        self.trailer_count = 0
        self.last_io = 0.0
        # The piece being parsed, while a head that begins in it would begin at its first
        # byte; then the piece the current head's request line starts (``_version``).
        self.line_piece: bytes | None = None
        self.line_at: bytes | None = None

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.proxy.handshaking.pop(self, None)
        if self.tls and tls_module.H2_AVAILABLE and self._handed_over(transport):
            return
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "unknown"
        self.client_ip = ip.encode()
        self.loopback = ip.startswith(("127.", "::ffff:127.")) or ip == "::1"
        proxy = self.proxy
        if not proxy.admit(self.listen):
            self.closed = True
            self.transport.write(local_response(503, "too many connections", close=True))
            self.transport.close()
            return
        self.counted = True
        proxy.connections.add(self)
        self._set_deadline(HEADER_DEADLINE, proxy.settings.header_timeout)

    def _handed_over(self, transport: asyncio.BaseTransport) -> bool:
        """A TLS connection that agreed on another protocol with ALPN (h2) goes to it."""
        ssl_object = transport.get_extra_info("ssl_object")
        factory = protocol_for_alpn(ssl_object.selected_alpn_protocol() if ssl_object else None)
        if factory is None:
            return False
        protocol = factory(self.proxy, self.listen)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.handshaking.pop(self, None)
        if self.counted:
            self.counted = False
            self.proxy.release(self.listen)
        self.proxy.connections.discard(self)
        self._drop_tunnel(close_upstream=True)
        ex = self.active
        if ex is not None:
            self.active = None
            self._abandon(ex)
        self.pending.clear()

    def _abandon(self, ex: Exchange) -> None:
        """The client went away mid-exchange: release the target, drop the upstream."""
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.close()
        ex.end()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _set_deadline(self, kind: int, seconds: float, now: float = 0.0) -> None:
        """``now``: a ``time.monotonic()`` just read (the loop's clock), if the caller has one."""
        self.deadline_kind = kind
        self.deadline = (now or self.proxy.loop.time()) + seconds

    def on_deadline(self) -> None:
        kind = self.deadline_kind
        self.deadline_kind = NO_DEADLINE
        if kind == HEADER_DEADLINE:
            self._reject(408, "request headers not received in time")
        elif kind == IDLE_DEADLINE:
            self.close()
        elif kind == UPSTREAM_DEADLINE:
            ex = self.active
            if ex is not None and ex.status == 0:
                self._fail(ex, 504, "upstream did not answer in time")

    # -- flow control ------------------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if self.paused.pause(reason) and self.transport is not None:
            self.transport.pause_reading()

    def _resume(self, reason: int) -> None:
        if self.paused.resume(reason) and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def pause_reading_for_upstream(self) -> None:
        self._pause(PAUSE_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._resume(PAUSE_UPSTREAM)

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.tunnel or (self.active.upstream if self.active else None)
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.tunnel or (self.active.upstream if self.active else None)
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    # -- bytes in ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            self.last_io = self.proxy.loop.time()
            ws = self.ws
            if ws is not None:
                if ws.app_closed:
                    return  # Baton already said goodbye to the app for this client
                ws.to_app.feed(data)
            if tunnel.transport is not None:
                tunnel.transport.write(data)
            if ws is not None and ws.ending:
                self._send_close_frames()
            return
        if self.upgrading:
            # Bytes after an Upgrade request, before the upstream said 101: hold them.
            self.early.append(data)
            self._pause(PAUSE_BUFFER)
            return
        if not self.held and len(data) <= FEED_STEP:
            self._parse(data)  # (the common case of ``_feed``, one call shorter)
            return
        self._feed(data)

    def eof_received(self) -> bool | None:
        """The client shut its write side: answer the requests it sent whole, then close."""
        self.eof = True
        if self.tunnel is not None or self.upgrading:
            return None
        ex = self.current_parse
        if ex is not None:
            # Its body can never complete now: it is not answered.
            self.current_parse = None
            if ex is self.active:
                return None
            if self.pending and self.pending[-1] is ex:
                self.pending.pop()
        if self.active is None and not self.pending and not self.held:
            return None
        return True  # keep the write side open for the answers

    def _feed(self, data: bytes) -> None:
        """Parse client bytes; after a pipelined request, hold the rest unparsed.

        A client that pipelines requests and never reads the answers costs one read's bytes,
        not one parsed exchange per request.
        """
        if self.held:
            self.held += data  # (not normally reached: reading is paused while bytes are held)
            return
        if len(data) <= FEED_STEP:
            self._parse(data)
            return
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self.closed or self.deferred is not None:
                return
            if self.pending:
                self.held = bytes(view[i:]) + self.held
                return
            if self.upgrading:
                self.early.append(bytes(view[i:]))
                return
            step = BODY_STEP if self.current_parse is not None else FEED_STEP
            piece = view[i : i + step]
            i += len(piece)
            self._parse(piece)

    def _parse(self, data: bytes | memoryview) -> None:
        if self.closed or self.deferred is not None or self.upgrading:
            if self.upgrading:
                self.early.append(bytes(data))
            return
        if SCAN_HEADS and not self.reading and self.current_parse is None and type(data) is bytes:
            # A plain head whole in this read: Baton's scanner (``headscan.py``) takes it,
            # with no httptools callback per field; anything else is httptools' to parse.
            while True:
                head = scan_head(data, self.max_header_size, self.max_headers)
                if head is None:
                    break
                if not self._scanned(head) or head.end == len(data):
                    return
                data = data[head.end :]
                if self.closed or self.deferred is not None or self.upgrading:
                    return
        self.feed_len = len(data)
        self.piece_body = 0
        self.began = False
        self.line_piece = (
            data
            if not self.reading and self.current_parse is None and isinstance(data, bytes)
            else None
        )
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrading = True
            rest = data[exc.args[0] :]
            if rest:
                self.early.append(bytes(rest))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self._reject_after_answers(cause.status, cause.message)
                return
            raise
        except httptools.HttpParserError as exc:
            self._reject_after_answers(400, _parser_message(exc))
            return
        limit = self.max_header_size
        if self.reading:
            # Only the bytes from where this head began count (not a body before it).
            self.head_size += len(data) - self.begin_offset if self.began else len(data)
            if self.head_size > limit:
                self._reject_after_answers(431, "request header block too large")
            return
        ex = self.current_parse
        if ex is not None and ex.info.chunked:
            # Chunk framing and trailers without a body byte between them are bounded like
            # a header block.
            if self.piece_body:
                self.trailer_size = 0
            else:
                self.trailer_size += len(data)
                if self.trailer_size > limit:
                    self._reject(431, "chunked framing or trailer section too large")

    def _scanned(self, head: ScannedHead) -> bool:
        """A whole head the scanner took: what the httptools callbacks would do with it
        (``on_message_begin``, ``on_headers_complete``, ``on_message_complete``, for a
        request without a body). False when it was rejected."""
        try:
            info = scan_request(head.headers, True)
        except RequestRejected as exc:
            self._reject_after_answers(exc.status, exc.message)
            return False
        now = time.monotonic()  # the exchange's one clock read until its answer comes
        ex = Exchange(head.method, head.url, info, True, True, now)
        ex.complete = True  # no body
        if self.active is None or self.deadline_kind == HEADER_DEADLINE:
            self.deadline_kind = NO_DEADLINE
        self.current_parse = ex
        if self.active is None:
            self.start(ex, now)
        else:
            self.pending.append(ex)
            self._pause(PAUSE_PIPELINE)
        self.current_parse = None
        return True

    def _reject_after_answers(self, status: int, message: str) -> None:
        """Reject what the client sent, but first answer the requests it sent before it whole."""
        if self.current_parse is None and (self.active is not None or self.pending):
            self.deferred = (status, message)
            self.reading = False
            self.held = b""
            self._pause(PAUSE_DEFERRED)
            return
        self._reject(status, message)

    def _reject(self, status: int, message: str) -> None:
        """Answer a request Baton refuses (or cannot parse) and close the connection."""
        if self.closed:
            return
        ex = self.active
        if ex is not None and ex.status:
            self.close()  # a response is already on the wire: nothing sane to add
            return
        if ex is not None:
            self.active = None
            self._abandon(ex)
        self.write(local_response(status, message, close=True))
        self.close()

    # -- httptools callbacks (request) -------------------------------------------------

    def on_message_begin(self) -> None:
        self.reading = True
        self.head_size = 0
        self.began = True
        self.begin_offset = self.piece_body
        self.url = b""
        self.headers = []
        self.current_parse = None
        self.trailer_size = 0
        self.trailer_count = 0
        self.line_at = self.line_piece
        self.line_piece = None  # (a second head in the same piece does not start it)
        now = self.head_started = self.proxy.loop.time()
        if self.active is None:
            # A new head must arrive within the header time-out (while an answer is still
            # owed, the answer's deadline runs; this one starts when it is done).
            self.deadline_kind = HEADER_DEADLINE
            self.deadline = now + self.proxy.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.current_parse is not None:
            max_headers = self.proxy.settings.max_headers
            # A trailer field: not forwarded, so not kept; only counted.
            self.trailer_count += 1
            if self.trailer_count > max_headers:
                raise RequestRejected(431, "too many trailer fields")
            return
        headers = self.headers
        if len(headers) >= self.max_headers:
            raise RequestRejected(431, f"more than {self.max_headers} header fields")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        limit = self.max_header_size
        # Bytes seen for this head so far bound its size; count exactly only when they might
        # exceed the limit (a whole head arriving in one large read).
        if self.head_size + self.feed_len > limit:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limit:
                raise RequestRejected(431, "request header block too large")
        parser = self.parser
        method = parser.get_method()
        http11 = self._version(method)
        if method == b"CONNECT":
            raise RequestRejected(405, "CONNECT is not supported")
        info = scan_request(self.headers, http11)
        url = absolute_form(self.url, info)
        now = time.monotonic()  # the exchange's one clock read until its answer comes
        ex = Exchange(method, url, info, http11, parser.should_keep_alive(), now)
        self.reading = False
        if self.deadline_kind == HEADER_DEADLINE:
            self.deadline_kind = NO_DEADLINE
        self.current_parse = ex
        if info.content_length is None and not info.chunked:
            ex.complete = True  # no body; llhttp still calls on_message_complete
        if self.active is None:
            self.start(ex, now)
        else:
            self.pending.append(ex)
            self._pause(PAUSE_PIPELINE)

    def _version(self, method: bytes) -> bool:
        """Whether the request is HTTP/1.1 (else 1.0; any other version is rejected).

        When this head began at the first byte of a piece that starts with exactly
        ``METHOD SP target SP HTTP/1.1 CRLF``, that is the request line httptools parsed:
        no need to ask it (its answer is a formatted string, costly on every request).
        """
        line = self.line_at
        self.line_at = None
        if line is not None and line.startswith(method + b" " + self.url + b" HTTP/1.1\r\n"):
            return True
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise RequestRejected(400, f"unsupported HTTP version {version!r}")
        return version == "1.1"

    def on_body(self, body: bytes) -> None:
        self.piece_body += len(body)
        ex = self.current_parse
        if ex is None:
            return
        self.send_body(ex, chunk(body) if ex.info.chunked else body)

    def on_message_complete(self) -> None:
        ex = self.current_parse
        if ex is None:
            return
        self.current_parse = None
        if ex.info.chunked:
            self.send_body(ex, LAST_CHUNK)
        if ex.complete:
            return  # no body: sent whole with its head (``_send`` took the time)
        ex.complete = True
        if ex is self.active and ex.status == 0 and ex.upstream is not None:
            ex.t_sent = time.monotonic()

    # -- forwarding --------------------------------------------------------------------

    def send_body(self, ex: Exchange, data: bytes) -> None:
        body = ex.body
        if body is not None:
            ex.body_size += len(data)
            if ex.body_size > REPLAY_LIMIT:
                ex.body = None
            else:
                body.append(data)
        up = ex.upstream
        if up is not None and up.transport is not None and ex is self.active:
            ex.written = True
            up.transport.write(data)
        else:
            if ex.unsent is NO_BODY:
                ex.unsent = []
            ex.unsent.append(data)
            ex.unsent_size += len(data)
            if ex.unsent_size > REPLAY_LIMIT:
                self._pause(PAUSE_BUFFER)

    def start(self, ex: Exchange, now: float = 0.0) -> None:
        """Route a request whose headers are complete and send it on its way.

        ``now``: the ``time.monotonic()`` the exchange was made at, when it starts at once
        (its response deadline and its send time are taken from it: no second clock read).
        """
        self.active = ex
        proxy = self.proxy
        info = ex.info
        ex.request_id = ex.request_id or info.request_id or proxy.next_request_id()
        if not self.tls and ex.url.startswith(ACME_CHALLENGE_PREFIX) and self._acme_answer(ex):
            return
        app = proxy.table.match_raw(self.listen, info.host, ex.url)
        if app is None:
            self._local(ex, 404, f"no route for host {normalise_host(info.host) or '-'!r}")
            return
        tls = app.spec.tls
        if tls is not None:
            if self.tls:
                ex.extra_head = hsts_header(tls)
            elif tls.redirect:
                self._redirect(ex, https_location(app.spec.listen, info.host, ex.url))
                return
        release, target, cookie = proxy.chooser.choose(app, info, self.client_ip)
        if cookie is not None:
            ex.set_cookie = cookie
        if release is None or target is None:
            if ex.info.pin is not None and proxy.may_pin(app, ex, self):
                pin = ex.info.pin.decode("latin-1")
                why = f"release {pin!r} of app {app.name!r} is unknown or has no healthy target"
            elif self.wait_for_target(ex, app):
                return
            else:
                self._unavailable(ex, app)
                return
            self._local(ex, 503, why)
            return
        m = ex.begin(release)
        if m.fuse is not None and app.spec.retry_on_stable:
            ex.stable_retry = ex.method.decode("latin-1") in app.spec.retry_on_stable
        if info.expect_continue and not ex.complete:
            self.write(CONTINUE_100)
        ex.head = upstream_head(
            ex.method,
            ex.url,
            info,
            client_ip=self.client_ip,
            request_id=ex.request_id,
            target=target.address_bytes,
            trusted=bool(app.spec.trusted_proxies)
            and is_trusted(app.spec.trusted_proxies, self.client_ip),
            proto=b"https" if self.tls else b"http",
        )
        self.deadline_kind = UPSTREAM_DEADLINE
        if not now:
            now = time.monotonic()
        self.deadline = now + app.spec.response_timeout  # (the sweeper's loop.time() clock)
        self.attach(ex, target, app.spec, now)

    def attach(self, ex: Exchange, target: Target, spec: AppSpec, now: float = 0.0) -> None:
        """Send the exchange to ``target`` on an idle pooled connection or a new one."""
        if ex is not self.active or self.closed:
            return
        ex.enter(target)
        up = target.pop_idle()
        if up is None:
            self.proxy.loop.create_task(self._connect(ex, target, spec))
            return
        self._send(ex, up, spec, now)

    async def _connect(self, ex: Exchange, target: Target, spec: AppSpec) -> None:
        loop = self.proxy.loop
        try:
            _, up = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(target), target.host, target.port
                ),
                spec.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            target.connect_failed(self.proxy.settings.eject_after)
            if ex is self.active and not self.closed and ex.target is target:
                why = f"cannot connect to {target.address}: {_why(exc)}"
                self.retry_or_fail(ex, spec, why, sent=False)
            return
        target.connect_succeeded()
        if ex is not self.active or self.closed or ex.target is not target:
            target.put_idle(up, self.proxy.settings.upstream_max_idle)
            return
        self._send(ex, up, spec)

    def _send(self, ex: Exchange, up: UpstreamConnection, spec: AppSpec, now: float = 0.0) -> None:
        if up.closed or up.transport is None or up.transport.is_closing():
            # Accepted, then closed before we wrote a byte (docker-proxy in front of a dying
            # container does this): the request was never sent, so it is safe to retry.
            up.close()
            self.retry_or_fail(ex, spec, "upstream closed the connection at once", sent=False)
            return
        ex.upstream = up
        up.begin(self, ex.method == b"HEAD")
        assert up.transport is not None
        if ex.written:
            data = b"".join([ex.head, *(ex.body or ())])  # replay: the whole held body again
        elif ex.unsent:
            data = b"".join([ex.head, *ex.unsent])
            ex.unsent = NO_BODY
            ex.unsent_size = 0
        else:
            data = ex.head
        ex.written = True
        ex.t_sent = now or time.monotonic()
        up.transport.write(data)
        if self.paused.reasons & PAUSE_BUFFER:
            self._resume(PAUSE_BUFFER)
        if self.write_paused:
            up.transport.pause_reading()

    def retry_or_fail(self, ex: Exchange, spec: AppSpec, why: str, *, sent: bool) -> None:
        """The exchange was never answered: try again where that is safe, else 502.

        ``sent``: the last attempt wrote bytes to its upstream, which may have acted on them.
        """
        ex.upstream = None
        target = ex.leave_target()
        release = ex.release
        safe = replayable(ex.method, sent=sent, body_held=ex.replayable)
        if release is not None and safe and ex.attempts < MAX_ATTEMPTS:
            nxt = self.proxy.pick_target(release, exclude=ex.tried)
            if nxt is not None:
                if ex.metrics is not None:
                    ex.metrics.retries += 1
                self.attach(ex, nxt, spec)
                return
            if not ex.same_retry and target is not None and target.available:
                ex.same_retry = True
                if ex.metrics is not None:
                    ex.metrics.retries += 1
                self.proxy.loop.call_later(SAME_TARGET_BACKOFF, self.attach, ex, target, spec)
                return
        # Wait for a healthy target only when the last upstream provably saw nothing (its
        # instance is gone); an app that read the request and hung up gets a 502. A canary
        # that cannot answer is answered by stable (``_fail``) rather than waited for.
        to_stable = ex.stable_retry and self.may_retry_on_stable(ex)
        if release is not None and safe and not sent and not to_stable and self._requeue(ex):
            return
        self._fail(ex, 502, f"upstream unreachable ({why})")

    def _fail(self, ex: Exchange, status: int, message: str) -> None:
        """Baton answers for a failed upstream (502/504); counted as an upstream error."""
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.close()
        if status == 502 and ex.stable_retry and self.may_retry_on_stable(ex):
            self._to_stable(ex, status)  # a canary that cannot answer: stable does
            return
        if ex.metrics is not None:
            ex.metrics.upstream_errors += 1
            elapsed = time.monotonic() - ex.t0
            ex.metrics.record(status, elapsed, elapsed)
        self.proxy.failures.record(ex, status, message)
        if self.proxy.access_log is not None:
            elapsed = time.monotonic() - ex.t0
            self._log_access(ex, status, elapsed, elapsed)
        ex.end()
        self._local(ex, status, message)

    def _log_access(self, ex: Exchange, status: int, ttfb: float, total: float) -> None:
        release, target = ex.release, ex.target
        assert self.proxy.access_log is not None
        self.proxy.access_log.add(
            self.client_ip,
            ex.method,
            ex.url,
            ex.http11,
            status,
            ex.metrics.app if ex.metrics is not None else "-",
            release.name if release is not None else "-",
            target.address if target is not None else "-",
            ex.request_id,
            ttfb,
            total,
        )

    def _acme_answer(self, ex: Exchange) -> bool:
        """An ACME HTTP-01 challenge this proxy was given: answer its key authorization."""
        token = ex.url[len(ACME_CHALLENGE_PREFIX) :].decode("latin-1")
        answer = self.proxy.acme_challenges.get(token)
        if answer is None:
            return False
        self._answer(ex, 200, answer.encode(), b"")
        return True

    def _redirect(self, ex: Exchange, location: bytes) -> None:
        self._answer(ex, 308, b"", b"Location: " + location + b"\r\n")

    def _answer(self, ex: Exchange, status: int, body: bytes, headers: bytes) -> None:
        """A local answer that is not an error (redirect, ACME challenge)."""
        keep = ex.keep_alive and ex.complete and not ex.upgrade and not self.proxy.stopping
        self.write(
            short_response(status, body, headers=headers, close=not keep, request_id=ex.request_id)
        )
        self._finish(ex, keep)

    def _local(
        self, ex: Exchange, status: int, message: str, retry_after: int | None = None
    ) -> None:
        """Answer with a local response; keep the connection if the request was read whole."""
        keep = ex.keep_alive and ex.complete and not ex.upgrade and not self.proxy.stopping
        self.write(
            local_response(
                status, message, close=not keep, request_id=ex.request_id, retry_after=retry_after
            )
        )
        self._finish(ex, keep)

    def _finish(self, ex: Exchange, keep: bool, now: float = 0.0) -> None:
        """The one way an exchange ends: its counts end, and the connection goes on to the
        next request (``keep``) or closes. ``now``: a ``time.monotonic()`` just read, if any."""
        ex.end()
        self.active = None
        if keep:
            self._next(now)
        else:
            self.close()

    # -- retry on stable: a canary's 5xx never reaches the client --------------------------

    def may_retry_on_stable(self, ex: Exchange) -> bool:
        """Whether the canary's 5xx for ``ex`` (status line just read) will be retried on the
        stable release: a whole, replayable request of a retried method, a stable target."""
        if not ex.stable_retry or ex is not self.active or not ex.complete or not ex.replayable:
            return False
        release = ex.release
        app = self.proxy.table.apps.get(ex.metrics.app) if ex.metrics is not None else None
        if release is None or app is None:
            return False
        return self.proxy.stable_choice(app, release.name) is not None

    def retry_on_stable(self, up: UpstreamConnection, status: int) -> None:
        """Drop the canary's bad answer (none of it was written), count it as the canary's
        failure (the judge and the fuse see it), and send the request to the stable release.
        """
        ex = self.active
        if ex is None or ex.upstream is not up:
            up.close()
            return
        ex.upstream = None
        up.close()  # the rest of the bad answer is never read: the connection is not reused
        self._to_stable(ex, status)

    def _to_stable(self, ex: Exchange, status: int) -> None:
        ex.stable_retry = False
        m = ex.metrics
        if m is not None:
            now = time.monotonic()
            m.stable_retries += 1
            if status == 502:
                m.upstream_errors += 1
            m.record(status, now - ex.t_sent, now - ex.t0)  # may trip the fuse, this turn
        ex.end()
        app = self.proxy.table.apps.get(m.app) if m is not None else None
        canary = ex.release
        choice = self.proxy.stable_choice(app, canary.name) if app and canary else None
        if app is None or choice is None:
            self._local(ex, 502, "the canary failed and no stable target is left")
            return
        release, target = choice
        ex.begin(release)
        self.attach(ex, target, app.spec)

    # -- waiting for a healthy target (``queue.py``) --------------------------------------

    def wait_for_target(self, ex: Exchange, app: LiveApp) -> bool:
        """Park ``ex`` until ``app`` has a healthy target; False when it may not wait."""
        spec = app.spec
        proxy = self.proxy
        if ex.queued_until:  # woken, still nothing: back in line, same place and deadline
            proxy.queues.put_back(Waiting(app.name, ex.queued_until, (self, ex)))
            return True
        if spec.queue_timeout <= 0 or proxy.stopping:
            return False
        deadline = proxy.loop.time() + spec.queue_timeout
        if not proxy.queues.push(app.name, (self, ex), deadline, spec.queue_limit):
            return False
        ex.queued_until = deadline
        self.deadline_kind = NO_DEADLINE  # the queue's deadline bounds the wait
        return True

    def _requeue(self, ex: Exchange) -> bool:
        """A request no target could take (the app's only instance died): wait instead."""
        m = ex.metrics
        app = self.proxy.table.apps.get(m.app) if m is not None else None
        if app is None or ex.status:
            return False
        spec = app.spec
        if not ex.queued_until and (
            spec.queue_timeout <= 0 or self.proxy.queues.waiting(app.name) >= spec.queue_limit
        ):
            return False
        ex.start_over()
        return self.wait_for_target(ex, app)

    def dispatch_queued(self, ex: Exchange) -> None:
        """A table swap or a healthy target: route the waiting request again."""
        if ex is self.active and not self.closed:
            self.start(ex)

    def queue_timed_out(self, ex: Exchange, app: str, waited: float) -> None:
        if ex is not self.active or self.closed:
            return
        live = self.proxy.table.apps.get(app)
        timeout = live.spec.queue_timeout if live is not None else waited
        self._local(
            ex,
            503,
            f"no healthy target for app {app!r} within {waited:g}s",
            retry_after(timeout),
        )

    def _unavailable(self, ex: Exchange, app: LiveApp) -> None:
        spec = app.spec
        if spec.queue_timeout > 0 and not self.proxy.stopping:
            why = f"no healthy target for app {app.name!r} and {spec.queue_limit} requests waiting"
        else:
            why = f"no healthy target for app {app.name!r}"
        self._local(ex, 503, why, retry_after(spec.queue_timeout))

    # -- upstream events (``upstream.UpstreamEvents``) -------------------------------------

    def response_head(
        self, up: UpstreamConnection, status: int, head: bytes
    ) -> ResponseInfo | None:
        """The head to forward for the upstream's answer to the active exchange (None: the
        canary's 5xx is retried on stable, so none of it is forwarded)."""
        ex = self.active
        if ex is None or ex.upstream is not up:
            raise BadResponse("an answer for an exchange that is over")
        if status >= 500 and ex.stable_retry and self.may_retry_on_stable(ex):
            return None
        if status == 101:
            why = upgrade_refused(ex.info.upgrade if ex.upgrade else None, head)
            if why is not None:
                raise BadResponse(why)
        info = client_head(
            status,
            head,
            head_request=ex.method == b"HEAD",
            client_http11=ex.http11,
            client_keep_alive=ex.keep_alive and not ex.upgrade and not self.proxy.stopping,
            upgrade=ex.upgrade,
            set_cookie=ex.set_cookie,
            extra=ex.extra_head,
        )
        ex.keep_alive = info.keep_alive
        if info.flags is not None and ex.metrics is not None:
            ex.cohorts = self.proxy.flag_cohort_metrics(ex.metrics.app, info.flags)
        ex.response_started(status)
        return info

    def response_done(self, up: UpstreamConnection, reusable: bool, head_now: bool = False) -> None:
        ex = self.active
        if ex is None or ex.upstream is not up:
            up.close()
            return
        # The whole answer in one read: the clock read of its head is its end too.
        now = ex.t_head if head_now and ex.t_head else time.monotonic()
        ex.upstream = None
        m = ex.metrics
        if m is not None:
            m.record(ex.status, ex.ttfb, now - ex.t0)
        for cohort in ex.cohorts:
            cohort.record(ex.status, ex.ttfb, now - ex.t0)
        if self.proxy.access_log is not None:
            self._log_access(ex, ex.status, ex.ttfb, now - ex.t0)
        target = ex.target
        up.detach()
        if self.write_paused and up.transport is not None:
            up.transport.resume_reading()  # paused for this client; not for the next one
        if reusable and ex.complete and not up.until_close and target is not None:
            target.put_idle(up, self.proxy.settings.upstream_max_idle, now)
        else:
            up.close()
        self._finish(ex, ex.keep_alive and ex.complete, now)

    def _next(self, now: float = 0.0) -> None:
        """The active exchange is done: start the next request, or wait for one.

        ``now``: a ``time.monotonic()`` the caller just read (the answer's end), if it has one.
        """
        if self.pending:
            self.start(self.pending.popleft(), now)  # (may answer at once and come back here)
            self._release_held()
            return
        if self.held or self.paused.reasons & PAUSE_PIPELINE:
            self._release_held()
        if self.active is not None or self.pending or self.closed:
            return
        if self.deferred is not None:
            self._reject(*self.deferred)  # everything before the bad bytes is answered
        elif self.eof:
            self.close()
        elif self.reading:
            # A next head began while the answer was owed: its time-out runs from then.
            self.deadline_kind = HEADER_DEADLINE
            self.deadline = self.head_started + self.proxy.settings.header_timeout
        elif self.proxy.stopping:
            # Retiring: the client may be sending its next request right now; closing
            # would lose it. Give it a moment (its next response says Connection: close).
            self._set_deadline(IDLE_DEADLINE, STOPPING_IDLE_GRACE)
        else:
            self._set_deadline(IDLE_DEADLINE, self.proxy.settings.keepalive_timeout, now)

    def _release_held(self) -> None:
        """Parse held bytes once no request is waiting; read the socket again after them."""
        if self.pending or self.closed:
            return
        if self.held:
            held, self.held = self.held, b""
            self._feed(held)
        if not self.pending and not self.held:
            self._resume(PAUSE_PIPELINE)

    def upstream_lost(self, up: UpstreamConnection) -> None:
        """The upstream connection closed while carrying our exchange."""
        ex = self.active
        if ex is None or ex.upstream is not up:
            return
        spec = self.proxy.table.apps.get(ex.metrics.app) if ex.metrics else None
        if up.got_bytes and ex.status:
            if up.until_close:
                # The body ended with the connection: that is a complete response.
                if up.framing == FRAME_CHUNKED:
                    self.write(LAST_CHUNK)
                self.response_done(up, reusable=False)
                return
            if up.head_unsent and spec is not None:
                # The instance died between its head and its body; the head was held
                # back, so the client has nothing yet: as if it had never answered.
                up.head_unsent = False
                ex.status = 0
                ex.cohorts = ()
                self.retry_or_fail(
                    ex, spec.spec, "upstream closed the connection after its head", sent=True
                )
                return
            # Truncated response: the client cannot be told anything sane; close it.
            self.proxy.failures.record(ex, ex.status, "upstream closed mid-response")
            if ex.metrics is not None:
                ex.metrics.upstream_errors += 1
            ex.upstream = None
            self._finish(ex, False)
            return
        if spec is None or up.got_bytes:
            self._fail(ex, 502, "upstream closed the connection before answering")
            return
        self.retry_or_fail(
            ex, spec.spec, "upstream closed the connection before answering", sent=True
        )

    def upstream_broken(self, up: UpstreamConnection, why: str) -> None:
        ex = self.active
        if ex is None or ex.upstream is not up:
            up.close()
            return
        if ex.status and not up.head_unsent:
            self.proxy.failures.record(ex, ex.status, why)
            self._abandon(ex)
            self._finish(ex, False)
            return
        self._fail(ex, 502, why)

    def start_tunnel(self, up: UpstreamConnection, rest: bytes) -> None:
        """The upstream switched protocols: from now on both sides are a byte pipe."""
        ex = self.active
        if ex is None or ex.upstream is not up or ex.status != 101:
            up.close()
            self.close()
            return
        m = ex.metrics
        if m is not None:
            m.record(101, ex.ttfb, time.monotonic() - ex.t0)
        target = ex.target
        ex.end()
        ex.upstream = None
        self.active = None
        self.tunnel = up
        up.upgraded = True
        self.deadline_kind = NO_DEADLINE
        self.last_io = self.proxy.loop.time()
        upgrade = ex.info.upgrade
        if upgrade is not None and upgrade.strip().lower() == b"websocket":
            self.ws = _WebSocketTunnel()
        self.proxy.begin_tunnel(up, target, m, self)
        if rest:
            self.tunnel_data_from_app(rest)
        if self.early:
            assert up.transport is not None
            up.transport.write(b"".join(self.early))
            self.early = []
        self.upgrading = False
        self._resume(PAUSE_BUFFER)

    def tunnel_data_from_app(self, data: bytes) -> None:
        self.last_io = self.proxy.loop.time()
        ws = self.ws
        if ws is None:
            self.write(data)
            return
        if ws.client_closed:
            return  # Baton already said goodbye to the client for this app
        ws.to_client.feed(data)
        self.write(data)
        if ws.ending:
            self._send_close_frames()

    def end_tunnel(self) -> None:
        """End the tunnel politely: a WebSocket gets close frames (1001) both ways first."""
        if self.tunnel is None:
            return
        ws = self.ws
        if ws is None:
            self.close()
            return
        if ws.ending:
            return
        ws.ending = True
        self._send_close_frames()
        # A peer in the middle of a long frame, or one that never answers: close anyway.
        self.proxy.loop.call_later(TUNNEL_CLOSE_GRACE, self._close_tunnel_now)

    def _send_close_frames(self) -> None:
        ws = self.ws
        up = self.tunnel
        if ws is None or up is None:
            return
        if not ws.client_closed and ws.to_client.at_boundary:
            ws.client_closed = True
            self.write(close_frame(masked=False))
        if not ws.app_closed and ws.to_app.at_boundary and up.transport is not None:
            ws.app_closed = True
            up.transport.write(close_frame(masked=True))
        if ws.client_closed and ws.app_closed:
            # Give both peers a moment to read the frame (and answer it), then close TCP.
            self.proxy.loop.call_later(0.25, self._close_tunnel_now)

    def _drop_tunnel(self, *, close_upstream: bool) -> None:
        """Forget the tunnel (its counts end here); close its upstream side if asked."""
        up = self.tunnel
        if up is not None:
            self.tunnel = None
            self.proxy.end_tunnel(up)
            if close_upstream:
                up.close()

    def _close_tunnel_now(self) -> None:
        self._drop_tunnel(close_upstream=True)
        self.close()

    def tunnel_closed(self, up: UpstreamConnection) -> None:
        """The upstream end of our tunnel closed: close ours (pending bytes still flush)."""
        if self.tunnel is up:
            self._drop_tunnel(close_upstream=False)
        self.close()


def _parser_message(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"malformed request ({text})"


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "connect timed out"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)


# Below ClientConnection: mypyc resolves a NamedTuple's field types when the class is
# created, so a name used before its definition fails at import in the compiled build.
class _TunnelEnds(NamedTuple):
    target: Target | None
    metrics: ReleaseMetrics | None
    client: ClientConnection
    started: float
    max_age: float | None


class Proxy:
    """Owns the route table, targets, metrics, listeners and client connections."""

    def __init__(self, settings: ProxySettings | None = None) -> None:
        self.settings = settings or ProxySettings()
        self.loop = asyncio.get_running_loop()
        self.targets: dict[str, Target] = {}
        self.metrics = MetricsRegistry()
        self.table: LiveTable = RouteTable.build({}, self._target, self.metrics.get, 0)
        self.connections: set[ClientConnection] = set()
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self.tls = TlsManager()
        self.tls_servers: set[str] = set()  # listen addresses that speak TLS
        self.acme_challenges: dict[str, str] = {}  # HTTP-01 token -> key authorization
        self._cert_watch: asyncio.Task[None] | None = None
        self.tunnel_ends: dict[UpstreamConnection, _TunnelEnds] = {}
        self.fuses = Fuses()
        self.stopping = False
        self.chooser = Chooser()
        # Request ids: this proxy's random prefix (unique across workers and restarts), then
        # a counter (decimal: cheaper to make than ``%x`` formatting).
        self._request_prefix = os.urandom(4).hex().encode() + b"-"
        self._request_seq = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.on_table_change: list[Callable[[], None]] = []
        # Requests waiting for a healthy target, per app (``queue.py``).
        self.queues: WaitQueues[tuple[ClientConnection, Exchange]] = WaitQueues()
        self.metrics.queue_figures = self.queue_figures
        self.proxy_protocol: frozenset[str] = frozenset()  # listeners requiring the header
        self.open_per_listener: dict[str, int] = {}
        self.failures = FailureLog(log)
        self.access_log = AccessLog(self.settings.access_log) if self.settings.access_log else None
        # Called once when the proxy starts to stop (HTTP/2 sessions send GOAWAY).
        self.on_stop: set[Callable[[], None]] = set()
        self.handshaking: dict[ClientConnection, float] = {}  # accepted, TLS not done yet
        # Listening sockets a supervisor gave this worker for the next table (supervisor.py).
        self.adopted: dict[str, socket.socket] = {}
        # More sockets of a listener's SO_REUSEPORT group, served too (``listen_also``).
        self.also: list[tuple[str, asyncio.base_events.Server]] = []

    def flag_cohort_metrics(self, app: str, value: bytes) -> list[ReleaseMetrics]:
        """The counters of the flag cohorts a ``Baton-Flags`` answer names: each
        (flag, variant) is counted like a release named ``flag:FLAG=VARIANT`` of the app, so
        the control plane judges a flag's cohorts with the canary judge."""
        return [self.metrics.get(app, f"flag:{k}={v}") for k, v in flag_cohorts(value)]

    def admit(self, listen: str) -> bool:
        """Count a new client connection on ``listen``; False when the listener is full."""
        n = self.open_per_listener.get(listen, 0)
        if n >= self.settings.max_connections:
            return False
        self.open_per_listener[listen] = n + 1
        return True

    def release(self, listen: str) -> None:
        self.open_per_listener[listen] -= 1

    # -- routing -----------------------------------------------------------------------

    def _target(self, address: str, spec: AppSpec) -> Target:
        target = self.targets.get(address)
        if target is None:
            target = self.targets[address] = Target(address)
        return target

    def next_request_id(self) -> bytes:
        self._request_seq += 1
        return self._request_prefix + str(self._request_seq).encode()

    def may_pin(self, app: LiveApp, ex: Exchange, client: ClientConnection) -> bool:
        return may_pin(app, ex.info, client.client_ip)

    def choose(
        self, app: LiveApp, ex: Exchange, client: ClientConnection
    ) -> tuple[LiveRelease | None, Target | None]:
        """The release and target for one request (``choice.py``)."""
        release, target, cookie = self.chooser.choose(app, ex.info, client.client_ip)
        if cookie is not None:
            ex.set_cookie = cookie
        return release, target

    def pick_target(
        self, release: LiveRelease, exclude: list[Target] | None = None
    ) -> Target | None:
        return self.chooser.pick_target(release, exclude)

    # -- table changes -----------------------------------------------------------------

    async def apply(self, specs: dict[str, AppSpec], generation: int | None = None) -> int:
        """Swap in a new table built from ``specs``; bind new listen addresses first."""
        self.proxy_protocol = frozenset(s.listen for s in specs.values() if s.proxy_protocol)
        self.tls.update(specs, set(self.servers) - self.tls_servers, self.tls_servers)
        for spec in specs.values():
            if spec.listen not in self.servers:
                await self.listen(spec.listen)
            if spec.http_listen is not None and spec.http_listen not in self.servers:
                await self.listen(spec.http_listen)
        if generation is None:
            generation = self.table.generation + 1
        self.fuses.arm(specs)
        specs = self.fuses.enforce(specs)  # a tripped canary stays at weight 0
        table = RouteTable.build(specs, self._target, self.metrics.get, generation)
        self.table = table  # the cutover
        self._arm_fuses(table)
        routed: set[str] = set()
        keep: set[tuple[str, str]] = set()
        for app in table.apps.values():
            for rel in app.releases:
                keep.add((app.name, rel.name))
                for t in rel.targets:
                    routed.add(t.address)
        for address, target in list(self.targets.items()):
            if address in routed:
                target.routed = True
                target.draining = False
            else:
                target.routed = False
                target.close_idle()
                if target.busy == 0:
                    del self.targets[address]
        self.metrics.forget(keep)
        for callback in self.on_table_change:
            callback()
        self.wake_queued()
        return table.generation

    def _arm_fuses(self, table: LiveTable) -> None:
        for app in table.apps.values():
            for rel in app.releases:
                m = rel.metrics
                m.fuse = self.fuses.get(app.name, rel.name)
                m.on_trip = self._fuse_tripped if m.fuse is not None else None

    def _fuse_tripped(self, m: ReleaseMetrics) -> None:
        """A canary's fuse tripped: a new table, in this very turn, with its weight at 0."""
        m.on_trip = None
        event = self.fuses.record_trip(m.app, m.release, time.time())
        specs = self.fuses.enforce(self.table.specs)
        table = RouteTable.build(specs, self._target, self.metrics.get, self.table.generation + 1)
        self.table = table  # the cutover away from the canary
        self._arm_fuses(table)
        for callback in self.on_table_change:
            callback()
        log.warning(
            "canary fuse tripped: app %s release %s failed %d of its last %d requests"
            " (ceiling %.2f%%, minimum %d); its weight is now 0",
            m.app,
            m.release,
            event.get("errors", 0),
            event.get("requests", 0),
            100 * float(event.get("max_error_rate", 0.0)),
            int(event.get("min_requests", 0)),
        )

    def stable_choice(self, app: LiveApp, canary: str) -> tuple[LiveRelease, Target] | None:
        return self.chooser.stable_choice(app, canary)

    async def listen(
        self, address: str, sock: socket.socket | None = None, *, serve: bool = True
    ) -> None:
        """Accept clients on ``address`` (or on an inherited ``sock``).

        With ``serve=False`` the listener exists but accepts nothing until
        ``start_serving``: a successor must not answer before it has the route table.
        """
        if address in self.servers:
            return
        if sock is None:
            sock = self.adopted.pop(address, None)
        if sock is None:
            host, port = parse_address(address, "listen")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # A successor with several workers adds its own sockets to this port (supervisor.py).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            sock.listen(4096)
        tls = self.tls.server_context(address) if self.tls.is_tls(address) else None
        self.servers[address] = await self._serve_on(address, sock, tls, serve)
        if tls is not None:
            self.tls_servers.add(address)

    async def _serve_on(
        self, address: str, sock: socket.socket, tls: ssl.SSLContext | None, serve: bool
    ) -> asyncio.base_events.Server:
        """An asyncio server of ``address``'s clients on the listening ``sock``."""
        return await self.loop.create_server(
            lambda: self._client(address),
            sock=sock,
            backlog=4096,
            start_serving=serve,
            ssl=tls,
            ssl_handshake_timeout=self.settings.header_timeout if tls is not None else None,
        )

    def _client(self, address: str) -> ClientConnection:
        conn = (
            ProxiedConnection(self, address)
            if address in self.proxy_protocol
            else ClientConnection(self, address)
        )
        if address in self.tls_servers:
            # Accepted, still in its TLS handshake: not yet in ``connections``, but a
            # retiring proxy must not exit under it (the client would see a reset).
            now = self.loop.time()
            if len(self.handshaking) > HANDSHAKES_TRACKED:
                self._forget_handshakes(now)
            self.handshaking[conn] = now
        return conn

    def _forget_handshakes(self, now: float) -> None:
        """Drop handshakes older than the handshake time-out (failed ones never report)."""
        oldest = now - self.settings.header_timeout
        for conn, since in list(self.handshaking.items()):
            if since < oldest:
                del self.handshaking[conn]

    async def listen_also(self, address: str, sock: socket.socket, *, serve: bool = True) -> None:
        """Accept clients of ``address`` on one more socket of its ``SO_REUSEPORT`` group
        (handed over by a proxy with more workers). It is served until this proxy stops:
        closing it would reset the connections the kernel queued on it."""
        if address not in self.servers:
            await self.listen(address, sock, serve=serve)
            return
        tls = self.tls.server_context(address) if address in self.tls_servers else None
        self.also.append((address, await self._serve_on(address, sock, tls, serve)))

    def all_listening_fds(self) -> list[tuple[str, int]]:
        """``listening_fds`` and those of every ``listen_also`` socket, as (address, fd)
        pairs: a successor must get them all."""
        first = list(self.listening_fds().items())
        more = [(a, os.dup(cast(Any, s).sockets[0].fileno())) for a, s in self.also]
        return first + more

    async def start_serving(self) -> None:
        for server in [*self.servers.values(), *(s for _, s in self.also)]:
            if not server.is_serving():
                await server.start_serving()

    def drain(self, addresses: list[str], draining: bool = True) -> None:
        for address in addresses:
            target = self.targets.get(address)
            if target is not None:
                target.draining = draining
                if draining:
                    target.close_idle()
        if not draining:
            self.wake_queued()

    def busy(self, addresses: list[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for address in addresses:
            t = self.targets.get(address)
            out[address] = {"in_flight": t.in_flight if t else 0, "tunnels": t.tunnels if t else 0}
        return out

    # -- waiting requests --------------------------------------------------------------

    def wake_queued(self) -> None:
        """Route every waiting request again, oldest first (called on the events that can
        give an app a target: a table swap, a target turning healthy or undrained)."""
        if not self.queues:
            return
        for waiting in self.queues.take():
            client, ex = waiting.waiter
            client.dispatch_queued(ex)

    def _expire_queued(self, now: float) -> None:
        self.queues.prune(lambda w: w[0].closed or w[0].active is not w[1])
        for waiting in self.queues.expired(now):
            client, ex = waiting.waiter
            client.queue_timed_out(ex, waiting.app, round(now - ex.t0, 1))

    def queue_figures(self) -> dict[str, dict[str, int]]:
        q = self.queues
        apps = set(q.apps()) | set(q.timeouts) | set(q.overflows) | set(self.table.apps)
        return {
            app: {
                "queued": q.waiting(app),
                "queue_timeouts": q.timeouts.get(app, 0),
                "queue_rejected": q.overflows.get(app, 0),
            }
            for app in sorted(apps)
        }

    # -- tunnels -----------------------------------------------------------------------

    def begin_tunnel(
        self,
        up: UpstreamConnection,
        target: Target | None,
        m: ReleaseMetrics | None,
        client: ClientConnection,
    ) -> None:
        if target is not None:
            target.tunnels += 1
        max_age = None
        if m is not None:
            m.tunnels += 1
            app = self.table.apps.get(m.app)
            max_age = app.spec.max_connection_age if app is not None else None
        self.tunnel_ends[up] = _TunnelEnds(target, m, client, self.loop.time(), max_age)

    def close_tunnels(self, addresses: set[str]) -> int:
        """End (politely) every tunnel to one of ``addresses``; returns how many."""
        ending = [
            t.client
            for t in self.tunnel_ends.values()
            if t.target is not None and t.target.address in addresses
        ]
        for client in ending:
            client.end_tunnel()
        return len(ending)

    def end_tunnel(self, up: UpstreamConnection) -> None:
        ends = self.tunnel_ends.pop(up, None)
        if ends is None:
            return
        target, m = ends.target, ends.metrics
        if target is not None:
            target.tunnels -= 1
            if not target.routed and target.busy == 0:
                self.targets.pop(target.address, None)
        if m is not None:
            m.tunnels -= 1

    # -- housekeeping ------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep())
        self._cert_watch = self.loop.create_task(self._watch_certificates())

    async def _watch_certificates(self) -> None:
        """Pick up certificate files replaced on disk (see ``tls.py``)."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self.reload_certificates()

    def reload_certificates(self) -> bool:
        return self.tls.poll(self.table.specs)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.deadline_kind and now >= conn.deadline:
                    conn.on_deadline()
            if self.queues:
                self._expire_queued(now)
                self.wake_queued()  # a fallback: the events above normally do this
            idle_limit = self.settings.tunnel_idle_timeout
            for t in list(self.tunnel_ends.values()):
                too_old = t.max_age is not None and now - t.started >= t.max_age
                if too_old or now - t.client.last_io >= idle_limit:
                    t.client.end_tunnel()
            idle_before = time.monotonic() - self.settings.upstream_idle_timeout
            for address, target in list(self.targets.items()):
                if target.idle:
                    target.close_idle(older_than=idle_before)
                if not target.routed and target.busy == 0:
                    del self.targets[address]

    def listening_fds(self) -> dict[str, int]:
        """Duplicates of every listening socket's fd, by listen address (for a hand-off).

        The caller closes them; the listening sockets themselves stay open here.
        """
        # uvloop's Server.sockets is a list, not the stubs' tuple, and compiled code checks
        # the declared type of what it reads: read it untyped.
        return {
            address: os.dup(cast(Any, server).sockets[0].fileno())
            for address, server in self.servers.items()
        }

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, let in-flight work and open connections finish, then close.

        Keep-alive clients are not cut: a connection busy with a request gets
        ``Connection: close`` on its response; an idle one is closed after a short grace
        (it may be sending a request right now). Tunnels last until they end or until
        ``deadline`` seconds have passed, when everything left is closed.
        """
        self.stopping = True
        for server in [*self.servers.values(), *(s for _, s in self.also)]:
            server.close()
        for on_stop in list(self.on_stop):
            on_stop()
        for conn in list(self.connections):
            if conn.active is None and conn.tunnel is None and not conn.reading:
                conn._set_deadline(IDLE_DEADLINE, STOPPING_IDLE_GRACE)
        end = self.loop.time() + deadline
        # HTTP/2 sessions (registered in ``on_stop`` until they close) finish their streams
        # and close themselves after their final GOAWAY: wait for them as for connections.
        while self.loop.time() < end and (self.connections or self.on_stop or self.handshaking):
            self._forget_handshakes(self.loop.time())
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.tunnel is not None:
                conn.end_tunnel()
        end = self.loop.time() + TUNNEL_CLOSE_GRACE
        while self.loop.time() < end and any(c.tunnel for c in self.connections):
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        for target in self.targets.values():
            target.close_idle()
        if self._cert_watch is not None:
            self._cert_watch.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


class ProxiedConnection(ClientConnection):
    """A client on a ``proxy_protocol`` listener: a PROXY header must come first.

    Until the header is complete its bytes are held; a missing or malformed one gets 400
    and the connection is closed, before any byte is read as HTTP. The header's source
    address becomes the client's (X-Forwarded-For, client-ip stickiness, loopback trust).
    """

    __slots__ = ("preamble",)

    def __init__(self, proxy: Proxy, listen: str) -> None:
        super().__init__(proxy, listen)
        self.preamble: bytes | None = b""

    def data_received(self, data: bytes) -> None:
        held = self.preamble
        if held is None:
            super().data_received(data)
            return
        data = held + data if held else data
        try:
            header = parse_header(data)
        except ProxyProtocolError as exc:
            log.info("refused a connection on %s: %s", self.listen, exc)
            self._reject(400, str(exc))
            return
        if header is None:
            self.preamble = data
            return
        self.preamble = None
        ip = header.client_ip
        if ip is not None:
            self.client_ip = ip.encode()
            self.loopback = ip.startswith(("127.", "::ffff:127.")) or ip == "::1"
        rest = data[header.consumed :]
        if rest:
            super().data_received(rest)


__all__ = ["ClientConnection", "Exchange", "ProxiedConnection", "Proxy", "ProxySettings"]
