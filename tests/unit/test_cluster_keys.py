"""The fleet's key layout and records: pure, no etcd."""

from __future__ import annotations

import pytest

from baton.cluster import keys
from baton.cluster.etcd import Compare, parse_endpoints, prefix_end
from baton.errors import UsageError


def test_records_round_trip_through_json() -> None:
    host = keys.HostRecord("web1", "10.213.0.2:8080", ("app", "edge"), "0.1.0", {"shop": "v2"})
    assert keys.HostRecord.from_json(host.to_json()) == host
    desired = keys.DesiredRelease(
        "shop", "v2", "d-7", "/srv/shop/baton.yml", image="sha256:ab", env={"A": "1"}
    )
    assert keys.DesiredRelease.from_json(desired.to_json()) == desired
    progress = keys.Progress("shop", "v2", "d-7", "failed", "ready", "never ready", 12)
    assert keys.Progress.from_json(progress.to_json()) == progress
    assert progress.finished


def test_desired_release_becomes_the_local_deploy_request() -> None:
    desired = keys.DesiredRelease("shop", "v2", "d-7", "/srv/shop/baton.yml", strategy="rolling")
    assert desired.deploy_body() == {
        "config": "/srv/shop/baton.yml",
        "version": "v2",
        "strategy": "rolling",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"app": "shop", "version": "v2", "deployment": "d"}', "config: expected"),
        (b'{"app": "../x", "version": "v2", "deployment": "d", "config": "c"}', "app name"),
        (
            b'{"app": "a", "version": "v2", "deployment": "d", "config": "c", "env": {"A": 1}}',
            "env: expected an object of string values",
        ),
    ],
)
def test_a_bad_desired_release_is_refused_with_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keys.DesiredRelease.from_json(raw, "etcd key /baton/desired/web1/shop")


def test_a_bad_progress_state_is_refused() -> None:
    bad = b'{"app": "shop", "version": "v2", "deployment": "d", "state": "maybe"}'
    with pytest.raises(ValueError, match="state: expected deploying, staged, done or failed"):
        keys.Progress.from_json(bad)


def test_keys_name_hosts_and_apps_and_refuse_path_tricks() -> None:
    assert keys.desired_key("web1", "shop") == "/baton/desired/web1/shop"
    assert keys.progress_key("web1", "shop") == "/baton/progress/web1/shop"
    assert keys.name_after(keys.HOSTS, keys.host_key("web-1.eu")) == "web-1.eu"
    for bad in ("", "a/b", "../x", "-x", "x" * 64):
        with pytest.raises(ValueError, match="host name"):
            keys.host_key(bad)


def test_prefix_end_covers_exactly_the_prefix() -> None:
    import base64

    assert base64.b64decode(prefix_end("/baton/")) == b"/baton0"


def test_compare_is_the_gateway_json() -> None:
    assert Compare.absent("/k").to_json() == {
        "key": "L2s=",
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": "0",
    }


def test_endpoints_are_parsed_and_bad_ones_named() -> None:
    assert parse_endpoints("127.0.0.1:2379, http://10.0.0.1:2379/") == [
        "http://127.0.0.1:2379",
        "http://10.0.0.1:2379",
    ]
    with pytest.raises(UsageError, match="'ftp://x:1'"):
        parse_endpoints("ftp://x:1")
    with pytest.raises(UsageError, match="at least one"):
        parse_endpoints(" , ")


def test_a_deploy_request_round_trips_and_refuses_bad_hosts() -> None:
    release = keys.DesiredRelease("shop", "v2", "d-7", "/srv/shop/baton.yml")
    request = keys.DeployRequest(release, ("web1", "web2"), 2, True, {"web2": "/other.yml"})
    assert keys.DeployRequest.from_json(request.to_json()) == request
    with pytest.raises(ValueError, match="hosts: expected a list"):
        keys.DeployRequest.from_json(request.to_json().replace('["web1", "web2"]', "[]"))
    with pytest.raises(ValueError, match="host name"):
        keys.DeployRequest.from_json(request.to_json().replace('"web1"', '"../x"'))


def test_a_rollback_is_asked_of_the_daemon_as_one() -> None:
    back = keys.DesiredRelease("shop", "v1", "d-7-undo", "/srv/baton.yml", rollback=True)
    assert back.request() == ("/rollback", {"app": "shop", "version": "v1"})
    assert keys.DesiredRelease.from_json(back.to_json()).rollback


def test_hosts_are_cut_into_batches_in_order() -> None:
    from baton.cluster.rollout import plan_batches

    assert plan_batches(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert plan_batches(["a", "b"], 5) == [["a", "b"]]
    with pytest.raises(ValueError):
        plan_batches(["a"], 0)


def test_a_deploy_request_carries_max_unavailable_hosts_not_below_a_batch() -> None:
    release = keys.DesiredRelease("shop", "v2", "d-7", "/srv/shop/baton.yml")
    request = keys.DeployRequest(release, ("web1", "web2", "web3"), 1, max_unavailable_hosts=2)
    assert keys.DeployRequest.from_json(request.to_json()) == request
    old = (
        keys.DeployRequest(release, ("web1",)).to_json().replace(', "max_unavailable_hosts": 0', "")
    )
    assert keys.DeployRequest.from_json(old).max_unavailable_hosts == 0  # a request from before
    below = keys.DeployRequest(release, ("web1", "web2"), 2, max_unavailable_hosts=1)
    with pytest.raises(ValueError, match=r"max_unavailable_hosts: .*at least hosts_at_once \(2\)"):
        keys.DeployRequest.from_json(below.to_json())
