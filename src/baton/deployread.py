"""What ``baton deploy`` reads of baton.yml itself before asking the control plane.

The daemon validates the whole file on every deploy (and answers exit 2 with the message
naming file and key), so the CLI need not build the config models first: it only needs the
``secrets:`` names (their values travel in the request) and to know that the app is not a
fleet app (``hosts:``, which another path deploys). ``facts_of`` is pure; it answers None
for anything that is not plainly such a file, and the caller then validates the file fully,
so that every bad-config error still reads exactly as ``load_config`` words it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FLEET_DEPLOY_KEYS = ("hosts_at_once", "max_unavailable_hosts")


@dataclass(frozen=True)
class DeployFacts:
    """The little of a one-host app's baton.yml that the CLI needs to send a deploy."""

    secrets: tuple[str, ...]  # the names listed under secrets:
    base_dir: Path  # the file's directory (where .baton/secrets is)


def facts_of(raw: object, base_dir: Path) -> DeployFacts | None:
    """The facts of parsed YAML, or None unless it is a one-host app with plain secret names."""
    if not isinstance(raw, dict) or "hosts" in raw or not isinstance(raw.get("app"), str):
        return None
    deploy = raw.get("deploy")
    if isinstance(deploy, dict) and any(key in deploy for key in _FLEET_DEPLOY_KEYS):
        return None
    names = raw.get("secrets", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and _NAME.match(n) for n in names):
        return None
    return DeployFacts(tuple(names), base_dir)


def read_deploy_facts(path: Path) -> DeployFacts | None:
    """``facts_of`` the file at ``path``; None when it cannot be read or parsed as YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when it is there
    try:
        raw = yaml.load(text, Loader=loader)  # a safe loader
    except yaml.YAMLError:
        return None
    return facts_of(raw, path.parent)
