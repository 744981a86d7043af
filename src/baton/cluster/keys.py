"""The fleet's key layout in etcd, and the records stored under it (pure: no I/O).

Everything lives under ``/baton/`` (see docs/fleet.md for the whole picture):

| key                                   | value            | lifetime                      |
|---------------------------------------|------------------|-------------------------------|
| /baton/hosts/NAME                     | HostRecord       | kept (the host is known)      |
| /baton/alive/NAME                     | HostRecord       | under the host's lease        |
| /baton/controller                     | holder name      | under the leader's lease      |
| /baton/locks/APP                      | holder name      | under the deploy's lease      |
| /baton/desired/HOST/APP               | DesiredRelease   | written by the controller     |
| /baton/progress/HOST/APP              | Progress         | written by HOST's agent       |

A host is *reachable* while its ``alive`` key exists: the key goes with the lease when the
host stops renewing it (killed, partitioned). Records are JSON; ``from_json`` refuses a
record that is not what it claims to be with ``ValueError`` naming the key, so a corrupt
or foreign value is reported, never half-applied.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ROOT = "/baton/"
HOSTS = ROOT + "hosts/"
ALIVE = ROOT + "alive/"
CONTROLLER = ROOT + "controller"
LOCKS = ROOT + "locks/"
DESIRED = ROOT + "desired/"
PROGRESS = ROOT + "progress/"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(what: str, name: str) -> str:
    """A host or app name usable in a key: letters, digits, ``_.-``, at most 63 characters."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{what} {name!r}: expected letters, digits, '_', '.' or '-' (at most 63,"
            " starting with a letter or digit)"
        )
    return name


def host_key(name: str) -> str:
    return HOSTS + check_name("host name", name)


def alive_key(name: str) -> str:
    return ALIVE + check_name("host name", name)


def lock_key(app: str) -> str:
    return LOCKS + check_name("app name", app)


def desired_prefix(host: str) -> str:
    return f"{DESIRED}{check_name('host name', host)}/"


def desired_key(host: str, app: str) -> str:
    return desired_prefix(host) + check_name("app name", app)


def progress_key(host: str, app: str) -> str:
    return f"{PROGRESS}{check_name('host name', host)}/{check_name('app name', app)}"


def name_after(prefix: str, key: str) -> str:
    """The last part of ``key`` under ``prefix`` (``/baton/hosts/web1`` → ``web1``)."""
    return key[len(prefix) :] if key.startswith(prefix) else key.rsplit("/", 1)[-1]


def _object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what}: not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a JSON object")
    return value


def _text(body: dict[str, Any], key: str, what: str, *, optional: bool = False) -> str | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: {key}: expected a non-empty string")
    return value


@dataclass(frozen=True)
class HostRecord:
    """What a host says about itself when it registers."""

    name: str
    advertise: str  # the address other hosts (edges) reach its proxy on, host:port
    roles: tuple[str, ...] = ("app",)
    baton: str = ""  # Baton's version on the host
    apps: dict[str, str | None] = field(default_factory=dict)  # app → the version it serves
    instances: dict[str, int] = field(default_factory=dict)  # app → live release's instances
    # app → release → its ready instances' addresses reachable from the private network
    # (``--instance-ip``): where edges route when they route straight to instances.
    endpoints: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def to_json(self) -> str:
        body = asdict(self)
        body["roles"] = list(self.roles)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str, what: str = "host record") -> HostRecord:
        body = _object(raw, what)
        name = check_name("host name", _text(body, "name", what) or "")
        roles = body.get("roles", ["app"])
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise ValueError(f"{what}: roles: expected a list of names")
        apps = body.get("apps", {})
        if not isinstance(apps, dict):
            raise ValueError(f"{what}: apps: expected an object")
        return cls(
            name=name,
            advertise=_text(body, "advertise", what) or "",
            roles=tuple(roles),
            baton=str(body.get("baton", "")),
            apps={str(k): (None if v is None else str(v)) for k, v in apps.items()},
            instances=_counts(body.get("instances", {}), f"{what}: instances"),
            endpoints=_endpoints(body.get("endpoints", {}), f"{what}: endpoints"),
        )


def _endpoints(value: object, what: str) -> dict[str, dict[str, list[str]]]:
    if not isinstance(value, dict) or not all(
        isinstance(releases, dict)
        and all(
            isinstance(addrs, list) and all(isinstance(a, str) for a in addrs)
            for addrs in releases.values()
        )
        for releases in value.values()
    ):
        raise ValueError(f"{what}: expected app → release → list of addresses")
    return {
        str(app): {str(r): list(addrs) for r, addrs in releases.items()}
        for app, releases in value.items()
    }


def _counts(value: object, what: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()
    ):
        raise ValueError(f"{what}: expected an object of whole numbers")
    return {str(k): int(v) for k, v in value.items()}


