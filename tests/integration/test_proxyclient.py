"""The control plane's proxy client against a real ``baton proxy``: errors arrive as types."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from baton.deploy.proxyclient import ProxyClient
from baton.errors import RouteTableError
from tests.support.proxy import ProxyProcess


@pytest.fixture
def proxy() -> Iterator[ProxyProcess]:
    with ProxyProcess() as p:
        yield p


async def test_removing_an_app_the_proxy_does_not_have_is_not_an_error(
    proxy: ProxyProcess,
) -> None:
    client = ProxyClient(proxy.admin)
    try:
        assert await client.delete_app("nowhere") is None
        proxy.route(("a", 100, ["127.0.0.1:9"]), app="web")  # no app listens: never called
        assert isinstance(await client.delete_app("web"), int)
        assert await client.delete_app("web") is None
    finally:
        await client.close()


async def test_a_refused_route_is_a_route_table_error(proxy: ProxyProcess) -> None:
    client = ProxyClient(proxy.admin)
    try:
        with pytest.raises(RouteTableError, match="listen"):
            await client.put_app("web", {"listen": "::1:80", "releases": []})
    finally:
        await client.close()
