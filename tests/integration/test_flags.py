"""Feature flags end to end: flags.yml beside baton.yml, the daemon, OFREP, an OpenFeature SDK.

The SDK is the real `openfeature-sdk` with the real OFREP provider, pointed at the daemon's
`--flags` listener; the CLI is the real `baton flags`.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openfeature import api as openfeature
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason

from tests.support.host import Host
from tests.support.load import Load
from tests.support.procs import free_port

pytestmark = pytest.mark.timeout(240)
TOKEN = "flags-token-for-tests-0123456789"

FLAGS: dict[str, Any] = {
    "flags": {
        "new-checkout": {
            "variants": {"on": True, "off": False},
            "default": "off",
            "rules": [{"when": {"email": {"ends_with": "@example.com"}}, "serve": "on"}],
        },
        "banner": {"variants": {"plain": "hello", "fancy": "HELLO!"}, "default": "plain"},
    }
}


class Flagged(Host):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.flags_port = free_port()
        self.base = f"http://127.0.0.1:{self.flags_port}/apps/shop"

    def write_flags(self, flags: dict[str, Any]) -> None:
        path = self.root / "flags.yml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(flags, sort_keys=False))
        tmp.replace(path)  # an editor's atomic save

    def client(self) -> OpenFeatureClient:
        provider = OFREPProvider(
            self.base, headers_factory=lambda: {"Authorization": f"Bearer {TOKEN}"}
        )
        openfeature.set_provider(provider, domain=str(self.root))
        return openfeature.get_client(domain=str(self.root))

    def post(
        self, path: str, body: Any, token: str | None = TOKEN
    ) -> tuple[int, Any, dict[str, str]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.flags_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {token}"} if token else {}),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None, dict(exc.headers)


@pytest.fixture
async def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Flagged]:
    monkeypatch.setenv("BATON_FLAGS_TOKEN", TOKEN)
    h = Flagged(tmp_path)
    h.config({"instances": 1})
    h.write_flags(FLAGS)
    try:
        up = await h.baton("up", "--detach", "--flags", f"127.0.0.1:{h.flags_port}", timeout=60)
        assert up.rc == 0, up
        deployed = await h.deploy("--version", "v1")
        assert deployed.rc == 0, deployed
        # The daemon applies the flags.yml of a newly registered app within about 0.5 s.
        await _until(lambda: bool(h.post("/apps/shop/ofrep/v1/evaluate/flags", {})[1]["flags"]))
        yield h
    finally:
        await h.teardown()


async def _until(check: Any, timeout: float = 10.0) -> float:
    """Poll ``check()`` (sync, run in a thread) until true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        if await asyncio.to_thread(check):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, "the change never reached evaluations"
        await asyncio.sleep(0.05)


async def test_an_openfeature_sdk_evaluates_the_flags_beside_baton_yml(host: Flagged) -> None:
    client = host.client()
    staff = EvaluationContext("u1", {"email": "ann@example.com"})
    details = await asyncio.to_thread(client.get_boolean_details, "new-checkout", False, staff)
    assert (details.value, details.variant, details.reason) == (
        True,
        "on",
        Reason.TARGETING_MATCH,
    )
    other = EvaluationContext("u2", {"email": "bob@elsewhere.org"})
    assert await asyncio.to_thread(client.get_boolean_value, "new-checkout", True, other) is False
    assert await asyncio.to_thread(client.get_string_value, "banner", "?", other) == "hello"
    # A flag that does not exist: the SDK falls back to the code's default.
    missing = await asyncio.to_thread(client.get_boolean_details, "nope", True, other)
    assert missing.value is True and missing.error_code is not None


