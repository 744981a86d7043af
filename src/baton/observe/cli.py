"""The command-line options of ``baton up`` and ``baton server`` that this package serves.

``add_options`` puts them on a click command; ``endpoints_from`` validates them (a bad one
exits 2 before anything starts) and answers the same flags again for the detached server
process that ``baton up --detach`` starts. Tokens are read from the environment, which the
detached process inherits, never from argv.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from baton.observe.endpoints import DASHBOARD_TOKEN_ENV, METRICS_TOKEN_ENV, Endpoints
from baton.observe.logs import FORMATS

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
        "--log-format",
        type=click.Choice(FORMATS),
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
    endpoints = Endpoints.from_flags(
        metrics=flags.get("metrics"),
        dashboard=flags.get("dashboard"),
        dashboard_insecure=bool(flags.get("dashboard_insecure")),
        dashboard_cert=flags.get("dashboard_cert"),
        dashboard_key=flags.get("dashboard_key"),
    )
    argv: list[str] = []
    for key in ("metrics", "dashboard", "dashboard_cert", "dashboard_key"):
        if flags.get(key):
            argv += [f"--{key.replace('_', '-')}", str(flags[key])]
    if flags.get("dashboard_insecure"):
        argv.append("--dashboard-insecure")
    log_format = str(flags.get("log_format") or "text")
    argv += ["--log-format", log_format]
    return endpoints, log_format, argv
