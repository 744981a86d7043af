"""Judging a flag like a canary: its "on" cohort against its "off" cohort, on live traffic.

Theory of operation. An app tells the proxy which variant served a request with a response
header ``Baton-Flags: <flag>=<variant>[, ...]`` (the proxy removes it before the client sees
it). The proxy counts those requests as if each (flag, variant) were a release of the app
named ``flag:<flag>=<variant>`` — the same counters and latency histograms as releases have
— so the daemon's traffic samples (``deploy.traffic``) and the canary judge
(``deploy.analysis.judge``) work on them unchanged. For a flag with ``judge``, every
non-default variant's cohort is compared with the default variant's over the flag's window;
a ``fail`` verdict (a significant error-rate increase, or a significant and large latency
increase) kills the flag, which sends every user back to the default variant within one
evaluation. ``judge_flag`` is pure; the daemon calls ``check`` every ``JUDGE_INTERVAL``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from baton.deploy.analysis import AnalysisConfig, Verdict, judge
from baton.deploy.traffic import Traffic
from baton.flags.model import Flag
from baton.flags.service import FlagService

log = logging.getLogger("baton.flags")

HEADER = b"baton-flags"
JUDGE_INTERVAL = 1.0


def cohort(flag: str, variant: str) -> str:
    """The pseudo-release name a (flag, variant) cohort is counted under by the proxy."""
    return f"flag:{flag}={variant}"


@dataclass(frozen=True)
class Judgement:
    flag: str
    variant: str
    verdict: Verdict


def judge_flag(flag: Flag, traffic: Traffic, app: str) -> list[Judgement]:
    """Every non-default variant of ``flag`` judged against its default, over its window."""
    if flag.judge is None:
        return []
    baseline = traffic.recent(app, cohort(flag.key, flag.default), flag.judge.window)
    if baseline is None:
        return []
    out = []
    for variant in flag.variants:
        if variant == flag.default:
            continue
        window = traffic.recent(app, cohort(flag.key, variant), flag.judge.window)
        if window is None or window.requests == 0:
            continue
        out.append(
            Judgement(flag.key, variant, judge(baseline, window, AnalysisConfig.of(flag.judge)))
        )
    return out


def check(flags: FlagService, traffic: Traffic) -> list[str]:
    """One round: judge every judged flag that is not killed; kill the failing ones."""
    notes = []
    for app in flags.apps():
        served = flags.served(app)
        if served is None:
            continue
        for flag in served.flags.values():
            if flag.killed or flag.judge is None:
                continue
            for j in judge_flag(flag, traffic, app):
                flags.last_verdicts[(app, flag.key, j.variant)] = j.verdict
                if j.verdict.verdict != "fail":
                    continue
                why = f"{j.variant} judged worse than {flag.default}: " + "; ".join(
                    j.verdict.reasons
                )
                flags.kill(app, flag.key, source="judge", why=why)
                notes.append(f"{app}: flag {flag.key} killed: {why}")
                break
    return notes
