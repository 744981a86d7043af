"""Optional OTLP export of deployments as traces, when the OpenTelemetry SDK is installed.

Baton does not depend on OpenTelemetry. With ``--otlp-endpoint URL`` (or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``) and the packages ``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http`` importable, every deployment becomes one trace:
a ``deployment`` span (app, version, previous version, kind, strategy, deployment id,
outcome) with one child span per step, canary verdicts as span events, timed by the
events' own timestamps. Spans are batched and sent by the SDK's own thread.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any

from baton.errors import UsageError
from baton.observe import hub

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
PACKAGES = "opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"


def available() -> bool:
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:  # a parent package is missing
        return False


def endpoint_from(flag: str | None) -> str | None:
    """The traces URL to export to (None: off); UsageError when asked for but impossible."""
    base = flag or os.environ.get(ENDPOINT_ENV)
    if not base:
        return None
    if flag is None and not available():
        return None  # the variable is for whatever else runs here; Baton was not asked
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--otlp-endpoint: expected an http(s) URL, got {base!r}")
    if not available():
        raise UsageError(
            f"--otlp-endpoint: OpenTelemetry is not installed (pip install {PACKAGES})"
        )
    return base.rstrip("/") + "/v1/traces" if not base.rstrip("/").endswith("/v1/traces") else base


class _Exporter:
    """Turns one process's deployment events into spans."""

    def __init__(self, url: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from baton import __version__

        resource = Resource.create({"service.name": "baton", "service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url), schedule_delay_millis=500)
        )
        self.tracer = self.provider.get_tracer("baton.deploy")
        self.roots: dict[int, Any] = {}
        self.steps: dict[int, Any] = {}

    def on_event(
        self, deployment_id: int, app: str, version: str, event: Mapping[str, Any]
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        kind = event.get("event")
        ns = int(float(event.get("ts") or 0) * 1e9) or None
        if kind == "deployment":
            attributes: dict[str, str | int] = {
                "baton.deployment_id": deployment_id,
                "baton.app": app,
                "baton.version": str(event.get("version") or version),
                "baton.kind": str(event.get("kind") or ""),
                "baton.strategy": str(event.get("strategy") or ""),
            }
            if event.get("previous"):
                attributes["baton.previous_version"] = str(event["previous"])
            self.roots[deployment_id] = self.tracer.start_span(
                "deployment", start_time=ns, attributes=attributes
            )
            return
        root = self.roots.get(deployment_id)
        if root is None:
            return
        if kind == "step":
            self._end_step(deployment_id, ns)
            context = trace.set_span_in_context(root)
            self.steps[deployment_id] = self.tracer.start_span(
                f"step {event.get('step')}",
                context=context,
                start_time=ns,
                attributes={
                    "baton.deployment_id": deployment_id,
                    "baton.step": str(event.get("step")),
                },
            )
        elif kind == "verdict":
            target = self.steps.get(deployment_id) or root
            target.add_event(
                "verdict",
                {
                    "baton.step": str(event.get("step")),
                    "baton.verdict": str(event.get("verdict")),
                    "baton.decision": str(event.get("decision")),
                },
                timestamp=ns,
            )
        elif kind == "result":
            self._end_step(deployment_id, ns)
            self.roots.pop(deployment_id, None)
            status = str(event.get("status") or "")
            root.set_attribute("baton.outcome", status)
            if not event.get("ok"):
                root.set_status(Status(StatusCode.ERROR, str(event.get("message") or status)))
            root.end(end_time=ns)

    def _end_step(self, deployment_id: int, ns: int | None) -> None:
        step = self.steps.pop(deployment_id, None)
        if step is not None:
            step.end(end_time=ns)


def start(url: str) -> Callable[[], None]:
    """Export from now on; returns the function that flushes and stops it."""
    exporter = _Exporter(url)
    unsubscribe = hub.subscribe(exporter.on_event)

    def stop() -> None:
        unsubscribe()
        exporter.provider.shutdown()

    return stop
