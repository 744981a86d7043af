"""Edge routes and the tables edges build from them: pure, no etcd, no proxy."""

from __future__ import annotations

import json

import pytest

from baton.cluster import keys
from baton.cluster.cutover import judge, split
from baton.cluster.edge import EdgeRoute, edge_figures, edge_route_table
from baton.proxy.routing import parse_app

RECORDS = {
    "web1": keys.HostRecord("web1", "10.213.5.11:8080", ("app",)),
    "web2": keys.HostRecord("web2", "10.213.5.12:8080", ("app", "controller")),
    "edge1": keys.HostRecord("edge1", "10.213.5.14:8080", ("edge",)),
}


def test_an_edge_routes_to_the_addresses_the_app_hosts_advertise() -> None:
    route = EdgeRoute("shop", "0.0.0.0:80", ("web1", "web2"), "v2", "/up")
    entry = edge_route_table(route, RECORDS)
    assert entry["releases"] == [
        {"name": "v2", "weight": 100, "targets": ["10.213.5.11:8080", "10.213.5.12:8080"]}
    ]
    assert entry["health"]["kind"] == "http" and entry["health"]["path"] == "/up"
    spec = parse_app("shop", entry)  # the proxy takes it as it is
    assert spec.releases[0].targets == ("10.213.5.11:8080", "10.213.5.12:8080")


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (("web1", "ghost"), "'ghost' never joined the fleet"),
        (("edge1",), "'edge1' has no app role"),
    ],
)
def test_upstreams_come_only_from_the_fleets_app_host_records(
    hosts: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        edge_route_table(EdgeRoute("shop", "0.0.0.0:80", hosts), RECORDS)


def test_an_edge_route_round_trips_and_bad_ones_are_named() -> None:
    route = EdgeRoute("shop", "10.213.5.14:8080", ("web1", "web2"), "v3", "/healthz")
    assert EdgeRoute.from_json(route.to_json()) == route
    for raw, message in [
        ("nope", "not JSON"),
        ('{"app": "shop", "listen": "x", "hosts": ["web1"]}', "listen"),
        ('{"app": "shop", "listen": "1.2.3.4:80", "hosts": []}', "hosts"),
        ('{"app": "shop", "listen": "1.2.3.4:80", "hosts": ["../x"]}', "host name"),
        ('{"app": "shop", "listen": "1.2.3.4:80", "hosts": ["a"], "health_path": "up"}', "health"),
    ]:
        with pytest.raises(ValueError, match=message):
            EdgeRoute.from_json(raw)


def test_green_is_the_first_half_rounded_up_and_blue_the_rest() -> None:
    assert split(["a", "b", "c"]) == (["a", "b"], ["c"])
    assert split(["a", "b"]) == (["a"], ["b"])


def test_a_canary_route_splits_every_edges_traffic_between_two_host_sets() -> None:
    route = EdgeRoute("shop", "0.0.0.0:80", ("web2",), "v1", "/up", ("web1",), "v2", 30)
    assert EdgeRoute.from_json(route.to_json()) == route
    entry = edge_route_table(route, RECORDS)
    assert [(r["name"], r["weight"], r["targets"]) for r in entry["releases"]] == [
        ("v1", 70, ["10.213.5.12:8080"]),
        ("v2", 30, ["10.213.5.11:8080"]),
    ]
    parse_app("shop", entry)
    base = '{"app": "shop", "listen": "1.2.3.4:80", "hosts": ["web2"], "version": "v1", '
    for canary, message in [
        ('"canary": {"hosts": ["web2"], "version": "v2", "weight": 5}', "both releases"),
        ('"canary": {"hosts": ["web1"], "version": "v1", "weight": 5}', "other than 'v1'"),
        ('"canary": {"hosts": ["web1"], "version": "v2", "weight": 101}', "percentage"),
        ('"canary": {"hosts": [], "version": "v2", "weight": 5}', "canary.hosts"),
    ]:
        with pytest.raises(ValueError, match=message):
            EdgeRoute.from_json(base + canary + "}")


def test_the_fleet_canary_is_judged_on_the_requests_since_the_step_began() -> None:
    before = {"requests": 100, "errors": 50}  # earlier errors do not count
    assert judge(before, {"requests": 110, "errors": 55}, 0.05, 20) is None  # too few yet
    assert judge(before, {"requests": 200, "errors": 52}, 0.05, 20) is None  # 2%
    verdict = judge(before, {"requests": 200, "errors": 60}, 0.05, 20)
    assert verdict == "error rate 10% over 100 requests (at most 5%)"
    assert judge(before, {"requests": 10, "errors": 0}, 0.05, 20) is None  # a restarted proxy


def test_edge_figures_count_answers_and_errors_per_release_of_routed_apps() -> None:
    metrics = {
        "shop": {
            "releases": {
                "v2": {"requests": {"2xx": 90, "5xx": 6}, "upstream_errors": 4, "in_flight": 3},
                "v1": {"requests": {"2xx": 10}, "upstream_errors": 0, "tunnels": 1},
            }
        },
        "other": {"releases": {"x": {"requests": {"2xx": 1}}}},
    }
    assert edge_figures(metrics, {"shop": {}}) == {
        "shop": {
            "v2": {"requests": 96, "errors": 10, "in_flight": 3},
            "v1": {"requests": 10, "errors": 0, "in_flight": 1},
        }
    }


def test_a_deploy_request_carries_the_edges_canary_and_refuses_bad_steps() -> None:
    release = keys.DesiredRelease("shop", "v2", "d", "/srv/baton.yml")
    request = keys.DeployRequest(
        release, ("web1", "web2"), edge="0.0.0.0:80", canary=((10, 30.0), (50, 60.0))
    )
    assert keys.DeployRequest.from_json(request.to_json()) == request
    body = json.loads(request.to_json())
    for steps, message in [([[0, 30]], "weight 1-100"), ([[10]], "weight 1-100"), ("x", "list")]:
        with pytest.raises(ValueError, match=message):
            keys.DeployRequest.from_json(json.dumps({**body, "canary": steps}))
    with pytest.raises(ValueError, match="canary_max_error_rate"):
        keys.DeployRequest.from_json(json.dumps({**body, "canary_max_error_rate": 2}))
    with pytest.raises(ValueError, match="canary_min_requests"):
        keys.DeployRequest.from_json(json.dumps({**body, "canary_min_requests": 0}))
