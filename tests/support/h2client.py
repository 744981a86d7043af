"""A raw HTTP/2 client over TLS for edge-case tests: the ``h2`` library on a blocking socket.

Loopback only. Each call reads frames until what it waits for happens or its time-out
passes (then it raises), so tests never sleep on a guess.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings


@dataclass
class Stream:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    chunks: int = 0  # DATA frames received
    ended: bool = False
    reset: int | None = None  # RST_STREAM error code

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class _Unlimited(h2.connection.H2Connection):
    """A client that ignores the server's MAX_CONCURRENT_STREAMS (to test the limit)."""

    @property
    def open_outbound_streams(self) -> int:
        _ = super().open_outbound_streams
        return 0


class H2Client:
    """One HTTP/2 connection to ``127.0.0.1:port``; ``auto_ack=False`` keeps windows closed."""

    def __init__(
        self,
        port: int,
        *,
        auto_ack: bool = True,
        window: int | None = None,
        timeout: float = 20,
        ignore_limits: bool = False,
    ) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.auto_ack = auto_ack
        self.timeout = timeout
        connection = _Unlimited if ignore_limits else h2.connection.H2Connection
        self.conn = connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        self.conn.initiate_connection()
        self.streams: dict[int, Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.flush()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        authority: str = "app.test",
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        head = [(":method", method), (":scheme", "https"), (":authority", authority)]
        head += [(":path", path), *(headers or [])]
        self.conn.send_headers(sid, head, end_stream=body is None)
        self.streams[sid] = Stream()
        self.flush()
        if body is not None:
            self.send_body(sid, body)
        return sid

    def send_body(self, sid: int, body: bytes) -> None:
        """Send ``body`` and end the stream, waiting for window updates as needed."""
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self.read_once()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    def read_once(self) -> list[h2.events.Event]:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            sid = getattr(event, "stream_id", None)
            stream = self.streams.get(sid) if sid else None
            if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                stream.headers = list(event.headers or [])
                stream.status = int(dict(stream.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and stream is not None:
                stream.body += event.data or b""
                stream.chunks += 1
                if self.auto_ack and event.flow_controlled_length:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                stream.ended = True
            elif isinstance(event, h2.events.StreamReset) and stream is not None:
                stream.reset = int(event.error_code or 0)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()
        return events

    def wait(self, done: object, timeout: float | None = None) -> None:
        """Read until ``done()`` is true; raise TimeoutError after ``timeout`` seconds.

        Reads wait at most 50 ms, so ``done`` may also watch state outside this connection.
        """
        assert callable(done)
        deadline = time.monotonic() + (timeout or self.timeout)
        while not done():
            if self.closed:
                raise ConnectionError("the server closed the connection")
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            self.sock.settimeout(min(0.05, max(0.01, deadline - time.monotonic())))
            try:
                self.read_once()
            except TimeoutError:
                continue

    def response(self, sid: int, timeout: float | None = None) -> Stream:
        stream = self.streams[sid]
        self.wait(lambda: stream.ended or stream.reset is not None, timeout)
        return stream
