"""Deployments exported as OTLP traces to a real (in-test) OTLP/HTTP receiver.

Skipped unless the OpenTelemetry SDK and its OTLP/HTTP exporter are installed: Baton does
not depend on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.support.host import Host
from tests.support.procs import free_port

pytestmark = pytest.mark.timeout(120)


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    spans: list[dict[str, Any]] = []

    async def traces(request: web.Request) -> web.Response:
        export = trace_service_pb2.ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        {
                            "name": span.name,
                            "id": span.span_id,
                            "parent": span.parent_span_id,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "events": [e.name for e in span.events],
                        }
                    )
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", spans
    await runner.cleanup()


async def test_a_deployment_is_one_trace_with_a_span_per_step(
    tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, spans = receiver
    h = Host(tmp_path)
    h.config()
    try:
        up = await h.baton("up", "--detach", "--otlp-endpoint", url, timeout=60)
        assert up.rc == 0, up
        assert (await h.deploy("--version", "v1")).rc == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(s["name"] == "deployment" for s in spans):
            await asyncio.sleep(0.1)
        (root,) = [s for s in spans if s["name"] == "deployment"]
        assert root["attributes"]["baton.app"] == "shop"
        assert root["attributes"]["baton.version"] == "v1"
        assert root["attributes"]["baton.deployment_id"] == 1
        assert root["attributes"]["baton.outcome"] == "succeeded"
        steps = [s for s in spans if s["parent"] == root["id"]]
        assert {"step start", "step ready", "step switch"} <= {s["name"] for s in steps}
    finally:
        await h.teardown()
