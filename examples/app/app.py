"""A small web app for Baton's quick start and tests: standard library only.

It reports its version, answers a health check, can be slow or fail on purpose, and shuts
down gracefully on SIGTERM: it stops accepting, closes idle keep-alive connections, lets
requests in flight finish (up to ``SHUTDOWN_GRACE`` seconds), then exits 0.

Routes:
  GET /          "<version>\\n" (or a 500 for an ``ERROR_RATE`` share of requests)
  GET /version   {"version": ..., "pid": ..., "port": ..., "instance": ...}
  GET /up        200 "ok" when healthy; 503 with NEVER_HEALTHY=1 or while shutting down
  GET /slow?s=N  sleeps N seconds (at most 300), then answers "<version> slept N\\n"
  GET /items     reads the database at DATABASE_URL with the columns release SCHEMA (v1 or
                 v2) needs (see db.py); 500 when the schema lacks them
  GET /env-hash?name=N  the sha256 (hex) of environment variable N, or 404 "unset": lets a
                 test check a secret reached the app without the value crossing the wire
  POST /echo     answers with the request body

Environment: PORT (or --port), APP_VERSION (default v1), FAIL_ON_START=1 (exit 1 at once),
NEVER_HEALTHY=1, ERROR_RATE=0.3, BOOT_DELAY=S (sleep before listening), SHUTDOWN_GRACE=S
(default 30), ACCESS_LOG=1 (log every request to stderr), LATENCY_MS=N (``GET /`` sleeps N
ms first), LATENCY_JITTER_MS=N (plus a random, exponentially distributed extra N ms on
average: noisy latency for canary benchmarks). Feature flags: with FLAGS_URL and FLAG (and
FLAGS_TOKEN), ``GET /`` evaluates FLAG over OFREP for the request's X-User (else a random
user), answers with ``Baton-Flags: FLAG=VARIANT``, and fails FLAG_ERROR_RATE of requests
when the variant's value is true.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit

VERSION = os.environ.get("APP_VERSION", "v1")
FLAGS_URL = os.environ.get("FLAGS_URL", "").rstrip("/")  # e.g. http://127.0.0.1:8099/apps/shop
FLAG = os.environ.get("FLAG", "")
FLAGS_TOKEN = os.environ.get("FLAGS_TOKEN", "")
LATENCY_MS = float(os.environ.get("LATENCY_MS", "0") or 0)
LATENCY_JITTER_MS = float(os.environ.get("LATENCY_JITTER_MS", "0") or 0)


def log(message: str) -> None:
    print(f"app {VERSION} [{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class Connections:
    """Which connections are open and which of them are in the middle of a request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[Handler, bool] = {}  # handler -> busy
        self.draining = threading.Event()

    def add(self, handler: Handler) -> None:
        with self.lock:
            self.open[handler] = False

    def remove(self, handler: Handler) -> None:
        with self.lock:
            self.open.pop(handler, None)

    def set_busy(self, handler: Handler, busy: bool) -> None:
        with self.lock:
            if handler in self.open:
                self.open[handler] = busy

    def close_idle(self) -> None:
        """Wake idle keep-alive connections so they close; busy ones close after answering."""
        with self.lock:
            idle = [h for h, busy in self.open.items() if not busy]
        for handler in idle:
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def count(self) -> tuple[int, int]:
        with self.lock:
            return len(self.open), sum(self.open.values())


