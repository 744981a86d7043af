"""Deploy planning: pure functions from (what runs now, the new release, the strategy) to steps.

Nothing here does I/O. The engine asks this module *what* to do: the list of steps of a
deployment (``plan_deploy``), the route table to send to the proxy for a set of release
pools (``app_route``, ``route_table``, ``split_weights``), and, after a crash, whether an
unfinished deployment is finished or undone (``plan_recovery``). The engine then does it,
persisting each step first. Whether a release failed its verification is the judge's call
(``deploy.analysis.verify``).

Theory of operation:
- Blue-green starts every new instance, waits for all of them, and moves the whole app in
  one snapshot: the new release gets weight 100, the old one weight 0 (still in the table,
  still running, so switching back is one more snapshot). After ``verify`` the old release
  is drained (the proxy waits for its in-flight requests and tunnels) and stopped, or kept
  warm with weight 0 for ``keep_previous``.
- Rolling works in batches of ``max_surge`` instances: start them, wait until they are
  ready, then one snapshot adds them and removes as many old instances; with ``verify`` the
  batch is then verified on live traffic (the new release's figures while only the batches
  so far serve it) before its old instances are drained and stopped and before the next
  batch switches. Weights follow instance counts, so every instance gets an equal share.
  Rolling bounds the extra capacity, so nothing of the old release stays warm; a batch that
  fails its verification switches every batch so far back (the old instances it replaced
  still run; those of earlier batches are started again), so a bad release never reaches
  the next batch.
- Verification needs at least ``analysis.MIN_VERIFY_REQUESTS`` requests to the new release
  before it judges: an error rate measured on a handful of requests says nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

StepKind = Literal[
    "pre_deploy",
    "expand",
    "start",
    "ready",
    "smoke_test",
    "switch",
    "verify",
    "drain",
    "stop",
    "keep_warm",
    "post_deploy",
]

STRATEGIES = ("blue-green", "rolling")

# Steps after which no user traffic has moved yet: a crash there is undone.
_BEFORE_TRAFFIC: frozenset[str] = frozenset(
    {"lock", "prepare", "pre_deploy", "expand", "start", "ready", "smoke_test"}
)
# Steps after a passed verification: a crash there is finished.
_AFTER_VERIFY: frozenset[str] = frozenset({"drain", "stop", "keep_warm", "post_deploy", "done"})


@dataclass(frozen=True)
class Step:
    """One step of a deployment.

    ``new`` are indexes of the new release's instances the step acts on; ``old`` are ids of
    the old instances it acts on (for a switch: the ones leaving the table). ``batch`` is the
    rolling batch number (None for blue-green).
    """

    kind: StepKind
    new: tuple[int, ...] = ()
    old: tuple[int, ...] = ()
    batch: int | None = None

    @property
    def label(self) -> str:
        """What the store records as the deployment's step: ``switch`` or ``switch#2``."""
        return self.kind if self.batch is None else f"{self.kind}#{self.batch}"


def parse_step(label: str) -> tuple[str, int | None]:
    """The inverse of ``Step.label``: ``"start#2"`` -> ``("start", 2)``."""
    kind, sep, batch = label.partition("#")
    return kind, (int(batch) if sep and batch.isdigit() else None)


