"""The Docker runtime's client reuses its unix-socket connections for every Engine API path
(the SDK's adapter made a connection pool, hence a new connection, per URL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.runtime.docker import keep_alive

docker = pytest.importorskip("docker")


def test_every_path_on_a_unix_socket_shares_one_pool(tmp_path: Path) -> None:
    # No engine needed: the client is made with a fixed API version (no request), and a
    # pool is made without connecting.
    client = docker.DockerClient(base_url=f"unix://{tmp_path / 'engine.sock'}", version="1.41")
    try:
        adapter = client.api.adapters["http+docker://"]
        a = "http+docker://localhost/v1.41/containers/aaa/start"
        b = "http+docker://localhost/v1.41/containers/bbb/json"
        assert adapter.get_connection(a) is not adapter.get_connection(b)  # the SDK alone
        assert keep_alive(client) is True
        assert adapter.get_connection(a) is adapter.get_connection(b)
        assert adapter.get_connection(a).socket_path == str(tmp_path / "engine.sock")
    finally:
        client.close()


def test_a_tcp_client_is_left_as_it_is() -> None:
    client = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41")
    try:
        assert keep_alive(client) is False
    finally:
        client.close()
    assert keep_alive(object()) is False
