"""What the Docker runtime believes of a container, from an inspect and then from events."""

from __future__ import annotations

from typing import Any

from baton.runtime.docker import (
    ContainerState,
    apply_event,
    demultiplex,
    merge_inspect,
    state_from_inspect,
)


def inspect(status: str = "running", health: str | None = None, check: bool = False) -> Any:
    state: dict[str, Any] = {"Status": status}
    if health is not None:
        state["Health"] = {"Status": health}
    config = {"Healthcheck": {"Test": ["CMD", "true"]}} if check else {}
    return {"State": state, "Config": config}


def test_an_inspect_says_running_health_and_whether_there_is_a_healthcheck() -> None:
    seen = state_from_inspect(inspect("running", "starting", check=True))
    assert (seen.exists, seen.running, seen.health, seen.has_healthcheck) == (
        True,
        True,
        "starting",
        True,
    )
    assert state_from_inspect(inspect("exited")).running is False
    assert state_from_inspect(inspect()).has_healthcheck is False
    assert (
        state_from_inspect({"Config": {"Healthcheck": {"Test": ["NONE"]}}}).has_healthcheck is False
    )
    gone = state_from_inspect(None)
    assert (gone.exists, gone.running, gone.known) == (False, False, True)


def test_events_move_a_container_through_its_life() -> None:
    state = state_from_inspect(inspect("running", "starting", check=True))
    apply_event(state, {"Action": "health_status: healthy"})
    assert state.health == "healthy"
    apply_event(state, {"Action": "exec_start: /bin/sh -c true"})  # a health probe: no change
    assert (state.running, state.health) == (True, "healthy")
    apply_event(state, {"Action": "health_status: unhealthy"})
    assert state.health == "unhealthy"
    apply_event(state, {"Action": "die"})
    assert state.running is False and state.exists is True
    apply_event(state, {"Action": "start"})
    assert (state.running, state.health) == (True, "starting")
    apply_event(state, {"status": "destroy"})  # older engines name the action "status"
    assert (state.exists, state.running) == (False, False)


def test_events_seen_while_an_inspect_ran_win_over_it() -> None:
    # The container died while its (older) inspect was on the way: it stays dead.
    state = ContainerState()
    apply_event(state, {"Action": "die"})
    assert not state.known  # whether it has a healthcheck only an inspect says
    merge_inspect(state, state_from_inspect(inspect("running", check=True)))
    assert (state.running, state.has_healthcheck, state.known) == (False, True, True)


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_saved_logs_join_stdout_and_stderr_frames_in_order() -> None:
    raw = frame(1, b"starting\n") + frame(2, b"oops\n") + frame(1, b"") + frame(1, b"done\n")
    assert demultiplex(raw) == b"starting\noops\ndone\n"
    assert demultiplex(b"") == b""


def test_output_that_is_not_framed_is_kept_as_it_is() -> None:
    assert demultiplex(b"plain tty output\n") == b"plain tty output\n"
    assert demultiplex(frame(1, b"ok\n")[:6]) == frame(1, b"ok\n")[:6]
