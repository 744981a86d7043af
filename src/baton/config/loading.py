"""Reading a baton.yml: YAML in, a validated ``AppConfig`` or one ``ConfigError`` out.

This module owns the file side of config: reading the YAML (duplicate keys refused),
validating it against the models, translating every pydantic error into a ``ConfigError``
that names the file, the dotted key and what was expected (no pydantic message ever reaches
a user), the config hash, and the ``--env/--command/--strategy/--image`` overrides.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from baton.cluster.settings import strip_fleet_keys
from baton.config.models import AppConfig, KeyedError
from baton.config.units import shown
from baton.errors import ConfigError

# --------------------------------------------------------------------------- errors


def _loc(error: Any) -> tuple[int | str, ...]:
    keyed = (error.get("ctx") or {}).get("error")
    if isinstance(keyed, KeyedError):
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
        return f"expected a mapping, got {shown(value)}"
    if kind == "list_type":
        return f"expected a list, got {shown(value)}"
    if kind in ("string_type", "str_type"):
        return f"expected a string, got {shown(value)}"
    if kind in ("int_type", "int_parsing"):
        return f"expected an integer, got {shown(value)}"
    return f"invalid value {shown(value)}"


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


# libyaml's parser when PyYAML was built with it (about 10x faster than the pure one), the
# same safe constructor. A file it refuses is read again by the pure loader, whose messages
# name the character or token that was wrong.
_FastBase: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _FastUniqueKeyLoader(_FastBase):  # type: ignore[valid-type,misc]
    """``_UniqueKeyLoader`` on libyaml."""


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


for _loader in (_UniqueKeyLoader, _FastUniqueKeyLoader):
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


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
            f"expected a mapping of keys at the top level, got {shown(raw)}", file=file
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
        try:
            raw = yaml.load(text, Loader=_FastUniqueKeyLoader)  # a safe loader
        except yaml.YAMLError:
            raw = yaml.load(text, Loader=_UniqueKeyLoader)  # the same verdict, a clearer message
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