@dataclass(frozen=True)
class DesiredRelease:
    """The release one app should run on one host, as the controller decided it.

    ``deployment`` names the fleet deployment that asked for it: an agent acts once per
    deployment (a restart of the agent does not deploy it again). The artifact is the
    release's immutable content: ``image`` (a digest, for Docker) or, for the process
    runtime, the ``config`` whose directory the host snapshots (see docs/fleet.md).
    """

    app: str
    version: str
    deployment: str
    config: str  # the app's baton.yml on that host
    image: str | None = None
    strategy: str | None = None
    command: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # plain env only: secrets stay local
    rollback: bool = False  # back to a release the host ran before (releases are immutable)
    # A fleet canary without edges: the host runs this release beside its live one with this
    # share of its proxy's traffic, the weight set by the controller (None: a plain deploy,
    # or, for a canary's deployment, promote it). See ``baton.cluster.hostcanary``.
    canary_weight: int | None = None
    # A staged deploy (the edges' blue-green): "stage" starts the release without switching
    # the host's proxy, then "switch" or "discard" decides it (``baton.deploy.staging``).
    phase: str = ""

    def to_json(self) -> str:
        body = asdict(self)
        if self.canary_weight is None:
            del body["canary_weight"]
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str, what: str = "desired release") -> DesiredRelease:
        body = _object(raw, what)
        env = body.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValueError(f"{what}: env: expected an object of string values")
        return cls(
            app=check_name("app name", _text(body, "app", what) or ""),
            version=_text(body, "version", what) or "",
            deployment=_text(body, "deployment", what) or "",
            config=_text(body, "config", what) or "",
            image=_text(body, "image", what, optional=True),
            strategy=_text(body, "strategy", what, optional=True),
            command=_text(body, "command", what, optional=True),
            env=dict(env),
            rollback=body.get("rollback") is True,
            canary_weight=_weight(body.get("canary_weight"), f"{what}: canary_weight"),
            phase=_phase(body.get("phase", ""), what),
        )

    def request(self) -> tuple[str, dict[str, Any]]:
        """The local daemon's API call that converges to this release: path and body."""
        if self.rollback:  # an unwind to this release (whatever phase it was written in)
            return "/rollback", {"app": self.app, "version": self.version}
        if self.phase in ("switch", "discard"):
            return f"/staged/{self.phase}", {"app": self.app, "version": self.version}
        if self.phase == "stage":
            return "/deploy", {**self.deploy_body(), "stage": True}
        return "/deploy", self.deploy_body()

    def deploy_body(self) -> dict[str, Any]:
        """The local daemon's ``POST /deploy`` body that converges to this release."""
        body: dict[str, Any] = {"config": self.config, "version": self.version}
        for key in ("image", "strategy", "command"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.env:
            body["env"] = dict(self.env)
        return body


def _weight(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"{what}: expected a whole percentage, 0 to 100")
    return value


PHASES = ("", "stage", "switch", "discard")


def _phase(value: object, what: str) -> str:
    if value not in PHASES:
        raise ValueError(f"{what}: phase: expected stage, switch or discard")
    return str(value)


# "staged": a staged deploy's release runs ready beside the live one, waiting for its switch.
ProgressState = Literal["deploying", "staged", "done", "failed"]


@dataclass(frozen=True)
class Progress:
    """An agent's report on one app: where its deploy of ``deployment`` is, or how it ended."""

    app: str
    version: str
    deployment: str
    state: ProgressState
    step: str = ""
    message: str = ""
    local_deployment: int | None = None  # the id in the host's own history
    steps: tuple[str, ...] = ()  # every step the host went through so far, in order
    weight: int | None = None  # a fleet canary without edges: the weight the host applied

    def to_json(self) -> str:
        body = asdict(self)
        if self.weight is None:
            del body["weight"]
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str, what: str = "progress") -> Progress:
        body = _object(raw, what)
        state = body.get("state")
        if state not in ("deploying", "staged", "done", "failed"):
            raise ValueError(f"{what}: state: expected deploying, staged, done or failed")
        local = body.get("local_deployment")
        steps = body.get("steps", [])
        if not isinstance(steps, list) or not all(isinstance(x, str) for x in steps):
            raise ValueError(f"{what}: steps: expected a list of step names")
        return cls(
            app=_text(body, "app", what) or "",
            version=_text(body, "version", what) or "",
            deployment=_text(body, "deployment", what) or "",
            state=state,
            step=str(body.get("step", "")),
            message=str(body.get("message", "")),
            local_deployment=local if isinstance(local, int) else None,
            steps=tuple(steps),
            weight=_weight(body.get("weight"), f"{what}: weight"),
        )

    @property
    def finished(self) -> bool:
        return self.state != "deploying"


REQUESTS = ROOT + "requests/"


def request_key(app: str) -> str:
    return REQUESTS + check_name("app name", app)


