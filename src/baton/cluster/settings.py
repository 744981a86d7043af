"""The fleet's keys in baton.yml, checked apart from the single-host config (pure).

| key                            | default          | meaning                                   |
|--------------------------------|------------------|-------------------------------------------|
| hosts                          | (none: one host) | ``[web1, web2]`` or ``{role: app}``       |
| deploy.hosts_at_once           | 1                | hosts deployed in one batch               |
| deploy.max_unavailable_hosts   | hosts_at_once    | hosts switching at once, at most: batches |
|                                |                  | start while fewer are in flight; with     |
|                                |                  | edge.listen only for strategy rolling     |
| edge.listen                    | (none: no edges) | where the edges take the app's traffic;   |
|                                |                  | a deploy is blue-green at the edges       |
| edge.health_path               | health.path, /up | the edges' health check of each app host  |

``baton.config`` calls ``strip_fleet_keys`` (one line) before validating its own models, so
those keep forbidding unknown keys while the fleet's keys live here: each is checked (an
error names the file, the key and what was expected) and then removed from what the
single-host models see. ``fleet_settings`` reads them back from the raw YAML.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from baton.cluster.keys import check_name
from baton.errors import ConfigError

ROLES = ("app", "edge", "controller")


@dataclass(frozen=True)
class HostSelector:
    names: tuple[str, ...] = ()  # these hosts, in this order (the rollout's order)
    role: str | None = None  # or every host with this role, by name

    def pick(self, hosts: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
        """The selected host names among ``(name, roles)`` pairs, in rollout order."""
        if self.names:
            return list(self.names)
        return sorted(name for name, roles in hosts if self.role in roles)


@dataclass(frozen=True)
class FleetSettings:
    hosts: HostSelector | None = None
    hosts_at_once: int = 1
    max_unavailable_hosts: int = 1
    edge_listen: str | None = None  # deploys are one cutover at the edges listening there
    edge_health_path: str = "/up"


def _edge(raw: dict[str, Any], file: str | None) -> tuple[str | None, str]:
    from baton import addresses

    value = raw.get("edge")
    health = raw.get("health")
    default = health.get("path") if isinstance(health, dict) else None
    default = default if isinstance(default, str) and default.startswith("/") else "/up"
    if value is None:
        return None, default
    if not isinstance(value, dict) or "listen" not in value:
        raise ConfigError("expected {listen: HOST:PORT}", file=file, key="edge")
    unknown = sorted(set(value) - {"listen", "health_path"})
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)}; expected listen, health_path",
            file=file,
            key="edge",
        )
    try:
        addresses.parse_address(value["listen"])
    except ValueError as exc:
        raise ConfigError(f"expected HOST:PORT ({exc})", file=file, key="edge.listen") from None
    path = value.get("health_path", default)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(
            f"expected a path starting with /, got {path!r}", file=file, key="edge.health_path"
        )
    return str(value["listen"]), path


def _positive(value: object, file: str | None, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"expected a whole number of hosts, at least 1, got {value!r}", file=file, key=key
        )
    return value


def _selector(value: object, file: str | None) -> HostSelector:
    if isinstance(value, list):
        if not value:
            raise ConfigError("expected at least one host name", file=file, key="hosts")
        names: list[str] = []
        for i, name in enumerate(value):
            try:
                names.append(check_name("host name", name))
            except ValueError as exc:
                raise ConfigError(str(exc), file=file, key=f"hosts[{i}]") from None
        if len(set(names)) != len(names):
            raise ConfigError("a host is named twice", file=file, key="hosts")
        return HostSelector(names=tuple(names))
    if isinstance(value, dict) and set(value) == {"role"}:
        role = value["role"]
        if role not in ROLES:
            raise ConfigError(
                f"expected one of {', '.join(ROLES)}, got {role!r}", file=file, key="hosts.role"
            )
        return HostSelector(role=str(role))
    raise ConfigError(
        "expected a list of host names ([web1, web2]) or a role selector ({role: app})",
        file=file,
        key="hosts",
    )


def fleet_settings(raw: object, file: str | None = None) -> FleetSettings:
    """The fleet keys of a parsed baton.yml (defaults when absent); bad ones: ConfigError."""
    if not isinstance(raw, dict):
        return FleetSettings()
    hosts = _selector(raw["hosts"], file) if "hosts" in raw else None
    deploy = raw.get("deploy")
    deploy = deploy if isinstance(deploy, dict) else {}
    at_once = 1
    if "hosts_at_once" in deploy:
        at_once = _positive(deploy["hosts_at_once"], file, "deploy.hosts_at_once")
    unavailable = at_once
    if "max_unavailable_hosts" in deploy:
        unavailable = _positive(
            deploy["max_unavailable_hosts"], file, "deploy.max_unavailable_hosts"
        )
        if unavailable < at_once:
            raise ConfigError(
                f"expected at least deploy.hosts_at_once ({at_once}), got {unavailable}: a"
                " batch takes that many hosts out of rotation",
                file=file,
                key="deploy.max_unavailable_hosts",
            )
    edge, edge_health = _edge(raw, file)
    if edge is not None and hosts is None:
        raise ConfigError(
            "edge needs hosts: the app hosts the edges route to", file=file, key="edge"
        )
    strategy = deploy.get("strategy", "blue-green")
    if edge is not None and "max_unavailable_hosts" in deploy and strategy != "rolling":
        raise ConfigError(
            f"cannot apply with edge.listen and deploy.strategy {strategy}: a deploy through"
            " the edges takes half the hosts out of rotation at once by design (green, then"
            " blue); remove deploy.max_unavailable_hosts, or use deploy.strategy: rolling",
            file=file,
            key="deploy.max_unavailable_hosts",
        )
    return FleetSettings(hosts, at_once, unavailable, edge, edge_health)


def strip_fleet_keys(raw: object, file: str | None = None) -> Any:
    """``raw`` without the fleet's keys, once they are checked (other values: unchanged)."""
    if not isinstance(raw, dict):
        return raw
    fleet_settings(raw, file)
    deploy = raw.get("deploy")
    fleet_deploy = isinstance(deploy, dict) and (
        "hosts_at_once" in deploy or "max_unavailable_hosts" in deploy
    )
    if "hosts" not in raw and "edge" not in raw and not fleet_deploy:
        return raw
    out = copy.copy(raw)
    out.pop("hosts", None)
    out.pop("edge", None)
    if fleet_deploy:
        assert isinstance(deploy, dict)
        out["deploy"] = {
            k: v for k, v in deploy.items() if k not in ("hosts_at_once", "max_unavailable_hosts")
        }
    return out
