"""The release and target choice, without a network: pins, stickiness, weights, targets."""

from __future__ import annotations

from collections import Counter
from typing import Any

from baton.proxy.choice import Chooser, LiveApp, may_pin
from baton.proxy.http import RequestInfo, scan_request
from baton.proxy.metrics import MetricsRegistry
from baton.proxy.routing import COOKIE_NAME, AppSpec, RouteTable, parse_table
from baton.proxy.upstream import Target

SECRET = "s3cret-s3cret-s3cret"


def live_app(releases: list[dict[str, Any]], **fields: Any) -> tuple[LiveApp, dict[str, Target]]:
    specs = parse_table({"apps": {"web": {"releases": releases, **fields}}})
    targets: dict[str, Target] = {}

    def target(address: str, spec: AppSpec) -> Target:
        return targets.setdefault(address, Target(address))

    table = RouteTable.build(specs, target, MetricsRegistry().get, 1)
    return table.apps["web"], targets


def request(*headers: tuple[bytes, bytes]) -> RequestInfo:
    return scan_request([(b"Host", b"app.test"), *headers], True)


def two_releases(stable: int = 50, canary: int = 50) -> list[dict[str, Any]]:
    return [
        {"name": "stable", "weight": stable, "targets": ["127.0.0.1:9001", "127.0.0.1:9002"]},
        {"name": "canary", "weight": canary, "targets": ["127.0.0.1:9003"]},
    ]


def test_weights_split_requests_and_targets_share_by_round_robin() -> None:
    app, _ = live_app(two_releases(75, 25))
    chooser = Chooser()
    releases: Counter[str] = Counter()
    targets: Counter[str] = Counter()
    for _ in range(4000):
        release, target, cookie = chooser.choose(app, request(), b"10.0.0.1")
        assert release is not None and target is not None and cookie is None
        releases[release.name] += 1
        targets[target.address] += 1
    assert 2700 < releases["stable"] < 3300
    assert abs(targets["127.0.0.1:9001"] - targets["127.0.0.1:9002"]) <= 1


def test_least_in_flight_target_wins_and_unavailable_ones_are_skipped() -> None:
    app, targets = live_app(two_releases(100, 0))
    chooser = Chooser()
    stable = app.by_name["stable"]
    targets["127.0.0.1:9001"].in_flight = 3
    assert [chooser.pick_target(stable) for _ in range(3)] == [targets["127.0.0.1:9002"]] * 3
    targets["127.0.0.1:9002"].healthy = False
    assert chooser.pick_target(stable) is targets["127.0.0.1:9001"]
    targets["127.0.0.1:9001"].draining = True
    assert chooser.pick_target(stable) is None
    targets["127.0.0.1:9001"].draining = False
    assert chooser.pick_target(stable, exclude=[targets["127.0.0.1:9001"]]) is None


def test_a_release_without_healthy_targets_gives_way_to_another() -> None:
    app, targets = live_app(two_releases(1, 99))
    targets["127.0.0.1:9003"].healthy = False
    for _ in range(20):
        release, target, _ = Chooser().choose(app, request(), b"10.0.0.1")
        assert release is not None and release.name == "stable" and target is not None
    targets["127.0.0.1:9001"].healthy = targets["127.0.0.1:9002"].healthy = False
    assert Chooser().choose(app, request(), b"10.0.0.1") == (None, None, None)


def test_pin_needs_the_secret_or_a_pin_from_network() -> None:
    app, _ = live_app(two_releases(100, 0), release_secret=SECRET)
    pinned = request((b"X-Baton-Release", b"canary"), (b"X-Baton-Secret", SECRET.encode()))
    wrong = request((b"X-Baton-Release", b"canary"), (b"X-Baton-Secret", b"guess-guess-guess"))
    assert may_pin(app, pinned, b"10.0.0.1") and not may_pin(app, wrong, b"10.0.0.1")
    release, target, _ = Chooser().choose(app, pinned, b"10.0.0.1")
    assert release is not None and release.name == "canary" and target is not None
    release, _, _ = Chooser().choose(app, wrong, b"10.0.0.1")
    assert release is not None and release.name == "stable"  # weight 0 never drawn

    netted, _ = live_app(two_releases(100, 0), pin_from=["10.1.0.0/16"])
    ask = request((b"X-Baton-Release", b"canary"))
    assert may_pin(netted, ask, b"10.1.2.3") and not may_pin(netted, ask, b"127.0.0.1")
    unknown = request((b"X-Baton-Release", b"nope"))
    assert Chooser().choose(netted, unknown, b"10.1.2.3") == (None, None, None)


def test_cookie_stickiness_sets_then_honours_the_cookie() -> None:
    app, _ = live_app(two_releases(), stickiness="cookie")
    chooser = Chooser()
    release, _, cookie = chooser.choose(app, request(), b"10.0.0.1", rand=lambda: 0.9)
    assert release is not None and release.name == "canary"
    assert cookie is not None and cookie.startswith(COOKIE_NAME + b"=canary;")
    back = request((b"Cookie", b"a=1; " + COOKIE_NAME + b"=canary"))
    for _ in range(20):
        release, _, cookie = chooser.choose(app, back, b"10.0.0.1", rand=lambda: 0.1)
        assert release is not None and release.name == "canary" and cookie is None


def release_name(chooser: Chooser, app: LiveApp, info: RequestInfo, ip: bytes) -> str:
    release = chooser.choose(app, info, ip)[0]
    assert release is not None
    return release.name


def test_client_ip_and_header_stickiness_are_stable_per_key() -> None:
    app, _ = live_app(two_releases(), stickiness="client-ip")
    chooser = Chooser()
    for ip in (b"10.0.0.1", b"10.0.0.2", b"192.168.7.9"):
        names = {release_name(chooser, app, request(), ip) for _ in range(20)}
        assert len(names) == 1
    by_header, _ = live_app(two_releases(), stickiness="header:X-User")
    for user in (b"alice", b"bob", b"carol"):
        info = request((b"X-User", user))
        names = {release_name(chooser, by_header, info, b"1.1.1.1") for _ in range(20)}
        assert len(names) == 1


def test_stable_choice_skips_the_canary_and_fused_releases() -> None:
    app, targets = live_app(two_releases(10, 90))
    choice = Chooser().stable_choice(app, "canary")
    assert choice is not None and choice[0].name == "stable"
    assert Chooser().stable_choice(app, "stable") is not None  # the other release
    targets["127.0.0.1:9001"].healthy = targets["127.0.0.1:9002"].healthy = False
    assert Chooser().stable_choice(app, "canary") is None
