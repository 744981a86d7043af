"""Feature flags: what a flag is, how it is validated, and how it is evaluated. Pure, no I/O.

Theory of operation. A ``FlagSet`` is every flag of one app, parsed from the app's
``flags.yml`` (``parse_flags``) or from its stored JSON form (``FlagSet.from_json``); both
take the same path, so a flag set that was accepted once is accepted again. A flag has named
*variants* (all booleans, all strings, all numbers or all objects), a ``default`` variant
(served when nothing else decides, and whenever the flag is killed), an ordered list of
targeting *rules* (the first whose conditions all hold decides), and an optional fallthrough
*rollout* (percentages of variants; the rest get the default). ``evaluate`` answers one
``(flag, context)`` pair with a value, a variant and an OpenFeature reason.

Percentages are sticky: a context's point in [0, 1) is the first 8 bytes of the BLAKE2b
hash of ``"<flag>:<key>"`` divided by 2^64, salted with the flag's name so that flags split
users independently. (Not the proxy's canary hash, ``routing.sticky_point``: CRC-32 is
linear, so salting it does not decorrelate two flags — a test caught 45% of users in both
halves of two 50% flags instead of 25%.) Variants take consecutive slices of [0, 1) in the
order they are listed, so raising one variant's share only moves users onto it, never off
it.

Nothing here clocks, logs or touches a file: the same set and context always give the same
evaluation, and ``FlagError`` (a ``ConfigError``) names the file and the dotted key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from baton.config import parse_duration
from baton.config import parse_percent as config_percent
from baton.errors import ConfigError

FlagType = Literal["boolean", "string", "number", "object"]
OPERATORS = (
    "eq",
    "neq",
    "in",
    "not_in",
    "starts_with",
    "ends_with",
    "contains",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
)
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DEFAULT_STICKY_KEY = "targetingKey"
MAX_FLAGS = 1000
MAX_RULES = 100

# OpenFeature reasons (https://openfeature.dev/specification/types#resolution-reason).
STATIC = "STATIC"
TARGETING_MATCH = "TARGETING_MATCH"
SPLIT = "SPLIT"
DISABLED = "DISABLED"
DEFAULT = "DEFAULT"


class FlagError(ConfigError):
    """A flag definition is wrong: names the file (when there is one) and the dotted key."""


@dataclass(frozen=True)
class Condition:
    attribute: str
    op: str
    value: Any


@dataclass(frozen=True)
class Rule:
    conditions: tuple[Condition, ...]
    serve: str | None = None  # a variant, or None when ``rollout`` decides
    rollout: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class FlagJudge:
    """``flags.NAME.judge``: compare the flag's cohorts on live traffic; kill on a regression.

    Each non-default variant's cohort is judged against the default variant's cohort over
    the last ``window`` with the canary judge's rules (``deploy.analysis.judge``).
    """

    window: float = 30.0
    min_requests: int = 200
    max_error_rate: float = 1.0  # no absolute ceiling: a flag is judged against its own "off"
    max_error_rate_increase: float = 0.005
    max_latency_ratio: float = 1.25
    confidence: float = 0.95


@dataclass(frozen=True)
class Flag:
    key: str
    type: FlagType
    variants: Mapping[str, Any]
    default: str
    rules: tuple[Rule, ...] = ()
    rollout: tuple[tuple[str, float], ...] = ()
    sticky_on: str = DEFAULT_STICKY_KEY
    killed: bool = False
    description: str = ""
    follow_canary: str | None = None  # variant served to a running canary's own evaluations
    judge: FlagJudge | None = None


@dataclass(frozen=True)
class Evaluation:
    key: str
    value: Any
    variant: str
    reason: str


@dataclass(frozen=True)
class EvaluationError:
    key: str
    error_code: str  # FLAG_NOT_FOUND | TARGETING_KEY_MISSING | INVALID_CONTEXT | PARSE_ERROR
    details: str


@dataclass(frozen=True)
class FlagSet:
    flags: Mapping[str, Flag] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {key: flag_to_json(flag) for key, flag in sorted(self.flags.items())}

    @classmethod
    def from_json(cls, raw: object) -> FlagSet:
        return parse_flags({"flags": raw})

    def with_flag(self, flag: Flag) -> FlagSet:
        return FlagSet({**self.flags, flag.key: flag})

    def get(self, key: str, *, file: str | None = None) -> Flag:
        flag = self.flags.get(key)
        if flag is None:
            known = ", ".join(sorted(self.flags)) or "none"
            raise FlagError(f"no flag {key!r} (flags: {known})", file=file)
        return flag


# -- parsing -----------------------------------------------------------------------------------


def _fail(message: str, key: str, file: str | None) -> FlagError:
    return FlagError(message, file=file, key=key)


def _type_of(value: Any) -> FlagType | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number" if math.isfinite(value) else None
    if isinstance(value, dict):
        return "object"
    return None


def parse_percent(value: object, key: str, file: str | None) -> float:
    """``25%``, ``"2.5%"`` or a fraction ``0.25`` → 0.25, within [0, 1] (as in baton.yml)."""
    try:
        return config_percent(value)
    except ValueError as exc:
        raise _fail(str(exc), key, file) from None


def _parse_rollout(
    raw: object, variants: Mapping[str, Any], key: str, file: str | None
) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, dict) or not raw:
        raise _fail("expected a mapping of variant: percentage, e.g. {on: 10%}", key, file)
    shares: list[tuple[str, float]] = []
    for name, share in raw.items():
        if not isinstance(name, str) or name not in variants:
            raise _fail(f"unknown variant {name!r} (variants: {', '.join(variants)})", key, file)
        shares.append((name, parse_percent(share, f"{key}.{name}", file)))
    if sum(share for _, share in shares) > 1.0 + 1e-9:
        raise _fail("the percentages add up to more than 100%", key, file)
    return tuple(shares)


def _parse_condition(attribute: object, raw: object, key: str, file: str | None) -> Condition:
    if not isinstance(attribute, str) or not attribute:
        raise _fail(f"expected an attribute name, got {attribute!r}", key, file)
    where = f"{key}.{attribute}"
    if not isinstance(raw, dict):
        if _type_of(raw) in ("boolean", "string", "number"):
            return Condition(attribute, "eq", raw)
        raise _fail(f"expected a value or {{operator: value}}, got {raw!r}", where, file)
    if len(raw) != 1:
        raise _fail("expected exactly one operator, e.g. {in: [FR, DE]}", where, file)
    ((op, value),) = raw.items()
    if op not in OPERATORS:
        raise _fail(f"unknown operator {op!r} (one of: {', '.join(OPERATORS)})", where, file)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not all(
            _type_of(v) in ("boolean", "string", "number") for v in value
        ):
            raise _fail(f"{op}: expected a list of strings, numbers or booleans", where, file)
        value = tuple(value)
    elif op in ("starts_with", "ends_with", "contains"):
        if not isinstance(value, str):
            raise _fail(f"{op}: expected a string, got {value!r}", where, file)
    elif op in ("gt", "gte", "lt", "lte"):
        if _type_of(value) != "number":
            raise _fail(f"{op}: expected a number, got {value!r}", where, file)
    elif op == "exists":
        if not isinstance(value, bool):
            raise _fail(f"exists: expected true or false, got {value!r}", where, file)
    elif _type_of(value) not in ("boolean", "string", "number"):
        raise _fail(f"{op}: expected a string, number or boolean, got {value!r}", where, file)
    return Condition(attribute, op, value)


def _parse_rule(raw: object, variants: Mapping[str, Any], key: str, file: str | None) -> Rule:
    if not isinstance(raw, dict):
        raise _fail("expected a mapping with when and serve (or rollout)", key, file)
    unknown = set(raw) - {"when", "serve", "rollout"}
    if unknown:
        raise _fail(f"unknown key {sorted(unknown)[0]!r} (keys: when, serve, rollout)", key, file)
    when = raw.get("when")
    if not isinstance(when, dict) or not when:
        raise _fail("when: expected a mapping of attribute: condition", key, file)
    conditions = tuple(_parse_condition(a, v, f"{key}.when", file) for a, v in when.items())
    has_serve, has_rollout = "serve" in raw, "rollout" in raw
    if has_serve == has_rollout:
        raise _fail("expected exactly one of serve (a variant) or rollout", key, file)
    if has_serve:
        serve = raw["serve"]
        if not isinstance(serve, str) or serve not in variants:
            raise _fail(
                f"serve: unknown variant {serve!r} (variants: {', '.join(variants)})", key, file
            )
        return Rule(conditions, serve=serve)
    return Rule(
        conditions, rollout=_parse_rollout(raw["rollout"], variants, f"{key}.rollout", file)
    )


_BOOLEAN_VARIANTS = {"on": True, "off": False}
_FLAG_KEYS = {
    "variants",
    "default",
    "rules",
    "rollout",
    "sticky_on",
    "killed",
    "description",
    "follow_canary",
    "judge",
}
_JUDGE_KEYS = {
    "window",
    "min_requests",
    "max_error_rate",
    "max_error_rate_increase",
    "max_latency_ratio",
    "confidence",
}
CANARY_ATTRIBUTE = "baton_version"  # what an instance puts in its context: $BATON_VERSION


def parse_flag(name: object, raw: object, *, file: str | None = None) -> Flag:
    """One flag from its ``flags.yml`` form. ``name: true`` is a static boolean flag."""
    if not isinstance(name, str) or not KEY_RE.match(name):
        raise _fail(
            f"a flag name is letters, digits, '_', '.', '-' (at most 128), got {name!r}",
            f"flags.{name}",
            file,
        )
    key = f"flags.{name}"
    if isinstance(raw, bool):
        return Flag(name, "boolean", dict(_BOOLEAN_VARIANTS), "on" if raw else "off")
    if not isinstance(raw, dict):
        raise _fail("expected true, false or a mapping (variants, default, rules...)", key, file)
    unknown = set(raw) - _FLAG_KEYS
    if unknown:
        raise _fail(
            f"unknown key {sorted(unknown)[0]!r} (keys: {', '.join(sorted(_FLAG_KEYS))})",
            key,
            file,
        )
    variants_raw = raw.get("variants", _BOOLEAN_VARIANTS)
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise _fail("variants: expected a mapping of name: value", key, file)
    types: set[FlagType | None] = set()
    variants: dict[str, Any] = {}
    for vname, value in variants_raw.items():
        if not isinstance(vname, str) or not KEY_RE.match(vname):
            raise _fail(f"variants: bad variant name {vname!r}", key, file)
        types.add(_type_of(value))
        variants[vname] = value
    if None in types or len(types) != 1:
        raise _fail(
            "variants: all values must be of one type (booleans, strings, numbers or objects)",
            key,
            file,
        )
    flag_type = types.pop()
    assert flag_type is not None
    default = raw.get("default")
    if default is None:
        default = "off" if "off" in variants else next(iter(variants))
    if not isinstance(default, str) or default not in variants:
        raise _fail(
            f"default: unknown variant {default!r} (variants: {', '.join(variants)})", key, file
        )
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list) or len(rules_raw) > MAX_RULES:
        raise _fail(f"rules: expected a list of at most {MAX_RULES} rules", key, file)
    rules = tuple(
        _parse_rule(r, variants, f"{key}.rules[{i}]", file) for i, r in enumerate(rules_raw)
    )
    rollout: tuple[tuple[str, float], ...] = ()
    if raw.get("rollout") is not None:
        rollout = _parse_rollout(raw["rollout"], variants, f"{key}.rollout", file)
    sticky_on = raw.get("sticky_on", DEFAULT_STICKY_KEY)
    if not isinstance(sticky_on, str) or not sticky_on:
        raise _fail("sticky_on: expected a context attribute name", key, file)
    killed = raw.get("killed", False)
    if not isinstance(killed, bool):
        raise _fail("killed: expected true or false", key, file)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _fail("description: expected a string", key, file)
    follow = raw.get("follow_canary")
    if follow is not None and (not isinstance(follow, str) or follow not in variants):
        raise _fail(
            f"follow_canary: expected the variant a running canary serves, one of"
            f" {', '.join(variants)}; got {follow!r}",
            key,
            file,
        )
    return Flag(
        name,
        flag_type,
        variants,
        default,
        rules,
        rollout,
        sticky_on,
        killed,
        description,
        follow,
        _parse_judge(raw.get("judge"), f"{key}.judge", file),
    )


def _parse_judge(raw: object, key: str, file: str | None) -> FlagJudge | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return FlagJudge()
    if not isinstance(raw, dict):
        raise _fail("expected true, false or a mapping (window, min_requests, ...)", key, file)
    unknown = set(raw) - _JUDGE_KEYS
    if unknown:
        raise _fail(
            f"unknown key {sorted(unknown)[0]!r} (keys: {', '.join(sorted(_JUDGE_KEYS))})",
            key,
            file,
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{key}.{name}"
        if name == "window":
            try:
                values[name] = parse_duration(value)
            except ValueError as exc:
                raise _fail(str(exc), where, file) from None
            if values[name] < 1.0:
                raise _fail(f"expected at least 1s, got {value!r}", where, file)
        elif name == "min_requests":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(f"expected a whole number of at least 1, got {value!r}", where, file)
            values[name] = value
        elif name in ("max_error_rate", "max_error_rate_increase"):
            values[name] = parse_percent(value, where, file)
        elif name == "max_latency_ratio":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 1.0:
                raise _fail(f"expected a ratio above 1, like 1.25, got {value!r}", where, file)
            values[name] = float(value)
        else:  # confidence
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0.5 <= value < 1
            ):
                raise _fail(
                    f"expected a confidence like 0.95 (0.5 to 1), got {value!r}", where, file
                )
            values[name] = float(value)
    return FlagJudge(**values)


def parse_flags(raw: object, *, file: str | None = None) -> FlagSet:
    """A whole ``flags.yml`` (``{"flags": {name: flag}}``) into a ``FlagSet``."""
    if raw is None:
        return FlagSet({})
    if not isinstance(raw, dict):
        raise FlagError("expected a mapping with a 'flags' key", file=file)
    unknown = set(raw) - {"flags"}
    if unknown:
        raise FlagError(f"unknown key {sorted(unknown)[0]!r} (expected: flags)", file=file)
    flags_raw = raw.get("flags") or {}
    if not isinstance(flags_raw, dict):
        raise FlagError("expected a mapping of flag name: definition", file=file, key="flags")
    if len(flags_raw) > MAX_FLAGS:
        raise FlagError(f"at most {MAX_FLAGS} flags", file=file, key="flags")
    return FlagSet({str(k): parse_flag(k, v, file=file) for k, v in flags_raw.items()})


def _rollout_json(shares: tuple[tuple[str, float], ...]) -> dict[str, float]:
    return {name: share for name, share in shares}


def _condition_json(c: Condition) -> object:
    value = list(c.value) if isinstance(c.value, tuple) else c.value
    return value if c.op == "eq" else {c.op: value}


def flag_to_json(flag: Flag) -> dict[str, Any]:
    """The stored form: ``parse_flag(key, flag_to_json(f)) == f``."""
    rules: list[dict[str, Any]] = []
    for rule in flag.rules:
        entry: dict[str, Any] = {"when": {c.attribute: _condition_json(c) for c in rule.conditions}}
        if rule.serve is not None:
            entry["serve"] = rule.serve
        else:
            entry["rollout"] = _rollout_json(rule.rollout)
        rules.append(entry)
    out: dict[str, Any] = {
        "variants": dict(flag.variants),
        "default": flag.default,
        "rules": rules,
        "sticky_on": flag.sticky_on,
        "killed": flag.killed,
    }
    if flag.rollout:
        out["rollout"] = _rollout_json(flag.rollout)
    if flag.description:
        out["description"] = flag.description
    if flag.follow_canary is not None:
        out["follow_canary"] = flag.follow_canary
    if flag.judge is not None:
        j = flag.judge
        out["judge"] = {
            "window": j.window,
            "min_requests": j.min_requests,
            "max_error_rate": j.max_error_rate,
            "max_error_rate_increase": j.max_error_rate_increase,
            "max_latency_ratio": j.max_latency_ratio,
            "confidence": j.confidence,
        }
    return out


# -- changes (what `baton flags set/rollout/kill` do) -----------------------------------------


def serve_everyone(flag: Flag, variant: str) -> Flag:
    """Every context gets ``variant``: rules and rollout are cleared."""
    if variant not in flag.variants:
        raise FlagError(
            f"unknown variant {variant!r} (variants: {', '.join(flag.variants)})",
            key=f"flags.{flag.key}",
        )
    return replace(flag, default=variant, rules=(), rollout=())


def roll_out(flag: Flag, variant: str, share: float) -> Flag:
    """The fallthrough rollout becomes ``share`` of contexts on ``variant`` (rules kept)."""
    if variant not in flag.variants:
        raise FlagError(
            f"unknown variant {variant!r} (variants: {', '.join(flag.variants)})",
            key=f"flags.{flag.key}",
        )
    if variant == flag.default:
        raise FlagError(
            f"{variant!r} is the default variant: roll out another one", key=f"flags.{flag.key}"
        )
    if not (0.0 <= share <= 1.0):
        raise FlagError("expected a percentage between 0% and 100%", key=f"flags.{flag.key}")
    return replace(flag, rollout=((variant, share),) if share > 0 else ())


def set_killed(flag: Flag, killed: bool) -> Flag:
    return replace(flag, killed=killed)


# -- evaluation --------------------------------------------------------------------------------


def _same(a: object, b: object) -> bool:
    # True == 1 in Python; in a flag rule a boolean only ever equals a boolean.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _holds(c: Condition, context: Mapping[str, Any]) -> bool:
    present = c.attribute in context and context[c.attribute] is not None
    if c.op == "exists":
        return present is c.value
    if not present:
        return False
    actual = context[c.attribute]
    try:
        if c.op == "eq":
            return _same(actual, c.value)
        if c.op == "neq":
            return not _same(actual, c.value)
        if c.op == "in":
            return any(_same(actual, v) for v in c.value)
        if c.op == "not_in":
            return not any(_same(actual, v) for v in c.value)
        if c.op == "starts_with":
            return isinstance(actual, str) and actual.startswith(c.value)
        if c.op == "ends_with":
            return isinstance(actual, str) and actual.endswith(c.value)
        if c.op == "contains":
            return isinstance(actual, str) and c.value in actual
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
        if c.op == "gt":
            return bool(actual > c.value)
        if c.op == "gte":
            return bool(actual >= c.value)
        if c.op == "lt":
            return bool(actual < c.value)
        if c.op == "lte":
            return bool(actual <= c.value)
    except TypeError:
        return False
    return False


def bucket_point(flag_key: str, sticky_value: object) -> float:
    """The context's sticky point in [0, 1) for this flag (see the module docstring)."""
    if isinstance(sticky_value, str):
        text = sticky_value
    else:
        text = json.dumps(sticky_value, sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(f"{flag_key}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0


def _split(
    flag: Flag, shares: tuple[tuple[str, float], ...], context: Mapping[str, Any]
) -> Evaluation | EvaluationError:
    sticky = context.get(flag.sticky_on)
    if sticky is None or sticky == "":
        return EvaluationError(
            flag.key,
            "TARGETING_KEY_MISSING",
            f"flag {flag.key!r} splits by percentage on {flag.sticky_on!r},"
            " which the context does not have",
        )
    point = bucket_point(flag.key, sticky)
    edge = 0.0
    for variant, share in shares:
        edge += share
        if point < edge:
            return Evaluation(flag.key, flag.variants[variant], variant, SPLIT)
    return Evaluation(flag.key, flag.variants[flag.default], flag.default, SPLIT)


def evaluate(
    flag: Flag, context: Mapping[str, Any], *, canary: str | None = None
) -> Evaluation | EvaluationError:
    """Which variant ``context`` gets, and why.

    ``canary`` is the version of the app's running canary, if any: a flag with
    ``follow_canary`` serves that variant to the canary's own evaluations (contexts whose
    ``baton_version`` is the canary's), so the flag is on exactly for the canary's users
    and goes wherever the canary goes; everything else is evaluated as usual.
    """
    if flag.killed:
        return Evaluation(flag.key, flag.variants[flag.default], flag.default, DISABLED)
    if (
        flag.follow_canary is not None
        and canary is not None
        and context.get(CANARY_ATTRIBUTE) == canary
    ):
        variant = flag.follow_canary
        return Evaluation(flag.key, flag.variants[variant], variant, TARGETING_MATCH)
    for rule in flag.rules:
        if all(_holds(c, context) for c in rule.conditions):
            if rule.serve is not None:
                return Evaluation(flag.key, flag.variants[rule.serve], rule.serve, TARGETING_MATCH)
            return _split(flag, rule.rollout, context)
    if flag.rollout:
        return _split(flag, flag.rollout, context)
    reason = STATIC if not flag.rules else DEFAULT
    return Evaluation(flag.key, flag.variants[flag.default], flag.default, reason)


def check_context(raw: object) -> dict[str, Any]:
    """An OFREP evaluation context: a JSON object (``targetingKey`` a string when given)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("context: expected a JSON object")
    key = raw.get("targetingKey")
    if key is not None and not isinstance(key, str):
        raise ValueError("context.targetingKey: expected a string")
    return raw
