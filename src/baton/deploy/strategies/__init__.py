"""Deployment strategies as peers: blue-green, rolling and canary (and the contract
migration), each behind the one interface of ``strategies.base.Strategy``;
``strategies.choice.strategy_for`` picks the one that runs a deployment."""
