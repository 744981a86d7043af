"""`baton history` and `baton top` as text: snapshots at 80 columns."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from baton.observe.views import history_lines, top_lines


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


DEPLOYMENTS: list[Mapping[str, Any]] = [
    {
        "id": 12,
        "app": "shop",
        "kind": "deploy",
        "version": "v2",
        "previous": "v1",
        "strategy": "canary",
        "status": "succeeded",
        "started": 1796007856.0,
        "ended": 1796007870.25,
        "step": "done",
        "error": None,
        "started_by": {"by": "ana", "via": "cli"},
        "canary": [
            {"kind": "step", "step": "canary#0"},
            {"kind": "verdict", "step": 1, "verdict": "pass", "decision": "next"},
        ],
        "signals": {
            "window": 300.0,
            "new": {"p50": 0.0008, "p95": 0.005, "p99": 0.007, "error_rate": 0.0},
            "previous": {"p50": 0.0008, "p95": 0.0058, "p99": 0.0098, "error_rate": 0.0},
            "latency_ratio": 0.862,
            "regression": False,
            "verdict": "no regression",
        },
    },
    {
        "id": 11,
        "app": "shop",
        "kind": "deploy",
        "version": "20261130-030102-with-a-long-label",
        "previous": "v1",
        "strategy": "blue-green",
        "status": "rolled_back",
        "started": 1796007700.0,
        "ended": 1796007712.5,
        "step": "verify",
        "error": "20261130-030102-with-a-long-label failed verification: 5xx rate 31.2% "
        "(41 of 131 requests) is above 5.0%; switched back\nlogs...",
    },
    {
        "id": 13,
        "app": "shop",
        "kind": "rollback",
        "version": "v1",
        "previous": "v2",
        "strategy": "blue-green",
        "status": "running",
        "started": 1796007900.0,
        "ended": None,
        "step": "drain",
        "error": None,
    },
]

EXPECTED = """\
#12 SUCCEEDED shop deploy v2 (from v1)
    canary, started 2026-11-30 03:04:16, took 14.2s by ana via cli
    step 1 verdict: pass -> next
    signals, first 5m vs last: p50 0.8 ms vs 0.8 ms, p95 5.0 ms vs 5.8 ms
      (0.86x), p99 7.0 ms vs 9.8 ms, errors 0.00% vs 0.00% -> no regression
#11 ROLLED_BACK shop deploy 20261130-030102-with-a-long-label (from v1)
    blue-green, started 2026-11-30 03:01:40, took 12.5s
    error: 20261130-030102-with-a-long-label failed verification: 5xx rate 31.2%
      (41 of 131 requests) is above 5.0%; switched back
#13 RUNNING shop rollback v1 (from v2)
    blue-green, started 2026-11-30 03:05:00, running
    at step drain"""


def test_history_reads_well_at_80_columns() -> None:
    lines = history_lines(DEPLOYMENTS, width=80, clock=utc)
    assert "\n".join(lines) == EXPECTED
    assert max(len(line) for line in lines) <= 80
    # No line is a lone word: wrapping happens at whole phrases.
    assert all(len(line.split()) > 1 for line in lines)


def test_top_shows_the_split_and_live_figures_per_release() -> None:
    status = {
        "apps": {
            "shop": {
                "live": None,
                "canary": {
                    "version": "v2",
                    "stable": "v1",
                    "step": 1,
                    "steps": 2,
                    "weight": 20,
                    "left": 4.5,
                },
                "releases": [
                    {
                        "version": "v1",
                        "weight": 80,
                        "live": {
                            "rate": 412.3,
                            "error_rate": 0.0,
                            "p50": 0.0008,
                            "p95": 0.0031,
                            "p99": 0.0062,
                        },
                    },
                    {
                        "version": "v2",
                        "weight": 20,
                        "live": {
                            "rate": 98.0,
                            "error_rate": 0.0204,
                            "p50": 0.0009,
                            "p95": 0.004,
                            "p99": None,
                        },
                    },
                ],
            }
        }
    }
    assert "\n".join(top_lines(status, width=80)) == (
        "shop  live: (traffic split)\n"
        "    canary v2 vs v1: step 1/2 at 20%, 4.5s left\n"
        "release        weight    req/s   errors       p50       p95       p99\n"
        "v1                80%    412.3    0.00%    0.8 ms    3.1 ms    6.2 ms\n"
        "v2                20%     98.0    2.04%    0.9 ms    4.0 ms         -\n"
    )
