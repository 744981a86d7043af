"""The data plane: client connections, exchanges, listeners and the route-table swap.

Theory of operation. ``Proxy`` owns the current ``RouteTable`` (one reference, swapped
whole), the target registry, the metrics registry, the listening sockets and every client
connection. A ``ClientConnection`` parses requests with httptools; when a request's headers
are complete it becomes an ``Exchange``, is matched against the table current at that
moment, assigned a release (by weight) and a target (least in-flight, then round-robin),
and forwarded on a pooled or new ``UpstreamConnection``. The exchange stays on its target
until the response is complete, whatever the table does meanwhile.

Rules the code keeps:
- A request never answered (connect refused/reset, or the upstream closed before one
  response byte) is retried on another target of the same release, or once on the same
  target after a short back-off, if it is replayable: no body, or a body of at most
  ``REPLAY_LIMIT`` bytes still held. Nothing is retried once a response byte arrived.
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
from hmac import compare_digest
from typing import NamedTuple, cast

import httptools

from baton.proxy.http import (
    CONTINUE_100,
    FRAME_CHUNKED,
    LAST_CHUNK,
    RequestInfo,
    RequestRejected,
    chunk,
    local_response,
    scan_request,
    upstream_head,
)
from baton.proxy.metrics import MetricsRegistry, ReleaseMetrics
from baton.proxy.routing import (
    STICKY_CLIENT_IP,
    STICKY_COOKIE,
    App,
    AppSpec,
    Release,
    RouteTable,
    cookie_release,
    normalise_host,
    parse_address,
    set_cookie,
    sticky_point,
)
from baton.proxy.upstream import Target, UpstreamConnection
from baton.proxy.websocket import FrameCursor, close_frame

log = logging.getLogger("baton.proxy")

REPLAY_LIMIT = 64 * 1024
_NO_BODY: list[bytes] = []  # shared empty list: most requests never allocate their own
MAX_ATTEMPTS = 4
SAME_TARGET_BACKOFF = 0.05
STOPPING_IDLE_GRACE = 1.0
TUNNEL_CLOSE_GRACE = 2.0  # after close frames: longest wait before TCP is closed anyway

# What a connection's deadline means when it passes.
NO_DEADLINE = 0
HEADER_DEADLINE = 1  # request headers incomplete: 408
IDLE_DEADLINE = 2  # keep-alive connection idle: close quietly
UPSTREAM_DEADLINE = 3  # waiting for the response head: 504

# Why a client connection is not being read.
PAUSE_PIPELINE = 1
PAUSE_UPSTREAM = 2
PAUSE_BUFFER = 4


@dataclass
class ProxySettings:
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_header_size: int = 64 * 1024
    upstream_idle_timeout: float = 2.0
    upstream_max_idle: int = 256
    eject_after: int = 3
    drain_deadline: float = 30.0


LiveTable = RouteTable[Target, ReleaseMetrics]
LiveRelease = Release[Target, ReleaseMetrics]
LiveApp = App[Target, ReleaseMetrics]


class Exchange:
    """One request and its response, from headers-complete to the response's last byte."""

    __slots__ = (
        "attempts",
        "body",
        "body_size",
        "complete",
        "head",
        "http11",
        "info",
        "keep_alive",
        "method",
        "metrics",
        "release",
        "request_id",
        "same_retry",
        "set_cookie",
        "status",
        "t0",
        "t_sent",
        "target",
        "tried",
        "ttfb",
        "unsent",
        "unsent_size",
        "upgrade",
        "upstream",
        "url",
        "written",
    )

    def __init__(
        self, method: bytes, url: bytes, info: RequestInfo, http11: bool, keep_alive: bool
    ):
        self.method = method
        self.url = url
        self.info = info
        self.http11 = http11
        self.keep_alive = keep_alive
        self.upgrade = info.upgrade is not None
        self.complete = False
        self.head = b""
        self.request_id = b""
        # Body pieces (already framed for the upstream) kept for a replay; None once the
        # body outgrew REPLAY_LIMIT.
        self.body: list[bytes] | None = [] if info.chunked or info.content_length else None
        self.body_size = 0
        self.unsent: list[bytes] = _NO_BODY
        self.unsent_size = 0
        self.written = False
        self.release: LiveRelease | None = None
        self.metrics: ReleaseMetrics | None = None
        self.target: Target | None = None
        self.upstream: UpstreamConnection | None = None
        self.tried: list[Target] = []
        self.attempts = 0
        self.same_retry = False
        self.set_cookie: bytes | None = None
        self.status = 0
        self.t0 = time.monotonic()
        self.t_sent = self.t0
        self.ttfb = 0.0

    @property
    def replayable(self) -> bool:
        return not self.written or self.body is not None or self.body_size == 0

    def response_started(self, status: int) -> None:
        self.status = status
        self.ttfb = time.monotonic() - self.t_sent


