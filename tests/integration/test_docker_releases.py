"""Docker releases are immutable: a release runs the image ID its tag had at deploy time.

Uses the Docker hosts and tiny busybox images of ``test_docker_deploy``. Marked ``docker``.
"""

from __future__ import annotations

import asyncio
import json
import time

import docker
import pytest

from tests.integration import test_docker_deploy
from tests.integration.test_docker_deploy import DockerHost, image
from tests.support.host import assert_no_failures, served_after, start_load

dhost = test_docker_deploy.dhost
images = test_docker_deploy.images

pytestmark = pytest.mark.timeout(240)


@pytest.mark.docker
async def test_a_tag_moved_to_another_image_does_not_change_a_rollback(
    dhost: DockerHost,
) -> None:
    client = docker.from_env(timeout=60)
    moving = f"{dhost.images.repository}:moving-{dhost.app}"
    first_id = client.images.get(image(dhost, "v1")).id
    second_id = client.images.get(image(dhost, "v2")).id
    try:
        client.images.get(first_id).tag(moving)
        first = await dhost.deploy("--image", moving, "--version", "a")
        assert first.rc == 0, first
        assert (await dhost.get())[1] == "v1"
        client.images.get(second_id).tag(moving)  # the tag moves to another image
        second = await dhost.deploy("--image", moving, "--version", "b")
        assert second.rc == 0, second
        assert (await dhost.get())[1] == "v2"

        load = await start_load(dhost)
        await asyncio.sleep(0.3)
        back = await dhost.baton("rollback", "a")  # not warm: new containers, of a's image
        after = time.monotonic()
        await asyncio.sleep(0.5)
        outcome = await load.stop()
        assert back.rc == 0, back
        assert_no_failures(outcome)
        assert served_after(outcome, after) == {"v1"}
        assert {c.image.id for c in dhost.containers()} == {first_id}

        status = (await dhost.status())["apps"][dhost.app]
        (release,) = status["releases"]
        assert release["version"] == "a"
        assert release["artifact"] == {
            "kind": "image",
            "image": moving,
            "id": first_id,
            "digest": None,
        }
        shown = await dhost.baton("status")
        assert first_id.split(":")[1][:12] in shown.out and moving in shown.out
        table = await dhost.baton("history")
        assert (
            first_id.split(":")[1][:12] in table.out and second_id.split(":")[1][:12] in table.out
        )
        history = json.loads((await dhost.baton("history", "--json")).out)["deployments"]
        by_version = {d["version"]: d["artifact"]["id"] for d in history}
        assert by_version == {"a": first_id, "b": second_id}
    finally:
        client.images.remove(moving)
        client.close()
