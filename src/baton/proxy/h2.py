"""HTTP/2 to clients: one ``H2Session`` per TLS connection that chose ``h2`` by ALPN.

Theory of operation. The session owns the ``h2`` library's connection state machine (frames
in, events out) and the TCP transport. Every request stream becomes an ``H2Stream``, which
*is* a ``ClientConnection`` carrying exactly one exchange: routing, the release choice
(weights, stickiness, ``X-Baton-Release``), target choice, upstream pooling, retries of
unanswered replayable requests, in-flight and drain counts, metrics and the local 4xx/5xx
answers are the same code as for HTTP/1.1, not a copy. The stream only translates at its
two edges: request pseudo-headers become the HTTP/1.1 request the exchange forwards
(``:authority`` -> Host, cookies joined with "; ", a body without a length is chunked),
and the HTTP/1.1 response the exchange writes (a head, then body bytes never chunked,
because the exchange treats the stream as an HTTP/1.0-style client) becomes HEADERS and
DATA frames, with hop-by-hop and connection-specific headers dropped.

Rules the code keeps:
- Flow control per stream, both ways. Request DATA is acknowledged (WINDOW_UPDATE) only as
  the exchange takes it: while the exchange is paused (upstream write buffer full, or body
  held for a connect) the client's window closes. Response bytes wait in the stream while
  its send window (or the connection's) is exhausted, and the upstream is not read
  meanwhile; the same happens for every stream while the TCP write buffer is full.
- A malformed request header block (checked by the ``h2`` library's own rules, per stream)
  gets RST_STREAM(PROTOCOL_ERROR); the connection lives on. Frame-level errors are
  connection errors: GOAWAY with the library's error code, then close, never a crash.
- Limits: ``MAX_CONCURRENT_STREAMS`` and ``MAX_HEADER_LIST_SIZE`` (the proxy's header
  limit) are advertised; a stream over the concurrency limit is refused (REFUSED_STREAM,
  safe for the client to retry); a header block over the size limit ends the connection
  (ENHANCE_YOUR_CALM), because HPACK's shared table cannot be trusted after a block
  whose decoding was abandoned.
- Stopping (proxy stop or takeover): GOAWAY in two steps (the first admits everything,
  the second, one round trip later, names the last stream accepted), so no request the
  client sent in good faith is refused; streams in flight finish, and the connection
  closes when the last one ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.utilities import HeaderValidationFlags, validate_headers
from hyperframe.frame import GoAwayFrame

from baton.proxy.http import RequestRejected, scan_request
from baton.proxy.server import NO_DEADLINE, ClientConnection, Exchange, Proxy
from baton.proxy.upstream import UpstreamConnection

log = logging.getLogger("baton.proxy")

MAX_CONCURRENT_STREAMS = 100
MAX_STREAM_ID = 2**31 - 1
GOAWAY_PING = b"baton-go"  # PING payload (8 bytes) marking the first of the two GOAWAYs
GOAWAY_GRACE = 1.0  # longest wait for that PING's ACK before the final GOAWAY
GOAWAY_LINGER = 2.0  # after the final GOAWAY: longest wait for the client to hang up
STREAM_WINDOW = 256 * 1024  # per-stream receive window: bounds what one upload buffers
CONNECTION_WINDOW = 16 * 1024 * 1024

_REQUEST_FLAGS = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)

# Response headers that have no place in HTTP/2 (RFC 9113 8.2.2), beyond those the
# HTTP/1.1 exchange already drops.
_CONNECTION_SPECIFIC = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
    }
)

# Why a stream's upstream is not being read.
BLOCK_WINDOW = 1  # the client's flow-control window for this stream (or all) is exhausted
BLOCK_SOCKET = 2  # the TCP write buffer to the client is full


def request_head(
    headers: list[tuple[bytes, bytes]], has_body: bool
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """Method, path and HTTP/1.1 header pairs for a validated HTTP/2 request header block.

    ``:authority`` becomes Host (replacing a Host header, as RFC 9113 8.3.1 prefers it);
    Cookie headers (split per crumb in HTTP/2) are joined with "; "; a body whose length
    is not announced is forwarded chunked. Raises RequestRejected for what Baton does not
    forward.
    """
    method = path = authority = b""
    host: bytes | None = None
    cookies: list[bytes] = []
    out: list[tuple[bytes, bytes]] = []
    has_length = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            host = value
        else:
            if name == b"content-length":
                has_length = True
            out.append((name, value))
    if method == b"CONNECT":
        raise RequestRejected(501, "CONNECT over HTTP/2 is not supported")
    if authority or host is not None:
        out.insert(0, (b"host", authority or cast(bytes, host)))
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    if has_body and not has_length:
        out.append((b"transfer-encoding", b"chunked"))
    return method, path, out


def response_headers(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Status and HTTP/2 header list for an HTTP/1.1 response head (without its blank line)."""
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    out: list[tuple[bytes, bytes]] = [(b":status", lines[0][9:12])]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name and name not in _CONNECTION_SPECIFIC:
            out.append((name, value.strip()))
    return status, out


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection state machine, minus its own concurrency check.

    h2 treats a stream over ``MAX_CONCURRENT_STREAMS`` as a connection error; RFC 9113
    5.1.2 allows a stream error, which costs the client one retried request instead of
    all of them, so the session refuses such a stream itself (REFUSED_STREAM).
    """

    @property
    def open_inbound_streams(self) -> int:
        _ = super().open_inbound_streams  # h2 prunes closed streams while it counts
        return 0


class H2Stream(ClientConnection):
    """One request stream: a ClientConnection whose bytes travel as HTTP/2 frames."""

    __slots__ = (
        "blocked",
        "ending",
        "finished",
        "head_sent",
        "outq",
        "sent_from",
        "session",
        "stream_id",
        "unacked",
    )

    def __init__(self, session: H2Session, stream_id: int) -> None:
        super().__init__(session.proxy, session.listen)
        self.session = session
        self.stream_id = stream_id
        self.client_ip = session.client_ip
        self.loopback = session.loopback
        self.head_sent = False
        self.finished = False  # the whole response was written: END_STREAM, not a reset
        self.ending = False  # END_STREAM goes out once the queued body is sent
        self.outq: deque[bytes] = deque()
        self.sent_from = 0  # bytes of outq[0] already sent
        self.unacked = 0  # request bytes received but not yet acknowledged (flow control)
        self.blocked = 0

    # -- request -----------------------------------------------------------------------

    def begin(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.proxy.connections.add(self)
        try:
            list(validate_headers(headers, _REQUEST_FLAGS))
        except h2.exceptions.ProtocolError as exc:
            log.info("h2 stream %d: malformed request: %s", self.stream_id, exc)
            self.reset(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        try:
            method, path, pairs = request_head(headers, not ended)
            info = scan_request(pairs, True)
        except RequestRejected as exc:
            self._reject(exc.status, exc.message)
            return
        info.expect_continue = False  # HTTP/2 clients do not wait for 100 Continue
        ex = Exchange(method, path, info, False, True)
        self.deadline_kind = NO_DEADLINE
        if ended:
            ex.complete = True
        else:
            self.current_parse = ex
        self.start(ex)

    def data(self, data: bytes, flow_controlled: int) -> None:
        if data and self.current_parse is not None:  # (an empty frame would be a last chunk)
            self.on_body(data)
        if self.paused.reasons and not self.closed:
            self.unacked += flow_controlled
        else:
            self.session.acknowledge(self.stream_id, flow_controlled)

    def request_ended(self) -> None:
        if self.current_parse is not None:
            self.on_message_complete()

    def _pause(self, reason: int) -> None:
        self.paused.pause(reason)

    def _resume(self, reason: int) -> None:
        if self.paused.resume(reason) and self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.session.acknowledge(self.stream_id, unacked)
            self.session.send()

    # -- response ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        session = self.session
        if not self.head_sent:
            end = data.find(b"\r\n\r\n")
            status, headers = response_headers(data[:end])
            data = data[end + 4 :]
            if status < 200:
                if data:
                    self.write(data)
                return  # 1xx: HTTP/2 clients need no 100 Continue; 103 is dropped
            self.head_sent = True
            session.conn.send_headers(self.stream_id, headers)
        if data:
            self.outq.append(data)
            self.flush()
        session.send()

    def flush(self) -> None:
        """Send queued body bytes as far as the send windows allow; END_STREAM when due."""
        conn = self.session.conn
        sid = self.stream_id
        outq = self.outq
        while outq:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                break
            piece, start = outq[0], self.sent_from
            if len(piece) - start <= window:
                outq.popleft()
                self.sent_from = 0
                conn.send_data(sid, piece[start:] if start else piece)
            else:
                # Frames are cut from the queued read without copying its remainder.
                self.sent_from = start + window
                conn.send_data(sid, piece[start : start + window])
        if outq:
            self._block(BLOCK_WINDOW)
            return
        self._unblock(BLOCK_WINDOW)
        if self.ending:
            self.ending = False
            conn.end_stream(sid)
            if self.current_parse is not None or not self._request_complete():
                # Answered before the request body ended (RFC 9113 8.1): stop the upload.
                self.session.reset(sid, h2.errors.ErrorCodes.NO_ERROR)
            self.session.forget(self)

    def _request_complete(self) -> bool:
        ex = self.active
        return ex is None or ex.complete

    def _block(self, bit: int) -> None:
        if not self.blocked:
            self.pause_writing()
        self.blocked |= bit

    def _unblock(self, bit: int) -> None:
        if self.blocked & bit:
            self.blocked &= ~bit
            if not self.blocked:
                self.resume_writing()

    # -- the exchange's verdicts -------------------------------------------------------

    def response_done(self, up: UpstreamConnection, reusable: bool, head_now: bool = False) -> None:
        self.finished = True
        super().response_done(up, reusable, head_now)

    def _reject(self, status: int, message: str) -> None:
        ex = self.active
        if ex is None or not ex.status:
            self.finished = True  # the local answer is a whole response
        super()._reject(status, message)

    def _local(
        self, ex: Exchange, status: int, message: str, retry_after: int | None = None
    ) -> None:
        self.finished = True
        super()._local(ex, status, message, retry_after)

    def _next(self, now: float = 0.0) -> None:
        self.close()

    def close(self) -> None:
        """The exchange is over: end the stream cleanly if the response is whole, else reset."""
        if self.closed:
            return
        self.closed = True
        self.proxy.connections.discard(self)
        if self.finished and self.head_sent:
            self.ending = True
            self.flush()
        else:
            self.outq.clear()
            self.sent_from = 0
            self.session.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.session.forget(self)
        self.session.send()

    def reset(self, code: h2.errors.ErrorCodes) -> None:
        self.connection_lost(None)
        self.session.reset(self.stream_id, code)
        self.session.forget(self)
        self.session.send()

    def lost(self) -> None:
        """The client reset the stream, or the connection went away."""
        self.outq.clear()
        self.sent_from = 0
        self.ending = False
        if not self.closed or self.active is not None:
            self.connection_lost(None)
        self.session.forget(self)


class H2Session(asyncio.Protocol):
    """One HTTP/2 client connection: frames in and out, streams by id, GOAWAY on stop."""

    def __init__(self, proxy: Proxy, listen: str) -> None:
        self.proxy = proxy
        self.listen = listen
        self.transport: asyncio.Transport | None = None
        # Inbound headers are validated per stream (a bad one resets that stream only);
        # outbound ones come from a response head httptools parsed and we lower-cased.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = _ServerConnection(config=config)
        self.streams: dict[int, H2Stream] = {}
        self.client_ip = b""
        self.loopback = False
        self.closed = False
        self.write_paused = False
        self.going_away = False
        self.send_soon = False
        self.last_stream = MAX_STREAM_ID  # streams above it are refused (after a GOAWAY)
        self._idle: asyncio.TimerHandle | None = None
        self.lingering = False  # the final GOAWAY is out and no stream is left

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "unknown"
        self.client_ip = ip.encode()
        self.loopback = ip.startswith(("127.", "::ffff:127.")) or ip == "::1"
        self.proxy.on_stop.add(self.go_away)
        conn = self.conn
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.proxy.settings.max_header_size,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.initiate_connection()
        # h2 sets the HPACK decoder's limit only when a changed setting is acknowledged.
        conn.decoder.max_header_list_size = self.proxy.settings.max_header_size
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.send_now()
        if self.proxy.stopping:
            self.go_away()
        else:
            self._arm_idle(self.proxy.settings.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.on_stop.discard(self.go_away)
        if self._idle is not None:
            self._idle.cancel()
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def send(self) -> None:
        """Write what h2 has queued, once per loop iteration: responses of streams that
        completed together leave in one TLS write (each write is a TLS record and a syscall)."""
        if not self.send_soon:
            self.send_soon = True
            self.proxy.loop.call_soon(self.send_now)

    def send_now(self) -> None:
        self.send_soon = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _arm_idle(self, seconds: float) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.proxy.loop.call_later(seconds, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if not self.streams:
            self.go_away()

    def go_away(self) -> None:
        """Accept no new stream; finish the ones in flight, then close.

        Two steps (RFC 9113 6.8): a GOAWAY that still admits every stream, with a PING;
        when its ACK returns (or after ``GOAWAY_GRACE``), the final GOAWAY names the last
        stream accepted. Requests the client sent before it saw the first are served, not
        refused. Both are written beside h2's state machine: h2's own close_connection()
        would refuse to send the responses still in flight.
        """
        if self.going_away or self.closed:
            return
        self.going_away = True
        self._write_goaway(MAX_STREAM_ID)
        self.conn.ping(GOAWAY_PING)
        self.send_now()
        self.proxy.loop.call_later(GOAWAY_GRACE, self._final_goaway)

    def _final_goaway(self) -> None:
        if self.closed or self.last_stream != MAX_STREAM_ID:
            return
        self._write_goaway(self.conn.highest_inbound_stream_id)
        if not self.streams:
            self._linger()

    def _linger(self) -> None:
        """The final GOAWAY is out and no stream is left: keep reading until the client
        hangs up (new streams get REFUSED_STREAM, which clients retry on a new connection),
        at most ``GOAWAY_LINGER``. Closing at once would reset what the client is writing
        right now, a request lost to a broken pipe."""
        if self.closed or self.lingering:
            return
        self.lingering = True
        self.send_now()
        self.proxy.loop.call_later(GOAWAY_LINGER, self.close)

    def _write_goaway(self, last_stream: int) -> None:
        self.last_stream = last_stream
        self.send_now()  # whole frames h2 has queued go first
        if self.transport is not None and not self.closed:
            self.transport.write(GoAwayFrame(0, last_stream_id=last_stream).serialize())

    # -- flow control ------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream._block(BLOCK_SOCKET)

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream._unblock(BLOCK_SOCKET)

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.closed:
            try:
                self.conn.acknowledge_received_data(size, stream_id)
            except h2.exceptions.H2Error:
                pass  # the stream is gone; the connection window was credited by h2

    def reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        try:
            self.conn.reset_stream(stream_id, code)
        except h2.exceptions.H2Error:
            pass  # already closed on both sides

    def forget(self, stream: H2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if not self.streams:
            if self.last_stream != MAX_STREAM_ID:
                self._linger()
            else:
                self._arm_idle(self.proxy.settings.keepalive_timeout)

    # -- frames in ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            log.info("h2 connection from %s: %s", self.client_ip.decode(), exc)
            self.send_now()  # the GOAWAY h2 prepared
            self.close()
            return
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                size = event.flow_controlled_length
                if stream is None:
                    self.acknowledge(event.stream_id, size)
                elif event.data is not None and size is not None:
                    stream.data(event.data, size)
            elif isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.request_ended()
            elif isinstance(event, h2.events.WindowUpdated):
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.flush()
                else:
                    self._flush_all()
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._flush_all()
            elif isinstance(event, h2.events.PingAckReceived):
                if event.ping_data == GOAWAY_PING:
                    self._final_goaway()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.lost()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.send_now()
                self.close()
                return
        self.send()

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if sid is None or event.headers is None:
            return
        if sid > self.last_stream:
            self.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        if self.write_paused:
            stream.blocked = BLOCK_SOCKET
            stream.write_paused = True
        ended = event.stream_ended is not None
        headers = event.headers
        stream.begin(headers, ended)

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.outq or stream.ending:
                stream.flush()


__all__ = ["H2Session", "H2Stream", "request_head", "response_headers"]