def plan_deploy(
    strategy: str,
    *,
    new_count: int,
    old: Sequence[int],
    max_surge: int = 1,
    pre_deploy: bool = False,
    expand: bool = False,
    smoke_test: bool = False,
    verify: bool = False,
    keep_warm: bool = False,
    post_deploy: bool = False,
) -> list[Step]:
    """The steps that replace the instances ``old`` (ids) by ``new_count`` new instances.

    ``expand`` (the schema migration both releases work with) runs after ``pre_deploy`` and
    before any new instance starts, so a failed expand changes nothing users see.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if new_count < 1:
        raise ValueError("a release needs at least one instance")
    old = tuple(old)
    steps: list[Step] = []
    if pre_deploy:
        steps.append(Step("pre_deploy"))
    if expand:
        steps.append(Step("expand"))
    if strategy == "blue-green":
        everyone = tuple(range(new_count))
        steps += [Step("start", new=everyone), Step("ready", new=everyone)]
        if smoke_test:
            steps.append(Step("smoke_test", new=(0,)))
        steps.append(Step("switch", new=everyone, old=old))
        if verify:
            steps.append(Step("verify", new=everyone))
        if old:
            steps.append(Step("drain", old=old))
            steps.append(Step("keep_warm" if keep_warm else "stop", old=old))
    else:
        surge = max(1, max_surge)
        batches = [tuple(range(i, min(i + surge, new_count))) for i in range(0, new_count, surge)]
        for number, chunk in enumerate(batches):
            last = number == len(batches) - 1
            leaving = old[number * surge :] if last else old[number * surge : (number + 1) * surge]
            steps += [
                Step("start", new=chunk, batch=number),
                Step("ready", new=chunk, batch=number),
            ]
            if smoke_test and number == 0:
                steps.append(Step("smoke_test", new=(chunk[0],), batch=number))
            steps.append(Step("switch", new=chunk, old=leaving, batch=number))
            if verify:
                steps.append(Step("verify", new=chunk, batch=number))
            if leaving:
                steps.append(Step("drain", old=leaving, batch=number))
                steps.append(Step("stop", old=leaving, batch=number))
    if post_deploy:
        steps.append(Step("post_deploy"))
    return steps


# -- route tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """A release as the proxy sees it: a name, a weight and its targets."""

    release: str
    weight: int
    targets: tuple[str, ...]


def split_weights(counts: Sequence[int]) -> list[int]:
    """Integer weights summing to 100, proportional to ``counts`` (largest remainder).

    A pool with at least one instance gets at least weight 1, so it is never starved.
    """
    total = sum(counts)
    if total <= 0:
        return [0 for _ in counts]
    exact = [100 * c / total for c in counts]
    weights = [max(int(x), 1 if c > 0 else 0) for x, c in zip(exact, counts, strict=True)]
    by_remainder = sorted(
        (i for i, c in enumerate(counts) if c > 0),
        key=lambda i: exact[i] - int(exact[i]),
        reverse=True,
    )
    missing = 100 - sum(weights)  # between -len(counts) and len(counts): the loops are short
    for k in range(max(0, missing)):
        weights[by_remainder[k % len(by_remainder)]] += 1
    for _ in range(max(0, -missing)):
        biggest = max(range(len(weights)), key=lambda j: weights[j])
        weights[biggest] -= 1
    return weights


def health_route(health: Mapping[str, Any] | None) -> dict[str, Any]:
    """The proxy's active health check for an app's ``health`` config section."""
    health = health or {}
    path = health.get("path")
    interval = max(float(health.get("interval") or 1.0), 0.5)
    timeout = float(health.get("timeout") or 1.0)
    if path:
        return {
            "kind": "http",
            "path": path,
            "interval": interval,
            "timeout": timeout,
            "rise": 2,
            "fall": 3,
        }
    return {"kind": "tcp", "interval": interval, "timeout": timeout, "rise": 2, "fall": 3}


def primary_release(pools: Sequence[Pool]) -> str | None:
    """The pool whose release config sets the app's listen/hosts/health: most weight, newest."""
    routed = [p for p in pools if p.targets]
    if not routed:
        return None
    best = routed[0]
    for pool in routed[1:]:
        if pool.weight >= best.weight:
            best = pool
    return best.release


DEFAULT_HTTP_LISTEN = "0.0.0.0:80"


def tls_route(proxy: Mapping[str, Any], acme_dir: str | None) -> dict[str, Any]:
    """The route's ``tls`` and ``http_listen`` from ``proxy.tls`` (empty without TLS).

    File pairs go to the proxy as paths (it reads and watches them); ACME pairs as the
    directory the control plane writes them to (``acme_dir``/<host>/{cert,key}.pem).
    """
    tls = proxy.get("tls")
    if not tls:
        return {}
    spec: dict[str, Any] = {"redirect": tls.get("redirect", True)}
    if tls.get("hsts") is not None:
        spec["hsts"] = tls["hsts"]
    if tls.get("certificate"):
        spec["certificate"] = tls["certificate"]
        spec["key"] = tls["key"]
    else:
        spec["acme_dir"] = acme_dir or "/nonexistent"
        spec["on_demand"] = bool(tls.get("on_demand_ask"))
    return {"tls": spec, "http_listen": proxy.get("http_listen") or DEFAULT_HTTP_LISTEN}


def app_route(
    config: Mapping[str, Any], pools: Sequence[Pool], acme_dir: str | None = None
) -> dict[str, Any] | None:
    """One app's entry of the route table, or None when no pool has a target."""
    routed = [p for p in pools if p.targets]
    if not routed:
        return None
    proxy = config.get("proxy") or {}
    return {
        "listen": proxy.get("listen") or "127.0.0.1:8080",
        "hosts": list(proxy.get("hosts") or []),
        "path_prefix": proxy.get("path_prefix") or "/",
        "releases": [
            {"name": p.release, "weight": p.weight, "targets": list(p.targets)} for p in routed
        ],
        "health": health_route(config.get("health")),
        **(
            {"max_connection_age": proxy["max_connection_age"]}
            if proxy.get("max_connection_age")
            else {}
        ),
        **{key: proxy[key] for key in _QUEUE_AND_FORWARDING if key in proxy},
        **tls_route(proxy, acme_dir),
    }


