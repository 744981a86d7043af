"""Targets and the connections Baton keeps to them.

Theory of operation. A ``Target`` is one ``host:port`` an app instance listens on. It lives
in the proxy's target registry (not in the route table) so that its counters survive a
table swap: a target removed from the table keeps counting the requests and tunnels it
still serves until they end, which is what draining waits for. A target owns a LIFO pool
of idle keep-alive ``UpstreamConnection``s, bounded in size and closed after an idle time
shorter than typical app servers' keep-alive, so Baton, not the app, closes idle
connections (the app closing one just as Baton reuses it is the classic lost request).

An ``UpstreamConnection`` parses one response at a time with httptools and writes it to the
client connection that owns the exchange, batching what one ``data_received`` produced
into a single write. It never decides about retries, nor about the response head: it tells its client
(anything with the ``UpstreamEvents`` methods, so this module imports none of the
connection code that uses it) what happened, and asks it for the head to forward.
A response head that arrives alone (its body still to come) is held back for up to
``HEAD_HOLD`` seconds and written together with the first body bytes: until it is written,
an instance that dies between its head and its body (a SIGKILL between two writes) has sent
the client nothing, and the client connection can retry the request elsewhere.
Bytes after the end of a response (more than its Content-Length, a body after 204/304)
are never forwarded: the connection is closed instead of pooled. A 101 opens a tunnel only
when the request asked to upgrade to the protocol the 101 names; otherwise it is a 502.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol, cast

import httptools

from baton.proxy.http import FRAME_CHUNKED, FRAME_NONE, LAST_CHUNK, ResponseInfo, chunk

MAX_RESPONSE_HEAD: Final = 1024 * 1024
# How long a response head whose body has not begun is held back (see the module text);
# a streaming answer that sends its head long before its first bytes waits this long.
HEAD_HOLD: Final = 0.1


class BadResponse(Exception):
    """The upstream's response breaks a rule Baton keeps (raised inside parser callbacks)."""


class _Excess(Exception):
    """Bytes after a complete response: the start of a response nobody asked for."""


class UpstreamEvents(Protocol):
    """What an ``UpstreamConnection`` tells the client connection whose exchange it carries."""

    def response_head(
        self, up: UpstreamConnection, status: int, head: bytes
    ) -> ResponseInfo | None:
        """The head to forward for a final (or 101) response head as received (without its
        blank line); None to discard the whole answer (it is retried on stable). Raises
        ``BadResponse`` for an answer that must not be forwarded."""
        ...

    def write(self, data: bytes) -> None: ...
    def response_done(self, up: UpstreamConnection, reusable: bool, head_now: bool = False) -> None:
        """The response is complete; ``head_now``: its head came in the same read (so the
        clock read taken for its head is this moment too)."""
        ...

    def upstream_lost(self, up: UpstreamConnection) -> None: ...
    def upstream_broken(self, up: UpstreamConnection, why: str) -> None: ...
    def retry_on_stable(self, up: UpstreamConnection, status: int) -> None: ...
    def start_tunnel(self, up: UpstreamConnection, rest: bytes) -> None: ...
    def tunnel_data_from_app(self, data: bytes) -> None: ...
    def tunnel_closed(self, up: UpstreamConnection) -> None: ...
    def pause_reading_for_upstream(self) -> None: ...
    def resume_reading_for_upstream(self) -> None: ...


