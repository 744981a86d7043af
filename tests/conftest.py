"""Fixtures the whole suite shares: test backends, and the rule for tests marked `docker`.

A test marked `@pytest.mark.docker` is skipped when no Docker engine answers, except in CI
(`BATON_REQUIRE_DOCKER=1`, set by `.ci/run`), where a missing engine fails the test.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.procs import Backend

# The `host` fixture (one Baton host in a temp dir) for every test module.
pytest_plugins = [
    "tests.support.host",
    "tests.support.etcd",
    "tests.support.netns",
    "tests.support.fleet",
]


@pytest.fixture
def backend_factory() -> Iterator[Callable[..., Backend]]:
    """`start(name, **kwargs) -> Backend`, started and ready; all stopped after the test."""
    started: list[Backend] = []

    def start(name: str, **kwargs: Any) -> Backend:
        backend = Backend(name, **kwargs)
        started.append(backend)
        return backend.start()

    yield start
    for backend in reversed(started):
        backend.close()


@pytest.fixture
def backend(backend_factory: Callable[..., Backend]) -> Backend:
    """One running test backend named "v1"."""
    return backend_factory("v1")


@functools.cache
def docker_engine_answers() -> bool:
    """True when the Docker engine answers `GET /_ping` on its Unix socket."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(host.removeprefix("unix://"))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return s.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


@pytest.fixture(autouse=True)
def _docker_rule(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("docker") is None or docker_engine_answers():
        return
    if os.environ.get("BATON_REQUIRE_DOCKER") == "1":
        pytest.fail("BATON_REQUIRE_DOCKER=1 but no Docker engine answers on its socket")
    pytest.skip("no Docker engine (set BATON_REQUIRE_DOCKER=1 to make this an error)")


CHROMIUM = "/usr/bin/chromium"


@functools.cache
def browser_available() -> bool:
    """True when Debian's Chromium and Playwright for Python are both installed."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False
    return os.access(CHROMIUM, os.X_OK)


@pytest.fixture(autouse=True)
def _browser_rule(request: pytest.FixtureRequest) -> None:
    """Tests marked `browser` skip without Chromium, except under BATON_REQUIRE_BROWSER=1 (CI)."""
    if request.node.get_closest_marker("browser") is None or browser_available():
        return
    if os.environ.get("BATON_REQUIRE_BROWSER") == "1":
        pytest.fail(f"BATON_REQUIRE_BROWSER=1 but {CHROMIUM} or Playwright is missing")
    pytest.skip(
        f"no browser ({CHROMIUM} and Playwright; BATON_REQUIRE_BROWSER=1 makes this an error)"
    )
