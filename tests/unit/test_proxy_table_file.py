"""The proxy's saved route table, and the route-table fields for queueing and forwarding."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from baton.errors import RouteTableError
from baton.proxy.persist import load_table, save_table, table_path
from baton.proxy.routing import parse_table


def _table(**fields: Any) -> dict[str, Any]:
    app = {
        "listen": "127.0.0.1:9000",
        "releases": [{"name": "v1", "weight": 100, "targets": ["127.0.0.1:9001"]}],
        **fields,
    }
    return {"apps": {"web": app}}


def test_the_table_lives_beside_the_admin_socket() -> None:
    assert table_path("/var/lib/baton/proxy.sock") == Path("/var/lib/baton/proxy.routes.json")
    assert table_path("/tmp/admin") == Path("/tmp/admin.routes.json")


def test_saved_table_loads_back_identically(tmp_path: Path) -> None:
    specs = parse_table(
        _table(
            queue_timeout=2.5, queue_limit=7, trusted_proxies=["10.0.0.0/8"], proxy_protocol=True
        )
    )
    path = tmp_path / "proxy.routes.json"
    save_table(path, {"generation": 42, "apps": {n: s.to_json() for n, s in specs.items()}})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = load_table(path)
    assert loaded == (specs, 42)
    assert [p.name for p in tmp_path.iterdir()] == ["proxy.routes.json"]  # no temp file left


def test_no_saved_table_is_a_first_start(tmp_path: Path) -> None:
    assert load_table(tmp_path / "proxy.routes.json") is None


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "invalid JSON"),
        (b"[]", "expected an object"),
        (b'{"generation": -1, "apps": {}}', "generation"),
        (json.dumps({"generation": 1, **_table(queue_limit=-1)}).encode(), "queue_limit"),
    ],
)
def test_a_damaged_table_file_is_reported_by_name(
    tmp_path: Path, content: bytes, words: str
) -> None:
    path = tmp_path / "proxy.routes.json"
    path.write_bytes(content)
    with pytest.raises(RouteTableError, match=words) as info:
        load_table(path)
    assert str(path) in str(info.value)


def test_queue_and_forwarding_fields_have_defaults() -> None:
    spec = parse_table(_table())["web"]
    assert (spec.queue_timeout, spec.queue_limit) == (10.0, 1000)
    assert spec.trusted_proxies == () and spec.proxy_protocol is False


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"queue_timeout": -1}, "apps.web.queue_timeout: expected a number between 0 and 3600"),
        ({"queue_timeout": "10s"}, "apps.web.queue_timeout: expected a number"),
        ({"queue_limit": 2.5}, "apps.web.queue_limit: expected an integer"),
        ({"trusted_proxies": "10.0.0.0/8"}, "apps.web.trusted_proxies: expected a list"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, r"apps.web.trusted_proxies\[0\]: expected a CIDR"),
        ({"proxy_protocol": "yes"}, "apps.web.proxy_protocol: expected true or false"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(RouteTableError, match=words):
        parse_table(_table(**fields))


def test_apps_sharing_a_listener_must_agree_on_proxy_protocol() -> None:
    table = _table(hosts=["a.test"], proxy_protocol=True)
    table["apps"]["other"] = {**table["apps"]["web"], "hosts": ["b.test"], "proxy_protocol": False}
    with pytest.raises(RouteTableError, match=r"apps on 127\.0\.0\.1:9000 must agree"):
        parse_table(table)
