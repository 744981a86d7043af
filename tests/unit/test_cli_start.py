"""What the CLI's light start-up rests on: the request it writes itself, and the constants
it keeps instead of importing their modules (integration: tests/integration/test_cli_startup.py).
"""

from __future__ import annotations

import pytest

from baton.cli_support import request_bytes
from baton.errors import UsageError
from baton.observe import logs
from baton.observe.cli import ACCESS_LOG_FORMATS, LOG_FORMATS
from baton.proxy import accesslog


def test_up_offers_the_log_formats_the_daemon_and_the_proxy_write() -> None:
    assert ACCESS_LOG_FORMATS == accesslog.FORMATS
    assert LOG_FORMATS == logs.FORMATS


def test_a_request_with_a_body_says_its_length_and_type() -> None:
    data = request_bytes("POST", "/deploy", b'{"version": "v1"}')
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /deploy HTTP/1.1",
        b"Host: baton",
        b"Accept-Encoding: identity",
        b"Content-Length: 17",
        b"Content-Type: application/json",
    ]
    assert body == b'{"version": "v1"}'


def test_a_request_without_a_body() -> None:
    assert request_bytes("GET", "/status?app=shop", None) == (
        b"GET /status?app=shop HTTP/1.1\r\nHost: baton\r\nAccept-Encoding: identity\r\n\r\n"
    )
    assert b"Content-Length: 0\r\n" in request_bytes("POST", "/down", None)


@pytest.mark.parametrize("path", ["/a b", "/x\r\nX-Evil: 1", "status", "/\x00", "/logs?app=café"])
def test_a_path_that_would_break_the_request_is_refused(path: str) -> None:
    with pytest.raises(UsageError, match="not a request path"):
        request_bytes("GET", path, None)