async def test_an_edit_of_flags_yml_reaches_evaluations_and_a_bad_one_changes_nothing(
    host: Flagged,
) -> None:
    client = host.client()
    ctx = EvaluationContext("u7", {})
    changed = {
        "flags": {**FLAGS["flags"], "banner": {**FLAGS["flags"]["banner"], "default": "fancy"}}
    }
    host.write_flags(changed)
    took = await _until(lambda: client.get_string_value("banner", "?", ctx) == "HELLO!")
    print(f"flags.yml edit reached evaluations after {took:.2f}s")

    host.write_flags({"flags": {"banner": {"variants": {"a": 1, "b": "x"}}}})
    listed: dict[str, Any] = {}

    async def reported() -> bool:
        result = await host.baton("flags", "list", "--json")
        assert result.rc == 0, result
        listed.update(json.loads(result.out)["apps"][0])
        return bool(listed.get("file_error"))

    deadline = time.monotonic() + 10
    while not await reported():
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.1)
    assert "flags.banner" in listed["file_error"] and "one type" in listed["file_error"]
    assert await asyncio.to_thread(client.get_string_value, "banner", "?", ctx) == "HELLO!"
    applied = await host.baton("flags", "apply", "-c", str(host.root / "baton.yml"))
    assert applied.rc == 2, applied
    assert "flags.yml: flags.banner" in applied.err


async def test_kill_switch_rollout_and_history_from_the_cli(host: Flagged) -> None:
    client = host.client()
    staff = EvaluationContext("u1", {"email": "ann@example.com"})
    killed = await host.baton("flags", "kill", "new-checkout")
    assert killed.rc == 0, killed
    details = await asyncio.to_thread(client.get_boolean_details, "new-checkout", True, staff)
    assert (details.value, details.reason) == (False, Reason.DISABLED)

    # An unrelated edit of the file does not bring a killed flag back.
    host.write_flags({"flags": {**FLAGS["flags"], "extra": True}})
    await _until(lambda: client.get_boolean_value("extra", False, staff) is True)
    assert await asyncio.to_thread(client.get_boolean_value, "new-checkout", True, staff) is False

    revived = await host.baton("flags", "revive", "new-checkout")
    assert revived.rc == 0, revived
    assert await asyncio.to_thread(client.get_boolean_value, "new-checkout", False, staff) is True

    rolled = await host.baton("flags", "rollout", "new-checkout", "30%")
    assert rolled.rc == 0, rolled
    on = 0
    for i in range(400):
        status, body, _ = await asyncio.to_thread(
            host.post,
            "/apps/shop/ofrep/v1/evaluate/flags/new-checkout",
            {"context": {"targetingKey": f"user-{i}"}},
        )
        assert status == 200, body
        on += body["value"] is True
    assert 60 <= on <= 180, on  # 30% of 400 = 120, sigma ≈ 9.2

    bad = await host.baton("flags", "rollout", "new-checkout", "130%")
    assert bad.rc == 2 and "between 0% and 100%" in bad.err, bad
    unknown = await host.baton("flags", "set", "new-checkout", "maybe")
    assert unknown.rc == 2 and "unknown variant 'maybe'" in unknown.err, unknown

    history = await host.baton("flags", "history", "--json")
    notes = [v["note"] for v in json.loads(history.out)["versions"]]
    assert notes[0] == "new-checkout: on for 30% of contexts"
    assert "new-checkout: killed" in notes and "new-checkout: revived" in notes


async def test_ofrep_bulk_etag_token_and_bad_bodies(host: Flagged) -> None:
    path = "/apps/shop/ofrep/v1/evaluate/flags"
    status, body, headers = await asyncio.to_thread(host.post, path, {"context": {}})
    assert status == 200
    assert {f["key"] for f in body["flags"]} == {"new-checkout", "banner"}
    etag = headers["ETag"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{host.flags_port}{path}",
        data=b'{"context": {}}',
        headers={"Authorization": f"Bearer {TOKEN}", "If-None-Match": etag},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10))
    assert not_modified.value.code == 304

    status, body, _ = await asyncio.to_thread(host.post, path, {"context": {}}, "wrong-token")
    assert status == 401
    status, body, _ = await asyncio.to_thread(host.post, path + "/banner", {"context": [1]})
    assert status == 400 and body["errorCode"] == "INVALID_CONTEXT" and body["key"] == "banner"
    status, body, _ = await asyncio.to_thread(
        host.post, path + "/banner", {"context": {"targetingKey": 7}}
    )
    assert status == 400 and "targetingKey" in body["errorDetails"]


