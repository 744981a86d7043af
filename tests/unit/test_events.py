"""Typed deployment events: the wire dicts round-trip, and the CLI renders every kind."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from baton import events as ev
from baton.cli import Progress

# One wire dict per kind, as the engine emits them (optional fields both set and left out).
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "deployment": [
        {
            "event": "deployment",
            "id": 7,
            "app": "shop",
            "kind": "deploy",
            "version": "v2",
            "previous": None,
            "strategy": "blue-green",
            "ts": 1.5,
        },
        {
            "event": "deployment",
            "id": 7,
            "app": "shop",
            "kind": "rollback",
            "version": "v1",
            "previous": "v2",
            "strategy": "switch",
            "finished": True,
        },
    ],
    "step": [
        {"event": "step", "step": "start", "batch": None, "ts": 2.0},
        {"event": "step", "step": "switch", "batch": 1},
        {"event": "step", "step": "canary", "batch": None, "weight": 20},
        {"event": "step", "step": "rollback", "batch": None, "detail": "starting 1 again"},
    ],
    "instance": [
        {"event": "instance", "index": 0, "address": "127.0.0.1:9000", "state": "starting"},
        {
            "event": "instance",
            "index": 1,
            "address": "127.0.0.1:9001",
            "state": "failed",
            "message": "never became ready",
        },
    ],
    "probe": [{"event": "probe", "index": 0, "message": "GET /up → 503 (0/2)"}],
    "switch": [
        {"event": "switch", "weights": {"v1": 0, "v2": 100}, "batch": None},
        {"event": "switch", "weights": {"v1": 100}, "back": True},
    ],
    "verify": [
        {
            "event": "verify",
            "requests": 40,
            "errors": 0,
            "rate": 0.0,
            "failing": False,
            "left": 3.5,
        },
        {
            "event": "verify",
            "requests": 40,
            "errors": 9,
            "rate": 0.225,
            "failing": True,
            "batch": None,
        },
        {
            "event": "verify",
            "requests": 50,
            "errors": 0,
            "rate": 0.0,
            "failing": False,
            "passed": True,
        },
    ],
    "drain": [{"event": "drain", "targets": ["127.0.0.1:9000"], "drained": True}],
    "stopped": [{"event": "stopped", "targets": ["127.0.0.1:9000"]}],
    "keep_warm": [{"event": "keep_warm", "version": "v1", "seconds": 60.0}],
    "hook": [{"event": "hook", "hook": "smoke_test", "ok": False}],
    "hook_output": [{"event": "hook_output", "hook": "build", "line": "compiled 3 files"}],
    "smoke_test": [{"event": "smoke_test", "target": "http://127.0.0.1:9000"}],
    "warning": [{"event": "warning", "message": "drain: the proxy did not answer"}],
    "artifact": [
        {
            "event": "artifact",
            "kind": "snapshot",
            "path": "/state/releases/shop/v2",
            "kept": True,
            "files": 3,
            "bytes": 2048,
            "seconds": 0.01,
        }
    ],
    "pruned": [{"event": "pruned", "versions": ["v0"]}],
    "canary": [
        {
            "event": "canary",
            "phase": "skipped",
            "message": "no live release to compare with: a plain blue-green switch",
        }
    ],
    "canary_step": [
        {
            "event": "canary_step",
            "step": 1,
            "steps": 3,
            "weight": 10,
            "hold": 5.0,
            "weights": {"v1": 90, "v2": 10},
        }
    ],
    "verdict": [
        {
            "event": "verdict",
            "step": 1,
            "weight": 10,
            "window": 5.01,
            "confirming": False,
            "extensions": 0,
            "decision": "next",
            "reason": "the canary is as good as the baseline",
            "verdict": "pass",
            "reasons": ["the canary is as good as the baseline"],
            "figures": {"canary_requests": 120, "canary_error_rate": 0.0},
            "alpha": 0.01,
        },
        {
            "event": "verdict",
            "step": 2,
            "weight": 50,
            "window": 3.0,
            "guard": True,
            "decision": "abort",
            "reason": "guard: too many errors",
            "verdict": "fail",
            "reasons": ["guard: too many errors"],
            "figures": {},
        },
    ],
    "canary_request": [{"event": "canary_request", "request": "promote", "step": 1, "weight": 10}],
    "result": [
        {
            "event": "result",
            "deployment": 7,
            "ok": True,
            "exit_code": 0,
            "status": "succeeded",
            "message": "shop v2 is live",
            "version": "v2",
            "seconds": 1.25,
        },
        {
            "event": "result",
            "deployment": 7,
            "ok": False,
            "exit_code": 1,
            "status": "failed",
            "message": "instance 0 of v2 did not start",
            "previous": None,
            "seconds": 0.5,
            "instance": 0,
            "logs": ["boom"],
        },
    ],
}

ALL = [sample for samples in SAMPLES.values() for sample in samples]


def test_every_kind_of_event_has_a_sample() -> None:
    assert set(SAMPLES) == set(ev.KINDS)


@pytest.mark.parametrize("wire", ALL, ids=lambda w: str(w["event"]))
def test_an_event_round_trips_between_its_wire_dict_and_its_type(wire: dict[str, Any]) -> None:
    event = ev.from_dict(wire)
    assert type(event) is ev.KINDS[wire["event"]]
    assert event.to_dict() == wire


def test_none_is_a_value_and_unset_is_absent() -> None:
    event = ev.Switched(weights={"v1": 100}, batch=None)
    assert event.to_dict() == {"event": "switch", "weights": {"v1": 100}, "batch": None}
    back = ev.Switched(weights={"v1": 100}, back=True)
    assert back.to_dict() == {"event": "switch", "weights": {"v1": 100}, "back": True}


def test_a_dict_that_is_not_an_event_is_refused_with_what_is_missing() -> None:
    with pytest.raises(ValueError, match="no 'event' kind"):
        ev.from_dict({"step": "start"})
    with pytest.raises(ValueError, match="'switch' event without weights"):
        ev.from_dict({"event": "switch", "batch": None})


def test_an_unknown_kind_round_trips_and_renders_nothing() -> None:
    wire = {"event": "teleport", "to": "mars", "ts": 3.0}
    event = ev.from_dict(wire)
    assert isinstance(event, ev.Unknown)
    assert event.to_dict() == wire
    out, err = _render([wire])
    assert out == err == ""


@pytest.mark.parametrize("wire", ALL, ids=lambda w: str(w["event"]))
def test_the_cli_renders_every_kind_of_event(wire: dict[str, Any]) -> None:
    out, err = _render([wire])
    assert (out + err).strip(), f"nothing rendered for {wire}"


def test_the_cli_remembers_the_result_and_its_exit_code() -> None:
    progress = Progress(*_consoles())
    progress.show(SAMPLES["result"][1])
    assert progress.result is not None
    assert progress.result.exit_code == 1
    assert progress.result.logs == ["boom"]


def test_a_probe_line_names_the_instance_and_what_the_probe_saw() -> None:
    out, _ = _render(SAMPLES["probe"])
    assert "instance 0: GET /up → 503 (0/2)" in out


def _consoles() -> tuple[Console, Console]:
    return (
        Console(file=io.StringIO(), highlight=False, soft_wrap=True, width=200),
        Console(file=io.StringIO(), highlight=False, soft_wrap=True, width=200),
    )


def _render(wires: list[dict[str, Any]]) -> tuple[str, str]:
    out, err = _consoles()
    progress = Progress(out, err)
    for wire in wires:
        progress.show(wire)
    assert isinstance(out.file, io.StringIO) and isinstance(err.file, io.StringIO)
    return out.file.getvalue(), err.file.getvalue()
