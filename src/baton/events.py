"""Typed deployment events: what the engine emits, the API streams and the CLI renders.

Each kind of event a deployment emits is one dataclass here, named by what happened
(``Switched``, ``InstanceChanged``, ``CanaryVerdict``...), with ``KIND`` the ``"event"``
string it carries on the wire. On the wire (the API's NDJSON stream, the observe hub) an
event is the same flat JSON object as before: ``{"event": KIND, field: value, ...}``.
``to_dict`` writes it; ``from_dict`` reads it back into its class. A field left ``UNSET``
is absent from the wire (``None`` is a value: ``"batch": null``); keys a class does not
declare (a newer server's, an artifact's description) are kept in ``extra`` and written
back, so the round trip loses nothing. ``from_dict`` refuses a dict that is not an event
(no ``"event"`` string, a required field missing) with ``ValueError`` naming what is wrong;
an unknown kind becomes an ``Unknown`` event that renders nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


class _Unset:
    """The value of a field the event does not carry (absent from the wire)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def given(value: Any) -> bool:
    """Whether an optional field was set (``None`` counts as set)."""
    return value is not UNSET


@dataclass(kw_only=True)
class Event:
    """What every event has: its kind (``KIND``), its wall-clock time, unknown keys."""

    KIND: ClassVar[str] = ""
    ts: float = UNSET
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.KIND}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "ts"):
                continue
            value = getattr(self, f.name)
            if value is not UNSET:
                out[f.name] = value
        out.update(self.extra)
        if self.ts is not UNSET:
            out["ts"] = self.ts
        return out


@dataclass(kw_only=True)
class Intro(Event):
    """A deployment was recorded: what it deploys, over what, how."""

    KIND = "deployment"
    id: int
    app: str
    kind: str
    version: str
    previous: str | None
    strategy: str
    finished: bool = UNSET  # `baton watch` of a deployment that already ended


@dataclass(kw_only=True)
class StepStarted(Event):
    KIND = "step"
    step: str
    batch: int | None
    detail: str = UNSET
    weight: int = UNSET  # a canary step's weight


@dataclass(kw_only=True)
class InstanceChanged(Event):
    KIND = "instance"
    index: int
    address: str
    state: str  # starting | ready | failed
    message: str = UNSET


@dataclass(kw_only=True)
class Probe(Event):
    """Readiness progress of one instance (what the probe saw last)."""

    KIND = "probe"
    index: int
    message: str


@dataclass(kw_only=True)
class Switched(Event):
    KIND = "switch"
    weights: dict[str, int]
    batch: int | None = UNSET
    back: bool = UNSET  # switched back to the previous release (an undo)


@dataclass(kw_only=True)
class Verifying(Event):
    KIND = "verify"
    requests: int
    errors: int
    rate: float
    failing: bool
    batch: int | None = UNSET
    left: float = UNSET
    passed: bool = UNSET


@dataclass(kw_only=True)
class Drained(Event):
    KIND = "drain"
    targets: list[str]
    drained: bool


@dataclass(kw_only=True)
class Stopped(Event):
    KIND = "stopped"
    targets: list[str]


@dataclass(kw_only=True)
class KeptWarm(Event):
    KIND = "keep_warm"
    version: str
    seconds: float


@dataclass(kw_only=True)
class HookRan(Event):
    KIND = "hook"
    hook: str
    ok: bool


@dataclass(kw_only=True)
class HookOutput(Event):
    KIND = "hook_output"
    hook: str
    line: str


@dataclass(kw_only=True)
class SmokeTest(Event):
    KIND = "smoke_test"
    target: str


@dataclass(kw_only=True)
class Warned(Event):
    KIND = "warning"
    message: str


@dataclass(kw_only=True)
class Artifact(Event):
    """The new release's artifact was frozen (its description is in ``extra``)."""

    KIND = "artifact"


@dataclass(kw_only=True)
class Pruned(Event):
    KIND = "pruned"
    versions: list[str]


@dataclass(kw_only=True)
class CanaryNote(Event):
    KIND = "canary"
    phase: str
    message: str


@dataclass(kw_only=True)
class CanaryStep(Event):
    KIND = "canary_step"
    step: int
    steps: int
    weight: int
    hold: float
    weights: dict[str, int]


@dataclass(kw_only=True)
class CanaryVerdict(Event):
    """A canary step's verdict (or a guard/fuse trip) and what it decided."""

    KIND = "verdict"
    step: int
    weight: int
    window: float
    decision: str
    reason: str
    verdict: str
    reasons: list[str]
    figures: dict[str, Any]
    confirming: bool = UNSET
    extensions: int = UNSET
    guard: bool = UNSET
    fuse: bool = UNSET


@dataclass(kw_only=True)
class CanaryRequest(Event):
    KIND = "canary_request"
    request: str  # promote | abort
    step: int
    weight: int


@dataclass(kw_only=True)
class Result(Event):
    """How the deployment ended: the last event of every stream."""

    KIND = "result"
    deployment: int
    ok: bool
    exit_code: int
    status: str
    message: str
    version: str | None = UNSET
    previous: str | None = UNSET
    seconds: float = UNSET
    instance: int | None = UNSET
    logs: list[str] = UNSET
    finished: bool = UNSET


@dataclass(kw_only=True)
class Unknown(Event):
    """An event of a kind this version does not know (from a newer server)."""

    KIND = ""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["event"] = self.name
        out.pop("name", None)
        return out


KINDS: dict[str, type[Event]] = {
    cls.KIND: cls
    for cls in (
        Intro,
        StepStarted,
        InstanceChanged,
        Probe,
        Switched,
        Verifying,
        Drained,
        Stopped,
        KeptWarm,
        HookRan,
        HookOutput,
        SmokeTest,
        Warned,
        Artifact,
        Pruned,
        CanaryNote,
        CanaryStep,
        CanaryVerdict,
        CanaryRequest,
        Result,
    )
}


def from_dict(data: Mapping[str, Any]) -> Event:
    """The event a wire dict describes (see the module docstring)."""
    kind = data.get("event")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"not a deployment event (no 'event' kind): {dict(data)!r:.200}")
    cls = KINDS.get(kind)
    if cls is None:
        rest = {k: v for k, v in data.items() if k not in ("event", "ts")}
        return Unknown(name=kind, extra=rest, ts=data.get("ts", UNSET))
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    values = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names and k != "event"}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"a {kind!r} event without {', '.join(missing)}")
    return cls(**values, extra=extra)
