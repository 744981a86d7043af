"""Edges routing straight to instances: the records, routes and flags it rests on (pure,
no etcd, no proxy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baton.cluster import keys
from baton.cluster.agent import reachable_instances
from baton.cluster.cli import ClusterOptions, instance_ip
from baton.cluster.edge import EdgeRoute, edge_route_table
from baton.cluster.start import configure_runtimes
from baton.errors import UsageError
from baton.proxy.routing import parse_app
from baton.runtime.base import Runtimes
from baton.runtime.docker import DockerRuntime
from baton.runtime.process import ProcessRuntime


def _records(**endpoints: dict[str, list[str]]) -> dict[str, keys.HostRecord]:
    return {
        name: keys.HostRecord(
            name, f"10.213.5.{n}:8080", ("app",), endpoints={"shop": endpoints[name]}
        )
        for n, name in enumerate(sorted(endpoints), start=11)
    }


def test_an_instance_route_targets_each_hosts_published_instances_of_its_release() -> None:
    records = _records(
        web1={"v1": ["10.213.5.11:4001"], "v2": ["10.213.5.11:4101", "10.213.5.11:4102"]},
        web2={"v1": ["10.213.5.12:4001"], "v2": ["10.213.5.12:4101"]},
    )
    route = EdgeRoute("shop", "0.0.0.0:80", ("web1", "web2"), "v2", "/up", instances=True)
    entry = edge_route_table(route, records)
    targets = ["10.213.5.11:4101", "10.213.5.11:4102", "10.213.5.12:4101"]
    assert entry["releases"] == [{"name": "v2", "weight": 100, "targets": targets}]
    assert parse_app("shop", entry).releases[0].targets == tuple(targets)
    assert EdgeRoute.from_json(route.to_json()) == route


def test_a_host_with_no_ready_instance_of_the_release_is_left_out_and_none_at_all_refused() -> None:
    records = _records(web1={"v1": ["10.213.5.11:4001"]}, web2={"v2": ["10.213.5.12:4101"]})
    route = EdgeRoute("shop", "0.0.0.0:80", ("web1", "web2"), "v2", instances=True)
    assert edge_route_table(route, records)["releases"][0]["targets"] == ["10.213.5.12:4101"]
    none = EdgeRoute("shop", "0.0.0.0:80", ("web1", "web2"), "v3", instances=True)
    with pytest.raises(ValueError, match="no host of web1, web2 publishes a ready instance"):
        edge_route_table(none, records)


@pytest.mark.parametrize(
    ("address", "message"),
    [("127.0.0.1:4001", "not reachable from the other hosts"), ("web1:4001", "IPv4:PORT")],
)
def test_an_instance_address_an_edge_cannot_reach_is_refused(address: str, message: str) -> None:
    records = _records(web1={"v2": [address]})
    route = EdgeRoute("shop", "0.0.0.0:80", ("web1",), "v2", instances=True)
    with pytest.raises(ValueError, match=message):
        edge_route_table(route, records)


def test_a_host_record_carries_its_endpoints_and_refuses_bad_ones() -> None:
    record = keys.HostRecord("web1", "10.0.0.1:80", endpoints={"shop": {"v1": ["10.0.0.1:4"]}})
    assert keys.HostRecord.from_json(record.to_json()) == record
    body = json.loads(record.to_json())
    body["endpoints"] = {"shop": ["10.0.0.1:4"]}
    with pytest.raises(ValueError, match="endpoints: expected app → release → list"):
        keys.HostRecord.from_json(json.dumps(body))


def test_an_agent_publishes_only_ready_instances_off_loopback() -> None:
    status = {
        "apps": {
            "shop": {
                "releases": [
                    {"version": "v1", "instances": [
                        {"address": "10.0.0.1:4001", "state": "routed"},
                        {"address": "10.0.0.1:4002", "state": "draining"},
                    ]},
                    {"version": "v2", "instances": [
                        {"address": "10.0.0.1:4101", "state": "ready"},
                        {"address": "10.0.0.1:4102", "state": "starting"},
                    ]},
                ]
            },
            "local": {"releases": [
                {"version": "v1", "instances": [{"address": "127.0.0.1:5", "state": "routed"}]}
            ]},
        }
    }  # fmt: skip
    assert reachable_instances(status) == {
        "shop": {"v1": ["10.0.0.1:4001"], "v2": ["10.0.0.1:4101"]}
    }


def test_a_desired_release_asks_its_phase_of_the_local_daemon() -> None:
    release = keys.DesiredRelease("shop", "v2", "d", "/srv/baton.yml")
    stage = keys.DesiredRelease.from_json(json.dumps({**json.loads(release.to_json()),
                                                      "phase": "stage"}))  # fmt: skip
    assert stage.request() == ("/deploy", {"config": "/srv/baton.yml", "version": "v2",
                                           "stage": True})  # fmt: skip
    switch = keys.DesiredRelease("shop", "v2", "d", "/srv/baton.yml", phase="switch")
    assert switch.request() == ("/staged/switch", {"app": "shop", "version": "v2"})
    discard = keys.DesiredRelease("shop", "v2", "d", "/srv/baton.yml", phase="discard")
    assert discard.request() == ("/staged/discard", {"app": "shop", "version": "v2"})
    # An unwind back to a release written in some phase is a rollback to it.
    back = keys.DesiredRelease("shop", "v2", "d", "/srv/baton.yml", rollback=True, phase="switch")
    assert back.request() == ("/rollback", {"app": "shop", "version": "v2"})
    bad = json.dumps({**json.loads(release.to_json()), "phase": "later"})
    with pytest.raises(ValueError, match="phase: expected stage, switch or discard"):
        keys.DesiredRelease.from_json(bad)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.1.2", "expected an IPv4 address"),
        ("127.0.0.1", "not loopback"),
        ("0.0.0.0", "not the wildcard"),
        ("192.0.2.77", "not an address of this host"),  # TEST-NET-1: assigned to no host
    ],
)
def test_instance_ip_must_be_a_private_address_of_this_host(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=f"--instance-ip '{value}': .*{message}"):
        instance_ip(value)


def test_instance_ip_moves_docker_instances_as_well_as_process_ones(tmp_path: Path) -> None:
    """``--instance-ip`` publishes Docker instances' ports on the host's private address
    (the edges route straight to them); without it both runtimes stay on loopback."""
    alone = Runtimes(tmp_path)
    configure_runtimes(None, alone)
    fleet = Runtimes(tmp_path)
    options = ClusterOptions(("http://127.0.0.1:2379",), "web1", "web1:80", ("app",), "10.9.8.7")
    configure_runtimes(options, fleet)
    docker, process = fleet.get("docker"), fleet.get("process")
    assert isinstance(docker, DockerRuntime) and isinstance(process, ProcessRuntime)
    assert (docker.bind, process.bind) == ("10.9.8.7", "10.9.8.7")
    docker, process = alone.get("docker"), alone.get("process")
    assert isinstance(docker, DockerRuntime) and isinstance(process, ProcessRuntime)
    assert (docker.bind, process.bind) == ("127.0.0.1", "127.0.0.1")