CONNECTIONS = Connections()
DB = threading.local()  # one database connection per request thread


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    server_version = "baton-example"

    def setup(self) -> None:
        super().setup()
        CONNECTIONS.add(self)

    def finish(self) -> None:
        CONNECTIONS.remove(self)
        super().finish()

    def parse_request(self) -> bool:
        CONNECTIONS.set_busy(self, True)  # the request line has arrived
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            CONNECTIONS.set_busy(self, False)
            if CONNECTIONS.draining.is_set():
                self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        if os.environ.get("ACCESS_LOG") == "1":
            log(format % args)

    def flag_variant(self) -> tuple[str, bool] | None:
        """With FLAGS_URL and FLAG: the variant of FLAG for this request's user (X-User, else
        a random one), evaluated by Baton over OFREP; (variant, value is true)."""
        if not FLAGS_URL or not FLAG:
            return None
        user = self.headers.get("X-User") or f"anon-{random.getrandbits(32)}"
        body = json.dumps({"context": {"targetingKey": user}}).encode()
        request = urllib.request.Request(
            f"{FLAGS_URL}/ofrep/v1/evaluate/flags/{FLAG}",
            data=body,
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {FLAGS_TOKEN}"} if FLAGS_TOKEN else {}),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                answer = json.loads(resp.read())
        except (OSError, ValueError):
            return None  # no flag service: the code's default (off)
        return str(answer.get("variant")), answer.get("value") is True

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if CONNECTIONS.draining.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/":
            delay = LATENCY_MS + (
                random.expovariate(1.0 / LATENCY_JITTER_MS) if LATENCY_JITTER_MS else 0
            )
            if delay > 0:
                time.sleep(delay / 1000.0)
            rate = float(os.environ.get("ERROR_RATE", "0") or 0)
            flag = self.flag_variant()
            if flag is not None and flag[1]:
                rate = float(os.environ.get("FLAG_ERROR_RATE", "0") or 0)
            extra = {"Baton-Flags": f"{FLAG}={flag[0]}"} if flag is not None else {}
            if rate > 0 and random.random() < rate:
                self.reply(500, b"error on purpose\n", extra=extra)
            else:
                self.reply(200, f"{VERSION}\n".encode(), extra=extra)
        elif url.path == "/version":
            body = {
                "version": VERSION,
                "pid": os.getpid(),
                "port": self.connection.getsockname()[1],
                "instance": os.environ.get("BATON_INSTANCE"),
            }
            self.reply(200, json.dumps(body).encode() + b"\n", "application/json")
        elif url.path == "/up":
            if os.environ.get("NEVER_HEALTHY") == "1" or CONNECTIONS.draining.is_set():
                self.reply(503, b"unhealthy\n")
            else:
                self.reply(200, b"ok\n")
        elif url.path == "/items":
            self.items()
        elif url.path == "/env-hash":
            value = os.environ.get(parse_qs(url.query).get("name", [""])[0])
            if value is None:
                self.reply(404, b"unset\n")
            else:
                self.reply(200, hashlib.sha256(value.encode()).hexdigest().encode() + b"\n")
        elif url.path == "/slow":
            try:
                seconds = min(float(parse_qs(url.query).get("s", ["1"])[0]), 300.0)
            except ValueError:
                self.reply(400, b"s must be a number of seconds\n")
                return
            time.sleep(max(seconds, 0.0))
            self.reply(200, f"{VERSION} slept {seconds:g}\n".encode())
        else:
            self.reply(404, b"not found\n")

    def items(self) -> None:
        """The rows this release's schema (``SCHEMA``, v1 or v2) reads; 500 if it cannot."""
        from db import connect, read_items

        schema = os.environ.get("SCHEMA", "v1")
        try:
            conn = DB.conn if getattr(DB, "conn", None) else connect()
            DB.conn = conn
            rows = read_items(conn, schema)
        except Exception as exc:  # the point: a schema this release cannot read is a 500
            DB.conn = None
            self.reply(500, f"{VERSION} cannot read items: {exc}\n".encode())
            return
        self.reply(200, f"{VERSION} {schema} {len(rows)} items\n".encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if urlsplit(self.path).path == "/echo":
            self.reply(200, body, self.headers.get("Content-Type") or "application/octet-stream")
        else:
            self.reply(404, b"not found\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    args = parser.parse_args(argv)

    if os.environ.get("FAIL_ON_START") == "1":
        log("FAIL_ON_START=1: exiting with status 1")
        return 1
    boot_delay = float(os.environ.get("BOOT_DELAY", "0") or 0)
    if boot_delay > 0:
        log(f"booting for {boot_delay:g}s")
        time.sleep(boot_delay)

    server = Server((args.host, args.port), Handler)
    grace = float(os.environ.get("SHUTDOWN_GRACE", "30"))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if CONNECTIONS.draining.is_set():
            return
        log(f"{signal.Signals(signum).name}: draining")
        CONNECTIONS.draining.set()
        # shutdown() waits for serve_forever to return, so it must not run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"listening on {args.host}:{args.port}")
    server.serve_forever(poll_interval=0.05)
    server.socket.close()  # stop accepting; queued connections are refused

    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        CONNECTIONS.close_idle()
        open_, busy = CONNECTIONS.count()
        if open_ == 0:
            break
        time.sleep(0.02)
    open_, busy = CONNECTIONS.count()
    if busy:
        log(f"grace period over with {busy} request(s) in flight")
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
