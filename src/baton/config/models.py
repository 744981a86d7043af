"""baton.yml: the one file a user writes, validated into typed models.

This module owns the meaning of every config key: its type, its default, the values it
accepts and the words of the error when it gets something else. Its pydantic models forbid
unknown keys; ``loading`` turns every validation failure into a ``ConfigError`` that names
the file, the dotted key (``deploy.drain_timeout``, ``proxy.hosts[0]``) and what was
expected. Durations are stored as float seconds and percentages as fractions, so the rest
of Baton never parses a unit. Validation functions are named ``_check_<what>`` and sit
just above the model that uses them.

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
proxy.workers                     1               proxy worker processes (auto = one per core);
                                                  the host's proxy runs the largest value
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
deploy.stage_timeout              10m             a staged release's longest wait for its switch
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

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from baton.addresses import parse_address, parse_host
from baton.config.units import (
    format_duration,
    format_percent,
    parse_duration,
    parse_percent,
    shown,
)
from baton.errors import EntryError

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
                f"expected a duration of at least {format_duration(minimum)}, got {shown(value)}"
            )
        return seconds

    return check


def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer ≥ {minimum}, got {shown(value)}")
        if maximum is not None and value > maximum:
            raise ValueError(f"expected an integer ≤ {maximum}, got {shown(value)}")
        return value

    return check


def _string(what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected {what}, got {shown(value)}")
        return value

    return check


def _one_of(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}, got {shown(value)}")
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
# Set by the runtime for every instance; a user value would be silently overwritten.
_RESERVED_ENV = {"PORT", "BATON_APP", "BATON_VERSION", "BATON_INSTANCE"}


def _check_listen(value: object) -> str:
    try:
        parse_address(value)
    except ValueError as exc:
        raise ValueError(
            f"expected an address like 127.0.0.1:8080 (host:port), got {shown(value)} ({exc})"
        ) from None
    assert isinstance(value, str)
    return value


def _optional_listen(value: object) -> str | None:
    return None if value is None else _check_listen(value)


def _check_host(value: object) -> str:
    try:
        return parse_host(value)
    except ValueError as exc:
        raise ValueError(
            "expected a host name like shop.example.com or *.example.com "
            f"(no port, no scheme), got {shown(value)} ({exc})"
        ) from None


def _check_path(what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if (
            not isinstance(value, str)
            or not value.startswith("/")
            or any(c.isspace() for c in value)
        ):
            raise ValueError(f"expected {what} starting with /, got {shown(value)}")
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
        raise ValueError(f"expected a mapping of NAME: value, got {shown(value)}")
    return value


def _check_env_value(value: object) -> str:
    # YAML turns `yes`, `on`, `true` into booleans: make the user say which string they mean.
    if isinstance(value, bool) or value is None:
        raise ValueError(f'expected a string (quote it, e.g. "{shown(value)}"), got {shown(value)}')
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {shown(value)}")
    return value


def _check_exclude(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a glob like '*.log' or 'tmp/', got {shown(value)}")
    if value.startswith("/") or ".." in Path(value.rstrip("/")).parts:
        raise ValueError(
            f"expected a glob relative to run.cwd (no '/' start, no '..'), got {value!r}"
        )
    return value


def _check_secret_name(value: object) -> str:
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError(
            f"expected an environment variable name like DB_PASSWORD, got {shown(value)}"
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
            f"expected an absolute file path like /etc/ssl/shop.pem, got {shown(value)}"
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
        f"expected production, staging or an https:// ACME directory URL, got {shown(value)}"
    )


def _check_email(value: object) -> str:
    if not isinstance(value, str) or not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", value):
        raise ValueError(f"expected an email address like ops@example.com, got {shown(value)}")
    return value


def _check_ask_url(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {shown(value)}")
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
            raise KeyedError((missing,), "required with the other of certificate/key")
        if self.certificate is None and self.acme is None:
            raise KeyedError((), "expected certificate and key, or acme (with an email)")
        if self.certificate is not None and self.acme is not None:
            raise KeyedError(("acme",), "expected either certificate/key or acme, not both")
        if self.on_demand_ask is not None and self.acme is None:
            raise KeyedError(("on_demand_ask",), "needs proxy.tls.acme")
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
    workers: Annotated[int | str, BeforeValidator(_check_workers)] = Field(
        default=1,
        description="proxy worker processes sharing the listeners (auto = one per core);"
        " the proxy runs the largest value among the host's apps",
    )

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
            raise KeyedError(
                ("proxy_protocol",),
                "not supported on an HTTPS listener (proxy.tls): terminate TLS in front of"
                " Baton, or let the load balancer pass TCP without a PROXY header",
            )
        return self


def _check_workers(value: object) -> int | str:
    from baton.proxy.workers import MAX_WORKERS

    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise ValueError(f"expected an integer from 1 to {MAX_WORKERS} or auto, got {shown(value)}")


def _check_queue_timeout(value: object) -> float:
    seconds = parse_duration(value)
    if seconds > 3600:
        raise ValueError(f"expected a duration of at most 1h, got {shown(value)}")
    return seconds


def _check_cidrs(value: object) -> list[str]:
    from baton.proxy.forwarded import parse_networks

    if value is None:
        return []
    try:
        return list(parse_networks(value))
    except EntryError as exc:
        where = "" if exc.index is None else f"entry {exc.index}: "
        raise ValueError(f"{where}{exc.problem}") from None


def _check_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {shown(value)}")
    return value


def _check_command(value: object) -> str | list[str] | None:
    hint = "a command: a string (run by /bin/sh -c) or a non-empty list of strings"
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(i, str) and i for i in value):
        return value
    raise ValueError(f"expected {hint}, got {shown(value)}")


_IMAGE = re.compile(r"^[a-z0-9][A-Za-z0-9._/:@-]*$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_MIN_MEMORY = 6 * 1024**2  # Docker refuses less than 6 MiB


def _check_image(value: object) -> str | None:
    if value is None:
        return None
    hint = "an image reference like shop:1.4.2 or registry.example.com/shop:1.4.2"
    if not isinstance(value, str) or not _IMAGE.match(value) or value.endswith((":", "/", "@")):
        raise ValueError(f"expected {hint}, got {shown(value)}")
    return value


def _check_port(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a TCP port number (1-65535), got {shown(value)}")
    return value


def _check_volume(value: object) -> str:
    hint = "a volume like ./data:/data or name:/data:ro (SOURCE:/TARGET[:ro|rw])"
    if not isinstance(value, str):
        raise ValueError(f"expected {hint}, got {shown(value)}")
    parts = value.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[0]
        or not parts[1].startswith("/")
        or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
    ):
        raise ValueError(f"expected {hint}, got {shown(value)}")
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
        raise ValueError(f"expected {hint}, got {shown(value)}")
    size = float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]
    if size < _MIN_MEMORY:
        raise ValueError(f"expected {hint}, got {shown(value)}")
    return text.lower()


def _check_cpus(value: object) -> float | None:
    if value is None:
        return None
    hint = "a number of CPUs more than 0, like 0.5 or 2"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected {hint}, got {shown(value)}")
    if math.isnan(value) or math.isinf(value) or value < 0.01:
        raise ValueError(f"expected {hint}, got {shown(value)}")
    return float(value)


def _check_network(value: object) -> str | None:
    if value is None:
        return None
    hint = "the name of a user-defined Docker network"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {hint}, got {shown(value)}")
    if value in ("host", "none", "bridge") or value.startswith("container:"):
        raise ValueError(
            f"expected {hint} (the app port is published on 127.0.0.1, which host, none and"
            f" container: networking cannot do; leave it out for the default bridge), got"
            f" {shown(value)}"
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
        raise ValueError(f"expected {hint}, got {shown(value)}")
    if value in ("cookie", "client-ip", "none"):
        return value
    name = value[len("header:") :] if value.startswith("header:") else ""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"expected {hint}, got {shown(value)}")
    return value


def _check_secret(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 16 or any(c.isspace() for c in value):
        raise ValueError(
            f"expected a secret of at least 16 characters, no spaces, got {shown(value)}"
        )
    return value


def _check_ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"expected a ratio like 1.25, got {shown(value)}")
    if not 1.0 <= value <= 100.0:
        raise ValueError(
            f"expected a ratio between 1 and 100 (canary p95 / baseline p95), got {shown(value)}"
        )
    return float(value)


def _check_confidence(value: object) -> float:
    fraction = parse_percent(value)
    if not 0.5 <= fraction < 1.0:
        raise ValueError(
            f"expected a confidence between 50% and 100% (exclusive), like 0.95, got {shown(value)}"
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
        raise ValueError(f"expected {hint}, got {shown(value)}")
    methods: list[str] = []
    for method in value:
        if not isinstance(method, str) or method.upper() not in _IDEMPOTENT:
            raise ValueError(f"expected {hint}, got {shown(method)} in the list")
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
    stage_timeout: PositiveDuration = Field(
        default=600.0,
        description="longest wait of a staged release (the fleet's edge blue-green) for its"
        " switch, then it is discarded",
    )


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
        # the key's own name (see KeyedError), like a field error.
        run = self.run
        if self.runtime == "process":
            if run.command is None:
                raise KeyedError(("run", "command"), "required key is missing")
            for key in DOCKER_ONLY_RUN_KEYS:
                if getattr(run, key) != RunConfig.model_fields[key].get_default(
                    call_default_factory=True
                ):
                    raise KeyedError(
                        ("run", key), "only for runtime: docker (this app's runtime is process)"
                    )
        else:
            for key in ("image", "port"):
                if getattr(run, key) is None:
                    raise KeyedError(("run", key), "required key is missing (runtime: docker)")
            if run.exclude:
                raise KeyedError(
                    ("run", "exclude"), "only for runtime: process (a docker release is its image)"
                )
            if self.hooks.build is not None:
                raise KeyedError(
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
            raise KeyedError((f"secrets[{n}]",), f"{name} is listed twice")
        if name in cfg.run.env:
            raise KeyedError(
                (f"secrets[{n}]",), f"{name} is also in run.env; a variable is plain or secret"
            )
        seen.add(name)


# --------------------------------------------------------------------------- errors


class KeyedError(ValueError):
    """A model-level check's error that belongs to one key (pydantic would name the model)."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


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