@dataclass(frozen=True)
class DeployRequest:
    """A fleet deployment asked of the controller (``/baton/requests/APP``)."""

    release: DesiredRelease
    hosts: tuple[str, ...]
    hosts_at_once: int = 1
    skip_unreachable: bool = False
    configs: dict[str, str] = field(default_factory=dict)  # host → its baton.yml, if not the same
    edge: str | None = None  # blue-green through the edges listening there (baton.cluster.cutover)
    edge_health: str = "/up"  # the path the edges health-check the app hosts on
    # A canary at the edges: (weight %, hold s) per step, and its judge's limits.
    canary: tuple[tuple[int, float], ...] = ()
    canary_max_error_rate: float = 0.01
    canary_min_requests: int = 200
    # Hosts switching at once, at most (0: hosts_at_once, one batch at a time); rollout.py.
    max_unavailable_hosts: int = 0
    # The rest of ``deploy.canary.analysis`` (the single-host judge's rules) and its extra holds.
    canary_max_error_rate_increase: float = 0.005
    canary_max_latency_ratio: float = 1.25
    canary_confidence: float = 0.95
    canary_max_hold_extensions: int = 3
    # A rolling deploy through the edges: the hosts in batches, every edge routing to every
    # host's proxy meanwhile (baton.cluster.edgeroll); needs ``edge``, not with ``canary``.
    edge_rolling: bool = False

    def to_json(self) -> str:
        body = asdict(self)
        body["release"] = json.loads(self.release.to_json())
        body["hosts"] = list(self.hosts)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str, what: str = "deploy request") -> DeployRequest:
        body = _object(raw, what)
        release = DesiredRelease.from_json(json.dumps(body.get("release")), f"{what}: release")
        hosts = body.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            raise ValueError(f"{what}: hosts: expected a list of host names")
        at_once = body.get("hosts_at_once", 1)
        if isinstance(at_once, bool) or not isinstance(at_once, int) or at_once < 1:
            raise ValueError(f"{what}: hosts_at_once: expected a whole number, at least 1")
        configs = body.get("configs", {})
        if not isinstance(configs, dict):
            raise ValueError(f"{what}: configs: expected an object")
        rolling = _edge_rolling(body, what)
        return cls(
            release=release,
            hosts=tuple(check_name("host name", h) for h in hosts),
            hosts_at_once=at_once,
            skip_unreachable=body.get("skip_unreachable") is True,
            configs={str(k): str(v) for k, v in configs.items()},
            edge=_text(body, "edge", what, optional=True),
            edge_health=_text(body, "edge_health", what, optional=True) or "/up",
            canary=_canary_steps(body.get("canary", []), f"{what}: canary"),
            canary_max_error_rate=_rate(body.get("canary_max_error_rate", 0.01), what),
            canary_min_requests=_min_requests(body.get("canary_min_requests", 200), what),
            max_unavailable_hosts=_max_unavailable(
                body.get("max_unavailable_hosts", 0), at_once, what
            ),
            canary_max_error_rate_increase=_rate(
                body.get("canary_max_error_rate_increase", 0.005), what,
                "canary_max_error_rate_increase",
            ),
            canary_max_latency_ratio=_positive(
                body.get("canary_max_latency_ratio", 1.25), what, "canary_max_latency_ratio"
            ),
            canary_confidence=_confidence(body.get("canary_confidence", 0.95), what),
            canary_max_hold_extensions=_extensions(body.get("canary_max_hold_extensions", 3), what),
            edge_rolling=rolling,
        )  # fmt: skip


def _edge_rolling(body: dict[str, Any], what: str) -> bool:
    value = body.get("edge_rolling", False)
    if not isinstance(value, bool):
        raise ValueError(f"{what}: edge_rolling: expected true or false")
    if value and not body.get("edge"):
        raise ValueError(f"{what}: edge_rolling: only for an app behind edges (edge)")
    if value and body.get("canary"):
        raise ValueError(f"{what}: edge_rolling: not with a canary")
    return value


def _max_unavailable(value: object, at_once: int, what: str) -> int:
    if value == 0:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < at_once:
        raise ValueError(
            f"{what}: max_unavailable_hosts: expected a whole number, at least hosts_at_once"
            f" ({at_once})"
        )
    return value


def _canary_steps(value: object, what: str) -> tuple[tuple[int, float], ...]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list of [weight, hold] steps")
    steps: list[tuple[int, float]] = []
    for step in value:
        if (
            not isinstance(step, list)
            or len(step) != 2
            or isinstance(step[0], bool)
            or not isinstance(step[0], int)
            or not 1 <= step[0] <= 100
            or not isinstance(step[1], int | float)
            or not 0 < step[1] <= 86400
        ):
            raise ValueError(f"{what}: expected [weight 1-100, hold seconds], got {step!r}")
        steps.append((step[0], float(step[1])))
    return tuple(steps)


def _rate(value: object, what: str, key: str = "canary_max_error_rate") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{what}: {key}: expected a fraction, 0 to 1")
    return float(value)


def _positive(value: object, what: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        raise ValueError(f"{what}: {key}: expected a positive number")
    return float(value)


def _confidence(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"{what}: canary_confidence: expected a fraction between 0 and 1")
    return float(value)


def _extensions(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"{what}: canary_max_hold_extensions: expected a whole number, 0 to 100")
    return value


def _min_requests(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: canary_min_requests: expected a whole number, at least 1")
    return value
