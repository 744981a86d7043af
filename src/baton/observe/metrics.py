"""The control plane's own Prometheus metrics: what deployments did, not what requests did.

Theory of operation. ``ControlMetrics`` owns a handful of counters and one histogram, fed
by deployment events (``observe``: the same dicts the engine streams to the CLI) and by
the daemon's loops (``count_restart``). It is pure: no I/O, no clock of its own (the events
carry ``ts``). Gauges that other parts own (a certificate's expiry, the proxy's restart
count) are registered as callbacks (``register_gauge``) and read only when scraped.
Rendering to the Prometheus text format happens on scrape; the per-request path of the
proxy never touches this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from baton.state.states import DeploymentStatus

STEP_BOUNDS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# A gauge callback answers (labels, value) pairs; labels are a mapping of name to value.
GaugeSample = tuple[Mapping[str, str], float]
GaugeFn = Callable[[], Iterable[GaugeSample]]


@dataclass
class _Gauge:
    name: str
    help: str
    fn: GaugeFn
    kind: str = "gauge"


@dataclass
class _Open:
    """The step a deployment is in, and since when (the event's wall-clock ts)."""

    app: str
    step: str | None = None
    since: float = 0.0


@dataclass
class ControlMetrics:
    deployments: dict[tuple[str, str, str], int] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], int] = field(default_factory=dict)
    restarts: dict[tuple[str, str], int] = field(default_factory=dict)
    steps: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    step_sums: dict[tuple[str, str], float] = field(default_factory=dict)
    _open: dict[int, _Open] = field(default_factory=dict)
    _gauges: list[_Gauge] = field(default_factory=list)

    # -- feeding ---------------------------------------------------------------------------

    def observe(self, deployment_id: int, app: str, event: Mapping[str, Any]) -> None:
        """One deployment event (see ``DeploymentRun.emit``)."""
        kind = event.get("event")
        ts = float(event.get("ts") or 0.0)
        if kind == "deployment":
            self._open[deployment_id] = _Open(app, None, ts)
        elif kind == "step":
            self._close_step(deployment_id, ts)
            current = self._open.setdefault(deployment_id, _Open(app))
            current.step, current.since = str(event.get("step")), ts
        elif kind == "verdict":
            key = (app, str(event.get("verdict") or event.get("decision") or "unknown"))
            self.verdicts[key] = self.verdicts.get(key, 0) + 1
        elif kind == "result":
            self._close_step(deployment_id, ts)
            self._open.pop(deployment_id, None)
            ended = DeploymentStatus.SUCCEEDED if event.get("ok") else DeploymentStatus.FAILED
            status = str(event.get("status") or ended)
            dkey = (app, str(event.get("kind") or "deploy"), status)
            self.deployments[dkey] = self.deployments.get(dkey, 0) + 1

    def count_restart(self, app: str, what: str, n: int = 1) -> None:
        """``n`` instances of ``app`` were replaced after they died."""
        key = (app, what)
        self.restarts[key] = self.restarts.get(key, 0) + n

    def register_gauge(
        self, name: str, help_text: str, fn: GaugeFn, *, kind: str = "gauge"
    ) -> None:
        """A metric another part owns, e.g. ``baton_certificate_expiry_seconds`` (labels
        ``host``): ``fn`` is called at every scrape."""
        self._gauges = [g for g in self._gauges if g.name != name]  # registered again: replaced
        self._gauges.append(_Gauge(name, help_text, fn, kind))

    def _close_step(self, deployment_id: int, ts: float) -> None:
        current = self._open.get(deployment_id)
        if current is None or current.step is None:
            return
        seconds = max(0.0, ts - current.since)
        key = (current.app, current.step)
        counts = self.steps.setdefault(key, [0] * (len(STEP_BOUNDS) + 1))
        for i, bound in enumerate(STEP_BOUNDS):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.step_sums[key] = self.step_sums.get(key, 0.0) + seconds
        current.step = None

    # -- rendering -------------------------------------------------------------------------

    def to_prometheus(self) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        head("baton_deployments_total", "counter", "Finished deployments, by kind and outcome.")
        for (app, kind, status), n in sorted(self.deployments.items()):
            out.append(
                f'baton_deployments_total{{app="{_esc(app)}",kind="{_esc(kind)}",'
                f'outcome="{_esc(status)}"}} {n}'
            )
        head("baton_canary_verdicts_total", "counter", "Canary step verdicts, by verdict.")
        for (app, verdict), n in sorted(self.verdicts.items()):
            out.append(
                f'baton_canary_verdicts_total{{app="{_esc(app)}",verdict="{_esc(verdict)}"}} {n}'
            )
        head("baton_instance_restarts_total", "counter", "Dead instances replaced, by kind.")
        for (app, what), n in sorted(self.restarts.items()):
            out.append(
                f'baton_instance_restarts_total{{app="{_esc(app)}",what="{_esc(what)}"}} {n}'
            )
        name = "baton_deploy_step_duration_seconds"
        head(name, "histogram", "Time spent in each deployment step.")
        for (app, step), counts in sorted(self.steps.items()):
            labels = f'app="{_esc(app)}",step="{_esc(step)}"'
            running = 0
            for bound, n in zip(STEP_BOUNDS, counts, strict=False):
                running += n
                out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {running}')
            total = sum(counts)
            out.append(f'{name}_bucket{{{labels},le="+Inf"}} {total}')
            out.append(f"{name}_sum{{{labels}}} {self.step_sums[(app, step)]:.6f}")
            out.append(f"{name}_count{{{labels}}} {total}")
        for gauge in self._gauges:
            head(gauge.name, gauge.kind, gauge.help)
            for labels_map, value in gauge.fn():
                labels = ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(labels_map.items()))
                out.append(
                    f"{gauge.name}{{{labels}}} {value:g}" if labels else f"{gauge.name} {value:g}"
                )
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# The one instance of this control plane; the engine's events feed it (``baton.observe.hub``).
METRICS = ControlMetrics()
