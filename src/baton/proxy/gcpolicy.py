"""The garbage-collector policy of the proxy's serving processes (not the control plane's).

A proxy process holds tens of thousands of long-lived objects once started (modules, the
route table, TLS contexts), and every full collection walks them all while no request is
served: measured under ``bench/proxy.py`` load at 256 connections, full collections took
40-120 ms, one every 20-40 s. ``settle`` runs once a proxy (or a worker) serves: it
collects what start-up left and moves every survivor into the permanent generation
(``gc.freeze``), never walked again: the same full collections then took 2-14 ms (README,
``bench/proxy.py``: the p99 figures with and without). The thresholds stay CPython's: a youngest generation
raised to 10,000 made its passes rarer but longer (p99 pause 11 ms against 5 ms, measured),
since the exchanges leave reference cycles behind for it to find.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect start-up garbage and freeze the survivors (later collections skip them)."""
    gc.collect()
    gc.freeze()
