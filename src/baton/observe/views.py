"""Terminal views of ``baton history`` and ``baton top``: plain text lines that fit a width.

Pure functions of the API's JSON, so they are snapshot-tested at 80 columns: one block per
deployment (a heading line, then indented detail lines wrapped at word boundaries, never
one word per line), and one table row per release for ``top``.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from baton.deploy.traffic import KEEP_SECONDS
from baton.errors import UsageError
from baton.state.states import DeploymentStatus

if TYPE_CHECKING:
    from baton.deploy.engine import Engine

Clock = Callable[[float], str]
INDENT = "    "


def local_clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ms(seconds: Any) -> str:
    return "-" if seconds is None else f"{float(seconds) * 1000:.1f} ms"


def _pct(fraction: Any) -> str:
    return "-" if fraction is None else f"{float(fraction):.2%}"


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(
        text,
        width=max(40, width),
        initial_indent=INDENT,
        subsequent_indent=INDENT + "  ",
        break_long_words=True,
        break_on_hyphens=False,
    )


def _window(seconds: Any) -> str:
    s = float(seconds or 0)
    return f"{s / 60:g}m" if s >= 60 and s % 60 == 0 else f"{s:g}s"


def signals_line(signals: Mapping[str, Any]) -> str:
    new, old = signals.get("new") or {}, signals.get("previous") or {}
    ratio = signals.get("latency_ratio")
    ratio_text = f" ({ratio:.2f}x)" if isinstance(ratio, int | float) else ""
    return (
        f"signals, first {_window(signals.get('window'))} vs last:"
        f" p50 {_ms(new.get('p50'))} vs {_ms(old.get('p50'))},"
        f" p95 {_ms(new.get('p95'))} vs {_ms(old.get('p95'))}{ratio_text},"
        f" p99 {_ms(new.get('p99'))} vs {_ms(old.get('p99'))},"
        f" errors {_pct(new.get('error_rate'))} vs {_pct(old.get('error_rate'))}"
        f" -> {signals.get('verdict', '')}"
    )


def history_lines(
    deployments: list[Mapping[str, Any]], width: int = 80, clock: Clock = local_clock
) -> list[str]:
    if not deployments:
        return ["no deployments yet"]
    lines: list[str] = []
    for dep in deployments:
        version = dep.get("version") or "-"
        previous = f" (from {dep['previous']})" if dep.get("previous") else ""
        head = (
            f"#{dep['id']} {dep['status'].upper()} {dep['app']} {dep['kind']} {version}{previous}"
        )
        lines += textwrap.wrap(head, width=max(40, width), subsequent_indent=INDENT) or [head]
        took = (
            f", took {dep['ended'] - dep['started']:.1f}s"
            if dep.get("ended") is not None
            else ", running"
        )
        starter = dep.get("started_by") or {}
        by = f" by {starter['by']} via {starter.get('via', '?')}" if starter.get("by") else ""
        lines += _wrap(f"{dep['strategy']}, started {clock(dep['started'])}{took}{by}", width)
        if dep.get("status") == DeploymentStatus.RUNNING and dep.get("step"):
            lines += _wrap(f"at step {dep['step']}", width)
        verdicts = [e for e in dep.get("canary") or [] if e.get("kind") == "verdict"]
        for v in verdicts:
            lines += _wrap(
                f"step {v.get('step')} verdict: {v.get('verdict')} -> {v.get('decision')}", width
            )
        if dep.get("signals"):
            lines += _wrap(signals_line(dep["signals"]), width)
        if dep.get("artifact"):
            lines += _wrap(f"runs {artifact_short(dep['artifact'])}", width)
        for m in dep.get("migrations") or []:
            outcome = "ok" if m.get("ok") else f"exit {m.get('exit_code')}"
            lines += _wrap(f"migration {m.get('phase')}: {outcome} ({m.get('seconds')}s)", width)
        if dep.get("error"):
            first = str(dep["error"]).splitlines()[0]
            lines += _wrap(f"error: {first}", width)
    return lines


def artifact_short(artifact: Mapping[str, Any]) -> str:
    """A release's artifact in a few words: ``snapshot``, or ``tag (id12)``."""
    if artifact.get("kind") == "snapshot":
        return "snapshot" if artifact.get("kept", True) else "snapshot (removed)"
    if artifact.get("kind") == "image":
        short = str(artifact.get("id") or "").split(":", 1)[-1][:12]
        return f"{artifact.get('image')} ({short})"
    return "-"


def top_lines(status: Mapping[str, Any], width: int = 80) -> list[str]:
    """``baton top``: per app, its split and each release's live figures, one row each."""
    lines: list[str] = []
    header = (
        f"{'release':<14} {'weight':>6} {'req/s':>8} {'errors':>8} {'p50':>9} {'p95':>9} {'p99':>9}"
    )
    for name, app in status.get("apps", {}).items():
        live = app.get("live") or "(traffic split)"
        lines.append(f"{name}  live: {live}")
        canary = app.get("canary")
        if canary:
            progress = canary_progress(canary)
            lines += _wrap(f"canary {canary['version']} vs {canary['stable']}: {progress}", width)
        lines.append(header[:width])
        for release in app.get("releases", []):
            t = release.get("live") or release.get("traffic") or {}
            rate = "-" if t.get("rate") is None else f"{t['rate']:.1f}"
            row = (
                f"{str(release['version'])[:14]:<14} {str(release['weight']) + '%':>6}"
                f" {rate:>8} {_pct(t.get('error_rate')):>8} {_ms(t.get('p50')):>9}"
                f" {_ms(t.get('p95')):>9} {_ms(t.get('p99')):>9}"
            )
            lines.append(row[:width])
        lines.append("")
    return lines or ["no apps deployed yet"]


def annotate_live(engine: Engine, status: dict[str, Any], window: str) -> None:
    """Add each release's ``live`` figures over the last ``window`` seconds (1-120)."""
    try:
        seconds = float(window)
    except ValueError:
        raise UsageError(f"window: expected seconds, got {window!r}") from None
    if not 1.0 <= seconds <= KEEP_SECONDS:
        raise UsageError(f"window: expected between 1 and {KEEP_SECONDS:g} seconds, got {window}")
    for name, app in status.get("apps", {}).items():
        for release in app.get("releases", []):
            release["live"] = engine.release_figures(name, release["version"], seconds)


def canary_progress(canary: dict[str, Any]) -> str:
    """Where a running canary is: "step 2/4 at 25%, 12s left" (or "starting")."""
    step = (
        f"step {canary['step']}/{canary['steps']} at {canary['weight']}%"
        if canary.get("step")
        else "starting"
    )
    left = f", {canary['left']:g}s left" if canary.get("left") is not None else ""
    return step + left
