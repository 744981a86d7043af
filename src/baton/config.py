"""baton.yml: the one file a user writes, validated into typed models.

This module owns the meaning of every config key: its type, its default, the values it
accepts and the words of the error when it gets something else. It reads the file with
``yaml.safe_load`` (rejecting duplicate keys), validates it with pydantic models that forbid
unknown keys, and turns every validation failure into a ``ConfigError`` that names the file,
the dotted key (``deploy.drain_timeout``, ``proxy.hosts[0]``) and what was expected. No
pydantic message ever reaches a user. Durations are stored as float seconds and percentages
as fractions, so the rest of Baton never parses a unit.

Keys and defaults (``defaults_table()`` returns this table for the README):

================================  ==============  ===================================================
key                               default         meaning
================================  ==============  ===================================================
app                               (required)      app name, ``[a-z0-9-]+``
runtime                           process         where instances run: process or docker
proxy.listen                      127.0.0.1:8080  address the proxy listens on for this app
proxy.hosts                       []              Host names routed to the app (empty = any Host)
proxy.path_prefix                 /               path prefix routed to the app
proxy.queue_timeout               10s             with no healthy target, how long a request
                                                  waits for one (0 = 503 at once)
proxy.queue_limit                 1000            requests that may wait; more get 503 at once
proxy.trusted_proxies             []              CIDRs whose X-Forwarded-For/Proto/Host are kept
proxy.proxy_protocol              false           require a PROXY protocol v1/v2 header on listen
proxy.http_listen                 0.0.0.0:80 (tls) plain-HTTP listener of a TLS app
proxy.tls.certificate / key       none            PEM chain and key (absolute paths)
proxy.tls.acme.email              (required)      ACME account contact (with acme)
proxy.tls.acme.directory          production      production, staging or an https URL
proxy.tls.acme.ca_bundle          none            CA bundle for a private ACME server
proxy.tls.acme.renew_before       30d             renew when less than this is left
proxy.tls.on_demand_ask           none            URL allowing on-demand names (200)
proxy.tls.redirect                true            plain HTTP answers 308 to https
proxy.tls.hsts                    none            Strict-Transport-Security max-age
run.command                       (required)      process: string (run by /bin/sh -c) or list
                                                  (exec'd); docker: optional CMD override
run.cwd                           .               working directory, relative to baton.yml
run.env                           {}              extra environment variables
run.image                         (docker: req.)  docker: the image, e.g. shop:1.4.2
run.port                          (docker: req.)  docker: the app's port inside the container
run.volumes                       []              docker: "SOURCE:/TARGET[:ro|rw]" mounts
run.memory                        none            docker: memory limit, e.g. 256m
run.cpus                          none            docker: CPU limit, e.g. 0.5
run.network                       none            docker: a user-defined network to join
run.exclude                       []              process: globs left out of the release snapshot
instances                         1               instances per release
health.path                       none            readiness path (none = ready on TCP accept;
                                                  docker: on one HTTP answer, any status)
health.interval                   100ms           time between readiness checks
health.timeout                    2s              time-out of one readiness check
health.success_threshold          2               consecutive 2xx answers needed
deploy.strategy                   blue-green      blue-green, rolling or canary
deploy.max_surge                  1               rolling: instances replaced at a time
deploy.ready_timeout              60s             time an instance has to become ready
deploy.drain_timeout              30s             longest wait for in-flight requests to finish
deploy.stop_timeout               10s             SIGTERM, then SIGKILL after this
deploy.keep_previous              10m             how long the previous release stays warm
deploy.keep_releases              5               release snapshots kept for rollback
deploy.verify                     10s             watch window after the switch (0 = off)
deploy.max_error_rate             5%              error rate during verify that rolls back
deploy.canary.steps               5%/60s, 25%/60s, 50%/2m
                                                  canary: new release's weight and hold, per step
deploy.canary.stickiness          cookie          cookie, header:<name>, client-ip or none
deploy.canary.analysis.min_requests 200           requests per release per step before a verdict
deploy.canary.analysis.max_error_rate 1%          absolute error ceiling of the canary
deploy.canary.analysis.max_error_rate_increase 0.5%  canary minus baseline error rate, at most
deploy.canary.analysis.max_latency_ratio 1.25     canary p95 / baseline p95, at most
deploy.canary.analysis.confidence 0.95            confidence of the statistical tests
deploy.canary.max_hold_extensions 3               extra holds of an inconclusive step, then fail
deploy.canary.release_secret      none            X-Baton-Secret that lets a client pin a release
deploy.canary.retry_on_stable     GET, HEAD, OPTIONS
                                                  canary 5xx retried on the stable release (methods,
                                                  true or false)
hooks.build                       none            process: shell command run in the snapshot first
deploy.canary.pin_from            none            networks (CIDR) whose clients may pin without it
deploy.signals.window             5m              new release's first N vs previous one's last N
deploy.signals.max_latency_ratio  1.5             new p95 / previous p95 above this is flagged
deploy.signals.max_error_rate_increase 1%         new minus previous error rate above this: flagged
deploy.signals.min_requests       50              requests per release before a judgement
deploy.signals.rollback           false           a flagged regression during verify switches back
hooks.pre_deploy                  none            shell command before anything starts
hooks.smoke_test                  none            shell command against a new instance
hooks.post_deploy                 none            shell command after the deployment
hooks.timeout                     10m             longest time a hook may run
migrations.expand                 none            schema change run before new instances start
migrations.contract               none            schema change run once the release proved itself
migrations.contract_after         24h             live time before the contract may run
migrations.auto_contract          false           run the contract by itself when allowed
migrations.status                 none            command shown by `baton migrate status`
secrets                           []              names of secret env variables (values never in
                                                  baton.yml: .baton/secrets or the environment)
================================  ==============  ===================================================

Accepted forms. A duration is a number of seconds (``30``, ``0.5``) or a string of one or more
``<number><unit>`` parts with unit ``ms``, ``s``, ``m`` or ``h`` (``500ms``, ``2s``, ``1m30s``).
A percentage is ``"5%"`` or a bare fraction between 0 and 1 (``0.05``); a bare number above 1
is refused because ``5`` is ambiguous. ``health.interval`` may be longer or shorter than
``health.timeout``: the first is the polling period, the second bounds one check.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from baton.cluster.settings import strip_fleet_keys
from baton.errors import ConfigError

# --------------------------------------------------------------------------- values


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "y": 365 * 86400.0}
_DURATION_HINT = "a duration like 30s or 500ms"


def _shown(value: object) -> str:
    """How a bad value is quoted back to the user, in YAML's words rather than Python's."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def parse_duration(value: object) -> float:
    """Seconds from ``"100ms"``, ``"2s"``, ``"10m"``, ``"1h"``, ``"1m30s"`` or a plain number.

    Raises ``ValueError`` (with a message fit for a user) for negatives, NaN, infinities,
    booleans and anything else.
    """
    seconds: float
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, got {_shown(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if not text:
            raise ValueError(f"expected {_DURATION_HINT}, got {_shown(value)}")
        if text.startswith("-") and text != "-":
            try:
                parse_duration(text[1:])
            except ValueError:
                raise ValueError(f"expected {_DURATION_HINT}, got {_shown(value)}") from None
            raise ValueError(f"expected a duration of 0 or more (like 30s), got {_shown(value)}")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or pos == 0:
                raise ValueError(f"expected {_DURATION_HINT}, got {_shown(value)}") from None
    else:
        raise ValueError(f"expected {_DURATION_HINT}, got {_shown(value)}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"expected {_DURATION_HINT}, got {_shown(value)}")
    if seconds < 0:
        raise ValueError(f"expected a duration of 0 or more (like 30s), got {_shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest readable form: 0.1 → ``100ms``, 90 → ``90s``, 600 → ``10m``, 3600 → ``1h``."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_percent(value: object) -> float:
    """A fraction in [0, 1] from ``"5%"`` (→ 0.05) or a bare fraction such as ``0.05``.

    A bare number above 1 is refused rather than guessed at (``5`` could mean 5% or 500%).
    """
    hint = "a percentage like 5% (or a fraction between 0 and 1)"
    if isinstance(value, bool):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    fraction: float
    if isinstance(value, int | float):
        fraction = float(value)
    elif isinstance(value, str) and value.strip().endswith("%"):
        try:
            fraction = float(value.strip()[:-1].strip()) / 100.0
        except ValueError:
            raise ValueError(f"expected {hint}, got {_shown(value)}") from None
    elif isinstance(value, str):
        try:
            fraction = float(value.strip())
        except ValueError:
            raise ValueError(f"expected {hint}, got {_shown(value)}") from None
    else:
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(
            "expected a percentage between 0% and 100% (like 5%, or a fraction such as 0.05), "
            f"got {_shown(value)}"
        )
    return fraction


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# --------------------------------------------------------------------------- field types


class _Kind:
    """Marks a field's unit in its metadata so ``defaults_table`` can render the default."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


class _Shown:
    """Marks how ``defaults_table`` shows a field's default when it is not a plain value."""

    def __init__(self, text: str) -> None:
        self.text = text


def _duration_at_least(minimum: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < minimum:
            raise ValueError(
                f"expected a duration of at least {format_duration(minimum)}, got {_shown(value)}"
            )
        return seconds

    return check


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer ≥ {minimum}, got {_shown(value)}")
        if maximum is not None and value > maximum:
            raise ValueError(f"expected an integer ≤ {maximum}, got {_shown(value)}")
        return value

    return check


def _string(what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected {what}, got {_shown(value)}")
        return value

    return check


def _one_of(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}, got {_shown(value)}")
        assert isinstance(value, str)
        return value

    return check


def _optional_duration(minimum: float) -> Callable[[object], float | None]:
    required = _duration_at_least(minimum)

    def check(value: object) -> float | None:
        return None if value is None else required(value)

    return check


def _optional_string(what: str) -> Callable[[object], str | None]:
    inner = _string(what)

    def check(value: object) -> str | None:
        return None if value is None else inner(value)

    return check


Duration = Annotated[float, BeforeValidator(_duration_at_least(0.0)), _Kind("duration")]
# Readiness polling and time-outs must be positive: zero would spin or never succeed.
PositiveDuration = Annotated[float, BeforeValidator(_duration_at_least(0.01)), _Kind("duration")]
Percent = Annotated[float, BeforeValidator(parse_percent), _Kind("percent")]

_APP_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
# Set by the runtime for every instance; a user value would be silently overwritten.
_RESERVED_ENV = {"PORT", "BATON_APP", "BATON_VERSION", "BATON_INSTANCE"}


def _check_listen(value: object) -> str:
    hint = "an address like 127.0.0.1:8080 (host:port)"
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    host, _, port_s = value.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if bare != host or not all(_HOST_LABEL.match(p) for p in bare.lower().split(".")):
            raise ValueError(f"expected {hint}, got {_shown(value)}") from None
    return value


def _optional_listen(value: object) -> str | None:
    return None if value is None else _check_listen(value)


def _check_host(value: object) -> str:
    hint = "a host name like shop.example.com or *.example.com (no port, no scheme)"
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    host = value.strip().lower().rstrip(".")
    name = host[2:] if host.startswith("*.") else host
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(p) for p in name.split(".")):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    return host


def _check_path(what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if (
            not isinstance(value, str)
            or not value.startswith("/")
            or any(c.isspace() for c in value)
        ):
            raise ValueError(f"expected {what} starting with /, got {_shown(value)}")
        return value

    return check


def _none_is(default: Callable[[], object]) -> Callable[[object], object]:
    """An empty YAML key (``hosts:``) means the default, not null."""

    def check(value: object) -> object:
        return default() if value is None else value

    return check


def _check_env(value: object) -> object:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: value, got {_shown(value)}")
    return value


def _check_env_value(value: object) -> str:
    # YAML turns `yes`, `on`, `true` into booleans: make the user say which string they mean.
    if isinstance(value, bool) or value is None:
        raise ValueError(
            f'expected a string (quote it, e.g. "{_shown(value)}"), got {_shown(value)}'
        )
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_shown(value)}")
    return value


def _check_exclude(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a glob like '*.log' or 'tmp/', got {_shown(value)}")
    if value.startswith("/") or ".." in Path(value.rstrip("/")).parts:
        raise ValueError(
            f"expected a glob relative to run.cwd (no '/' start, no '..'), got {value!r}"
        )
    return value


def _check_secret_name(value: object) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError(
            f"expected an environment variable name like DB_PASSWORD, got {_shown(value)}"
        )
    if value in _RESERVED_ENV:
        raise ValueError(f"{value} is set by Baton for every instance; choose another name")
    return value


# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_file_path(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(
            f"expected an absolute file path like /etc/ssl/shop.pem, got {_shown(value)}"
        )
    return value


ACME_DIRECTORIES = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}


def _check_directory(value: object) -> str:
    if isinstance(value, str) and value in ACME_DIRECTORIES:
        return ACME_DIRECTORIES[value]
    if isinstance(value, str) and value.startswith("https://") and len(value) > 8:
        return value
    raise ValueError(
        f"expected production, staging or an https:// ACME directory URL, got {_shown(value)}"
    )


def _check_email(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", value):
        raise ValueError(f"expected an email address like ops@example.com, got {_shown(value)}")
    return value


def _check_ask_url(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {_shown(value)}")
    return value


class AcmeConfig(_Section):
    email: Annotated[str, BeforeValidator(_check_email)] = Field(
        description="contact address of the ACME account"
    )
    directory: Annotated[str, BeforeValidator(_check_directory), _Shown("production")] = Field(
        default=ACME_DIRECTORIES["production"],
        description="ACME directory: production, staging (Let's Encrypt) or a URL",
    )
    ca_bundle: Annotated[str | None, BeforeValidator(_check_file_path)] = Field(
        default=None, description="CA certificates (PEM) trusted for a private ACME server"
    )
    renew_before: Annotated[float, BeforeValidator(_duration_at_least(60.0)), _Kind("duration")] = (
        Field(default=30 * 86400.0, description="renew when less than this is left")
    )


class TlsConfig(_Section):
    certificate: Annotated[str | None, BeforeValidator(_check_file_path)] = Field(
        default=None, description="certificate chain (PEM, leaf first) for the app's hosts"
    )
    key: Annotated[str | None, BeforeValidator(_check_file_path)] = Field(
        default=None, description="its private key (PEM, unencrypted)"
    )
    acme: AcmeConfig | None = Field(
        default=None, description="obtain and renew certificates with ACME (HTTP-01)"
    )
    on_demand_ask: Annotated[str | None, BeforeValidator(_check_ask_url)] = Field(
        default=None,
        description="ACME: issue for names under *.suffix hosts when GET URL?domain=NAME is 200",
    )
    redirect: bool = Field(default=True, description="plain HTTP answers 308 to https")
    hsts: Annotated[float | None, BeforeValidator(_optional_duration(0.0)), _Kind("duration")] = (
        Field(default=None, description="Strict-Transport-Security max-age, e.g. 1y")
    )

    @model_validator(mode="after")
    def _one_source(self) -> TlsConfig:
        if (self.certificate is None) != (self.key is None):
            missing = "key" if self.key is None else "certificate"
            raise _KeyedError((missing,), "required with the other of certificate/key")
        if self.certificate is None and self.acme is None:
            raise _KeyedError((), "expected certificate and key, or acme (with an email)")
        if self.certificate is not None and self.acme is not None:
            raise _KeyedError(("acme",), "expected either certificate/key or acme, not both")
        if self.on_demand_ask is not None and self.acme is None:
            raise _KeyedError(("on_demand_ask",), "needs proxy.tls.acme")
        return self


class ProxyConfig(_Section):
    listen: Annotated[str, BeforeValidator(_check_listen)] = Field(
        default="127.0.0.1:8080", description="address the proxy listens on for this app"
    )
    hosts: Annotated[
        list[Annotated[str, BeforeValidator(_check_host)]], BeforeValidator(_none_is(list))
    ] = Field(default_factory=list, description="Host names routed to the app (empty = any Host)")
    path_prefix: Annotated[str, BeforeValidator(_check_path("a path prefix"))] = Field(
        default="/", description="path prefix routed to the app"
    )
    max_connection_age: Annotated[
        float | None, BeforeValidator(_optional_duration(0.1)), _Kind("duration")
    ] = Field(
        default=None,
        description="longest life of a WebSocket or other tunnel, ended with close 1001"
        " (none = until its release is drained)",
    )
    queue_timeout: Annotated[float, BeforeValidator(_check_queue_timeout), _Kind("duration")] = (
        Field(
            default=10.0,
            description="with no healthy target (an instance restarting), how long a request"
            " waits for one before 503 with Retry-After (0 = 503 at once; at most 1h)",
        )
    )
    queue_limit: Annotated[int, BeforeValidator(_int_at_least(0, 1_000_000))] = Field(
        default=1000,
        description="requests that may wait for a healthy target; more get 503 at once",
    )
    trusted_proxies: Annotated[list[str], BeforeValidator(_check_cidrs)] = Field(
        default_factory=list,
        description="CIDRs of proxies in front of Baton whose X-Forwarded-For/Proto/Host are"
        " kept and extended; from anyone else they are replaced",
    )
    proxy_protocol: Annotated[bool, BeforeValidator(_check_bool), _Shown("false")] = Field(
        default=False,
        description="require a PROXY protocol v1/v2 header on every connection to"
        " proxy.listen (behind a TCP load balancer); apps sharing the address must agree",
    )
    http_listen: Annotated[str | None, BeforeValidator(_optional_listen)] = Field(
        default=None,
        description="plain-HTTP listener of a TLS app: redirects and ACME HTTP-01"
        " (none = 0.0.0.0:80 when proxy.tls is set)",
    )
    tls: TlsConfig | None = Field(default=None, description="serve proxy.listen over HTTPS")

    @field_validator("hosts")
    @classmethod
    def _unique_hosts(cls, hosts: list[str]) -> list[str]:
        for i, host in enumerate(hosts):
            if host in hosts[:i]:
                raise ValueError(f"expected each host once, got {host!r} twice")
        return hosts

    @field_validator("path_prefix")
    @classmethod
    def _normalise_prefix(cls, prefix: str) -> str:
        if any(c in prefix for c in "?#"):
            raise ValueError(f"expected a path prefix without ? or #, got {prefix!r}")
        return prefix.rstrip("/") or "/"

    @model_validator(mode="after")
    def _proxy_protocol_is_plain(self) -> ProxyConfig:
        # The PROXY header comes before the TLS handshake, and the TLS layer reads first.
        if self.proxy_protocol and self.tls is not None:
            raise _KeyedError(
                ("proxy_protocol",),
                "not supported on an HTTPS listener (proxy.tls): terminate TLS in front of"
                " Baton, or let the load balancer pass TCP without a PROXY header",
            )
        return self


def _check_queue_timeout(value: object) -> float:
    seconds = parse_duration(value)
    if seconds > 3600:
        raise ValueError(f"expected a duration of at most 1h, got {_shown(value)}")
    return seconds


def _check_cidrs(value: object) -> list[str]:
    from baton.proxy.forwarded import parse_networks

    if value is None:
        return []
    try:
        return list(parse_networks(value))
    except ValueError as exc:
        text = str(exc)
        if text.startswith("["):  # "[1]: expected ..." -> say which entry in words
            index, _, rest = text[1:].partition("]: ")
            raise ValueError(f"entry {index}: {rest}") from None
        raise


def _check_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_shown(value)}")
    return value


def _check_command(value: object) -> str | list[str] | None:
    hint = "a command: a string (run by /bin/sh -c) or a non-empty list of strings"
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(i, str) and i for i in value):
        return value
    raise ValueError(f"expected {hint}, got {_shown(value)}")


_IMAGE = re.compile(r"^[a-z0-9][A-Za-z0-9._/:@-]*$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_MIN_MEMORY = 6 * 1024**2  # Docker refuses less than 6 MiB


def _check_image(value: object) -> str | None:
    if value is None:
        return None
    hint = "an image reference like shop:1.4.2 or registry.example.com/shop:1.4.2"
    if not isinstance(value, str) or not _IMAGE.match(value) or value.endswith((":", "/", "@")):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    return value


def _check_port(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a TCP port number (1-65535), got {_shown(value)}")
    return value


def _check_volume(value: object) -> str:
    hint = "a volume like ./data:/data or name:/data:ro (SOURCE:/TARGET[:ro|rw])"
    if not isinstance(value, str):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    parts = value.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[0]
        or not parts[1].startswith("/")
        or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
    ):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    return value


def _check_memory(value: object) -> str | None:
    if value is None:
        return None
    hint = "a memory size like 256m or 1g (at least 6m)"
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    size = float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]
    if size < _MIN_MEMORY:
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    return text.lower()


def _check_cpus(value: object) -> float | None:
    if value is None:
        return None
    hint = "a number of CPUs more than 0, like 0.5 or 2"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    if math.isnan(value) or math.isinf(value) or value < 0.01:
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    return float(value)


def _check_network(value: object) -> str | None:
    if value is None:
        return None
    hint = "the name of a user-defined Docker network"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    if value in ("host", "none", "bridge") or value.startswith("container:"):
        raise ValueError(
            f"expected {hint} (the app port is published on 127.0.0.1, which host, none and"
            f" container: networking cannot do; leave it out for the default bridge), got"
            f" {_shown(value)}"
        )
    return value


# run.* keys only the docker runtime reads; a process app setting one is told so.
DOCKER_ONLY_RUN_KEYS = ("image", "port", "volumes", "memory", "cpus", "network")


class RunConfig(_Section):
    command: Annotated[
        str | list[str] | None,
        BeforeValidator(_check_command),
        _Shown("(required for process)"),
    ] = Field(
        default=None,
        description="process: string (run by /bin/sh -c) or list (exec'd), $PORT is the"
        " instance's port; docker: replaces the image's CMD (optional)",
    )
    cwd: Annotated[str, BeforeValidator(_string("a directory path"))] = Field(
        default=".", description="working directory, relative to baton.yml"
    )
    env: Annotated[
        dict[str, Annotated[str, BeforeValidator(_check_env_value)]],
        BeforeValidator(_check_env),
    ] = Field(default_factory=dict, description="extra environment variables")
    image: Annotated[str | None, BeforeValidator(_check_image), _Shown("(required for docker)")] = (
        Field(default=None, description="docker: the image to run, e.g. shop:1.4.2")
    )
    port: Annotated[int | None, BeforeValidator(_check_port), _Shown("(required for docker)")] = (
        Field(default=None, description="docker: the port the app listens on inside the container")
    )
    volumes: Annotated[
        list[Annotated[str, BeforeValidator(_check_volume)]], BeforeValidator(_none_is(list))
    ] = Field(
        default_factory=list,
        description='docker: "SOURCE:/TARGET[:ro|rw]" mounts (SOURCE a volume or a path)',
    )
    memory: Annotated[str | None, BeforeValidator(_check_memory)] = Field(
        default=None, description="docker: memory limit, e.g. 256m (none = no limit)"
    )
    cpus: Annotated[float | None, BeforeValidator(_check_cpus)] = Field(
        default=None, description="docker: CPU limit, e.g. 0.5 (none = no limit)"
    )
    network: Annotated[str | None, BeforeValidator(_check_network)] = Field(
        default=None, description="docker: a user-defined network to join (none = default bridge)"
    )
    exclude: Annotated[
        list[Annotated[str, BeforeValidator(_check_exclude)]], BeforeValidator(_none_is(list))
    ] = Field(
        default_factory=list,
        description="process: globs left out of the release snapshot, besides .git and .baton"
        " ('*.log' matches a name at any depth, 'tmp/cache' a path from run.cwd)",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"expected environment variable names like GREETING, got {name!r}")
            if name in _RESERVED_ENV:
                raise ValueError(f"{name} is set by Baton for every instance; choose another name")
        return env


class HealthConfig(_Section):
    path: str | None = Field(
        default=None,
        description="readiness path (none = ready when the port accepts TCP; docker: when it"
        " answers one HTTP request, with any status)",
    )
    interval: PositiveDuration = Field(default=0.1, description="time between readiness checks")
    timeout: PositiveDuration = Field(default=2.0, description="time-out of one readiness check")
    success_threshold: Annotated[int, BeforeValidator(_int_at_least(1, 100))] = Field(
        default=2, description="consecutive 2xx answers needed"
    )

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: object) -> object:
        return None if value is None else _check_path("a path like /up")(value)


def _check_stickiness(value: object) -> str:
    hint = "cookie, client-ip, none or header:<name> (like header:X-User)"
    if not isinstance(value, str):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    if value in ("cookie", "client-ip", "none"):
        return value
    name = value[len("header:") :] if value.startswith("header:") else ""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    return value


def _check_secret(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 16 or any(c.isspace() for c in value):
        raise ValueError(
            f"expected a secret of at least 16 characters, no spaces, got {_shown(value)}"
        )
    return value


def _check_ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"expected a ratio like 1.25, got {_shown(value)}")
    if not 1.0 <= value <= 100.0:
        raise ValueError(
            f"expected a ratio between 1 and 100 (canary p95 / baseline p95), got {_shown(value)}"
        )
    return float(value)


def _check_confidence(value: object) -> float:
    fraction = parse_percent(value)
    if not 0.5 <= fraction < 1.0:
        raise ValueError(
            f"expected a confidence between 50% and 100% (exclusive), like 0.95, got {_shown(value)}"
        )
    return fraction


RETRY_ON_STABLE_DEFAULT = ("GET", "HEAD", "OPTIONS")
_IDEMPOTENT = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")


def _check_retry_methods(value: object) -> list[str]:
    """``true`` (GET, HEAD, OPTIONS), ``false`` (off) or a list of idempotent methods."""
    if value is True:
        return list(RETRY_ON_STABLE_DEFAULT)
    if value is False:
        return []
    hint = f"true, false or a list of idempotent methods ({', '.join(_IDEMPOTENT)})"
    if not isinstance(value, list):
        raise ValueError(f"expected {hint}, got {_shown(value)}")
    methods: list[str] = []
    for method in value:
        if not isinstance(method, str) or method.upper() not in _IDEMPOTENT:
            raise ValueError(f"expected {hint}, got {_shown(method)} in the list")
        if method.upper() not in methods:
            methods.append(method.upper())
    return methods


class CanaryStep(_Section):
    weight: Annotated[int, BeforeValidator(_int_at_least(1, 100))] = Field(
        description="share of the traffic (percent) the new release gets during the step"
    )
    hold: Annotated[float, BeforeValidator(_duration_at_least(1.0)), _Kind("duration")] = Field(
        description="how long the step lasts before it is judged"
    )


def _default_steps() -> list[CanaryStep]:
    return [
        CanaryStep(weight=5, hold=60.0),
        CanaryStep(weight=25, hold=60.0),
        CanaryStep(weight=50, hold=120.0),
    ]


class CanaryAnalysisConfig(_Section):
    min_requests: Annotated[int, BeforeValidator(_int_at_least(1, 10_000_000))] = Field(
        default=200, description="requests per release per step before any verdict"
    )
    max_error_rate: Percent = Field(
        default=0.01, description="absolute error ceiling of the canary"
    )
    max_error_rate_increase: Percent = Field(
        default=0.005, description="canary error rate minus the baseline's, at most"
    )
    max_latency_ratio: Annotated[float, BeforeValidator(_check_ratio)] = Field(
        default=1.25, description="canary p95 / baseline p95, at most (when significant)"
    )
    confidence: Annotated[float, BeforeValidator(_check_confidence)] = Field(
        default=0.95, description="confidence of the statistical tests"
    )


class CanaryConfig(_Section):
    steps: Annotated[list[CanaryStep], _Shown("5%/60s, 25%/60s, 50%/2m")] = Field(
        default_factory=_default_steps,
        description="canary: weight of the new release and how long to hold it, per step",
    )
    stickiness: Annotated[str, BeforeValidator(_check_stickiness)] = Field(
        default="cookie",
        description="canary: keeps a client on one release (cookie, header:<name>,"
        " client-ip, none)",
    )
    analysis: CanaryAnalysisConfig = Field(
        default=CanaryAnalysisConfig(), description="canary judgement"
    )
    max_hold_extensions: Annotated[int, BeforeValidator(_int_at_least(0, 100))] = Field(
        default=3,
        description="canary: times an inconclusive step (too little traffic) is held for"
        " another hold before it fails",
    )
    release_secret: Annotated[str | None, BeforeValidator(_check_secret)] = Field(
        default=None,
        description="lets clients pick a release with X-Baton-Release (sent as X-Baton-Secret)",
    )
    pin_from: Annotated[list[str], BeforeValidator(_check_cidrs)] = Field(
        default=[],
        description="networks (CIDR) whose clients may use X-Baton-Release without the"
        " secret (default none: loopback is not trusted)",
    )
    retry_on_stable: Annotated[
        list[str], BeforeValidator(_check_retry_methods), _Shown("GET, HEAD, OPTIONS")
    ] = Field(
        default_factory=lambda: list(RETRY_ON_STABLE_DEFAULT),
        description="canary: a 5xx from the canary to one of these methods is retried on the"
        " stable release before the client sees it (true, false or a list of methods)",
    )

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, steps: list[CanaryStep]) -> list[CanaryStep]:
        if not steps:
            raise ValueError("expected at least one step, like {weight: 5, hold: 60s}")
        if len(steps) > 20:
            raise ValueError(f"expected at most 20 steps, got {len(steps)}")
        return steps


class SignalsConfig(_Section):
    window: PositiveDuration = Field(
        default=300.0,
        description="deploy signals: the new release's first N vs the previous one's last N",
    )
    max_latency_ratio: Annotated[float, BeforeValidator(_check_ratio)] = Field(
        default=1.5, description="deploy signals: new p95 / previous p95 above this is flagged"
    )
    max_error_rate_increase: Percent = Field(
        default=0.01,
        description="deploy signals: new minus previous error rate above this is flagged",
    )
    min_requests: Annotated[int, BeforeValidator(_int_at_least(1, 10_000_000))] = Field(
        default=50, description="deploy signals: requests per release before a judgement"
    )
    rollback: Annotated[bool, BeforeValidator(_check_bool), _Shown("false")] = Field(
        default=False,
        description="deploy signals: a flagged regression during deploy.verify switches back",
    )


class DeployConfig(_Section):
    strategy: Annotated[
        Literal["blue-green", "rolling", "canary"],
        BeforeValidator(_one_of("blue-green", "rolling", "canary")),
    ] = Field(default="blue-green", description="blue-green, rolling or canary")
    max_surge: Annotated[int, BeforeValidator(_int_at_least(1))] = Field(
        default=1, description="rolling: instances replaced at a time"
    )
    ready_timeout: PositiveDuration = Field(
        default=60.0, description="time an instance has to become ready"
    )
    drain_timeout: Duration = Field(
        default=30.0, description="longest wait for in-flight requests to finish"
    )
    stop_timeout: Duration = Field(default=10.0, description="SIGTERM, then SIGKILL after this")
    keep_previous: Duration = Field(
        default=600.0, description="how long the previous release stays warm"
    )
    keep_releases: Annotated[int, BeforeValidator(_int_at_least(1, 1000))] = Field(
        default=5,
        description="release snapshots kept for rollback (the live and warm ones always are)",
    )
    verify: Duration = Field(default=10.0, description="watch window after the switch (0 = off)")
    max_error_rate: Percent = Field(
        default=0.05, description="error rate during verify that rolls back"
    )
    canary: CanaryConfig = Field(default=CanaryConfig(), description="canary releases")
    signals: SignalsConfig = Field(default=SignalsConfig(), description="deploy-correlated signals")


class HooksConfig(_Section):
    build: Annotated[str | None, BeforeValidator(_optional_string("a shell command"))] = Field(
        default=None,
        description="process: shell command run inside the release snapshot before any"
        " instance starts (e.g. pip install -r requirements.txt); failure aborts",
    )
    pre_deploy: Annotated[str | None, BeforeValidator(_optional_string("a shell command"))] = Field(
        default=None, description="shell command before anything starts; failure aborts"
    )
    smoke_test: Annotated[str | None, BeforeValidator(_optional_string("a shell command"))] = Field(
        default=None, description="shell command against a new instance ($BATON_TARGET_URL)"
    )
    post_deploy: Annotated[str | None, BeforeValidator(_optional_string("a shell command"))] = (
        Field(default=None, description="shell command after the deployment")
    )
    timeout: PositiveDuration = Field(default=600.0, description="longest time a hook may run")


class MigrationsConfig(_Section):
    expand: Annotated[str | None, BeforeValidator(_optional_string("a shell command"))] = Field(
        default=None,
        description="schema change both the new and the old release work with; runs in the new"
        " release's directory with its env before any new instance starts; failure fails the"
        " deploy with nothing switched",
    )
    contract: Annotated[str | None, BeforeValidator(_optional_string("a shell command"))] = Field(
        default=None,
        description="drops what only older releases needed; `baton migrate contract` once"
        " the expanded release has been live for contract_after (then a rollback to an"
        " older release is refused)",
    )
    contract_after: Duration = Field(
        default=86400.0,
        description="how long the expanded release must have been live, with no rollback,"
        " before its contract may run",
    )
    auto_contract: Annotated[bool, BeforeValidator(_check_bool)] = Field(
        default=False, description="run the contract by itself once contract_after has passed"
    )
    status: Annotated[str | None, BeforeValidator(_optional_string("a shell command"))] = Field(
        default=None, description="shell command whose output `baton migrate status` shows"
    )


_SECTIONS = ("proxy", "health", "deploy", "hooks", "migrations")


class AppConfig(_Section):
    app: Annotated[str, BeforeValidator(_string("an app name"))] = Field(
        description="app name, [a-z0-9-]+"
    )
    runtime: Annotated[
        Literal["process", "docker"], BeforeValidator(_one_of("process", "docker"))
    ] = Field(default="process", description="where instances run: process or docker")
    proxy: ProxyConfig = Field(default=ProxyConfig(), description="routing")
    run: RunConfig = Field(description="what to run")
    instances: Annotated[int, BeforeValidator(_int_at_least(1, 1000))] = Field(
        default=1, description="instances per release"
    )
    health: HealthConfig = Field(default=HealthConfig(), description="readiness")
    deploy: DeployConfig = Field(default=DeployConfig(), description="deployment")
    hooks: HooksConfig = Field(default=HooksConfig(), description="hooks")
    migrations: MigrationsConfig = Field(
        default=MigrationsConfig(), description="expand/contract schema migrations"
    )
    secrets: Annotated[
        list[Annotated[str, BeforeValidator(_check_secret_name)]], BeforeValidator(_none_is(list))
    ] = Field(
        default_factory=list,
        description="names of secret environment variables; values come from .baton/secrets"
        " beside baton.yml (mode 0600) or the deploying shell's environment",
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        # `hooks:` with every line commented out parses as null: treat it as "all defaults".
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        return data

    @model_validator(mode="after")
    def _runtime_keys(self) -> AppConfig:
        # Which run.* keys are required or allowed depends on the runtime: reported under
        # the key's own name (see _KeyedError), like a field error.
        run = self.run
        if self.runtime == "process":
            if run.command is None:
                raise _KeyedError(("run", "command"), "required key is missing")
            for key in DOCKER_ONLY_RUN_KEYS:
                if getattr(run, key) != RunConfig.model_fields[key].get_default(
                    call_default_factory=True
                ):
                    raise _KeyedError(
                        ("run", key), "only for runtime: docker (this app's runtime is process)"
                    )
        else:
            for key in ("image", "port"):
                if getattr(run, key) is None:
                    raise _KeyedError(("run", key), "required key is missing (runtime: docker)")
            if run.exclude:
                raise _KeyedError(
                    ("run", "exclude"), "only for runtime: process (a docker release is its image)"
                )
            if self.hooks.build is not None:
                raise _KeyedError(
                    ("hooks", "build"), "only for runtime: process (build the image instead)"
                )
        _check_secrets(self)
        return self

    @field_validator("app")
    @classmethod
    def _app_name(cls, name: str) -> str:
        if not _APP_NAME.match(name):
            raise ValueError(
                "expected an app name of lowercase letters, digits and '-' "
                f"(at most 63, not starting or ending with '-'), got {name!r}"
            )
        return name


def _check_secrets(cfg: AppConfig) -> None:
    seen: set[str] = set()
    for n, name in enumerate(cfg.secrets):
        if name in seen:
            raise _KeyedError((f"secrets[{n}]",), f"{name} is listed twice")
        if name in cfg.run.env:
            raise _KeyedError(
                (f"secrets[{n}]",), f"{name} is also in run.env; a variable is plain or secret"
            )
        seen.add(name)


# --------------------------------------------------------------------------- errors


M = TypeVar("M", bound=BaseModel)


class _KeyedError(ValueError):
    """A model-level check's error that belongs to one key (pydantic would name the model)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _loc(error: Any) -> tuple[int | str, ...]:
    keyed = (error.get("ctx") or {}).get("error")
    if isinstance(keyed, _KeyedError):
        return tuple(error["loc"]) + keyed.loc
    return tuple(error["loc"])


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = AppConfig
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list of models (deploy.canary.steps[0])
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        if get_origin(annotation) is list:
            annotation = (get_args(annotation) or (None,))[0]
        if get_origin(annotation) in (Union, UnionType):  # an optional section (proxy.tls)
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: Any) -> str:
    """One pydantic error in a user's words: what the key expected."""
    kind = error["type"]
    loc = tuple(error["loc"])
    value = error.get("input")
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        hint = ""
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
        return f"unknown key (expected one of: {', '.join(allowed)}){hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_shown(value)}"
    if kind == "list_type":
        return f"expected a list, got {_shown(value)}"
    if kind in ("string_type", "str_type"):
        return f"expected a string, got {_shown(value)}"
    if kind in ("int_type", "int_parsing"):
        return f"expected an integer, got {_shown(value)}"
    return f"invalid value {_shown(value)}"


def _config_error(
    exc: ValidationError, file: str | None, rename: Callable[[str], str] = lambda k: k
) -> ConfigError:
    problems = [(rename(_dotted(_loc(e))), _describe(e)) for e in exc.errors()]
    key, message = problems[0]
    for other_key, other_message in problems[1:]:
        where = f"{file}: " if file else ""
        message += f"\n{where}{other_key}: {other_message}"
    return ConfigError(message, file=file, key=key)


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice is an error instead of "last one wins"."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated baton.yml and where it lives."""

    config: AppConfig
    path: Path  # absolute
    base_dir: Path  # the file's directory
    app_dir: Path  # base_dir / run.cwd, resolved
    config_hash: str  # sha256 of the model's canonical JSON
    raw: dict[str, Any]  # the parsed YAML, as written


def config_hash(cfg: AppConfig) -> str:
    canonical = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_config(raw: object, *, file: str | None = None) -> AppConfig:
    """Validate already-parsed YAML (or JSON) data into an ``AppConfig``."""
    if raw is None:
        raise ConfigError(
            "the file is empty (expected a mapping with at least 'app' and 'run')", file=file
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"expected a mapping of keys at the top level, got {_shown(raw)}", file=file
        )
    raw = strip_fleet_keys(raw, file)  # hosts, deploy.hosts_at_once/max_unavailable_hosts
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, file) from None


def read_yaml(path: str | Path, what: str = "a baton.yml file") -> object:
    """A YAML file's data (``safe_load``, duplicate keys refused); problems are ConfigErrors."""
    shown = str(path)
    file = Path(path).expanduser().absolute()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=shown) from None
    except IsADirectoryError:
        raise ConfigError(f"is a directory, expected {what}", file=shown) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", file=shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=shown) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"invalid YAML{where}: {problem}", file=shown) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=shown) from None
    return raw


def load_config(path: str | Path) -> LoadedConfig:
    """Read, parse and validate a baton.yml. Every problem is a ``ConfigError``."""
    shown = str(path)
    file = Path(path).expanduser().absolute()
    raw = read_yaml(path)
    cfg = parse_config(raw, file=shown)
    base_dir = file.parent
    app_dir = (base_dir / cfg.run.cwd).resolve()
    if not app_dir.is_dir():
        raise ConfigError(
            f"expected an existing directory (relative to the file), got {cfg.run.cwd!r} "
            f"({app_dir} does not exist)",
            file=shown,
            key="run.cwd",
        )
    assert isinstance(raw, dict)
    return LoadedConfig(
        config=cfg,
        path=file,
        base_dir=base_dir,
        app_dir=app_dir,
        config_hash=config_hash(cfg),
        raw=raw,
    )


def apply_overrides(
    cfg: AppConfig,
    env: dict[str, str],
    command: str | None,
    strategy: str | None,
    image: str | None = None,
) -> AppConfig:
    """The config with ``--env`` merged into run.env, ``--command``, ``--strategy`` and
    ``--image`` applied.

    Returns a new validated model; a bad flag raises ``ConfigError`` naming the flag
    (``--image`` for an app whose runtime is not docker is one).
    """
    if image is not None and cfg.runtime != "docker":
        raise ConfigError(
            f"only for apps with runtime: docker ({cfg.app}'s runtime is {cfg.runtime})",
            key="--image",
        )
    data = cfg.model_dump()
    data["run"]["env"] = {**data["run"]["env"], **env}
    if command is not None:
        data["run"]["command"] = command
    if image is not None:
        data["run"]["image"] = image
    if strategy is not None:
        data["deploy"]["strategy"] = strategy

    def flag(key: str) -> str:
        if key.startswith("run.env."):
            return f"--env {key.removeprefix('run.env.')}"
        return {
            "run.command": "--command",
            "run.image": "--image",
            "deploy.strategy": "--strategy",
            "run.env": "--env",
        }.get(key, key)

    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, None, flag) from None