async def test_flags_survive_a_daemon_restart(host: Flagged) -> None:
    killed = await host.baton("flags", "kill", "banner")
    assert killed.rc == 0, killed
    down = await host.baton("down", timeout=90)
    assert down.rc == 0, down
    up = await host.baton("up", "--detach", "--flags", f"127.0.0.1:{host.flags_port}", timeout=60)
    assert up.rc == 0, up
    status, body, _ = await asyncio.to_thread(
        host.post, "/apps/shop/ofrep/v1/evaluate/flags/banner", {"context": {}}
    )
    assert status == 200 and body["reason"] == "DISABLED", body


async def test_a_flag_following_a_canary_is_on_for_its_users_and_off_after_an_abort(
    host: Flagged,
) -> None:
    host.write_flags({"flags": {"new-checkout": {"follow_canary": "on", "default": "off"}}})
    client = host.client()
    on_canary = EvaluationContext("u1", {"baton_version": "v2"})
    on_stable = EvaluationContext("u1", {"baton_version": "v1"})
    await _until(lambda: client.get_boolean_value("new-checkout", True, on_canary) is False)
    host.config(
        {
            "instances": 1,
            "deploy": {"strategy": "canary", "canary": {"steps": [{"weight": 50, "hold": "60s"}]}},
        }
    )
    deploying = asyncio.create_task(host.deploy("--version", "v2", "--env", "APP_VERSION=v2"))
    try:
        await _until(lambda: client.get_boolean_value("new-checkout", False, on_canary), 60)
        details = await asyncio.to_thread(
            client.get_boolean_details, "new-checkout", True, on_stable
        )
        assert (details.value, details.variant) == (False, "off")
        aborted = await host.baton("abort", "--app", "shop")
        assert aborted.rc == 0, aborted
    finally:
        result = await deploying
    assert result.rc == 1, result
    assert (
        await asyncio.to_thread(client.get_boolean_value, "new-checkout", True, on_canary) is False
    )


async def test_a_flag_whose_on_cohort_fails_is_killed_automatically_under_load(
    host: Flagged,
) -> None:
    judged = {
        "flags": {
            "new-checkout": {
                "variants": {"on": True, "off": False},
                "default": "off",
                "rollout": {"on": "50%"},
                "judge": {"window": "10s", "min_requests": 60},
            }
        }
    }
    host.write_flags(judged)
    await _until(lambda: host.post("/apps/shop/ofrep/v1/evaluate/flags", {})[1]["flags"])
    deployed = await host.deploy(
        "--version",
        "v2",
        "--env",
        f"FLAGS_URL={host.base}",
        "--env",
        "FLAG=new-checkout",
        "--env",
        f"FLAGS_TOKEN={TOKEN}",
        "--env",
        "FLAG_ERROR_RATE=0.3",
    )
    assert deployed.rc == 0, deployed
    load = await Load().start(
        host.url, concurrency=4, max_requests=200_000, max_seconds=90, delay=0.002
    )
    killed_at = 0.0
    try:
        deadline = time.monotonic() + 60
        while True:
            listed = json.loads((await host.baton("flags", "list", "--json")).out)["apps"][0]
            if "new-checkout" in listed["kills"]:
                killed_at = time.monotonic()
                break
            assert time.monotonic() < deadline, listed.get("verdicts")
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)
    finally:
        outcome = await load.stop()
    # Before the kill, the "on" cohort failed; from shortly after it, nothing does.
    assert outcome.statuses[500] > 0, "the on cohort should have failed before the kill"
    assert outcome.failures == [], outcome.summary()  # answers, not resets
    late = [s for s in outcome.timeline if s.sent >= killed_at + 1.0]
    assert late and all(s.status == 200 for s in late), outcome.summary()
    history = json.loads((await host.baton("flags", "history", "--json")).out)["versions"]
    assert history[0]["source"] == "judge"
    assert history[0]["note"].startswith("new-checkout: killed (on judged worse than off:")
