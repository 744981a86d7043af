"""The daemon's optional HTTP endpoints: ``--metrics`` (Prometheus) and ``--dashboard``.

It owns their options (``Endpoints``, checked before anything starts: an address off
loopback needs a token, and the dashboard off loopback needs TLS unless told otherwise), the
bearer-token check both share, and the metrics app: ``GET /metrics`` answers the control
plane's own metrics followed by the proxy's per-release metrics (fetched from its admin
socket at scrape time), ``GET /metrics/control`` and ``GET /metrics/proxy`` each alone.
Tokens come from the environment (``BATON_METRICS_TOKEN``, ``BATON_DASHBOARD_TOKEN``) so they
never show in ``ps`` or in logs.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from baton import addresses
from baton.deploy.proxyclient import ProxyClient
from baton.errors import BatonError, UsageError
from baton.observe.metrics import METRICS
from baton.observe.tokens import DASHBOARD_TOKEN_ENV, METRICS_TOKEN_ENV

PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_address(flag: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); UsageError naming the flag."""
    try:
        return addresses.parse_address(value)
    except ValueError as exc:
        raise UsageError(
            f"{flag}: expected HOST:PORT (e.g. 127.0.0.1:9180), got {value!r} ({exc})"
        ) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoints:
    """What ``baton up`` / ``baton server`` were asked to serve besides the API."""

    metrics: tuple[str, int] | None = None
    metrics_token: str | None = None
    dashboard: tuple[str, int] | None = None
    dashboard_token: str | None = None
    dashboard_insecure: bool = False
    dashboard_cert: Path | None = None
    dashboard_key: Path | None = None
    proxy_args: tuple[str, ...] = ()  # flags the proxy is started with (its access log)
    otlp: str | None = None  # where deployment traces go (baton.observe.otlp)

    @classmethod
    def from_flags(
        cls,
        *,
        metrics: str | None = None,
        dashboard: str | None = None,
        dashboard_insecure: bool = False,
        dashboard_cert: str | None = None,
        dashboard_key: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> Endpoints:
        """Validated options; UsageError (exit 2, nothing started) names the flag."""
        env = dict(os.environ if environ is None else environ)
        metrics_token = env.get(METRICS_TOKEN_ENV) or None
        dashboard_token = env.get(DASHBOARD_TOKEN_ENV) or None
        for name, token in (
            (METRICS_TOKEN_ENV, metrics_token),
            (DASHBOARD_TOKEN_ENV, dashboard_token),
        ):
            if token is not None and len(token) < 16:
                raise UsageError(f"{name}: expected a token of at least 16 characters")
        m = parse_address("--metrics", metrics) if metrics else None
        d = parse_address("--dashboard", dashboard) if dashboard else None
        if m and not is_loopback(m[0]) and not metrics_token:
            raise UsageError(
                f"--metrics {metrics}: off loopback the metrics need a token;"
                f" set {METRICS_TOKEN_ENV}"
            )
        if (dashboard_cert is None) != (dashboard_key is None):
            raise UsageError("--dashboard-cert and --dashboard-key go together")
        cert = Path(dashboard_cert) if dashboard_cert else None
        key = Path(dashboard_key) if dashboard_key else None
        for flag, path in (("--dashboard-cert", cert), ("--dashboard-key", key)):
            if path is not None and not path.is_file():
                raise UsageError(f"{flag}: no such file: {path}")
        if d and not is_loopback(d[0]):
            if not dashboard_token:
                raise UsageError(
                    f"--dashboard {dashboard}: off loopback the dashboard needs a token;"
                    f" set {DASHBOARD_TOKEN_ENV}"
                )
            if cert is None and not dashboard_insecure:
                raise UsageError(
                    f"--dashboard {dashboard}: off loopback the dashboard needs TLS"
                    " (--dashboard-cert and --dashboard-key), or --dashboard-insecure"
                )
        return cls(m, metrics_token, d, dashboard_token, dashboard_insecure, cert, key)

    @classmethod
    def access_log_args(cls, path: str | None, fmt: str, sample: float) -> tuple[str, ...]:
        """The proxy's access-log flags; UsageError when the file cannot be written."""
        if path is None:
            return ()
        target = Path(path).expanduser().absolute()
        if not target.parent.is_dir():
            raise UsageError(f"--access-log: no such directory: {target.parent}")
        if target.is_dir():
            raise UsageError(f"--access-log: {target} is a directory")
        return (
            "--access-log",
            str(target),
            "--access-log-format",
            fmt,
            "--access-log-sample",
            repr(sample),
        )

    def tls(self) -> ssl.SSLContext | None:
        if self.dashboard_cert is None or self.dashboard_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.dashboard_cert, self.dashboard_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--dashboard-cert/--dashboard-key: cannot load them: {exc}") from None
        return context


def bearer_ok(request: web.Request, token: str | None, cookie: str | None = None) -> bool:
    """True without a token, or when the request carries it (header, else ``cookie``)."""
    if token is None:
        return True
    offered = ""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        offered = header[7:].strip()
    elif cookie is not None:
        offered = request.cookies.get(cookie, "")
    return token_matches(offered, token)


def token_matches(offered: str, token: str) -> bool:
    """Constant-time comparison, so the answer's timing tells nothing about the token."""
    return bool(offered) and hmac.compare_digest(offered.encode(), token.encode())


def metrics_app(proxy: ProxyClient, token: str | None) -> web.Application:
    async def proxy_text() -> str:
        try:
            text: str = await proxy.metrics_text()
        except BatonError as exc:
            return f"# the proxy's metrics are unavailable: {str(exc).splitlines()[0]}\n"
        return text

    def guarded(
        handler: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def check(request: web.Request) -> web.Response:
            if not bearer_ok(request, token):
                return web.Response(
                    status=401,
                    text="401: a valid 'Authorization: Bearer <token>' is needed\n",
                    headers={"WWW-Authenticate": 'Bearer realm="baton"'},
                )
            return await handler(request)

        return check

    async def both(request: web.Request) -> web.Response:
        text = METRICS.to_prometheus() + await proxy_text()
        return web.Response(body=text.encode(), headers={"Content-Type": PROM_CONTENT_TYPE})

    async def control(request: web.Request) -> web.Response:
        return web.Response(
            body=METRICS.to_prometheus().encode(), headers={"Content-Type": PROM_CONTENT_TYPE}
        )

    async def proxy_only(request: web.Request) -> web.Response:
        return web.Response(
            body=(await proxy_text()).encode(), headers={"Content-Type": PROM_CONTENT_TYPE}
        )

    app = web.Application()
    app.add_routes(
        [
            web.get("/metrics", guarded(both)),
            web.get("/metrics/control", guarded(control)),
            web.get("/metrics/proxy", guarded(proxy_only)),
        ]
    )
    return app