# Route options carried as they are from baton.yml's proxy section (the proxy validates them).
_QUEUE_AND_FORWARDING = ("queue_timeout", "queue_limit", "trusted_proxies", "proxy_protocol")


def release_options(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The route's ``stickiness`` and ``release_secret`` from the newest release's config.

    Stickiness only while a canary splits the traffic (a rolling deploy's split is not one);
    the secret always, so staff can reach a warm release too. Empty when both are default.
    """
    deploy = (config or {}).get("deploy") or {}
    canary = deploy.get("canary") or {}
    options: dict[str, Any] = {}
    if deploy.get("strategy") == "canary" and canary.get("stickiness", "none") != "none":
        options["stickiness"] = canary["stickiness"]
    if canary.get("release_secret"):
        options["release_secret"] = canary["release_secret"]
    if canary.get("pin_from"):
        options["pin_from"] = list(canary["pin_from"])
    return options


@dataclass(frozen=True)
class ArmedFuse:
    """A running canary's fuse, as its app's route carries it to the proxy (proxy/fuse.py):
    the guard's ceiling and minimum sample, judged by the proxy on the canary's last
    ``window`` answers, and the methods whose canary 5xx the proxy retries on stable."""

    release_id: int  # the canary's release row: a later deploy of the same version is not it
    version: str
    deployment: int
    max_error_rate: float
    min_requests: int
    window: int
    retry_on_stable: tuple[str, ...] = ()

    def apply(self, route: dict[str, Any]) -> None:
        """Mark the canary's release in ``route`` (one app's entry of the table)."""
        for release in route.get("releases", []):
            if release.get("name") == self.version:
                release["fuse"] = {
                    "max_error_rate": self.max_error_rate,
                    "min_requests": self.min_requests,
                    "window": self.window,
                    "deployment": str(self.deployment),
                }
                if self.retry_on_stable:
                    route["retry_on_stable"] = list(self.retry_on_stable)


def route_table(apps: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The whole table: every app that has something to route."""
    return {"apps": {name: route for name, route in sorted(apps.items()) if route is not None}}


def live_version(pools: Sequence[Pool]) -> str | None:
    """The release that takes all the traffic, or None while traffic is split (or absent)."""
    taking = [p for p in pools if p.targets and p.weight > 0]
    return taking[0].release if len(taking) == 1 else None


# -- recovery after a crash --------------------------------------------------------------------

Recovery = Literal["undo", "finish"]


def plan_recovery(
    step: str,
    *,
    has_previous: bool,
    previous_alive: int,
    new_alive: int,
) -> tuple[Recovery, str]:
    """Whether an unfinished deployment, stopped at ``step``, is undone or finished.

    The aim is that the proxy ends up routing to exactly one release whose instances run:
    - before any traffic moved (pre_deploy, start, ready, smoke test of the first batch): undo;
    - after a passed verification (drain, stop, keep warm, post_deploy): finish;
    - during a canary's steps (``canary#N``): undo while the stable release still runs;
    - in between (switch, verify, a rolling batch, switching back): the previous release wins
      while it still runs, else the new one if it runs.
    """
    kind, batch = parse_step(step)
    if kind == "rollback":
        return "undo", "it was switching back to the previous release"
    if kind == "canary" and has_previous and previous_alive > 0:
        return "undo", "an unfinished canary goes back to the stable release"
    if kind in _BEFORE_TRAFFIC and (batch is None or batch == 0):
        return "undo", "no traffic had moved to the new release yet"
    if kind in _AFTER_VERIFY and batch is None:
        return "finish", "the new release had taken the traffic and passed verification"
    if has_previous and previous_alive > 0 and (new_alive == 0 or previous_alive >= new_alive):
        return "undo", "the previous release still runs"
    if new_alive > 0:
        return "finish", "the previous release no longer runs; the new one does"
    return "undo", "neither release has a running instance"


def unique_label(base: str, taken: Sequence[str]) -> str:
    """``base``, or ``base-2``, ``base-3``... when the label is already used by the app."""
    used = set(taken)
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"
