"""A restart is a non-event for Docker apps too: `baton down` + `baton up` brings them back."""

from __future__ import annotations

import pytest

from tests.integration.test_docker_deploy import DockerHost, dhost, image, images
from tests.support.host import assert_no_failures, start_load

__all__ = ["dhost", "images"]  # fixtures

pytestmark = [pytest.mark.timeout(240), pytest.mark.docker]


async def test_down_then_up_starts_the_live_containers_again(dhost: DockerHost) -> None:
    assert (await dhost.deploy("--image", image(dhost, "v2"), "--version", "v2")).rc == 0
    assert (await dhost.baton("down", timeout=90)).rc == 0
    assert dhost.containers() == []
    up = await dhost.baton("up", "--detach", timeout=90)
    assert up.rc == 0, up
    assert await dhost.get() == (200, "v2")
    load = await start_load(dhost, seconds=2)
    outcome = await load.wait()
    assert_no_failures(outcome)
    assert set(outcome.bodies) == {"v2"}
    assert len(dhost.containers()) == 2
    assert (await dhost.status())["apps"][dhost.app]["live"] == "v2"
