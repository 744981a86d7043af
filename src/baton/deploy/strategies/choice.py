"""Which strategy runs a deployment: the configured one, unless the deployment says else
(a contract migration; a switch back to a warm release; a canary with nothing to compare
with runs blue-green)."""

from __future__ import annotations

from baton.deploy.deployment import Deployment
from baton.deploy.operations import Operations
from baton.deploy.strategies import canary
from baton.deploy.strategies.base import Strategy
from baton.deploy.strategies.blue_green import BlueGreen
from baton.deploy.strategies.contract import Contract
from baton.deploy.strategies.rolling import Rolling


def strategy_for(ops: Operations, d: Deployment) -> Strategy:
    if d.kind == "contract":
        return Contract()
    if d.warm_switch:
        return BlueGreen()
    if d.strategy == "canary":
        return canary.choose(ops, d)
    if d.strategy == "rolling":
        return Rolling()
    if d.strategy == "blue-green":
        return BlueGreen()
    raise ValueError(f"unknown strategy {d.strategy!r}; expected blue-green, rolling or canary")
