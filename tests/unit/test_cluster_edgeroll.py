"""A rolling deploy behind edges: which path it takes (``baton.cluster.edgeroll.plan``), the
request that asks for it, and the CLI's reading of the strategy (pure: no etcd)."""

from __future__ import annotations

import json

import pytest

from baton.cluster import keys
from baton.cluster.cli import deploy_strategy
from baton.cluster.edge import EdgeRoute
from baton.cluster.edgeroll import plan

ROUTE = EdgeRoute("shop", "10.0.0.9:8080", ("web1", "web2", "web3"), "v1")


def test_hosts_roll_behind_edges_that_route_to_their_proxies() -> None:
    assert plan(ROUTE, False) == "rolling"
    assert plan(None, False) == "rolling"  # the first deploy: the route is published after


def test_rolling_stays_the_staged_cutover_when_the_edges_route_to_instances() -> None:
    # A host switching its own proxy would stop the instances the edges route to.
    instances = EdgeRoute("shop", "10.0.0.9:8080", ("web1", "web2"), "v1", instances=True)
    assert plan(instances, False) == "staged"
    assert plan(ROUTE, True) == "staged"  # every host publishes the live release's instances
    # A new leader finishing a rollout already under way finishes it as a rollout.
    assert plan(instances, True, resuming=True) == "rolling"


def test_a_deploy_request_carries_edge_rolling_only_with_edges_and_no_canary() -> None:
    release = keys.DesiredRelease("shop", "v2", "d2", "/srv/baton.yml")
    request = keys.DeployRequest(
        release, ("web1", "web2", "web3"), 1, edge="10.0.0.9:8080", edge_rolling=True
    )
    assert keys.DeployRequest.from_json(request.to_json()) == request
    body = json.loads(request.to_json())
    del body["edge_rolling"]  # a request from before: blue-green at the edges
    assert not keys.DeployRequest.from_json(json.dumps(body)).edge_rolling
    bad: list[tuple[dict[str, object], str]] = [
        ({"edge_rolling": "yes"}, "edge_rolling: expected true or false"),
        ({"edge": None}, "edge_rolling: only for an app behind edges"),
        ({"canary": [[20, 5]]}, "edge_rolling: not with a canary"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            keys.DeployRequest.from_json(json.dumps({**json.loads(request.to_json()), **change}))


def test_the_strategy_is_the_flag_else_the_configs() -> None:
    raw = {"app": "shop", "deploy": {"strategy": "rolling"}}
    assert deploy_strategy(raw, None) == "rolling"
    assert deploy_strategy(raw, "blue-green") == "blue-green"
    assert deploy_strategy({"app": "shop"}, None) is None
    assert deploy_strategy({"deploy": "rolling"}, None) is None
