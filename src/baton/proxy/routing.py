"""The route table: one immutable snapshot of where every request goes.

Theory of operation. The control plane sends the whole table (or one app of it) as JSON;
``parse_table`` validates it into plain frozen specs, and ``RouteTable.build`` binds those
specs to the proxy's live objects (target states and release metrics, supplied by
factories so this module stays free of I/O). The proxy holds exactly one ``RouteTable``
reference and swaps it in one assignment: that swap is the cutover. A request is matched
once, when its headers are complete, against the table current at that moment.

Matching rules (per listen address): an app's hosts are exact names or ``*.suffix``; an
empty host list matches any Host. Exact names win over wildcards (longer suffix first),
wildcards over any-host apps; within the winning class the longest matching path prefix
wins, a prefix matching on a path-segment boundary only (``/api`` matches ``/api`` and
``/api/x``, not ``/apix``).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote, unquote

from baton import addresses
from baton.errors import EntryError, RouteTableError
from baton.proxy.forwarded import parse_networks
from baton.proxy.fuse import FuseSpec, parse_fuse, parse_retry_methods
from baton.proxy.tls import TlsSpec, parse_tls

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_QUEUE_TIMEOUT = 10.0
DEFAULT_QUEUE_LIMIT = 1000
STICKY_NONE, STICKY_COOKIE, STICKY_CLIENT_IP, STICKY_HEADER = range(4)
_STICKY_KINDS = {"none": STICKY_NONE, "cookie": STICKY_COOKIE, "client-ip": STICKY_CLIENT_IP}
_APP_KEYS = {
    "listen",
    "hosts",
    "path_prefix",
    "releases",
    "health",
    "connect_timeout",
    "response_timeout",
    "stickiness",
    "release_secret",
    "max_connection_age",
    "retry_on_stable",
    "queue_timeout",
    "queue_limit",
    "trusted_proxies",
    "proxy_protocol",
    "http_listen",
    "tls",
    "pin_from",
}
_RELEASE_KEYS = {"name", "weight", "targets", "fuse"}
_HEALTH_KEYS = {"kind", "path", "interval", "timeout", "rise", "fall"}


@dataclass(frozen=True)
class HealthSpec:
    kind: str = "tcp"  # "tcp" | "http"
    path: str | None = None
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "interval": self.interval,
            "timeout": self.timeout,
            "rise": self.rise,
            "fall": self.fall,
        }


@dataclass(frozen=True)
class ReleaseSpec:
    name: str
    weight: int
    targets: tuple[str, ...]
    fuse: FuseSpec | None = None  # a canary: judged by the proxy's fuse (proxy/fuse.py)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "weight": self.weight,
            "targets": list(self.targets),
        }
        if self.fuse is not None:
            out["fuse"] = self.fuse.to_json()
        return out


@dataclass(frozen=True)
class AppSpec:
    name: str
    listen: str
    hosts: tuple[str, ...]
    path_prefix: str
    releases: tuple[ReleaseSpec, ...]
    health: HealthSpec
    connect_timeout: float = 5.0
    response_timeout: float = 60.0
    stickiness: str = "none"  # none | cookie | client-ip | header:<name>
    release_secret: str | None = None  # lets non-loopback clients pin a release
    max_connection_age: float | None = None  # longest life of a tunnel (WebSocket), seconds
    retry_on_stable: tuple[str, ...] = ()  # methods whose canary 5xx is retried on stable
    # With no healthy target, requests wait this long (0: 503 at once), at most queue_limit.
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-* headers are kept
    proxy_protocol: bool = False  # the listener requires a PROXY protocol header
    http_listen: str | None = None  # plain-HTTP listener of a TLS app (redirects, ACME)
    tls: TlsSpec | None = None  # ``listen`` is HTTPS with these certificates
    pin_from: tuple[str, ...] = ()  # networks (CIDR) whose clients may pin without the secret

    def to_json(self) -> dict[str, Any]:
        tls = {} if self.tls is None else {"tls": self.tls.to_json()}
        http = {} if self.http_listen is None else {"http_listen": self.http_listen}
        return {
            **tls,
            **http,
            "listen": self.listen,
            "hosts": list(self.hosts),
            "path_prefix": self.path_prefix,
            "releases": [r.to_json() for r in self.releases],
            "health": self.health.to_json(),
            "connect_timeout": self.connect_timeout,
            "response_timeout": self.response_timeout,
            "stickiness": self.stickiness,
            "release_secret": self.release_secret,
            "max_connection_age": self.max_connection_age,
            **({"retry_on_stable": list(self.retry_on_stable)} if self.retry_on_stable else {}),
            "queue_timeout": self.queue_timeout,
            "queue_limit": self.queue_limit,
            "trusted_proxies": list(self.trusted_proxies),
            "proxy_protocol": self.proxy_protocol,
            "pin_from": list(self.pin_from),
        }


# ---------------------------------------------------------------------------------------
# Validation: JSON -> specs. Every error names the field and what was expected.


def _fail(where: str, expected: str, got: object) -> RouteTableError:
    return RouteTableError(f"{where}: expected {expected}, got {got!r}")


def parse_address(value: object, where: str) -> tuple[str, int]:
    """Parse ``host:port`` (IPv4, hostname, or ``[v6]:port``); the rules are ``baton.addresses``."""
    try:
        return addresses.parse_address(value)
    except ValueError as exc:
        raise RouteTableError(
            f"{where}: expected an address like 127.0.0.1:8080, got {value!r} ({exc})"
        ) from None


def _number(value: object, where: str, *, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, "a number", value)
    if not minimum <= value <= maximum:
        raise _fail(where, f"a number between {minimum:g} and {maximum:g}", value)
    return float(value)


def _integer(value: object, where: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, "an integer", value)
    if not minimum <= value <= maximum:
        raise _fail(where, f"an integer between {minimum} and {maximum}", value)
    return value


def _check_keys(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise RouteTableError(
            f"{where}: unknown field {unknown[0]!r} (expected one of: {', '.join(sorted(allowed))})"
        )


def _parse_host(value: object, where: str) -> str:
    try:
        return addresses.parse_host(value)
    except ValueError as exc:
        raise RouteTableError(
            f"{where}: expected a host name or *.suffix, got {value!r} ({exc})"
        ) from None


def parse_health(value: object, where: str) -> HealthSpec:
    if value is None:
        return HealthSpec()
    if not isinstance(value, dict):
        raise _fail(where, "an object", value)
    _check_keys(value, _HEALTH_KEYS, where)
    kind = value.get("kind", "tcp")
    if kind not in ("tcp", "http"):
        raise _fail(f"{where}.kind", '"tcp" or "http"', kind)
    path = value.get("path")
    if kind == "http":
        if not isinstance(path, str) or not path.startswith("/"):
            raise _fail(f"{where}.path", "a path starting with / (required for http)", path)
    elif path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise _fail(f"{where}.path", "a path starting with /", path)
    return HealthSpec(
        kind=kind,
        path=path,
        interval=_number(
            value.get("interval", 2.0), f"{where}.interval", minimum=0.01, maximum=3600
        ),
        timeout=_number(value.get("timeout", 1.0), f"{where}.timeout", minimum=0.01, maximum=3600),
        rise=_integer(value.get("rise", 2), f"{where}.rise", minimum=1, maximum=100),
        fall=_integer(value.get("fall", 3), f"{where}.fall", minimum=1, maximum=100),
    )


def parse_app(name: object, value: object) -> AppSpec:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise _fail("app name", "a non-empty string", name)
    where = f"apps.{name}"
    if not isinstance(value, dict):
        raise _fail(where, "an object", value)
    _check_keys(value, _APP_KEYS, where)
    listen = value.get("listen", DEFAULT_LISTEN)
    parse_address(listen, f"{where}.listen")
    hosts_v = value.get("hosts", [])
    if not isinstance(hosts_v, list):
        raise _fail(f"{where}.hosts", "a list of host names", hosts_v)
    hosts = tuple(_parse_host(h, f"{where}.hosts[{i}]") for i, h in enumerate(hosts_v))
    prefix = value.get("path_prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/") or any(c in prefix for c in "?# "):
        raise _fail(f"{where}.path_prefix", "a path starting with /", prefix)
    if len(prefix) > 1:
        prefix = prefix.rstrip("/") or "/"
    releases_v = value.get("releases")
    if not isinstance(releases_v, list) or not releases_v:
        raise _fail(f"{where}.releases", "a non-empty list of releases", releases_v)
    releases: list[ReleaseSpec] = []
    seen: set[str] = set()
    for i, rel in enumerate(releases_v):
        rwhere = f"{where}.releases[{i}]"
        if not isinstance(rel, dict):
            raise _fail(rwhere, "an object", rel)
        _check_keys(rel, _RELEASE_KEYS, rwhere)
        rname = rel.get("name")
        if not isinstance(rname, str) or not rname or len(rname) > 128:
            raise _fail(f"{rwhere}.name", "a non-empty string", rname)
        if rname in seen:
            raise RouteTableError(f"{rwhere}.name: duplicate release name {rname!r}")
        seen.add(rname)
        weight = _integer(rel.get("weight", 100), f"{rwhere}.weight", minimum=0, maximum=100)
        targets_v = rel.get("targets")
        if not isinstance(targets_v, list):
            raise _fail(f"{rwhere}.targets", "a list of host:port", targets_v)
        targets: list[str] = []
        for j, t in enumerate(targets_v):
            host, port = parse_address(t, f"{rwhere}.targets[{j}]")
            addr = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            if addr in targets:
                raise RouteTableError(f"{rwhere}.targets[{j}]: duplicate target {t!r}")
            targets.append(addr)
        fuse = parse_fuse(rel.get("fuse"), f"{rwhere}.fuse")
        releases.append(ReleaseSpec(rname, weight, tuple(targets), fuse))
    stickiness = value.get("stickiness", "none")
    if not isinstance(stickiness, str) or not (
        stickiness in ("none", "cookie", "client-ip")
        or (stickiness.startswith("header:") and _is_token(stickiness[7:]))
    ):
        raise _fail(f"{where}.stickiness", "none, cookie, client-ip or header:<name>", stickiness)
    secret = value.get("release_secret")
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise _fail(f"{where}.release_secret", "a string of at least 16 characters", secret)
    max_age = value.get("max_connection_age")
    if max_age is not None:
        max_age = _number(max_age, f"{where}.max_connection_age", minimum=0.1, maximum=86400 * 30)
    trusted = _networks(value.get("trusted_proxies", []), f"{where}.trusted_proxies")
    proxy_protocol = value.get("proxy_protocol", False)
    if not isinstance(proxy_protocol, bool):
        raise _fail(f"{where}.proxy_protocol", "true or false", proxy_protocol)
    if proxy_protocol and value.get("tls") is not None:
        raise _fail(f"{where}.proxy_protocol", "false on an HTTPS listener (tls)", proxy_protocol)
    http_listen = value.get("http_listen")
    if http_listen is not None:
        parse_address(http_listen, f"{where}.http_listen")
        if http_listen == listen:
            raise _fail(f"{where}.http_listen", "an address other than listen", http_listen)
    pin_from = _networks(value.get("pin_from", []), f"{where}.pin_from")
    return AppSpec(
        http_listen=http_listen,
        tls=parse_tls(value.get("tls"), f"{where}.tls"),
        name=name,
        queue_timeout=_number(
            value.get("queue_timeout", DEFAULT_QUEUE_TIMEOUT),
            f"{where}.queue_timeout",
            minimum=0,
            maximum=3600,
        ),
        queue_limit=_integer(
            value.get("queue_limit", DEFAULT_QUEUE_LIMIT),
            f"{where}.queue_limit",
            minimum=0,
            maximum=1_000_000,
        ),
        trusted_proxies=trusted,
        proxy_protocol=proxy_protocol,
        pin_from=pin_from,
        max_connection_age=max_age,
        retry_on_stable=parse_retry_methods(
            value.get("retry_on_stable"), f"{where}.retry_on_stable"
        ),
        stickiness=stickiness,
        release_secret=secret,
        listen=listen,
        hosts=hosts,
        path_prefix=prefix,
        releases=tuple(releases),
        health=parse_health(value.get("health"), f"{where}.health"),
        connect_timeout=_number(
            value.get("connect_timeout", 5.0), f"{where}.connect_timeout", minimum=0.01, maximum=600
        ),
        response_timeout=_number(
            value.get("response_timeout", 60.0),
            f"{where}.response_timeout",
            minimum=0.01,
            maximum=86400,
        ),
    )


def _is_token(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_" for c in name)


def parse_table(value: object) -> dict[str, AppSpec]:
    """Validate a whole table ``{"apps": {...}}``; raise RouteTableError naming the field."""
    if not isinstance(value, dict):
        raise _fail("route table", 'an object like {"apps": {...}}', value)
    _check_keys(value, {"apps"}, "route table")
    apps_v = value.get("apps", {})
    if not isinstance(apps_v, dict):
        raise _fail("apps", "an object mapping app names to apps", apps_v)
    apps = {name: parse_app(name, app) for name, app in apps_v.items()}
    check_conflicts(apps)
    return apps


def check_conflicts(apps: Mapping[str, AppSpec]) -> None:
    """Two apps may not claim the same (listen, host, prefix): the route would be ambiguous."""
    claimed: dict[tuple[str, str, str], str] = {}
    framing: dict[str, AppSpec] = {}
    for app in apps.values():
        first = framing.setdefault(app.listen, app)
        if first.proxy_protocol != app.proxy_protocol:
            raise RouteTableError(
                f"apps.{app.name}.proxy_protocol: apps on {app.listen} must agree (app "
                f"{first.name!r} has {str(first.proxy_protocol).lower()})"
            )
        for listen in (app.listen, app.http_listen) if app.http_listen else (app.listen,):
            for host in app.hosts or ("",):
                key = (listen, host, app.path_prefix)
                other = claimed.get(key)
                if other is not None:
                    shown = host or "any host"
                    raise RouteTableError(
                        f"apps.{app.name}: route {shown}{app.path_prefix} on {listen} "
                        f"is already used by app {other!r}"
                    )
                claimed[key] = app.name


# ---------------------------------------------------------------------------------------
# The live table: specs bound to target states and metrics.

T = TypeVar("T")
M = TypeVar("M")


# Release and App are plain classes, not generic dataclasses: mypyc cannot compile a
# dataclass that is also Generic (the class fails at import).
class Release(Generic[T, M]):
    def __init__(self, name: str, weight: int, targets: tuple[T, ...], metrics: M) -> None:
        self.name = name
        self.weight = weight
        self.targets = targets
        self.metrics = metrics


class App(Generic[T, M]):
    def __init__(
        self,
        spec: AppSpec,
        releases: tuple[Release[T, M], ...],
        weighted: tuple[Release[T, M], ...] = (),
        cumulative: tuple[int, ...] = (),
        by_name: dict[str, Release[T, M]] | None = None,
        sticky: int = STICKY_NONE,
        sticky_header: bytes = b"",
    ) -> None:
        self.spec = spec
        self.releases = releases
        # Releases that receive ordinary traffic (weight > 0), and their cumulative weights.
        self.weighted = weighted
        self.cumulative = cumulative
        self.by_name: dict[str, Release[T, M]] = {} if by_name is None else by_name
        self.sticky = sticky
        self.sticky_header = sticky_header

    @property
    def name(self) -> str:
        return self.spec.name

    def pick_release(self, rand: Callable[[], float] = random.random) -> Release[T, M] | None:
        """Choose a release by weight (None when every weight is 0)."""
        weighted = self.weighted
        if len(weighted) == 1:
            return weighted[0]
        if not weighted:
            return None
        point = rand() * self.cumulative[-1]
        for rel, upto in zip(weighted, self.cumulative, strict=True):
            if point < upto:
                return rel
        return weighted[-1]


# -- stickiness: a client keeps the release it first got while traffic is split ---------

COOKIE_NAME = b"baton_release"


def sticky_point(key: bytes) -> float:
    """A stable point in [0, 1) for a client key (same in every proxy process).

    Picking a release with this point instead of a random one keeps a client on one
    release while the weights stay; as the last release's weight grows (a canary listed
    last), clients only move onto it, never back.
    """
    return zlib.crc32(key) / 4294967296.0


def cookie_release(cookie: bytes | None) -> str | None:
    """The release named by a ``baton_release`` cookie in a Cookie header, if any."""
    if not cookie:
        return None
    for part in cookie.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE_NAME:
            return unquote(value.decode("latin-1"))
    return None


def set_cookie(release: str) -> bytes:
    """The Set-Cookie value that pins a client to ``release``."""
    return (
        COOKIE_NAME + b"=" + quote(release, safe="").encode() + b"; Path=/; HttpOnly; SameSite=Lax"
    )


class _Listener(Generic[T, M]):
    """Apps sharing one listen address, indexed for matching."""

    def __init__(self, apps: list[App[T, M]]) -> None:
        def by_prefix(items: list[App[T, M]]) -> tuple[App[T, M], ...]:
            return tuple(sorted(items, key=lambda a: len(a.spec.path_prefix), reverse=True))

        exact: dict[str, list[App[T, M]]] = {}
        wild: dict[str, list[App[T, M]]] = {}
        anyhost: list[App[T, M]] = []
        for app in apps:
            if not app.spec.hosts:
                anyhost.append(app)
            for host in app.spec.hosts:
                if host.startswith("*."):
                    wild.setdefault(host[1:], []).append(app)  # key ".example.com"
                else:
                    exact.setdefault(host, []).append(app)
        self.exact = {h: by_prefix(a) for h, a in exact.items()}
        self.wild = tuple(
            (suffix, by_prefix(a))
            for suffix, a in sorted(wild.items(), key=lambda kv: len(kv[0]), reverse=True)
        )
        self.anyhost = by_prefix(anyhost)
        # The common case (one app, any host, prefix "/") skips all matching work.
        self.only: App[T, M] | None = None
        if len(apps) == 1 and not self.exact and not self.wild and apps[0].spec.path_prefix == "/":
            self.only = apps[0]

    def match(self, host: str, path: str) -> App[T, M] | None:
        if self.only is not None:
            return self.only
        if host:
            candidates = self.exact.get(host)
            if candidates:
                found = _match_prefix(candidates, path)
                if found is not None:
                    return found
            for suffix, apps in self.wild:
                if host.endswith(suffix):
                    found = _match_prefix(apps, path)
                    if found is not None:
                        return found
        return _match_prefix(self.anyhost, path)


def _match_prefix(apps: tuple[App[T, M], ...], path: str) -> App[T, M] | None:
    for app in apps:
        prefix = app.spec.path_prefix
        if prefix == "/":
            return app
        if path.startswith(prefix):
            rest = path[len(prefix) : len(prefix) + 1]
            if rest in ("", "/", "?"):
                return app
    return None


def _networks(value: object, where: str) -> tuple[str, ...]:
    """CIDR networks (``forwarded.parse_networks``); errors name the key and the entry."""
    try:
        return parse_networks(value)
    except EntryError as exc:
        sep = ": " if exc.index is None else f"[{exc.index}]: "
        raise RouteTableError(f"{where}{sep}{exc.problem}") from None


# Host values already normalised (a site sees few distinct ones), at most 1024 of them.
_NORMALISED: Final[dict[bytes, str]] = {}


def normalise_host(raw: bytes | None) -> str:
    """Host header -> lower-case name without port (IPv6 literals keep their brackets)."""
    if not raw:
        return ""
    found = _NORMALISED.get(raw)
    if found is None:
        found = _normalise(raw)
        if len(_NORMALISED) < 1024:
            _NORMALISED[raw] = found
    return found


def _normalise(raw: bytes) -> str:
    host = raw.decode("latin-1").strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    colon = host.find(":")
    return host if colon < 0 else host[:colon]


class RouteTable(Generic[T, M]):
    """An immutable snapshot; build a new one to change anything."""

    def __init__(self, specs: Mapping[str, AppSpec], apps: dict[str, App[T, M]], generation: int):
        self.specs = dict(specs)
        self.apps = apps
        self.generation = generation
        grouped: dict[str, list[App[T, M]]] = {}
        for app in apps.values():
            grouped.setdefault(app.spec.listen, []).append(app)
            if app.spec.http_listen is not None:
                grouped.setdefault(app.spec.http_listen, []).append(app)
        self.listeners: dict[str, _Listener[T, M]] = {k: _Listener(v) for k, v in grouped.items()}

    @classmethod
    def build(
        cls,
        specs: Mapping[str, AppSpec],
        target: Callable[[str, AppSpec], T],
        metrics: Callable[[str, str], M],
        generation: int,
    ) -> RouteTable[T, M]:
        apps: dict[str, App[T, M]] = {}
        for name, spec in specs.items():
            releases = tuple(
                Release(
                    name=r.name,
                    weight=r.weight,
                    targets=tuple(target(t, spec) for t in r.targets),
                    metrics=metrics(name, r.name),
                )
                for r in spec.releases
            )
            weighted = tuple(r for r in releases if r.weight > 0)
            cumulative: list[int] = []
            total = 0
            for r in weighted:
                total += r.weight
                cumulative.append(total)
            sticky, header = _STICKY_KINDS.get(spec.stickiness, STICKY_HEADER), b""
            if sticky == STICKY_HEADER:
                header = spec.stickiness[len("header:") :].lower().encode()
            apps[name] = App(
                spec=spec,
                releases=releases,
                weighted=weighted,
                cumulative=tuple(cumulative),
                by_name={r.name: r for r in releases},
                sticky=sticky,
                sticky_header=header,
            )
        return cls(specs, apps, generation)

    def match(self, listen: str, host: str, path: str) -> App[T, M] | None:
        listener = self.listeners.get(listen)
        if listener is None:
            return None
        return listener.match(host, path)

    def match_raw(self, listen: str, host: bytes | None, url: bytes) -> App[T, M] | None:
        """``match`` on the raw Host header and request target, decoding only when needed."""
        listener = self.listeners.get(listen)
        if listener is None:
            return None
        if listener.only is not None:
            return listener.only
        return listener.match(normalise_host(host), url.decode("latin-1"))

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "apps": {name: spec.to_json() for name, spec in self.specs.items()},
        }