# --------------------------------------------------------------------------- defaults


def _render_default(value: object, kind: str | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "duration" and isinstance(value, float):
        return format_duration(value)
    if kind == "percent" and isinstance(value, float):
        return format_percent(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def defaults_table() -> list[tuple[str, str, str]]:
    """(key, default, meaning) for every key, in file order, for the README's reference."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if get_origin(annotation) in (Union, UnionType):  # an optional section (proxy.tls)
                inner = [a for a in get_args(annotation) if a is not type(None)]
                if (
                    len(inner) == 1
                    and isinstance(inner[0], type)
                    and issubclass(inner[0], BaseModel)
                ):
                    annotation = inner[0]
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
                continue
            kind = next((m.kind for m in field.metadata if isinstance(m, _Kind)), None)
            shown = next((m.text for m in field.metadata if isinstance(m, _Shown)), None)
            if shown is not None:
                default = shown
            elif field.is_required():
                default = "(required)"
            else:
                default = _render_default(field.get_default(call_default_factory=True), kind)
            rows.append((f"{prefix}{name}", default, field.description or ""))

    walk(AppConfig, "")
    return rows


# --------------------------------------------------------------------------- checklist


@dataclass(frozen=True)
class CheckItem:
    """One line of ``baton check``. ``ok`` is False only for errors; warnings pass."""

    ok: bool
    level: Literal["ok", "warn", "error"]
    message: str
    key: str | None = None


def _ok(message: str, key: str | None = None) -> CheckItem:
    return CheckItem(True, "ok", message, key)


def _warn(message: str, key: str | None = None) -> CheckItem:
    return CheckItem(True, "warn", message, key)


def _error(message: str, key: str | None = None) -> CheckItem:
    return CheckItem(False, "error", message, key)


# Shell words that are not programs: a command starting with one cannot be looked up.
_SHELL_WORDS = {
    ".", ":", "[", "alias", "break", "case", "cd", "continue", "eval",
    "exit", "export", "for", "if", "read", "return", "set", "shift", "source", "test",
    "trap", "true", "false", "ulimit", "umask", "unset", "wait", "while", "{", "(",
}  # fmt: skip
_RUNNERS = {"exec", "command"}


def _find_program(command: str | list[str], app_dir: Path) -> tuple[str, str]:
    """("ok" | "error" | "unknown", explanation) for the program a command starts with."""
    if isinstance(command, list):
        words = command
    else:
        try:
            words = shlex.split(command)
        except ValueError as exc:
            return "error", f"is not valid shell syntax ({exc})"
    # Leading VAR=value assignments and `exec`/`command` run the next word as the program.
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in _RUNNERS):
        words = words[1:]
    if not words:
        return "unknown", "has no program to check"
    program = words[0]
    if program in _SHELL_WORDS or "$" in program or "`" in program:
        return "unknown", f"starts with {program!r}, which cannot be checked before it runs"
    if "/" in program:
        target = Path(program) if os.path.isabs(program) else app_dir / program
        if not target.exists():
            return "error", f"runs {program!r}, but {target} does not exist"
        if not target.is_file() or not os.access(target, os.X_OK):
            return "error", f"runs {program!r}, but {target} is not an executable file"
        return "ok", f"runs {program!r} (found)"
    if shutil.which(program) is None:
        return "error", f"runs {program!r}, which is not on PATH"
    return "ok", f"runs {program!r} (on PATH)"


@dataclass(frozen=True)
class ImageFacts:
    """What ``baton check`` learnt about a docker app's image from the Docker engine.

    ``found`` is None when the engine could not be asked (``error`` says why);
    ``healthcheck`` is the image's HEALTHCHECK test, None when it declares none.
    """

    image: str
    found: bool | None
    healthcheck: list[str] | None = None
    error: str | None = None


def _canary_items(c: CanaryConfig) -> list[CheckItem]:
    """What ``baton check`` says about a canary: its steps, and choices users regret."""
    steps = ", ".join(f"{s.weight}% for {format_duration(s.hold)}" for s in c.steps)
    a = c.analysis
    items = [
        _ok(
            f"canary: {steps}; each step needs {a.min_requests} requests per release"
            f" (held again up to {c.max_hold_extensions} time(s), then it fails safe)",
            "deploy.canary.steps",
        )
    ]
    weights = [s.weight for s in c.steps]
    if any(later < earlier for earlier, later in pairwise(weights)):
        items.append(
            _warn(
                "deploy.canary.steps: a weight goes down; with header or client-ip stickiness,"
                " users already moved to the new release are moved back",
                "deploy.canary.steps",
            )
        )
    if c.stickiness == "none":
        items.append(
            _warn(
                "deploy.canary.stickiness is none: a user may flip between the two releases"
                " from one request to the next",
                "deploy.canary.stickiness",
            )
        )
    return items


def checklist(loaded: LoadedConfig, image: ImageFacts | None = None) -> list[CheckItem]:
    """The zero-downtime checklist ``baton check`` prints after the config validated.

    Decisions: for the process runtime a ``stop_timeout`` shorter than ``drain_timeout`` is
    fine, because Baton drains an instance at the proxy *before* it sends SIGTERM; only a stop
    time-out under one second is flagged, since few apps shut down gracefully that fast. For
    docker apps it is flagged (as the Docker runtime issue asks): a request the drain gave up
    on gets only ``stop_timeout`` before Docker SIGKILLs the container.

    Docker readiness: docker-proxy accepts TCP on the published port before the app inside
    listens, so for docker apps an accepted connection proves nothing. Without
    ``health.path`` a container is ready once it answers one HTTP request (``GET /``, any
    status); with an image HEALTHCHECK, Docker must also report it healthy. A docker app with
    neither a health path nor a HEALTHCHECK is warned about. ``image`` carries what the
    engine said about the image (None: not asked).
    """
    cfg = loaded.config
    d = cfg.deploy
    h = cfg.health
    items: list[CheckItem] = []
    docker = cfg.runtime == "docker"
    has_healthcheck = bool(image and image.found and image.healthcheck is not None)

    if docker:
        shown = cfg.run.image
        if image is None or image.found is None:
            why = f" ({image.error})" if image is not None and image.error else ""
            items.append(_warn(f"run.image {shown}: could not inspect it{why}", "run.image"))
        elif not image.found:
            items.append(
                _warn(
                    f"run.image {shown} is not present locally: `baton deploy` pulls it, and"
                    " fails before changing anything if it cannot",
                    "run.image",
                )
            )
        else:
            hc = "with a HEALTHCHECK" if has_healthcheck else "without a HEALTHCHECK"
            items.append(_ok(f"run.image {shown} is present locally ({hc})", "run.image"))
    else:
        assert cfg.run.command is not None
        kind, why = _find_program(cfg.run.command, loaded.app_dir)
        items.append(
            {"ok": _ok, "error": _error, "unknown": _warn}[kind](
                f"run.command {why}", "run.command"
            )
        )

    also = " and Docker must report the HEALTHCHECK healthy" if has_healthcheck else ""
    if h.path is None and docker and not has_healthcheck:
        items.append(
            _warn(
                "health.path is not set and the image declares no HEALTHCHECK: a container"
                " counts as ready once it answers one HTTP request (any status), which may"
                " be before it can serve; set health.path",
                "health.path",
            )
        )
    elif h.path is None and docker:
        items.append(
            _ok(f"readiness: one HTTP answer (any status){also}", "health.path"),
        )
    elif h.path is None:
        items.append(
            _warn(
                "health.path is not set: an instance counts as ready as soon as its port "
                "accepts TCP, which may be before it can serve requests",
                "health.path",
            )
        )
    else:
        items.append(
            _ok(
                f"readiness: GET {h.path} must answer 2xx {h.success_threshold} time(s) in a"
                f" row{also}",
                "health.path",
            )
        )
    if h.timeout * h.success_threshold > d.ready_timeout:
        items.append(
            _warn(
                f"deploy.ready_timeout ({format_duration(d.ready_timeout)}) is shorter than "
                f"health.timeout times success_threshold; slow checks will fail the deployment",
                "deploy.ready_timeout",
            )
        )

    if d.drain_timeout == 0:
        items.append(
            _warn(
                "deploy.drain_timeout is 0: requests in flight on the old release are cut off",
                "deploy.drain_timeout",
            )
        )
    else:
        items.append(
            _ok(
                f"old instances drain for up to {format_duration(d.drain_timeout)}",
                "deploy.drain_timeout",
            )
        )

    if docker and d.stop_timeout < d.drain_timeout:
        items.append(
            _warn(
                f"deploy.stop_timeout ({format_duration(d.stop_timeout)}) is shorter than"
                f" deploy.drain_timeout ({format_duration(d.drain_timeout)}): a request still"
                " running when the drain gives up gets only stop_timeout before Docker"
                " SIGKILLs the container",
                "deploy.stop_timeout",
            )
        )
    elif d.stop_timeout < 1:
        items.append(
            _warn(
                f"deploy.stop_timeout is {format_duration(d.stop_timeout)}: the app is "
                "SIGKILLed before most apps can shut down gracefully (1s or more recommended)",
                "deploy.stop_timeout",
            )
        )
    else:
        items.append(
            _ok(
                f"stop: SIGTERM, then SIGKILL after {format_duration(d.stop_timeout)}",
                "deploy.stop_timeout",
            )
        )

    if d.verify == 0:
        items.append(
            _warn("deploy.verify is 0: no automatic rollback after the switch", "deploy.verify")
        )
    elif d.max_error_rate >= 0.5:
        items.append(
            _warn(
                f"deploy.max_error_rate is {format_percent(d.max_error_rate)}: a release must "
                "fail at least half its requests before it is rolled back",
                "deploy.max_error_rate",
            )
        )
    elif d.max_error_rate == 0:
        items.append(
            _warn(
                "deploy.max_error_rate is 0%: a single error during verify rolls back",
                "deploy.max_error_rate",
            )
        )
    else:
        items.append(
            _ok(
                f"verify: rolls back if over {format_percent(d.max_error_rate)} of requests fail "
                f"in the first {format_duration(d.verify)}",
                "deploy.verify",
            )
        )

    if d.strategy == "canary":
        items.extend(_canary_items(d.canary))
    if d.strategy == "rolling" and cfg.instances < 2:
        items.append(
            _warn(
                "rolling deploys with 1 instance work, but 2 or more are recommended so "
                "capacity stays up while instances are replaced",
                "instances",
            )
        )
    if d.strategy == "rolling" and d.max_surge > cfg.instances:
        items.append(
            _warn(
                f"deploy.max_surge ({d.max_surge}) is more than instances ({cfg.instances}); "
                "it acts as blue-green",
                "deploy.max_surge",
            )
        )

    for name in ("pre_deploy", "smoke_test", "post_deploy"):
        command = getattr(cfg.hooks, name)
        if command is None:
            continue
        kind, why = _find_program(command, loaded.app_dir)
        key = f"hooks.{name}"
        items.append({"ok": _ok, "error": _error, "unknown": _ok}[kind](f"{key} {why}", key))
    if cfg.hooks.smoke_test is None:
        items.append(
            _warn(
                "hooks.smoke_test is not set: only the health check guards the switch",
                "hooks.smoke_test",
            )
        )

    host, _, port = cfg.proxy.listen.rpartition(":")
    if int(port) < 1024 and os.geteuid() != 0:
        items.append(
            _warn(f"proxy.listen port {port} needs root or CAP_NET_BIND_SERVICE", "proxy.listen")
        )
    del host
    items += _tls_items(cfg)
    return items


_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
EXPIRY_WARNING = 30 * 86400.0


def _tls_items(cfg: AppConfig) -> list[CheckItem]:
    """HTTPS checks: DNS-valid hosts, port 80 for HTTP-01, certificate files and expiry."""
    tls = cfg.proxy.tls
    if tls is None:
        return []
    from baton.errors import CertificateError
    from baton.proxy.tls import CertPair

    items: list[CheckItem] = []
    for i, host in enumerate(cfg.proxy.hosts):
        name = host[2:] if host.startswith("*.") else host
        labels = name.split(".")
        if len(labels) < 2 or not all(_DNS_LABEL.match(label) for label in labels):
            items.append(
                _warn(
                    f"proxy.hosts[{i}] {host!r} is not a DNS name a public CA can certify",
                    f"proxy.hosts[{i}]",
                )
            )
    if not cfg.proxy.hosts:
        items.append(_warn("proxy.tls without proxy.hosts: no name to choose a certificate by"))
    http_port = int((cfg.proxy.http_listen or "0.0.0.0:80").rpartition(":")[2])
    if http_port < 1024 and os.geteuid() != 0:
        items.append(
            _warn(
                f"proxy.http_listen port {http_port} needs root or CAP_NET_BIND_SERVICE"
                + ("" if cfg.proxy.http_listen else " (the default with proxy.tls)"),
                "proxy.http_listen",
            )
        )
    if tls.acme is not None:
        if http_port != 80:
            items.append(
                _warn(
                    f"proxy.http_listen is on port {http_port}: ACME HTTP-01 validation "
                    "reaches port 80 (forward it here)",
                    "proxy.http_listen",
                )
            )
        if any(h.startswith("*.") for h in cfg.proxy.hosts) and tls.on_demand_ask is None:
            items.append(
                _warn(
                    "*.suffix hosts get no ACME certificate without proxy.tls.on_demand_ask",
                    "proxy.tls.on_demand_ask",
                )
            )
        return items
    assert tls.certificate is not None and tls.key is not None
    try:
        pair = CertPair.load(tls.certificate, tls.key, list(cfg.proxy.hosts), "file")
    except CertificateError as exc:
        items.append(_error(str(exc), "proxy.tls.certificate"))
        return items
    left = (pair.info.not_after - datetime.datetime.now(datetime.UTC)).total_seconds()
    when = pair.info.not_after.date().isoformat()
    if left < EXPIRY_WARNING:
        items.append(
            _warn(
                f"proxy.tls.certificate expires {when} ({max(0, left) / 86400:.0f} days left)",
                "proxy.tls.certificate",
            )
        )
    else:
        items.append(_ok(f"proxy.tls.certificate valid for the hosts until {when}"))
    return items