class _WebSocketTunnel:
    """Frame boundaries of both directions, and how far a polite close has got."""

    __slots__ = ("app_closed", "client_closed", "ending", "to_app", "to_client")

    def __init__(self) -> None:
        self.to_app = FrameCursor()
        self.to_client = FrameCursor()
        self.ending = False
        self.app_closed = False  # a close frame was sent to the app
        self.client_closed = False  # a close frame was sent to the client


class _TunnelEnds(NamedTuple):
    target: Target | None
    metrics: ReleaseMetrics | None
    client: ClientConnection
    started: float
    max_age: float | None


class ClientConnection(asyncio.Protocol):
    """One client TCP connection: parses requests, runs exchanges, or tunnels bytes."""

    __slots__ = (
        "active",
        "client_ip",
        "closed",
        "current_parse",
        "deadline",
        "deadline_kind",
        "early",
        "feed_len",
        "head_size",
        "headers",
        "listen",
        "loopback",
        "parser",
        "paused",
        "pending",
        "proxy",
        "reading",
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
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.loopback = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
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
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.deadline = 0.0
        self.deadline_kind = NO_DEADLINE

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "unknown"
        self.client_ip = ip.encode()
        self.loopback = ip.startswith(("127.", "::ffff:127.")) or ip == "::1"
        self.proxy.connections.add(self)
        self._set_deadline(HEADER_DEADLINE, self.proxy.settings.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
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
        self._leave_target(ex)

    def _leave_target(self, ex: Exchange) -> None:
        target = ex.target
        if target is not None:
            ex.target = None
            target.in_flight -= 1
        m = ex.metrics
        if m is not None:
            ex.metrics = None
            m.in_flight -= 1

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self.proxy.loop.time() + seconds

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
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
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
        if not self.reading and self.current_parse is None:
            # The first bytes of a new request: its head must arrive within the time-out.
            self.reading = True
            self.head_size = 0
            self._set_deadline(HEADER_DEADLINE, self.proxy.settings.header_timeout)
        self.feed_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrading = True
            rest = data[exc.args[0] :]
            if rest:
                self.early.append(rest)
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                self._reject(cause.status, cause.message)
                return
            raise
        except httptools.HttpParserError as exc:
            self._reject(400, _parser_message(exc))
            return
        if self.reading:
            self.head_size += len(data)
            if self.head_size > self.proxy.settings.max_header_size:
                self._reject(431, "request header block too large")

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
        self.url = b""
        self.headers = []
        self.current_parse = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        limit = self.proxy.settings.max_header_size
        # Bytes seen for this head so far bound its size; count exactly only when they might
        # exceed the limit (a whole head arriving in one large read).
        if self.head_size + self.feed_len > limit:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > limit:
                raise RequestRejected(431, "request header block too large")
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise RequestRejected(400, f"unsupported HTTP version {version!r}")
        http11 = version == "1.1"
        info = scan_request(self.headers, http11)
        ex = Exchange(parser.get_method(), self.url, info, http11, parser.should_keep_alive())
        self.reading = False
        self.deadline_kind = NO_DEADLINE
        self.current_parse = ex
        if info.content_length is None and not info.chunked:
            ex.complete = True  # no body; llhttp still calls on_message_complete
        if self.active is None:
            self.start(ex)
        else:
            self.pending.append(ex)
            self._pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
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
            if ex.unsent is _NO_BODY:
                ex.unsent = []
            ex.unsent.append(data)
            ex.unsent_size += len(data)
            if ex.unsent_size > REPLAY_LIMIT:
                self._pause(PAUSE_BUFFER)

    def start(self, ex: Exchange) -> None:
        """Route a request whose headers are complete and send it on its way."""
        self.active = ex
        proxy = self.proxy
        info = ex.info
        ex.request_id = info.request_id or proxy.next_request_id()
        app = proxy.table.match_raw(self.listen, info.host, ex.url)
        if app is None:
            self._local(ex, 404, f"no route for host {normalise_host(info.host) or '-'!r}")
            return
        release, target = proxy.choose(app, ex, self)
        if release is None or target is None:
            if ex.info.pin is not None and proxy.may_pin(app, ex, self):
                pin = ex.info.pin.decode("latin-1")
                why = f"release {pin!r} of app {app.name!r} is unknown or has no healthy target"
            else:
                why = f"no healthy target for app {app.name!r}"
            self._local(ex, 503, why)
            return
        ex.release = release
        m = ex.metrics = release.metrics
        m.in_flight += 1
        if info.expect_continue and not ex.complete:
            self.write(CONTINUE_100)
        ex.head = upstream_head(
            ex.method,
            ex.url,
            info,
            client_ip=self.client_ip,
            request_id=ex.request_id,
            target=target.address.encode(),
        )
        self._set_deadline(UPSTREAM_DEADLINE, app.spec.response_timeout)
        self.attach(ex, target, app.spec)

    def attach(self, ex: Exchange, target: Target, spec: AppSpec) -> None:
        """Send the exchange to ``target`` on an idle pooled connection or a new one."""
        if ex is not self.active or self.closed:
            return
        ex.target = target
        ex.attempts += 1
        ex.tried.append(target)
        target.in_flight += 1
        up = target.pop_idle()
        if up is None:
            self.proxy.loop.create_task(self._connect(ex, target, spec))
            return
        self._send(ex, up, spec)

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
                self.retry_or_fail(ex, spec, f"cannot connect to {target.address}: {_why(exc)}")
            return
        target.connect_succeeded()
        if ex is not self.active or self.closed or ex.target is not target:
            target.put_idle(up, self.proxy.settings.upstream_max_idle)
            return
        self._send(ex, up, spec)

    def _send(self, ex: Exchange, up: UpstreamConnection, spec: AppSpec) -> None:
        if up.closed or up.transport is None or up.transport.is_closing():
            # Accepted, then closed before we wrote a byte (docker-proxy in front of a dying
            # container does this): the request was never sent, so it is safe to retry.
            up.close()
            self.retry_or_fail(ex, spec, "upstream closed the connection at once")
            return
        ex.upstream = up
        up.begin(self, ex)
        assert up.transport is not None
        if ex.written:
            data = [ex.head, *(ex.body or ())]  # replay: the whole held body again
        elif ex.unsent:
            data = [ex.head, *ex.unsent]
            ex.unsent = _NO_BODY
            ex.unsent_size = 0
        else:
            data = [ex.head]
        ex.written = True
        ex.t_sent = time.monotonic()
        up.transport.write(data[0] if len(data) == 1 else b"".join(data))
        if self.paused & PAUSE_BUFFER:
            self._resume(PAUSE_BUFFER)
        if self.write_paused:
            up.transport.pause_reading()

    def retry_or_fail(self, ex: Exchange, spec: AppSpec, why: str) -> None:
        """The exchange was never answered: try again where that is safe, else 502."""
        target = ex.target
        ex.upstream = None
        if target is not None:
            ex.target = None
            target.in_flight -= 1
        release = ex.release
        if release is not None and ex.replayable and ex.attempts < MAX_ATTEMPTS:
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
        self._fail(ex, 502, f"upstream unreachable ({why})")

    def _fail(self, ex: Exchange, status: int, message: str) -> None:
        """Baton answers for a failed upstream (502/504); counted as an upstream error."""
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.close()
        if ex.metrics is not None:
            ex.metrics.upstream_errors += 1
            elapsed = time.monotonic() - ex.t0
            ex.metrics.record(status, elapsed, elapsed)
        self._leave_target(ex)
        log.info("%s %s -> %d %s", ex.method.decode(), ex.url.decode("latin-1"), status, message)
        self._local(ex, status, message)

    def _local(self, ex: Exchange, status: int, message: str) -> None:
        """Answer with a local response; keep the connection if the request was read whole."""
        keep = ex.keep_alive and ex.complete and not ex.upgrade and not self.proxy.stopping
        self.write(local_response(status, message, close=not keep, request_id=ex.request_id))
        self.active = None
        if not keep:
            self.close()
            return
        self._next()

    # -- upstream events ---------------------------------------------------------------

    def response_done(self, up: UpstreamConnection, reusable: bool) -> None:
        ex = self.active
        if ex is None or ex.upstream is not up:
            up.close()
            return
        now = time.monotonic()
        ex.upstream = None
        m = ex.metrics
        if m is not None:
            m.record(ex.status, ex.ttfb, now - ex.t0)
        target = ex.target
        self._leave_target(ex)
        up.detach()
        if self.write_paused and up.transport is not None:
            up.transport.resume_reading()  # paused for this client; not for the next one
        if reusable and ex.complete and not up.until_close and target is not None:
            target.put_idle(up, self.proxy.settings.upstream_max_idle)
        else:
            up.close()
        self.active = None
        if not ex.keep_alive or not ex.complete:
            self.close()
            return
        self._next()

    def _next(self) -> None:
        if self.pending:
            ex = self.pending.popleft()
            if not self.pending:
                self._resume(PAUSE_PIPELINE)
            self.start(ex)
        elif self.proxy.stopping:
            # Retiring: the client may be sending its next request right now; closing
            # would lose it. Give it a moment (its next response says Connection: close).
            self._set_deadline(IDLE_DEADLINE, STOPPING_IDLE_GRACE)
        else:
            self._set_deadline(IDLE_DEADLINE, self.proxy.settings.keepalive_timeout)

    def upstream_lost(self, up: UpstreamConnection) -> None:
        """The upstream connection closed while carrying our exchange."""
        ex = self.active
        if ex is None or ex.upstream is not up:
            return
        if up.got_bytes and ex.status:
            if up.until_close:
                # The body ended with the connection: that is a complete response.
                if up.framing == FRAME_CHUNKED:
                    self.write(LAST_CHUNK)
                self.response_done(up, reusable=False)
                return
            # Truncated response: the client cannot be told anything sane; close it.
            if ex.metrics is not None:
                ex.metrics.upstream_errors += 1
            ex.upstream = None
            self._leave_target(ex)
            self.active = None
            self.close()
            return
        spec = self.proxy.table.apps.get(ex.metrics.app) if ex.metrics else None
        if spec is None or up.got_bytes:
            self._fail(ex, 502, "upstream closed the connection before answering")
            return
        self.retry_or_fail(ex, spec.spec, "upstream closed the connection before answering")

    def upstream_broken(self, up: UpstreamConnection, why: str) -> None:
        ex = self.active
        if ex is None or ex.upstream is not up:
            up.close()
            return
        if ex.status:
            self._abandon(ex)
            self.active = None
            self.close()
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
        self._leave_target(ex)
        ex.upstream = None
        self.active = None
        self.tunnel = up
        up.upgraded = True
        up.ex = None
        self.deadline_kind = NO_DEADLINE
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
        self.tunnel_ends: dict[UpstreamConnection, _TunnelEnds] = {}
        self.stopping = False
        self._rr = 0
        self._request_prefix = os.urandom(4).hex().encode()
        self._request_seq = 0
        self._sweeper: asyncio.Task[None] | None = None
        self.on_table_change: list[Callable[[], None]] = []
        # Called once when the proxy starts to stop (HTTP/2 sessions send GOAWAY).
        self.on_stop: set[Callable[[], None]] = set()
        # Stand-in for the tls branch's listener: when set, every listener speaks TLS.
        self.tls: ssl.SSLContext | None = None

    # -- routing -----------------------------------------------------------------------

    def _target(self, address: str, spec: AppSpec) -> Target:
        target = self.targets.get(address)
        if target is None:
            target = self.targets[address] = Target(address)
        return target

    def next_request_id(self) -> bytes:
        self._request_seq += 1
        return b"%s-%x" % (self._request_prefix, self._request_seq)

    def may_pin(self, app: LiveApp, ex: Exchange, client: ClientConnection) -> bool:
        """X-Baton-Release is honoured from loopback, or with the app's secret."""
        if client.loopback:
            return True
        secret = app.spec.release_secret
        given = ex.info.pin_secret
        return secret is not None and given is not None and compare_digest(given, secret.encode())

    def choose(
        self, app: LiveApp, ex: Exchange, client: ClientConnection
    ) -> tuple[LiveRelease | None, Target | None]:
        """The release (by pin, stickiness or weight) and target for one request."""
        info = ex.info
        if info.pin is not None and self.may_pin(app, ex, client):
            pinned = app.by_name.get(info.pin.decode("latin-1"))
            target = self.pick_target(pinned) if pinned is not None else None
            return (pinned, target) if target is not None else (None, None)
        if app.sticky and len(app.weighted) > 1:
            release = self._sticky_release(app, ex, client)
        else:
            release = app.pick_release()
        if release is not None:
            target = self.pick_target(release)
            if target is not None:
                return release, target
        # The chosen release has nothing healthy: any other weighted release will do.
        for other in app.weighted:
            if other is not release:
                target = self.pick_target(other)
                if target is not None:
                    return other, target
        return None, None

    def _sticky_release(
        self, app: LiveApp, ex: Exchange, client: ClientConnection
    ) -> LiveRelease | None:
        if app.sticky == STICKY_COOKIE:
            name = cookie_release(ex.info.cookie)
            kept = app.by_name.get(name) if name is not None else None
            if kept is not None and kept.weight > 0:
                return kept
            release = app.pick_release()
            if release is not None:
                ex.set_cookie = set_cookie(release.name)
            return release
        if app.sticky == STICKY_CLIENT_IP:
            key = client.client_ip
        else:
            prefix = app.sticky_header + b":"
            key = next(
                (ln[len(prefix) :].strip() for ln in ex.info.kept if ln.lower().startswith(prefix)),
                b"",
            )
            if not key:
                return app.pick_release()  # no key: nothing to stick to
        point = sticky_point(key)
        return app.pick_release(lambda: point)

    def pick_target(
        self, release: LiveRelease, exclude: list[Target] | None = None
    ) -> Target | None:
        """Least in-flight among available targets; round-robin breaks ties."""
        targets = release.targets
        n = len(targets)
        if n == 1:
            t = targets[0]
            return t if t.available and (not exclude or t not in exclude) else None
        self._rr += 1
        start = self._rr % n if n else 0
        best: Target | None = None
        best_load = 1 << 30
        for i in range(n):
            t = targets[(start + i) % n]
            if t.in_flight < best_load and t.available and (not exclude or t not in exclude):
                best = t
                best_load = t.in_flight
        return best

    # -- table changes -----------------------------------------------------------------

    async def apply(self, specs: dict[str, AppSpec], generation: int | None = None) -> int:
        """Swap in a new table built from ``specs``; bind new listen addresses first."""
        for spec in specs.values():
            if spec.listen not in self.servers:
                await self.listen(spec.listen)
        if generation is None:
            generation = self.table.generation + 1
        table = RouteTable.build(specs, self._target, self.metrics.get, generation)
        self.table = table  # the cutover
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
        return table.generation

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
            host, port = parse_address(address, "listen")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            sock.listen(4096)
        if self.tls is not None:
            from baton.proxy.alpn import alpn_protocol_factory

            factory: Callable[[], asyncio.Protocol] = alpn_protocol_factory(self, address)
        else:
            factory = lambda: ClientConnection(self, address)  # noqa: E731
        server = await self.loop.create_server(
            factory, sock=sock, backlog=4096, start_serving=serve, ssl=self.tls
        )
        self.servers[address] = server

    async def start_serving(self) -> None:
        for server in self.servers.values():
            if not server.is_serving():
                await server.start_serving()

    def drain(self, addresses: list[str], draining: bool = True) -> None:
        for address in addresses:
            target = self.targets.get(address)
            if target is not None:
                target.draining = draining
                if draining:
                    target.close_idle()

    def busy(self, addresses: list[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for address in addresses:
            t = self.targets.get(address)
            out[address] = {"in_flight": t.in_flight if t else 0, "tunnels": t.tunnels if t else 0}
        return out

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

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.deadline_kind and now >= conn.deadline:
                    conn.on_deadline()
            for t in list(self.tunnel_ends.values()):
                if t.max_age is not None and now - t.started >= t.max_age:
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
        return {
            address: os.dup(server.sockets[0].fileno()) for address, server in self.servers.items()
        }

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, let in-flight work and open connections finish, then close.

        Keep-alive clients are not cut: a connection busy with a request gets
        ``Connection: close`` on its response; an idle one is closed after a short grace
        (it may be sending a request right now). Tunnels last until they end or until
        ``deadline`` seconds have passed, when everything left is closed.
        """
        self.stopping = True
        for server in self.servers.values():
            server.close()
        for on_stop in list(self.on_stop):
            on_stop()
        for conn in list(self.connections):
            if conn.active is None and conn.tunnel is None and not conn.reading:
                conn._set_deadline(IDLE_DEADLINE, STOPPING_IDLE_GRACE)
        end = self.loop.time() + deadline
        while self.loop.time() < end and self.connections:
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
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


__all__ = ["ClientConnection", "Exchange", "Proxy", "ProxySettings"]
