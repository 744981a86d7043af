"""The web dashboard in a real headless Chromium (Playwright), against a real daemon, proxy
and app processes under load.

One host, one browser page that is never reloaded: the test signs in with the token, watches
a canary's steps appear live, promotes one canary and aborts another from the page's
buttons, and checks the page's request counts and charts against the proxy's own metrics,
read from ``--metrics`` with prometheus_client's parser. Screenshots land in
``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.host import Host, assert_no_failures, start_load
from tests.support.procs import free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "dashboard-test-token-0123456789"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Holds long enough that only a button ends them: the test decides, not the clock.
STEPS = [{"weight": 20, "hold": "2s"}, {"weight": 50, "hold": "10m"}]


class Dashboard:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Dashboard]:
    monkeypatch.setenv("BATON_DASHBOARD_TOKEN", TOKEN)
    h = Host(tmp_path)
    h.config(
        {
            "deploy": {
                "strategy": "canary",
                "canary": {
                    "steps": STEPS,
                    "analysis": {"min_requests": 20},
                    "max_hold_extensions": 3,
                },
            }
        }
    )
    d = Dashboard(h)
    try:
        up = await h.baton(
            "up",
            "--detach",
            "--dashboard",
            f"127.0.0.1:{d.port}",
            "--metrics",
            f"127.0.0.1:{d.metrics_port}",
            timeout=60,
        )
        assert up.rc == 0, up
        first = await h.deploy("--version", "v1")
        assert first.rc == 0, first
        yield d
    finally:
        await h.teardown()


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def proxy_requests(metrics_url: str) -> dict[str, int]:
    """Requests answered per release of shop, from the scrape endpoint (reference parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "baton_requests":
            continue
        for sample in family.samples:
            if sample.name == "baton_requests_total" and sample.labels["app"] == "shop":
                release = sample.labels["release"]
                totals[release] = totals.get(release, 0) + int(sample.value)
    return totals


async def eventually(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout:g}s (last: {last!r})")


async def test_the_dashboard_follows_a_canary_live_and_promotes_and_aborts_it(
    dash: Dashboard,
) -> None:
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    host = dash.host
    # Without the token, or with a wrong one: 401, for the page and for the API.
    assert http_status(f"{dash.url}/") == 401
    assert http_status(f"{dash.url}/api/state", token="wrong-token-wrong-token") == 401
    assert http_status(f"{dash.url}/api/state", token=TOKEN) == 200
    # The buttons' API: a token is not enough without the X-Baton-Action header (a form
    # on another site cannot send it).
    post = urllib.request.Request(
        f"{dash.url}/api/apps/shop/rollback", data=b"{}", method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 403

    load = await start_load(host, seconds=240)
    stopped = False
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            # bypass_csp: Playwright evaluates its own waiting code with eval, which the page
            # forbids (its CSP has no unsafe-eval); the page itself is unchanged.
            page = await browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # The login form: a wrong token is refused with 401, the right one lets us in.
            response = await page.goto(f"{dash.url}/")
            assert response is not None and response.status == 401
            await page.fill("#token", "not-the-token-at-all")
            async with page.expect_response(lambda r: r.url.endswith("/login")) as answer:
                await page.click("button[type=submit]")
            assert (await answer.value).status == 401
            assert "not right" in await page.inner_text("[role=alert]")
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_selector('article.app[data-app="shop"]')
            await page.evaluate("window.__notReloaded = true")
            await page.wait_for_function(
                "document.querySelector('[data-field=connection]').textContent === 'live'"
            )

            # A canary under load: its steps appear on the page as they happen.
            deploy = asyncio.create_task(host.deploy("--version", "v2", "--env", "APP_VERSION=v2"))
            timeline = 'article.deployment[data-deployment="2"] li[data-kind="step"]'
            await page.wait_for_selector(timeline, timeout=60_000)
            seen = [await page.locator(timeline).count()]
            await page.wait_for_selector(
                'article.deployment[data-deployment="2"] li[data-step^="canary"]',
                timeout=60_000,
            )
            await page.wait_for_function(
                "document.querySelector('[data-field=canary]')?.textContent.includes('step 2/2')",
                timeout=60_000,
            )
            seen.append(await page.locator(timeline).count())
            starter = 'article.deployment[data-deployment="2"] [data-field="started-by"]'
            assert await page.inner_text(starter) == getpass.getuser()  # from SO_PEERCRED
            assert seen[-1] > seen[0], seen  # more steps arrived without a reload
            split = page.locator('article.app[data-app="shop"] .split .seg')
            assert await split.count() == 2
            await page.screenshot(path=str(ARTIFACTS / "dashboard-canary-1280.png"), full_page=True)

            # Promote from the page, behind the confirmation.
            await page.click('button[data-action="promote"]')
            await page.wait_for_selector("dialog[open]")
            await page.click('dialog button[data-button="confirm"]')
            result = await asyncio.wait_for(deploy, 120)
            assert result.rc == 0, result
            assert "shop v2 is live" in result.out
            await page.wait_for_selector(
                'article.deployment[data-deployment="2"][data-status="succeeded"]'
            )
            await page.wait_for_function(
                "document.querySelector('[data-field=live]').textContent === 'v2'"
            )

            # Abort the next canary from the page: users stay on v2.
            deploy = asyncio.create_task(host.deploy("--version", "v3", "--env", "APP_VERSION=v3"))
            await page.wait_for_function(
                "document.querySelector('[data-field=canary]')?.textContent.includes('step')"
                " && !document.querySelector('button[data-action=abort]').disabled",
                timeout=60_000,
            )
            await page.click('button[data-action="abort"]')
            await page.wait_for_selector("dialog[open]")
            await page.click('dialog button[data-button="confirm"]')
            result = await asyncio.wait_for(deploy, 120)
            assert result.rc == 1, result
            await page.wait_for_selector(
                'article.deployment[data-deployment="3"]:not([data-status="running"])'
            )
            assert (await host.status())["apps"]["shop"]["live"] == "v2"
            await page.wait_for_function(
                "document.querySelector('[data-field=live]').textContent === 'v2'"
            )

            # The page's figures are the proxy's: its request counts, once the load stopped.
            outcome = await load.stop()
            stopped = True
            assert_no_failures(outcome)
            metrics_url = f"http://127.0.0.1:{dash.metrics_port}/metrics"

            async def counts_agree() -> Any:
                proxy = proxy_requests(metrics_url)
                shown: dict[str, int] = {}
                for row in await page.locator(
                    'article.app[data-app="shop"] tr[data-release]'
                ).all():
                    release = await row.get_attribute("data-release")
                    text = await row.locator('[data-field="requests"]').inner_text()
                    if release and text.isdigit():
                        shown[release] = int(text)
                same = bool(shown) and all(proxy.get(r) == n for r, n in shown.items())
                return (shown, proxy) if same else None

            shown, proxy = await eventually(counts_agree, "the page showing the proxy's counts")
            assert shown["v2"] == proxy["v2"] > 0
            # The chart plots what the table says: the last req/s point is the table's figure.
            chart = page.locator('article.app[data-app="shop"] [data-chart="rate"]')
            assert int(await chart.get_attribute("data-points") or 0) > 5
            rate_cell = page.locator(
                'article.app[data-app="shop"] tr[data-release="v2"] [data-field="rate"]'
            )

            async def chart_matches_table() -> Any:
                last = json.loads(await chart.get_attribute("data-last") or "{}")
                cell = await rate_cell.inner_text()
                if last.get("v2") is None or cell in ("", "\u2013"):
                    return None
                return abs(float(cell) - last["v2"]) <= 0.05 + 1e-9 and (cell, last)

            await eventually(chart_matches_table, "the chart agreeing with the table", 20)
            assert await page.evaluate("window.__notReloaded === true")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-1280.png"), full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.wait_for_timeout(300)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
            assert errors == [], errors
            # Signing out drops the cookie: the page is 401 again.
            await page.set_viewport_size({"width": 1280, "height": 900})
            await page.click("form.signout button")
            await page.wait_for_selector("#token")
            response = await page.goto(f"{dash.url}/")
            assert response is not None and response.status == 401
        finally:
            await browser.close()
            if not stopped:
                await load.stop()
