"""Control-plane metrics, the endpoints' options and JSON log lines, without a daemon."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from baton.dashboard import page
from baton.errors import UsageError
from baton.observe.endpoints import Endpoints
from baton.observe.logs import JsonFormatter, bind
from baton.observe.metrics import ControlMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def deployment(
    m: ControlMetrics, dep: int, app: str, steps: list[tuple[str, float]], end: float, status: str
) -> None:
    m.observe(dep, app, {"event": "deployment", "ts": 0.0, "kind": "deploy"})
    for step, ts in steps:
        m.observe(dep, app, {"event": "step", "step": step, "ts": ts})
    m.observe(
        dep, app, {"event": "result", "ts": end, "status": status, "ok": status == "succeeded"}
    )


def test_control_metrics_count_outcomes_steps_verdicts_and_restarts_in_prometheus_text() -> None:
    m = ControlMetrics()
    deployment(m, 1, "shop", [("start", 0.0), ("ready", 0.3), ("switch", 1.5)], 1.6, "succeeded")
    deployment(m, 2, "shop", [("start", 0.0), ("ready", 0.2)], 40.0, "failed")
    m.observe(3, "shop", {"event": "verdict", "verdict": "pass", "decision": "next", "ts": 1})
    m.observe(3, "shop", {"event": "verdict", "verdict": "fail", "decision": "abort", "ts": 2})
    m.count_restart("shop", "instance", 2)
    m.register_gauge(
        "baton_certificate_expiry_seconds",
        "Seconds until the certificate expires.",
        lambda: [({"host": 'a"b.example'}, 86400.0)],
    )
    found = samples(m.to_prometheus())
    assert (
        found[
            (
                "baton_deployments_total",
                (("app", "shop"), ("kind", "deploy"), ("outcome", "succeeded")),
            )
        ]
        == 1
    )
    assert (
        found[
            (
                "baton_deployments_total",
                (("app", "shop"), ("kind", "deploy"), ("outcome", "failed")),
            )
        ]
        == 1
    )
    assert found[("baton_canary_verdicts_total", (("app", "shop"), ("verdict", "fail")))] == 1
    assert found[("baton_instance_restarts_total", (("app", "shop"), ("what", "instance")))] == 2
    ready = (("app", "shop"), ("step", "ready"))
    # "ready" took 1.2 s in #1 and 39.8 s in #2 (until the result).
    assert found[("baton_deploy_step_duration_seconds_count", ready)] == 2
    assert found[("baton_deploy_step_duration_seconds_sum", ready)] == pytest.approx(41.0)
    assert (
        found[("baton_deploy_step_duration_seconds_bucket", (*ready[:1], ("le", "2.5"), ready[1]))]
        == 1
    )
    assert found[("baton_certificate_expiry_seconds", (("host", 'a"b.example'),))] == 86400


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"metrics": "0.0.0.0:9180"}, {}, "BATON_METRICS_TOKEN"),
        ({"metrics": "127.0.0.1"}, {}, "--metrics: expected HOST:PORT"),
        ({"metrics": "127.0.0.1:99999"}, {}, "--metrics: expected HOST:PORT"),
        ({"dashboard": "0.0.0.0:8443"}, {}, "BATON_DASHBOARD_TOKEN"),
        ({"dashboard": "0.0.0.0:8443"}, {"BATON_DASHBOARD_TOKEN": "x" * 20}, "needs TLS"),
        ({"dashboard": "127.0.0.1:8443"}, {"BATON_DASHBOARD_TOKEN": "short"}, "at least 16"),
        ({"dashboard_cert": "/nonexistent.pem"}, {}, "go together"),
    ],
)
def test_endpoint_options_refuse_unsafe_or_malformed_flags(
    flags: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        Endpoints.from_flags(environ=env, **flags)


def test_endpoints_off_loopback_are_allowed_with_a_token_and_insecure_consent() -> None:
    token = "t" * 20
    e = Endpoints.from_flags(
        metrics="0.0.0.0:9180",
        dashboard="0.0.0.0:8443",
        dashboard_insecure=True,
        environ={"BATON_METRICS_TOKEN": token, "BATON_DASHBOARD_TOKEN": token},
    )
    assert e.metrics == ("0.0.0.0", 9180) and e.dashboard_token == token
    assert Endpoints.from_flags(metrics="[::1]:9180", environ={}).metrics == ("::1", 9180)


def test_json_log_lines_carry_the_bound_deployment() -> None:
    record = logging.LogRecord(
        "baton.engine", logging.INFO, __file__, 1, "switching %s", ("v2",), None
    )
    bind(7, "shop", "v2")
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "switching v2"
    assert (line["deployment_id"], line["app"], line["version"]) == (7, "shop", "v2")
    assert line["level"] == "info" and line["time"].endswith("Z")


def test_the_page_escapes_what_it_shows() -> None:
    state = {
        "ts": 0.0,
        "apps": {
            "shop": {
                "listen": "127.0.0.1:1",
                "live": "<script>x</script>",
                "releases": [
                    {"version": '"><img src=x>', "state": "live", "weight": 100, "instances": []}
                ],
            }
        },
        "deployments": [],
    }
    html = page.dashboard(state)
    assert "<script>x</script>" not in html and "<img src=x>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html


async def test_the_metrics_endpoint_wants_the_token_when_it_has_one(tmp_path: Path) -> None:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from baton.deploy.proxyclient import ProxyClient
    from baton.observe.endpoints import metrics_app

    proxy = ProxyClient(tmp_path / "no-proxy.sock")  # no proxy runs: said in a comment line
    server = TestServer(metrics_app(proxy, "s3cret-token-0123456789"), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            url = str(server.make_url("/metrics"))
            async with http.get(url) as r:
                assert r.status == 401
            async with http.get(url, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            good = {"Authorization": "Bearer s3cret-token-0123456789"}
            async with http.get(url, headers=good) as r:
                assert r.status == 200
                text = await r.text()
        assert "# the proxy's metrics are unavailable" in text
        assert any(f.name == "baton_deployments" for f in text_string_to_metric_families(text))
    finally:
        await server.close()
        await proxy.close()
