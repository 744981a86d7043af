"""The proxy process's garbage-collector policy (``proxy/gcpolicy.py``), run in a fresh
interpreter so that this test process keeps its own collector settings."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import gc, json
import baton.proxy.server
from baton.proxy import gcpolicy
before = gc.get_threshold()
cycle = []
cycle.append(cycle)  # start-up garbage: collected, not frozen
del cycle
gcpolicy.settle()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "threshold": gc.get_threshold(),
                  "young": gc.get_count()[0], "garbage": len(gc.garbage)}))
"""


def test_settle_freezes_start_up_objects_and_keeps_the_thresholds() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    figures = json.loads(out.stdout)
    # The proxy's modules (thousands of objects) are out of every later collection's walk.
    assert figures["frozen"] > 5_000, figures
    assert figures["threshold"] == figures["before"], figures  # CPython's own thresholds
    assert figures["garbage"] == 0, figures
