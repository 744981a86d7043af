"""The access log's line formats, its sampling, and its batching off the request path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baton.proxy.accesslog import AccessLog, AccessLogSpec, format_combined, format_json

ENTRY = (
    1796007856.25, b"127.0.0.1", b"GET", b"/cart?id=7&token=x", True, 200, "shop", "v2",
    "127.0.0.1:4100", b"ab12-7", 0.0042, 0.0051,
)  # fmt: skip


def test_json_lines_carry_app_release_and_request_id_without_the_query() -> None:
    line = json.loads(format_json(ENTRY))
    assert line == {
        "time": "2026-11-30T03:04:16.250Z",
        "client": "127.0.0.1",
        "method": "GET",
        "path": "/cart?...",
        "protocol": "HTTP/1.1",
        "status": 200,
        "app": "shop",
        "release": "v2",
        "target": "127.0.0.1:4100",
        "request_id": "ab12-7",
        "ttfb_ms": 4.2,
        "duration_ms": 5.1,
    }


def test_combined_lines_are_the_combined_format_then_batons_fields() -> None:
    assert format_combined(ENTRY) == (
        '127.0.0.1 - - [30/Nov/2026:03:04:16 +0000] "GET /cart?... HTTP/1.1" 200 - "-" "-"'
        " app=shop release=v2 target=127.0.0.1:4100 request_id=ab12-7"
        " ttfb=4.200ms duration=5.100ms"
    )


@pytest.mark.parametrize(("fmt", "sample"), [("xml", 1.0), ("json", 0.0), ("json", 1.5)])
def test_bad_specs_are_refused(tmp_path: Path, fmt: str, sample: float) -> None:
    with pytest.raises(ValueError):
        AccessLogSpec(tmp_path / "a.log", fmt, sample)


async def test_lines_are_batched_and_sampled(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(AccessLogSpec(path, "json", 0.5))
    log.start()
    for n in range(4000):
        log.add(b"127.0.0.1", b"GET", b"/", True, 200, "shop", "v1", "-", b"r%d" % n, 0.001, 0.002)
    assert not path.read_text()  # nothing was written on the request path
    await log.close()
    lines = path.read_text().splitlines()
    assert 1600 < len(lines) < 2400, len(lines)
    assert log.written == len(lines) and log.dropped == 0
