"""Client of the proxy's admin API (JSON over HTTP on a Unix socket).

The control plane's only way to change what users see: it sends route tables (whole or one
app), drains and undrains targets, and reads the per-release metrics used by verification.
The contract is docs/proxy-admin-api.md. A proxy that does not answer raises
``ProxyUnavailable``; a table the proxy rejects raises ``RouteTableError`` with the proxy's
message (the proxy then keeps its old table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from baton.errors import BatonError, ProxyAnswered, RouteTableError


class ProxyUnavailable(BatonError):
    """The proxy's admin socket does not answer (it is starting, restarting or gone)."""

    exit_code = 1


class ProxyClient:
    """One client per admin socket; reuse it (it keeps one connection pool)."""

    def __init__(self, socket_path: Path | str, timeout: float = 10.0) -> None:
        self.socket_path = str(socket_path)
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0),
            )
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        text: bool = False,
    ) -> Any:
        limit = aiohttp.ClientTimeout(total=timeout if timeout is not None else self._timeout)
        try:
            async with self._client().request(
                method,
                f"http://proxy{path}",
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=limit,
            ) as resp:
                raw = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProxyUnavailable(
                f"the proxy does not answer on {self.socket_path}: {exc or type(exc).__name__}"
            ) from exc
        if status >= 400:
            try:
                message = json.loads(raw).get("error", raw)
            except (ValueError, AttributeError):
                message = raw
            if status in (400, 409):
                raise RouteTableError(f"the proxy refused {method} {path}: {message}")
            raise ProxyAnswered(
                status, f"the proxy answered {status} to {method} {path}: {message}"
            )
        if text:
            return raw
        try:
            return json.loads(raw) if raw else {}
        except ValueError as exc:
            raise BatonError(
                f"the proxy answered {method} {path} with non-JSON: {raw[:200]}"
            ) from exc

    async def health(self, timeout: float = 2.0) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/health", timeout=timeout)
        return result

    async def routes(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/routes")
        return result

    async def put_routes(self, table: dict[str, Any]) -> int:
        """Replace the whole table atomically; returns the new generation."""
        result = await self._call("PUT", "/routes", table)
        return int(result.get("generation", 0))

    async def put_app(self, app: str, route: dict[str, Any]) -> int:
        result = await self._call("PUT", f"/apps/{app}", route)
        return int(result.get("generation", 0))

    async def delete_app(self, app: str) -> int | None:
        """Remove one app from the table; None when the proxy did not have it."""
        try:
            result = await self._call("DELETE", f"/apps/{app}")
        except ProxyAnswered as exc:
            if exc.status == 404:
                return None
            raise
        return int(result.get("generation", 0))

    async def targets(self) -> dict[str, dict[str, Any]]:
        result = await self._call("GET", "/targets")
        targets: dict[str, dict[str, Any]] = result.get("targets", {})
        return targets

    async def drain(self, targets: list[str], wait: float) -> dict[str, Any]:
        """Stop sending new requests to ``targets``; with ``wait``, return once they are idle."""
        result: dict[str, Any] = await self._call(
            "POST", "/drain", {"targets": targets, "wait": wait}, timeout=wait + 10.0
        )
        return result

    async def undrain(self, targets: list[str]) -> None:
        await self._call("POST", "/undrain", {"targets": targets})

    async def metrics(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/metrics.json")
        return result

    async def fuses(self, after: int = 0, wait: float = 0.0) -> dict[str, Any]:
        """The canary fuses; with ``wait``, returns early once a trip numbered above
        ``after`` happened (``new`` lists those trips)."""
        result: dict[str, Any] = await self._call(
            "GET", f"/fuses?after={after}&wait={wait:g}", timeout=wait + 10.0
        )
        return result

    # -- TLS (proxy/tls.py) and ACME HTTP-01 answers (server/certs.py) -----------------

    async def tls_status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/tls")
        return result

    async def reload_certificates(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/tls/reload")
        return result

    async def put_challenge(self, token: str, key_authorization: str) -> None:
        await self._call(
            "PUT", f"/acme/challenges/{token}", {"key_authorization": key_authorization}
        )

    async def delete_challenge(self, token: str) -> None:
        await self._call("DELETE", f"/acme/challenges/{token}")

    async def forget_wanted(self, name: str) -> None:
        await self._call("DELETE", f"/tls/wanted/{name}")

    async def metrics_text(self) -> str:
        """The per-release metrics in the Prometheus text format."""
        result: str = await self._call("GET", "/metrics", text=True)
        return result
