"""The fleet's keys in baton.yml, checked apart from the single-host config (pure).

| key                            | default          | meaning                                   |
|--------------------------------|------------------|-------------------------------------------|
| hosts                          | (none: one host) | ``[web1, web2]`` or ``{role: app}``       |
| deploy.hosts_at_once           | 1                | hosts deployed in one batch               |
| deploy.max_unavailable_hosts   | hosts_at_once    | hosts out of rotation at once, at most    |

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
    return FleetSettings(hosts, at_once, unavailable)


def strip_fleet_keys(raw: object, file: str | None = None) -> Any:
    """``raw`` without the fleet's keys, once they are checked (other values: unchanged)."""
    if not isinstance(raw, dict):
        return raw
    fleet_settings(raw, file)
    deploy = raw.get("deploy")
    fleet_deploy = isinstance(deploy, dict) and (
        "hosts_at_once" in deploy or "max_unavailable_hosts" in deploy
    )
    if "hosts" not in raw and not fleet_deploy:
        return raw
    out = copy.copy(raw)
    out.pop("hosts", None)
    if fleet_deploy:
        assert isinstance(deploy, dict)
        out["deploy"] = {
            k: v for k, v in deploy.items() if k not in ("hosts_at_once", "max_unavailable_hosts")
        }
    return out
