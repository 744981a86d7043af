"""The command-line options of ``baton up`` and ``baton server`` that this package serves.

``add_options`` puts them on a click command; ``endpoints_from`` validates them (a bad one
exits 2 before anything starts) and answers the same flags again for the detached server
process that ``baton up --detach`` starts. Tokens are read from the environment, which the
detached process inherits, never from argv.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from baton.observe.tokens import DASHBOARD_TOKEN_ENV, METRICS_TOKEN_ENV

if TYPE_CHECKING:  # imported when used: every `baton` command builds these options
    from baton.observe.endpoints import Endpoints

# ``baton.proxy.accesslog.FORMATS`` and ``baton.observe.logs.FORMATS``, not imported from
# there: those modules load asyncio and logging, and every `baton` command builds these
# options (tests/unit/test_cli_start.py keeps them equal).
ACCESS_LOG_FORMATS = ("json", "combined")
LOG_FORMATS = ("text", "json")

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = (
    click.option(
        "--metrics",
        "metrics",
        default=None,
        metavar="HOST:PORT",
        help="Serve Prometheus metrics (control plane + proxy) on HTTP at /metrics. Off"
        f" loopback needs ${METRICS_TOKEN_ENV}.",
    ),
    click.option(
        "--dashboard",
        "dashboard",
        default=None,
        metavar="HOST:PORT",
        help=f"Serve the web dashboard. Off loopback needs ${DASHBOARD_TOKEN_ENV} and TLS.",
    ),
    click.option("--dashboard-cert", default=None, help="TLS certificate (PEM) of the dashboard."),
    click.option("--dashboard-key", default=None, help="TLS private key (PEM) of the dashboard."),
    click.option(
        "--dashboard-insecure",
        is_flag=True,
        help="Allow the dashboard off loopback without TLS (the token travels in clear).",
    ),
    click.option(
        "--access-log",
        default=None,
        metavar="PATH",
        help="The proxy appends one line per answered request here (off by default).",
    ),
    click.option(
        "--access-log-format",
        type=click.Choice(ACCESS_LOG_FORMATS),
        default="json",
        show_default=True,
        help="json, or combined (plus app, release and request id).",
    ),
    click.option(
        "--access-log-sample",
        type=click.FloatRange(0.0, 1.0, min_open=True),
        default=1.0,
        show_default=True,
        help="Fraction of requests in the access log.",
    ),
    click.option(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="Export deployments as OTLP traces (needs the OpenTelemetry SDK installed;"
        " default $OTEL_EXPORTER_OTLP_ENDPOINT).",
    ),
    click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="The daemon's log lines: text, or JSON with the deployment id and version.",
    ),
)


def add_options(f: F) -> F:
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def endpoints_from(flags: dict[str, Any]) -> tuple[Endpoints, str, list[str]]:
    """(validated endpoints, log format, the same flags as argv for ``baton server``)."""
    from baton.observe import otlp
    from baton.observe.endpoints import Endpoints

    endpoints = Endpoints.from_flags(
        metrics=flags.get("metrics"),
        dashboard=flags.get("dashboard"),
        dashboard_insecure=bool(flags.get("dashboard_insecure")),
        dashboard_cert=flags.get("dashboard_cert"),
        dashboard_key=flags.get("dashboard_key"),
    )
    proxy_args = Endpoints.access_log_args(
        flags.get("access_log"),
        str(flags.get("access_log_format") or "json"),
        float(flags.get("access_log_sample") or 1.0),
    )
    otlp_url = otlp.endpoint_from(flags.get("otlp_endpoint"))
    endpoints = dataclasses.replace(endpoints, proxy_args=proxy_args, otlp=otlp_url)
    argv: list[str] = []
    for key in ("metrics", "dashboard"):
        if flags.get(key):
            argv += [f"--{key.replace('_', '-')}", str(flags[key])]
    for key, path in (
        ("dashboard_cert", endpoints.dashboard_cert),
        ("dashboard_key", endpoints.dashboard_key),
    ):
        if path is not None:
            argv += [f"--{key.replace('_', '-')}", str(path.absolute())]
    if proxy_args:
        argv += list(proxy_args)
    if flags.get("otlp_endpoint"):
        argv += ["--otlp-endpoint", str(flags["otlp_endpoint"])]
    if flags.get("dashboard_insecure"):
        argv.append("--dashboard-insecure")
    log_format = str(flags.get("log_format") or "text")
    argv += ["--log-format", log_format]
    return endpoints, log_format, argv
