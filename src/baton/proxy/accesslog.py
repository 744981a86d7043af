"""The proxy's access log: one line per answered request, off the request path.

Theory of operation. ``AccessLog.add`` runs on the request path, so it only decides
sampling and appends one tuple of values it already has (no formatting, no I/O) to an
in-memory batch. Every ``FLUSH_INTERVAL`` (or once ``FLUSH_AT`` lines wait) the batch is
handed to a worker thread that formats it (JSON or the combined log format) and appends it
to the file in one write. If the disk falls behind, lines beyond ``MAX_PENDING`` are
dropped and counted, never the requests. Each line carries the app, the release that
answered, and the request id (also sent to the app and the client as ``X-Request-Id``).
The query string is left out of the logged path: it often carries tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("json", "combined")
FLUSH_INTERVAL = 0.5
FLUSH_AT = 2000
MAX_PENDING = 200_000

# (wall time, client ip, method, path, http11, status, app, release, target, request id,
#  ttfb seconds, total seconds)
Entry = tuple[float, bytes, bytes, bytes, bool, int, str, str, str, bytes, float, float]


@dataclass(frozen=True)
class AccessLogSpec:
    path: Path
    fmt: str = "json"
    sample: float = 1.0

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if not 0.0 < self.sample <= 1.0:
            raise ValueError(
                f"sample: expected a fraction above 0 and at most 1, got {self.sample}"
            )


def _path_only(url: bytes) -> str:
    path, _, query = url.partition(b"?")
    text = path.decode("latin-1")
    return text + "?..." if query else text


def format_json(entry: Entry) -> str:
    t, ip, method, url, http11, status, app, release, target, rid, ttfb, total = entry
    return json.dumps(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            + f".{int(t % 1 * 1000):03d}Z",
            "client": ip.decode("latin-1"),
            "method": method.decode("latin-1"),
            "path": _path_only(url),
            "protocol": "HTTP/1.1" if http11 else "HTTP/1.0",
            "status": status,
            "app": app,
            "release": release,
            "target": target,
            "request_id": rid.decode("latin-1"),
            "ttfb_ms": round(ttfb * 1000, 3),
            "duration_ms": round(total * 1000, 3),
        },
        separators=(",", ":"),
    )


def format_combined(entry: Entry) -> str:
    """Apache/nginx "combined" (referer and user agent are not kept: "-"), then Baton's
    fields as key=value."""
    t, ip, method, url, http11, status, app, release, target, rid, ttfb, total = entry
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(t))
    request = f"{method.decode('latin-1')} {_path_only(url)} {'HTTP/1.1' if http11 else 'HTTP/1.0'}"
    return (
        f'{ip.decode("latin-1")} - - [{stamp}] "{request}" {status} - "-" "-"'
        f" app={app} release={release} target={target} request_id={rid.decode('latin-1')}"
        f" ttfb={ttfb * 1000:.3f}ms duration={total * 1000:.3f}ms"
    )


class AccessLog:
    def __init__(self, spec: AccessLogSpec) -> None:
        self.spec = spec
        self.sample = spec.sample
        self._batch: list[Entry] = []
        self.dropped = 0
        self.written = 0
        self._format = format_json if spec.fmt == "json" else format_combined
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fd = os.open(spec.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def add(
        self,
        client_ip: bytes,
        method: bytes,
        url: bytes,
        http11: bool,
        status: int,
        app: str,
        release: str,
        target: str,
        request_id: bytes,
        ttfb: float,
        total: float,
    ) -> None:
        """One answered request (the request path: append only)."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        batch = self._batch
        if len(batch) >= MAX_PENDING:
            self.dropped += 1
            return
        batch.append(
            (time.time(), client_ip, method, url, http11, status, app, release, target,
             request_id, ttfb, total)
        )  # fmt: skip
        if len(batch) == FLUSH_AT:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        await asyncio.to_thread(self._write, batch)

    def _write(self, batch: list[Entry]) -> None:
        data = ("\n".join(self._format(e) for e in batch) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.written += len(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        os.close(self._fd)

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "dropped": self.dropped, "pending": len(self._batch)}
