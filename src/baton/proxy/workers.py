"""How many proxy workers, and the sums that make N workers look like one proxy.

Pure logic, no I/O: the supervisor (``supervisor.py``) fetches each worker's figures over
its admin API and combines them here. Counters (requests, errors, latency histograms,
queue time-outs) are summed over the live workers *plus* the last figures seen from every
worker that died, so a restarted worker starting again at zero never makes a total go
backwards (the canary judge and verification take deltas of these totals). Gauges (in
flight, open tunnels, queued requests) are summed over live workers only: a dead worker's
requests are no longer in flight anywhere.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from typing import Any

from baton.proxy.fuse import renormalise

# Per-release keys whose value is a level, not a running count.
GAUGES = frozenset({"in_flight", "tunnels", "queued"})
# A canary fuse judges a sliding window of one worker's answers: not a running count.
WINDOWED = frozenset({"fuse"})
MAX_WORKERS = 256


def parse_workers(value: object, where: str = "workers") -> int:
    """``value`` as a worker count: an integer >= 1 or ``auto`` (the number of cores).

    Raises ValueError naming ``where`` and what was expected.
    """
    if value == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or not 1 <= number <= MAX_WORKERS:
        raise ValueError(
            f"{where}: expected an integer from 1 to {MAX_WORKERS} or 'auto', got {value!r}"
        )
    return number


def wanted_workers(configs: Iterable[Mapping[str, Any] | None]) -> int:
    """The host's proxy workers: the largest ``proxy.workers`` among its apps' live configs
    (the proxy is shared; an app asking for more cores gets them for all)."""
    wanted = 1
    for config in configs:
        value = ((config or {}).get("proxy") or {}).get("workers", 1)
        try:
            wanted = max(wanted, parse_workers(value))
        except ValueError:
            continue  # validated when the release was made; an old store has none
    return wanted


def share(total: int, workers: int) -> int:
    """One worker's part of a per-proxy budget (idle upstream connections per target)."""
    if total <= 0:
        return 0
    return max(1, total // workers)


def share_of(sockets: int, workers: int, index: int) -> list[int]:
    """Which of an address's ``sockets`` (a ``SO_REUSEPORT`` group, in order) worker
    ``index`` of ``workers`` accepts on: round-robin, so that every socket is served by
    exactly one worker when there are at least as many sockets as workers (a group handed
    over by a proxy with more workers is never closed: that would reset the connections
    queued on it); with fewer (one socket that cannot have siblings), workers share them."""
    if sockets <= 0:
        return []
    if sockets < workers:
        return [index % sockets]
    return list(range(index, sockets, workers))


def merge(total: Any, part: Any, key: str = "") -> Any:
    """``total`` with ``part`` added in: numbers summed, histogram counts summed bucket by
    bucket, ``bounds`` and strings kept, flags or-ed, objects merged key by key."""
    if isinstance(total, dict) and isinstance(part, dict):
        out = dict(total)
        for k, v in part.items():
            out[k] = merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if isinstance(total, bool) or isinstance(part, bool):
        return bool(total) or bool(part)
    if isinstance(total, int | float) and isinstance(part, int | float):
        return total + part
    if (
        key != "bounds"
        and isinstance(total, list)
        and isinstance(part, list)
        and len(total) == len(part)
        and all(isinstance(x, int | float) for x in [*total, *part])
    ):
        return [a + b for a, b in zip(total, part, strict=True)]
    return total


def counters_only(snapshot: Any) -> Any:
    """A metrics snapshot with the gauges zeroed and windowed figures left out: what a dead
    worker still contributes to the totals."""
    if isinstance(snapshot, dict):
        return {
            k: (0 if k in GAUGES and isinstance(v, int | float) else counters_only(v))
            for k, v in snapshot.items()
            if k not in WINDOWED
        }
    return copy.deepcopy(snapshot)


def sum_metrics(live: list[dict[str, Any]], retired: dict[str, Any]) -> dict[str, Any]:
    """``/metrics.json`` of the whole proxy: live workers' figures plus the retired counts."""
    total: dict[str, Any] = {"apps": {}}
    for part in [retired, *live]:
        total = merge(total, part)
    return total


def routed_only(retired: dict[str, Any], routed: set[tuple[str, str]]) -> dict[str, Any]:
    """Retired counters of the releases still routed: as a single proxy forgets a release
    once it leaves the table, so do the totals (a feature flag's cohorts live with the app)."""
    apps_routed = {app for app, _ in routed}
    apps: dict[str, Any] = {}
    for app, figures in retired.get("apps", {}).items():
        if app not in apps_routed:
            continue
        releases = {
            name: m
            for name, m in figures.get("releases", {}).items()
            if (app, name) in routed or name.startswith("flag:")
        }
        apps[app] = {**figures, "releases": releases}
    return {"apps": apps}


def routed_series(retired: dict[str, float], routed: set[tuple[str, str]]) -> dict[str, float]:
    """``routed_only`` for Prometheus series (labelled ``app="A",release="R"``)."""
    keep = [f'app="{app}",release="{rel}"' for app, rel in routed]
    flags = [f'app="{app}",release="flag:' for app, _ in routed]
    return {
        series: value
        for series, value in retired.items()
        if "release=" not in series or any(k in series for k in [*keep, *flags])
    }


# -- Prometheus text ----------------------------------------------------------------------


def _split_sample(line: str) -> tuple[str, float] | None:
    series, _, value = line.rpartition(" ")
    try:
        return series, float(value)
    except ValueError:
        return None


def _family(series: str) -> str:
    return series.split("{", 1)[0]


def parse_prometheus(text: str) -> tuple[list[str], dict[str, float], dict[str, str]]:
    """(comment lines in order, series -> value, family -> type) of one exposition."""
    comments: list[str] = []
    samples: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line)
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                kinds[parts[2]] = parts[3]
            continue
        sample = _split_sample(line)
        if sample is not None:
            samples[sample[0]] = samples.get(sample[0], 0.0) + sample[1]
    return comments, samples, kinds


