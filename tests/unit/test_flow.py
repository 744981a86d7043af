"""Back-pressure reasons: reading stops on the first, resumes only after the last."""

from __future__ import annotations

from baton.proxy.flow import PAUSE_BUFFER, PAUSE_PIPELINE, PAUSE_UPSTREAM, FlowControl


def test_reading_resumes_only_when_every_reason_has_ended() -> None:
    flow = FlowControl()
    assert flow.pause(PAUSE_PIPELINE) is True  # the first reason stops reading
    assert flow.pause(PAUSE_UPSTREAM) is False  # already stopped
    assert flow.paused_for(PAUSE_UPSTREAM) and not flow.paused_for(PAUSE_BUFFER)
    assert flow.resume(PAUSE_PIPELINE) is False  # the upstream is still full
    assert flow.resume(PAUSE_BUFFER) is False  # never a reason: changes nothing
    assert flow.resume(PAUSE_UPSTREAM) is True  # the last one: read again
    assert flow.reasons == 0


def test_a_reason_given_twice_ends_once() -> None:
    flow = FlowControl()
    assert flow.pause(PAUSE_BUFFER) is True
    assert flow.pause(PAUSE_BUFFER) is False
    assert flow.resume(PAUSE_BUFFER) is True
    assert flow.resume(PAUSE_BUFFER) is False  # resumed already: no second resume_reading
