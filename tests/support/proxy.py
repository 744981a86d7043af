"""A real ``baton proxy`` child process for tests, and a small client for its admin API."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.procs import LOOPBACK, ManagedProcess, free_port


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def admin_call(
    sock: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One admin API call; returns (status, decoded JSON or text)."""
    conn = _UnixHTTPConnection(sock, timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, json.loads(payload)
        return resp.status, payload.decode()
    finally:
        conn.close()


class ProxyProcess(ManagedProcess):
    """``python -m baton.proxy`` on a free port with its admin socket in a temp dir."""

    def __init__(self, *extra_args: str, port: int | None = None, admin: str | None = None) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="baton-proxy-")
        # ``admin`` reuses a socket path (and so the saved route table beside it): a restart.
        self.admin = admin or str(Path(self.tmp.name) / "proxy.sock")
        port = free_port() if port is None else port
        self.listen = f"{LOOPBACK}:{port}"
        cmd = [
            sys.executable,
            "-m",
            "baton.proxy",
            "--listen",
            self.listen,
            "--admin",
            self.admin,
            *extra_args,
        ]
        super().__init__(
            cmd, port=port, unix_socket=self.admin, name="baton-proxy", stop_timeout=35.0
        )
        self.port: int = port

    def close(self) -> None:
        super().close()
        self.tmp.cleanup()

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return admin_call(self.admin, method, path, body, **kw)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, payload = self.call(method, path, body, **kw)
        assert status == 200, f"{method} {path} -> {status}: {payload}"
        return payload

    def route(
        self, *releases: tuple[str, int, list[str]], app: str = "web", **app_fields: Any
    ) -> int:
        """Point ``app`` at the given (name, weight, targets) releases; returns the generation."""
        spec = {
            "listen": self.listen,
            "releases": [{"name": n, "weight": w, "targets": t} for n, w, t in releases],
            **app_fields,
        }
        return int(self.ok("PUT", f"/apps/{app}", spec)["generation"])

    def release_metrics(self, release: str, app: str = "web") -> dict[str, Any]:
        apps = self.ok("GET", "/metrics.json")["apps"]
        result: dict[str, Any] = apps.get(app, {}).get("releases", {}).get(release, {})
        return result

    @property
    def url(self) -> str:
        return f"http://{self.listen}"


class TlsProxyProcess(ProxyProcess):
    """A proxy whose app listener speaks HTTPS (HTTP/2 or HTTP/1.1 by ALPN).

    It starts on a plain port (that is how readiness is seen), then ``port``/``listen``
    name a second port that every ``route`` serves over TLS with ``cert``/``key``: the
    listener opens with the first route, as an app's HTTPS listener does.
    """

    def __init__(self, cert: Path, key: Path, *extra_args: str) -> None:
        super().__init__(*extra_args)
        self.tls_fields = {"certificate": str(cert), "key": str(key)}
        self.tls_port = free_port()

    def start(self) -> TlsProxyProcess:
        super().start()
        self.port = self.tls_port
        self.listen = f"{LOOPBACK}:{self.tls_port}"
        return self

    def route(
        self, *releases: tuple[str, int, list[str]], app: str = "web", **app_fields: Any
    ) -> int:
        return super().route(*releases, app=app, **{"tls": self.tls_fields, **app_fields})

    @property
    def url(self) -> str:
        return f"https://{self.listen}"
