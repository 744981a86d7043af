"""What `baton deploy` reads of baton.yml itself; anything unusual goes to full validation."""

from __future__ import annotations

from pathlib import Path

from baton.deployread import DeployFacts, facts_of, read_deploy_facts

HERE = Path("/srv/shop")


def test_a_one_host_app_gives_its_secret_names() -> None:
    assert facts_of({"app": "shop", "secrets": ["DB_URL"]}, HERE) == DeployFacts(("DB_URL",), HERE)
    assert facts_of({"app": "shop"}, HERE) == DeployFacts((), HERE)


def test_anything_unusual_is_left_to_full_validation() -> None:
    unusual: list[object] = [
        None,
        ["app"],
        {"secrets": []},  # no app
        {"app": "shop", "hosts": ["web1"]},  # a fleet app
        {"app": "shop", "deploy": {"hosts_at_once": 2}},
        {"app": "shop", "secrets": "DB_URL"},
        {"app": "shop", "secrets": ["not a name"]},
        {"app": "shop", "secrets": None},
    ]
    for raw in unusual:
        assert facts_of(raw, HERE) is None, raw


def test_unreadable_or_bad_yaml_is_left_to_full_validation(tmp_path: Path) -> None:
    assert read_deploy_facts(tmp_path / "missing.yml") is None
    bad = tmp_path / "bad.yml"
    bad.write_text("app: [shop\n")
    assert read_deploy_facts(bad) is None
    good = tmp_path / "baton.yml"
    good.write_text("app: shop\nsecrets: [TOKEN]\n")
    assert read_deploy_facts(good) == DeployFacts(("TOKEN",), tmp_path)