def _kind(series: str, kinds: dict[str, str]) -> str:
    name = _family(series)
    if name in kinds:
        return kinds[name]
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in kinds:
            return kinds[name[: -len(suffix)]]
    return "untyped"


def prometheus_counters(text: str) -> dict[str, float]:
    """The counter and histogram series of one exposition (what a dead worker keeps)."""
    _, samples, kinds = parse_prometheus(text)
    return {s: v for s, v in samples.items() if _kind(s, kinds) in ("counter", "histogram")}


def sum_prometheus(live: list[str], retired: dict[str, float]) -> str:
    """One exposition: every series summed over the live workers, plus retired counters."""
    order: list[str] = []
    seen_comments: set[str] = set()
    by_family: dict[str, list[str]] = {}
    values: dict[str, float] = dict(retired)
    for text in live:
        comments, samples, _ = parse_prometheus(text)
        for line in comments:
            if line not in seen_comments:
                seen_comments.add(line)
                parts = line.split()
                family = parts[2] if len(parts) >= 3 else ""
                if family not in by_family:
                    by_family[family] = []
                    order.append(family)
                by_family[family].append(line)
        for series, value in samples.items():
            values[series] = values.get(series, 0.0) + value
    out: list[str] = []
    placed: set[str] = set()
    for family in order:
        out.extend(by_family[family])
        for series in values:
            name = _family(series)
            base = name
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in by_family:
                    base = name[: -len(suffix)]
            if base == family and series not in placed:
                placed.add(series)
                out.append(f"{series} {_number(values[series])}")
    out.extend(f"{s} {_number(v)}" for s, v in values.items() if s not in placed)
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


# -- targets and fuses --------------------------------------------------------------------


def sum_targets(parts: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``GET /targets`` of the whole proxy: work summed, healthy only where every worker
    says so, draining where any does."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for address, figures in part.items():
            mine = out.get(address)
            if mine is None:
                out[address] = dict(figures)
                continue
            for key, value in figures.items():
                if key == "healthy":
                    mine[key] = bool(mine.get(key, True)) and bool(value)
                elif isinstance(value, bool):
                    mine[key] = bool(mine.get(key, False)) or value
                elif isinstance(value, int | float) and isinstance(mine.get(key), int | float):
                    mine[key] = mine[key] + value
    return dict(sorted(out.items()))


def zero_tripped(apps: dict[str, Any], tripped: set[tuple[str, str, str]]) -> dict[str, Any] | None:
    """Route-table ``apps`` with every release whose fuse tripped in some worker (same app,
    release and deployment) at weight 0 and the others renormalised, as the tripped
    worker's own ``Fuses.enforce`` does; None when nothing changes. So a table change
    first applied by a worker whose fuse did not trip cannot undo a trip."""
    changed = False
    out = dict(apps)
    for name, app in apps.items():
        releases = app.get("releases", [])
        hit = {
            r.get("name")
            for r in releases
            if isinstance(r.get("fuse"), dict)
            and (name, r.get("name"), str(r["fuse"].get("deployment"))) in tripped
            and r.get("weight", 0) > 0
        }
        if not hit:
            continue
        others = [r for r in releases if r.get("name") not in hit]
        weights = renormalise(
            [int(r.get("weight", 0)) for r in others], [bool(r.get("targets")) for r in others]
        )
        new = dict(zip((r.get("name") for r in others), weights, strict=True))
        out[name] = {
            **app,
            "releases": [{**r, "weight": new.get(r.get("name"), 0)} for r in releases],
        }
        changed = True
    return out if changed else None


def sum_fuses(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Every worker's armed fuses, per app and release: tripped where any worker tripped,
    window figures summed."""
    apps: dict[str, Any] = {}
    for part in parts:
        for app, releases in part.items():
            for release, fuse in releases.items():
                mine = apps.setdefault(app, {}).get(release)
                if mine is None:
                    apps[app][release] = dict(fuse)
                    continue
                mine["tripped"] = bool(mine.get("tripped")) or bool(fuse.get("tripped"))
                mine["trip"] = mine.get("trip") or fuse.get("trip")
                for key in ("errors", "requests"):
                    mine[key] = int(mine.get(key, 0)) + int(fuse.get(key, 0))
    return apps