class Target:
    """One upstream address with its live counters, health and idle pool."""

    __slots__ = (
        "address",
        "address_bytes",
        "connect_failures",
        "draining",
        "fail_streak",
        "healthy",
        "host",
        "idle",
        "in_flight",
        "ok_streak",
        "port",
        "routed",
        "tunnels",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.address_bytes = address.encode()
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.in_flight = 0
        self.tunnels = 0
        self.healthy = True
        self.draining = False
        self.routed = True
        self.connect_failures = 0
        self.ok_streak = 0
        self.fail_streak = 0
        self.idle: list[UpstreamConnection] = []

    @property
    def available(self) -> bool:
        return self.healthy and not self.draining

    @property
    def busy(self) -> int:
        return self.in_flight + self.tunnels

    def pop_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put_idle(self, conn: UpstreamConnection, max_idle: int, now: float = 0.0) -> None:
        """Pool ``conn`` (idle since ``now``, a ``time.monotonic()`` the caller just read)."""
        if not self.routed or len(self.idle) >= max_idle or conn.closed:
            conn.close()
            return
        conn.idle_since = now or time.monotonic()
        self.idle.append(conn)

    def close_idle(self, older_than: float | None = None) -> None:
        """Close idle connections (all, or those idle since before ``older_than``)."""
        if older_than is None:
            conns, self.idle = self.idle, []
        else:
            conns = [c for c in self.idle if c.idle_since < older_than]
            if not conns:
                return
            self.idle = [c for c in self.idle if c.idle_since >= older_than]
        for conn in conns:
            conn.close()

    def record_health(self, ok: bool, rise: int, fall: int) -> None:
        """Active check result: ``rise`` successes in a row heal, ``fall`` failures eject."""
        if ok:
            self.fail_streak = 0
            self.ok_streak += 1
            if not self.healthy and self.ok_streak >= rise:
                self.healthy = True
                self.connect_failures = 0
        else:
            self.ok_streak = 0
            self.fail_streak += 1
            if self.healthy and self.fail_streak >= fall:
                self.healthy = False
                self.close_idle()

    def connect_failed(self, eject_after: int) -> None:
        """Passive ejection: consecutive connect failures take the target out of rotation."""
        self.connect_failures += 1
        self.ok_streak = 0
        if self.connect_failures >= eject_after and self.healthy:
            self.healthy = False
            self.close_idle()

    def connect_succeeded(self) -> None:
        self.connect_failures = 0

    def to_json(self) -> dict[str, object]:
        return {
            "in_flight": self.in_flight,
            "tunnels": self.tunnels,
            "healthy": self.healthy,
            "draining": self.draining,
            "routed": self.routed,
            "idle_connections": len(self.idle),
        }


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection to one target, carrying one exchange at a time."""

    __slots__ = (
        "buf",
        "client",
        "closed",
        "discard",
        "done",
        "framing",
        "got_bytes",
        "head_done",
        "head_from",
        "head_only",
        "head_request",
        "head_unsent",
        "hold",
        "idle_since",
        "keep_alive",
        "out",
        "parser",
        "skip",
        "target",
        "transport",
        "until_close",
        "upgraded",
    )

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: UpstreamEvents | None = None
        self.head_request = False  # the exchange's request is a HEAD
        # Raw bytes of the response head(s) not yet complete; head_from skips 1xx heads.
        self.buf = b""
        self.head_from = 0
        self.head_done = False
        # The head is in ``out`` and not yet written; ``hold`` writes it at HEAD_HOLD.
        self.head_unsent = False
        self.hold: asyncio.TimerHandle | None = None
        self.out: list[bytes] = []
        self.framing = FRAME_NONE
        self.got_bytes = False
        self.done = False
        self.skip = False
        self.head_only = False
        self.until_close = False
        self.upgraded = False
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0
        self.discard = 0  # the status of a canary answer retried on stable: never forwarded

    # -- lifecycle -------------------------------------------------------------------

    def begin(self, client: UpstreamEvents, head_request: bool) -> None:
        self.client = client
        self.head_request = head_request
        self.buf = b""
        self.head_from = 0
        self.head_done = False
        self.head_unsent = False
        self.got_bytes = False
        self.done = False
        self.skip = False
        self.head_only = False
        self.until_close = False
        self.discard = 0

    def detach(self) -> None:
        self.client = None
        self._unhold()

    def close(self) -> None:
        self.closed = True
        self.client = None
        self._unhold()
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        hold = self.hold
        if hold is not None:  # (``head_unsent`` stays: the client reads it)
            self.hold = None
            hold.cancel()
        client = self.client
        self.client = None
        if client is None:
            return
        if self.upgraded:
            client.tunnel_closed(self)
        else:
            client.upstream_lost(self)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost reports it

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading_for_upstream()

    # -- bytes in ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Data on an idle pooled connection is a protocol error: never reuse it.
            self.close()
            return
        if self.upgraded:
            client.tunnel_data_from_app(data)
            return
        self.got_bytes = True
        head_now = False
        if not self.head_done:
            head_now = True
            buf = self.buf = self.buf + data if self.buf else data
            if len(buf) > MAX_RESPONSE_HEAD:
                client.upstream_broken(self, "response head from upstream too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            self._flush(client)
            client.start_tunnel(self, rest)
            return
        except httptools.HttpParserError as exc:
            if self.discard:
                client.retry_on_stable(self, self.discard)
                return
            self._flush(client)
            if self.done:
                # The response was complete; what followed it is dropped with the connection.
                self.done = False
                client.response_done(self, reusable=False)
                return
            cause = exc.__context__
            why = str(cause) if isinstance(cause, BadResponse) else f"{exc}"
            client.upstream_broken(self, f"invalid response from upstream: {why}")
            return
        if self.discard:
            client.retry_on_stable(self, self.discard)
            return
        out = self.out
        if out:  # (``_flush``, inline: this is every response)
            if self.head_unsent and not self.done and len(out) == 1:
                # The head alone: hold it back until its body begins (or HEAD_HOLD).
                if self.hold is None:
                    loop = asyncio.get_running_loop()
                    self.hold = loop.call_later(HEAD_HOLD, self._release_head)
                return
            client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if self.head_unsent:
                self._unhold()
        if self.done:
            self.done = False
            if self.head_only:
                # A HEAD response announced a body it will not send: start a fresh parser.
                self.parser = httptools.HttpResponseParser(self)
            client.response_done(self, self.keep_alive, head_now)

    def _flush(self, client: UpstreamEvents) -> None:
        out = self.out
        if out:
            client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        self._unhold()

    def _unhold(self) -> None:
        """The held head was written (or will never be): no more holding."""
        self.head_unsent = False
        hold = self.hold
        if hold is not None:
            self.hold = None
            hold.cancel()

    def _release_head(self) -> None:
        """HEAD_HOLD passed with no body bytes: the head goes out alone."""
        self.hold = None
        client = self.client
        if client is not None and self.head_unsent:
            self._flush(client)

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:
            raise _Excess

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        raw = self.buf
        end = raw.find(b"\r\n\r\n", self.head_from)
        if end < 0:
            end = len(raw)
        if status < 200 and status != 101:
            # Informational (100, 103): skipped; Baton answers 100-continue itself.
            self.skip = True
            self.head_from = end + 4
            return
        head = raw[self.head_from : end]
        self.buf = b""
        self.head_from = 0
        self.head_done = True
        client = self.client
        assert client is not None
        info = client.response_head(self, status, head)
        if info is None:
            self.discard = status  # not one byte of it reaches the client
            return
        self.framing = info.framing
        self.until_close = info.until_close
        self.out.append(info.head)
        # Held back when a body must follow: a body that ends with the connection makes
        # a close after the head a complete answer, not a lost one.
        self.head_unsent = not info.until_close and status != 101
        if self.head_request:
            self.head_only = True
            self.keep_alive = self.parser.should_keep_alive()
            self.done = True

    def on_body(self, body: bytes) -> None:
        if self.skip or self.head_only or self.discard:
            return
        self.out.append(chunk(body) if self.framing == FRAME_CHUNKED else body)

    def on_message_complete(self) -> None:
        if self.skip:
            self.skip = False
            return
        if self.head_only or self.discard:
            return
        if self.framing == FRAME_CHUNKED:
            self.out.append(LAST_CHUNK)
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback
        self.done = True
