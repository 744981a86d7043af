"""baton.yml: what a user may write, what they get by default, and the errors they see."""

from __future__ import annotations

import datetime
import stat
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from baton.config import (
    AppConfig,
    CertificateFacts,
    CheckItem,
    HostFacts,
    ProgramFacts,
    apply_overrides,
    checklist,
    config_hash,
    defaults_table,
    format_duration,
    gather_host_facts,
    load_config,
    parse_config,
    parse_duration,
    parse_percent,
    rules,
)
from baton.errors import ConfigError

MINIMAL = "app: shop\nrun:\n  command: python3 app.py --port $PORT\n"

FULL = """\
app: shop
proxy:
  listen: 127.0.0.1:8080
  hosts: [shop.example.com]
  path_prefix: /
run:
  command: python3 app.py --port $PORT
  cwd: .
  env: {GREETING: hello}
instances: 2
health:
  path: /up
  interval: 100ms
  timeout: 2s
  success_threshold: 2
deploy:
  strategy: blue-green
  max_surge: 1
  ready_timeout: 60s
  drain_timeout: 30s
  stop_timeout: 10s
  keep_previous: 10m
  verify: 10s
  max_error_rate: 5%
hooks:
  pre_deploy: ./migrate.sh
  smoke_test: curl -fsS $BATON_TARGET_URL/up
  post_deploy: ./notify.sh
"""


DOCKER = """\
app: shop
runtime: docker
run:
  image: shop:1.4.2
  port: 8080
"""


def write(tmp_path: Path, text: str, name: str = "baton.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- durations and percentages


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("2s", 2.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        (" 2S ", 2.0),
        ("30", 30.0),
        (30, 30.0),
        (0.25, 0.25),
        (0, 0.0),
        ("0s", 0.0),
    ],
)
def test_durations_accept_units_and_plain_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["soon", "", "5 minutes", "10x", "-1s", -1, "s", "1s2", True, None, [], "nan", "inf"]
)
def test_durations_reject_garbage_and_negatives(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**6))
def test_a_formatted_duration_parses_back(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "fraction"),
    [("5%", 0.05), ("0%", 0.0), ("100%", 1.0), ("12.5%", 0.125), (0.05, 0.05), (1, 1.0)],
)
def test_percentages_accept_percent_strings_and_fractions(value: object, fraction: float) -> None:
    assert parse_percent(value) == pytest.approx(fraction)


@pytest.mark.parametrize("bad", ["five", "-5%", "101%", 5, 1.5, -0.1, True, None, "%"])
def test_percentages_reject_out_of_range_and_ambiguous(bad: object) -> None:
    with pytest.raises(ValueError, match="percentage"):
        parse_percent(bad)


# ---------------------------------------------------------------- loading good files


def test_the_documented_example_loads_with_every_value_converted(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, FULL))
    cfg = loaded.config
    assert cfg.app == "shop"
    assert cfg.proxy.hosts == ["shop.example.com"]
    assert cfg.run.env == {"GREETING": "hello"}
    assert cfg.health.interval == pytest.approx(0.1)
    assert cfg.deploy.keep_previous == 600.0
    assert cfg.deploy.max_error_rate == pytest.approx(0.05)
    assert cfg.hooks.pre_deploy == "./migrate.sh"
    assert loaded.path == tmp_path / "baton.yml"
    assert loaded.base_dir == tmp_path
    assert loaded.app_dir == tmp_path.resolve()
    assert loaded.raw["deploy"]["drain_timeout"] == "30s"
    assert len(loaded.config_hash) == 64


def test_a_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL)).config
    assert cfg.runtime == "process"
    assert cfg.proxy.listen == "127.0.0.1:8080"
    assert cfg.proxy.hosts == []
    assert cfg.proxy.path_prefix == "/"
    assert cfg.run.cwd == "."
    assert cfg.instances == 1
    assert cfg.health.path is None
    assert (cfg.health.interval, cfg.health.timeout, cfg.health.success_threshold) == (0.1, 2, 2)
    d = cfg.deploy
    assert d.strategy == "blue-green"
    assert (d.max_surge, d.ready_timeout, d.drain_timeout, d.stop_timeout) == (1, 60, 30, 10)
    assert (d.keep_previous, d.verify, d.max_error_rate) == (600, 10, 0.05)
    assert cfg.hooks.pre_deploy is None and cfg.hooks.timeout == 600
    sig = d.signals
    assert (sig.window, sig.max_latency_ratio, sig.max_error_rate_increase) == (300, 1.5, 0.01)
    assert (sig.min_requests, sig.rollback) == (50, False)


def test_the_defaults_table_covers_every_key_and_matches_the_models(tmp_path: Path) -> None:
    rows = {key: default for key, default, _ in defaults_table()}
    assert rows["app"] == "(required)"
    assert rows["health.interval"] == "100ms"
    assert rows["deploy.keep_previous"] == "10m"
    assert rows["deploy.max_error_rate"] == "5%"
    assert rows["health.path"] == "none"
    assert rows["deploy.signals.window"] == "5m"
    assert rows["deploy.signals.rollback"] == "false"
    # every leaf of a fully written file is in the table
    raw = yaml.safe_load(FULL)
    leaves = {
        f"{section}.{key}" if isinstance(value, dict) else section
        for section, value in raw.items()
        for key in (value if isinstance(value, dict) else [None])
    }
    assert leaves <= set(rows)
    assert all(meaning for _, _, meaning in defaults_table())


def test_empty_sections_and_lists_mean_defaults(tmp_path: Path) -> None:
    text = MINIMAL + "hooks:\nhealth:\nproxy:\n  hosts:\n"
    cfg = load_config(write(tmp_path, text)).config
    assert cfg.hooks.smoke_test is None and cfg.proxy.hosts == []


def test_hosts_are_normalised_and_path_prefix_loses_its_trailing_slash(tmp_path: Path) -> None:
    text = MINIMAL + "proxy:\n  hosts: [Shop.Example.COM, '*.example.org']\n  path_prefix: /api/\n"
    cfg = load_config(write(tmp_path, text)).config
    assert cfg.proxy.hosts == ["shop.example.com", "*.example.org"]
    assert cfg.proxy.path_prefix == "/api"


def test_numbers_in_env_become_strings_and_list_commands_are_kept(tmp_path: Path) -> None:
    text = "app: a\nrun:\n  command: [python3, app.py, --port, $PORT]\n  env: {WORKERS: 4}\n"
    cfg = load_config(write(tmp_path, text)).config
    assert cfg.run.env == {"WORKERS": "4"}
    assert cfg.run.command == ["python3", "app.py", "--port", "$PORT"]


def test_app_dir_is_relative_to_the_file_not_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    loaded = load_config(write(tmp_path, MINIMAL.replace("run:\n", "run:\n  cwd: srv\n")))
    assert loaded.app_dir == (tmp_path / "srv").resolve()


def test_a_dumped_config_validates_back_to_the_same_model(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    cfg = load_config(write(tmp_path, FULL.replace("cwd: .", "cwd: srv"))).config
    assert parse_config(cfg.model_dump(mode="json")) == cfg
    assert config_hash(parse_config(cfg.model_dump(mode="json"))) == config_hash(cfg)


def test_the_config_hash_changes_with_meaning_not_with_spelling(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, MINIMAL + "deploy: {drain_timeout: 30s}\n", "a.yml"))
    b = load_config(write(tmp_path, MINIMAL + "deploy:\n  drain_timeout: 30\n", "b.yml"))
    c = load_config(write(tmp_path, MINIMAL + "deploy: {drain_timeout: 31s}\n", "c.yml"))
    assert a.config_hash == b.config_hash != c.config_hash


# ---------------------------------------------------------------- bad files

BAD_CONFIGS: list[tuple[str, str | None, list[str]]] = [
    # (file text, expected key, fragments the message must contain)
    (MINIMAL + "instances: 0\n", "instances", ["expected an integer ≥ 1", "got 0"]),
    (MINIMAL + "instances: two\n", "instances", ["integer", "'two'"]),
    (MINIMAL + "instances: yes\n", "instances", ["integer", "got true"]),
    (MINIMAL + "deploy: {drain_timeout: soon}\n", "deploy.drain_timeout", ["30s or 500ms", "'soon'"]),
    (MINIMAL + "deploy: {stop_timeout: -1s}\n", "deploy.stop_timeout", ["0 or more", "'-1s'"]),
    (MINIMAL + "deploy: {ready_timeout: 0}\n", "deploy.ready_timeout", ["at least"]),
    (MINIMAL + "deploy: {stage_timeout: 0s}\n", "deploy.stage_timeout", ["at least"]),
    (MINIMAL + "deploy: {stage_timeout: forever}\n", "deploy.stage_timeout", ["30s or 500ms", "'forever'"]),
    (MINIMAL + "deploy: {drain_timout: 1s}\n", "deploy.drain_timout", ["unknown key", "drain_timeout", "did you mean"]),
    (MINIMAL + "deploy: {strategy: recreate}\n", "deploy.strategy", ["blue-green, rolling, canary", "'recreate'"]),
    (MINIMAL + "deploy: {max_surge: 0}\n", "deploy.max_surge", ["≥ 1"]),
    (MINIMAL + "deploy: {max_error_rate: 5}\n", "deploy.max_error_rate", ["percentage", "got 5"]),
    (MINIMAL + "deploy: {max_error_rate: 120%}\n", "deploy.max_error_rate", ["between 0% and 100%"]),
    (MINIMAL + "deploy: 3\n", "deploy", ["expected a mapping", "got 3"]),
    (MINIMAL + "deploy: {signals: {window: 0s}}\n", "deploy.signals.window", ["at least"]),
    (MINIMAL + "deploy: {signals: {max_latency_ratio: 0.5}}\n", "deploy.signals.max_latency_ratio", ["between 1 and 100"]),
    (MINIMAL + "deploy: {signals: {max_error_rate_increase: 3}}\n", "deploy.signals.max_error_rate_increase", ["percentage"]),
    (MINIMAL + "deploy: {signals: {rollback: maybe}}\n", "deploy.signals.rollback", ["true or false", "'maybe'"]),
    (MINIMAL + "deploy: {signals: {rollback: 1}}\n", "deploy.signals.rollback", ["true or false"]),
    (MINIMAL + "deploy: {signals: {windw: 1m}}\n", "deploy.signals.windw", ["unknown key", "did you mean"]),
    (MINIMAL + "health: {interval: 0s}\n", "health.interval", ["at least"]),
    (MINIMAL + "health: {path: up}\n", "health.path", ["starting with /", "'up'"]),
    (MINIMAL + "health: {success_threshold: 0}\n", "health.success_threshold", ["≥ 1"]),
    (MINIMAL + "proxy: {listen: 8080}\n", "proxy.listen", ["127.0.0.1:8080", "got 8080"]),
    (MINIMAL + "proxy: {listen: 'localhost:99999'}\n", "proxy.listen", ["host:port"]),
    (MINIMAL + "proxy: {listen: 'http://x:80'}\n", "proxy.listen", ["host:port"]),
    (MINIMAL + "proxy: {listen: '::1:8080'}\n", "proxy.listen", ["host:port", "[::1]:8080"]),
    (MINIMAL + "proxy: {listen: '127.0.0.1:0'}\n", "proxy.listen", ["1 to 65535"]),
    (MINIMAL + "proxy: {http_listen: '[localhost]:80'}\n", "proxy.http_listen", ["only an IPv6"]),
    (MINIMAL + "proxy: {hosts: ['-shop.example.com']}\n", "proxy.hosts[0]", ["'-shop'"]),
    (MINIMAL + "proxy: {hosts: ['shop.example.com:8080']}\n", "proxy.hosts[0]", ["no port"]),
    (MINIMAL + "proxy: {hosts: [a, 'b..c']}\n", "proxy.hosts[1]", ["host name"]),
    (MINIMAL + "proxy: {hosts: shop.example.com}\n", "proxy.hosts", ["expected a list"]),
    (MINIMAL + "proxy: {hosts: [a, A]}\n", "proxy.hosts", ["twice"]),
    (MINIMAL + "proxy: {path_prefix: api}\n", "proxy.path_prefix", ["starting with /"]),
    (MINIMAL + "runtime: kubernetes\n", "runtime", ["process, docker", "'kubernetes'"]),
    (MINIMAL + "  image: shop:1\n", "run.image", ["only for runtime: docker"]),
    (MINIMAL + "  volumes: [./data:/data]\n", "run.volumes", ["only for runtime: docker"]),
    (DOCKER.replace("  image: shop:1.4.2\n", ""), "run.image", ["required key is missing"]),
    (DOCKER.replace("  port: 8080\n", ""), "run.port", ["required key is missing"]),
    (DOCKER.replace("shop:1.4.2", "'shop 1'"), "run.image", ["image reference", "'shop 1'"]),
    (DOCKER.replace("shop:1.4.2", "Shop:1"), "run.image", ["image reference"]),
    (DOCKER.replace("port: 8080", "port: 0"), "run.port", ["1-65535", "got 0"]),
    (DOCKER.replace("port: 8080", "port: '80'"), "run.port", ["TCP port"]),
    (DOCKER + "  volumes: [data]\n", "run.volumes[0]", ["SOURCE:/TARGET", "'data'"]),
    (DOCKER + "  volumes: ['./d:data']\n", "run.volumes[0]", ["SOURCE:/TARGET"]),
    (DOCKER + "  volumes: ['./d:/data:rx']\n", "run.volumes[0]", ["ro|rw"]),
    (DOCKER + "  volumes: ./d:/data\n", "run.volumes", ["expected a list"]),
    (DOCKER + "  memory: lots\n", "run.memory", ["256m", "'lots'"]),
    (DOCKER + "  memory: 1k\n", "run.memory", ["at least 6m"]),
    (DOCKER + "  cpus: 0\n", "run.cpus", ["more than 0", "got 0"]),
    (DOCKER + "  cpus: half\n", "run.cpus", ["number of CPUs"]),
    (DOCKER + "  network: host\n", "run.network", ["user-defined", "'host'"]),
    (DOCKER + "  command: ''\n", "run.command", ["a command"]),
    (MINIMAL + "colour: blue\n", "colour", ["unknown key", "instances"]),
    ("app: Shop!\nrun: {command: x}\n", "app", ["lowercase", "'Shop!'"]),
    ("app: 12\nrun: {command: x}\n", "app", ["app name", "got 12"]),
    ("run: {command: x}\n", "app", ["required key is missing"]),
    ("app: a\n", "run", ["required key is missing"]),
    ("app: a\nrun: {command: ''}\n", "run.command", ["a command"]),
    ("app: a\nrun: {command: [python3, 3]}\n", "run.command", ["list of strings"]),
    ("app: a\nrun: {command: x, env: {DEBUG: yes}}\n", "run.env.DEBUG", ["quote it"]),
    ("app: a\nrun: {command: x, env: {PORT: '1'}}\n", "run.env", ["PORT is set by Baton"]),
    ("app: a\nrun: {command: x, env: {'MY-VAR': '1'}}\n", "run.env", ["'MY-VAR'"]),
    ("app: a\nrun: {command: x, env: [A=1]}\n", "run.env", ["mapping"]),
    ("app: a\nrun: {command: x, cwd: nowhere}\n", "run.cwd", ["existing directory", "'nowhere'"]),
    ("app: a\nrun: {command: x}\nhooks: {pre_deploy: 3}\n", "hooks.pre_deploy", ["shell command"]),
    # file-level problems: no key
    ("", None, ["empty"]),
    ("- app: a\n", None, ["mapping", "top level", "a list"]),
    ("app: a\nrun: [\n", None, ["invalid YAML", "line"]),
    ("app: a\napp: b\nrun: {command: x}\n", None, ["duplicate key 'app'", "line 2"]),
    ("app: a\nrun:\n\tcommand: x\n", None, ["line 3", "'\\t'", "cannot start any token"]),
    ("app: a\nrun: {command: x}\nrun: {command: y}\n", None, ["duplicate key 'run'", "line 3"]),
    (MINIMAL + "deploy: {canary: {pin_from: [10.0.0.300/8]}}\n", "deploy.canary.pin_from", ["CIDR like 10.0.0.0/8", "10.0.0.300/8"]),
    (MINIMAL + "deploy: {canary: {pin_from: 10.0.0.0/8}}\n", "deploy.canary.pin_from", ["a list of CIDRs"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "fragments"), BAD_CONFIGS)
def test_bad_configs_name_the_file_the_key_and_what_was_expected(
    tmp_path: Path, text: str, key: str | None, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    assert err.exit_code == 2
    assert err.key == key
    assert err.file == str(path)
    message = str(err)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message
    assert "pydantic" not in message and "Input should" not in message


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "instances: 0\ndeploy: {drain_timeout: soon}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "instances"
    assert "deploy.drain_timeout" in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


# ---------------------------------------------------------------- the docker runtime


def test_a_docker_app_needs_image_and_port_and_takes_the_container_keys(tmp_path: Path) -> None:
    text = DOCKER + textwrap.indent(
        textwrap.dedent(
            """\
            command: [/app, --port, $PORT]
            env: {GREETING: hello}
            volumes: ['./data:/data', 'cache:/cache:ro']
            memory: 256M
            cpus: 0.5
            network: shop-net
            """
        ),
        "  ",
    )
    cfg = load_config(write(tmp_path, text)).config
    run = cfg.run
    assert cfg.runtime == "docker"
    assert (run.image, run.port, run.command) == ("shop:1.4.2", 8080, ["/app", "--port", "$PORT"])
    assert run.volumes == ["./data:/data", "cache:/cache:ro"]
    assert (run.memory, run.cpus, run.network) == ("256m", 0.5, "shop-net")
    minimal = load_config(write(tmp_path, DOCKER, "min.yml")).config.run
    assert minimal.command is None and minimal.volumes == [] and minimal.memory is None
    # A stored release's config (every key written out) validates back, for both runtimes.
    for c in (cfg, load_config(write(tmp_path, MINIMAL, "p.yml")).config):
        assert parse_config(c.model_dump(mode="json")) == c


def test_the_defaults_table_has_the_docker_keys() -> None:
    rows = {key: default for key, default, _ in defaults_table()}
    assert rows["runtime"] == "process"
    assert rows["run.command"] == "(required for process)"
    assert rows["run.image"] == rows["run.port"] == "(required for docker)"
    assert (rows["run.volumes"], rows["run.memory"], rows["run.cpus"]) == ("[]", "none", "none")
    assert rows["run.network"] == "none"


def test_image_override_is_for_docker_apps_only() -> None:
    docker = AppConfig.model_validate(
        {"app": "a", "runtime": "docker", "run": {"image": "a:1", "port": 80}}
    )
    assert apply_overrides(docker, {}, None, None, "a:2").run.image == "a:2"
    with pytest.raises(ConfigError) as caught:
        apply_overrides(docker, {}, None, None, "not an image")
    assert caught.value.key == "--image"
    process = AppConfig.model_validate({"app": "a", "run": {"command": "x"}})
    with pytest.raises(ConfigError, match="only for apps with runtime: docker") as caught:
        apply_overrides(process, {}, None, None, "a:2")
    assert caught.value.key == "--image"


def test_docker_checklist_readiness_and_stop_timeout(tmp_path: Path) -> None:
    from baton.config import ImageFacts

    loaded = load_config(write(tmp_path, DOCKER))
    plain = ImageFacts("shop:1.4.2", found=True, healthcheck=None)
    checked = ImageFacts("shop:1.4.2", found=True, healthcheck=["CMD", "true"])
    items = {i.key: i for i in checklist(loaded, plain)}
    assert items["health.path"].level == "warn" and "HEALTHCHECK" in items["health.path"].message
    assert items["deploy.stop_timeout"].level == "warn"  # 10s < 30s drain
    assert "run.command" not in items and items["run.image"].level == "ok"
    assert levels(checklist(loaded, checked))["health.path"] == "ok"
    assert levels(checklist(loaded, ImageFacts("shop:1.4.2", found=False)))["run.image"] == "warn"
    unknown = ImageFacts("shop:1.4.2", found=None, error="Docker engine not reachable")
    assert "not reachable" in {i.key: i for i in checklist(loaded, unknown)}["run.image"].message
    careful = load_config(
        write(
            tmp_path,
            DOCKER + "health: {path: /up}\ndeploy: {stop_timeout: 30s, drain_timeout: 30s}\n",
            "careful.yml",
        )
    )
    got = levels(checklist(careful, plain))
    assert got["health.path"] == "ok" and got["deploy.stop_timeout"] == "ok"
    # The process runtime keeps its rule: stop shorter than drain is fine there.
    assert (
        levels(checklist(load_config(write(tmp_path, MINIMAL, "p.yml"))))["deploy.stop_timeout"]
        == "ok"
    )


# ---------------------------------------------------------------- overrides


def test_overrides_merge_env_and_replace_command_and_strategy(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL)).config
    new = apply_overrides(cfg, {"APP_VERSION": "v2"}, "python3 other.py", "rolling")
    assert new.run.env == {"GREETING": "hello", "APP_VERSION": "v2"}
    assert new.run.command == "python3 other.py"
    assert new.deploy.strategy == "rolling"
    assert cfg.run.env == {"GREETING": "hello"}  # the original is untouched
    assert apply_overrides(cfg, {}, None, None) == cfg


@pytest.mark.parametrize(
    ("env", "command", "strategy", "key"),
    [
        ({}, None, "recreate", "--strategy"),
        ({}, "", None, "--command"),
        ({"PORT": "1"}, None, None, "--env"),
        ({"bad-name": "1"}, None, None, "--env"),
    ],
)
def test_bad_overrides_name_the_flag(
    env: dict[str, str], command: str | None, strategy: str | None, key: str
) -> None:
    cfg = AppConfig.model_validate({"app": "a", "run": {"command": "x"}})
    with pytest.raises(ConfigError) as caught:
        apply_overrides(cfg, env, command, strategy)
    assert caught.value.key == key
    assert caught.value.file is None


# ---------------------------------------------------------------- checklist


def levels(items: Sequence[CheckItem]) -> dict[str | None, str]:
    return {item.key: item.level for item in items}


def make_executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_checklist_passes_a_careful_config(tmp_path: Path) -> None:
    make_executable(tmp_path / "migrate.sh")
    make_executable(tmp_path / "notify.sh")
    items = checklist(load_config(write(tmp_path, FULL)))
    assert all(item.ok for item in items), items
    got = levels(items)
    assert got["health.path"] == "ok"
    assert got["hooks.pre_deploy"] == "ok"
    assert got["deploy.verify"] == "ok"


def test_checklist_flags_missing_and_non_executable_hooks(tmp_path: Path) -> None:
    (tmp_path / "migrate.sh").write_text("#!/bin/sh\n")  # not executable
    text = MINIMAL + "hooks:\n  pre_deploy: ./migrate.sh\n  post_deploy: ./nope.sh --now\n"
    items = checklist(load_config(write(tmp_path, text)))
    got = {item.key: item for item in items}
    assert not got["hooks.pre_deploy"].ok and "not an executable" in got["hooks.pre_deploy"].message
    assert not got["hooks.post_deploy"].ok and "does not exist" in got["hooks.post_deploy"].message


def test_checklist_flags_a_hook_program_missing_from_path(tmp_path: Path) -> None:
    text = MINIMAL + "hooks:\n  smoke_test: FOO=1 no-such-program-baton --x\n"
    item = {i.key: i for i in checklist(load_config(write(tmp_path, text)))}["hooks.smoke_test"]
    assert item.level == "error" and "not on PATH" in item.message


def test_checklist_warns_about_risky_settings(tmp_path: Path) -> None:
    text = MINIMAL + textwrap.dedent(
        """\
        deploy:
          strategy: rolling
          drain_timeout: 0
          stop_timeout: 500ms
          verify: 0
        """
    )
    got = levels(checklist(load_config(write(tmp_path, text))))
    assert got["health.path"] == "warn"
    assert got["deploy.drain_timeout"] == "warn"
    assert got["deploy.stop_timeout"] == "warn"
    assert got["deploy.verify"] == "warn"
    assert got["instances"] == "warn"


def test_checklist_warns_about_a_lax_error_rate(tmp_path: Path) -> None:
    text = MINIMAL + "deploy: {max_error_rate: 60%}\n"
    assert levels(checklist(load_config(write(tmp_path, text))))["deploy.max_error_rate"] == "warn"


def test_the_example_app_config_is_valid_and_passes_its_checklist() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "app" / "baton.yml"
    loaded = load_config(example)
    assert loaded.config.app == "example" and loaded.config.instances == 2
    assert all(item.ok for item in checklist(loaded))


# ---------------------------------------------------------------- deploy.canary.retry_on_stable


@pytest.mark.parametrize(
    ("value", "methods"),
    [
        (None, ["GET", "HEAD", "OPTIONS"]),
        ("true", ["GET", "HEAD", "OPTIONS"]),
        ("false", []),
        ("[get, PUT, get]", ["GET", "PUT"]),
        ("[]", []),
    ],
)
def test_retry_on_stable_takes_true_false_or_idempotent_methods(
    tmp_path: Path, value: str | None, methods: list[str]
) -> None:
    text = MINIMAL + (f"deploy:\n  canary:\n    retry_on_stable: {value}\n" if value else "")
    cfg = load_config(write(tmp_path, text)).config
    assert cfg.deploy.canary.retry_on_stable == methods


@pytest.mark.parametrize("value", ["[POST]", "[GET, PATCH]", "yes please", "3"])
def test_retry_on_stable_refuses_what_is_not_safe_to_replay(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, MINIMAL + f"deploy:\n  canary:\n    retry_on_stable: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "deploy.canary.retry_on_stable"
    assert caught.value.file == str(path)
    assert "true, false or a list of idempotent methods" in str(caught.value)


# ---------------------------------------------------------------- immutable releases, secrets


def test_release_keys_have_their_defaults_and_are_in_the_table(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL)).config
    assert cfg.run.exclude == [] and cfg.hooks.build is None
    assert cfg.deploy.keep_releases == 5 and cfg.secrets == []
    rows = {key: default for key, default, _ in defaults_table()}
    assert rows["run.exclude"] == "[]" and rows["hooks.build"] == "none"
    assert rows["deploy.keep_releases"] == "5" and rows["secrets"] == "[]"


def test_release_keys_are_read(tmp_path: Path) -> None:
    text = MINIMAL.replace("run:\n", "run:\n  exclude: ['*.log', node_modules/, tmp/cache]\n")
    text += "hooks: {build: pip install -r requirements.txt}\ndeploy: {keep_releases: 2}\n"
    text += "secrets: [DB_PASSWORD, API_KEY]\n"
    cfg = load_config(write(tmp_path, text)).config
    assert cfg.run.exclude == ["*.log", "node_modules/", "tmp/cache"]
    assert cfg.hooks.build == "pip install -r requirements.txt"
    assert cfg.deploy.keep_releases == 2
    assert cfg.secrets == ["DB_PASSWORD", "API_KEY"]


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ("deploy: {keep_releases: 0}\n", "deploy.keep_releases", "≥ 1"),
        ("secrets: [db-password]\n", "secrets[0]", "environment variable name"),
        ("secrets: [PORT]\n", "secrets[0]", "set by Baton"),
        ("secrets: [A, A]\n", "secrets[1]", "listed twice"),
        ("secrets: DB_PASSWORD\n", "secrets", "expected a list"),
        ("run:\n  command: x\n  env: {A: b}\nsecrets: [A]\n", "secrets[0]", "also in run.env"),
        ("run:\n  command: x\n  exclude: [/etc]\n", "run.exclude[0]", "relative to run.cwd"),
        ("run:\n  command: x\n  exclude: ['../up']\n", "run.exclude[0]", "no '..'"),
        ("run:\n  command: x\n  exclude: ['']\n", "run.exclude[0]", "expected a glob"),
        ("hooks: {build: 3}\n", "hooks.build", "shell command"),
    ],
)
def test_bad_release_keys_name_the_key(tmp_path: Path, extra: str, key: str, fragment: str) -> None:
    base = "app: shop\n" if extra.startswith("run:") else MINIMAL
    path = write(tmp_path, base + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key, caught.value
    assert fragment in str(caught.value) and str(path) in str(caught.value)


def test_build_hook_and_exclude_are_for_process_apps_only(tmp_path: Path) -> None:
    for extra, key in (
        ("hooks: {build: make}\n", "hooks.build"),
        ("  exclude: ['*.log']\n", "run.exclude"),
    ):
        text = DOCKER + extra
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path, text))
        assert caught.value.key == key
        assert "only for runtime: process" in str(caught.value)


# -- proxy.queue_timeout, queue_limit, trusted_proxies, proxy_protocol ----------------------


def test_queue_and_forwarding_keys_default_and_reach_the_route(tmp_path: Path) -> None:
    from baton.deploy.plan import Pool, app_route

    cfg = load_config(write(tmp_path, MINIMAL)).config
    assert (cfg.proxy.queue_timeout, cfg.proxy.queue_limit) == (10.0, 1000)
    assert cfg.proxy.trusted_proxies == [] and cfg.proxy.proxy_protocol is False
    text = MINIMAL + (
        "proxy:\n  queue_timeout: 2500ms\n  queue_limit: 0\n"
        "  trusted_proxies: [10.0.0.0/8, '::1']\n  proxy_protocol: true\n"
    )
    cfg = load_config(write(tmp_path, text)).config
    assert (cfg.proxy.queue_timeout, cfg.proxy.queue_limit) == (2.5, 0)
    assert cfg.proxy.trusted_proxies == ["10.0.0.0/8", "::1/128"]
    route = app_route(cfg.model_dump(), [Pool("v1", 100, ("127.0.0.1:9000",))])
    assert route is not None
    assert route["queue_timeout"] == 2.5 and route["queue_limit"] == 0
    assert route["trusted_proxies"] == ["10.0.0.0/8", "::1/128"]
    assert route["proxy_protocol"] is True


@pytest.mark.parametrize(
    ("extra", "key", "fragments"),
    [
        ("proxy: {queue_timeout: -1s}", "proxy.queue_timeout", ["duration"]),
        ("proxy: {queue_timeout: 2h}", "proxy.queue_timeout", ["at most 1h"]),
        ("proxy: {queue_limit: -1}", "proxy.queue_limit", ["integer ≥ 0", "-1"]),
        ("proxy: {queue_limit: lots}", "proxy.queue_limit", ["integer"]),
        ("proxy: {trusted_proxies: 10.0.0.0/8}", "proxy.trusted_proxies", ["a list of CIDRs"]),
        (
            "proxy: {trusted_proxies: [10.0.0.0/8, 10.0.0.1/8]}",
            "proxy.trusted_proxies",
            ["entry 1", "10.0.0.1/8"],
        ),
        ("proxy: {proxy_protocol: 'yes'}", "proxy.proxy_protocol", ["true or false", "'yes'"]),
    ],
)
def test_bad_queue_and_forwarding_keys_are_named(
    tmp_path: Path, extra: str, key: str, fragments: list[str]
) -> None:
    path = write(tmp_path, MINIMAL + extra + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


# ---------------------------------------------------------------- HTTPS (proxy.tls)

TLS_BASE = "app: shop\nproxy:\n  hosts: [shop.example.com]\n{tls}run:\n  command: x\n"


def tls_config(tls: str) -> str:
    return TLS_BASE.format(tls=textwrap.indent(textwrap.dedent(tls), "  "))


def test_tls_from_files_and_acme_parse_with_defaults(tmp_path: Path) -> None:
    files = load_config(
        write(tmp_path, tls_config("tls:\n  certificate: /etc/c.pem\n  key: /etc/k.pem\n"))
    ).config.proxy
    assert files.tls is not None and files.tls.redirect and files.tls.hsts is None
    assert files.http_listen is None  # the route then uses 0.0.0.0:80
    acme = load_config(
        write(
            tmp_path,
            tls_config(
                "http_listen: 127.0.0.1:8081\ntls:\n  hsts: 1y\n  acme:\n"
                "    email: ops@example.com\n    directory: staging\n    renew_before: 20d\n"
            ),
        )
    ).config.proxy
    assert acme.tls is not None and acme.tls.acme is not None
    assert acme.tls.hsts == 365 * 86400
    assert acme.tls.acme.directory.startswith("https://acme-staging-v02.")
    assert acme.tls.acme.renew_before == 20 * 86400
    assert acme.http_listen == "127.0.0.1:8081"
    rows = {key: default for key, default, _ in defaults_table()}
    assert rows["proxy.tls.acme.directory"] == "production"
    assert rows["proxy.tls.acme.renew_before"] == "30d"


@pytest.mark.parametrize(
    ("tls", "key", "words"),
    [
        ("tls:\n  certificate: /c.pem\n", "proxy.tls.key", "certificate/key"),
        ("tls: {}\n", "proxy.tls", "acme"),
        ("tls:\n  certificate: c.pem\n  key: /k\n", "proxy.tls.certificate", "absolute"),
        (
            "tls:\n  certificate: /c\n  key: /k\n  acme: {email: a@b.co}\n",
            "proxy.tls.acme",
            "not both",
        ),
        ("tls:\n  acme: {email: nobody}\n", "proxy.tls.acme.email", "email address"),
        (
            "tls:\n  acme: {email: a@b.co, directory: http://x}\n",
            "proxy.tls.acme.directory",
            "https://",
        ),
        (
            "tls:\n  certificate: /c\n  key: /k\n  on_demand_ask: http://x\n",
            "proxy.tls.on_demand_ask",
            "acme",
        ),
        ("tls:\n  certificate: /c\n  key: /k\n  hsts: forever\n", "proxy.tls.hsts", "duration"),
        (
            "tls:\n  certificate: /c\n  key: /k\n  redirects: false\n",
            "proxy.tls.redirects",
            "unknown key",
        ),
        ("http_listen: 80\n", "proxy.http_listen", "host:port"),
    ],
)
def test_bad_tls_keys_name_the_key(tmp_path: Path, tls: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, tls_config(tls)))
    assert caught.value.key == key, str(caught.value)
    assert words in str(caught.value)


def test_check_warns_about_tls_names_port_80_and_expiry(tmp_path: Path) -> None:
    from tests.support.certs import TestCA

    ca = TestCA(tmp_path)
    soon_cert, soon_key = ca.issue(["shop.example.com"], "soon", days=10)
    text = tls_config(f"tls:\n  certificate: {soon_cert}\n  key: {soon_key}\n")
    items = {i.key: i for i in checklist(load_config(write(tmp_path, text)))}
    assert items["proxy.tls.certificate"].level == "warn"
    assert "days left" in items["proxy.tls.certificate"].message

    other_cert, other_key = ca.issue(["other.example.com"], "other")
    text = tls_config(f"tls:\n  certificate: {other_cert}\n  key: {other_key}\n")
    items = {i.key: i for i in checklist(load_config(write(tmp_path, text)))}
    assert items["proxy.tls.certificate"].level == "error"
    assert "shop.example.com" in items["proxy.tls.certificate"].message

    text = (
        "app: shop\nproxy:\n  hosts: [localhost, bad_name.example.com]\n"
        "  http_listen: 0.0.0.0:8081\n  tls:\n    acme: {email: a@b.co}\nrun:\n  command: x\n"
    )
    got = levels(checklist(load_config(write(tmp_path, text))))
    assert got["proxy.hosts[0]"] == "warn" and got["proxy.hosts[1]"] == "warn"
    assert got["proxy.http_listen"] == "warn"


def test_pin_from_networks_are_normalised_and_default_to_none(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).config.deploy.canary.pin_from == []
    path = write(tmp_path, MINIMAL + "deploy: {canary: {pin_from: [10.0.0.0/8, '::1']}}\n")
    assert load_config(path).config.deploy.canary.pin_from == ["10.0.0.0/8", "::1/128"]
    typo = write(tmp_path, MINIMAL + "deploy: {canary: {pin_from: [10.1.2.3/8]}}\n")
    with pytest.raises(ConfigError, match="host bits set"):  # a typo more often than not
        load_config(typo)


def test_proxy_protocol_is_refused_on_an_https_listener(tmp_path: Path) -> None:
    text = MINIMAL + (
        "proxy:\n  proxy_protocol: true\n"
        "  tls: {certificate: /etc/ssl/a.pem, key: /etc/ssl/a.key}\n"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "proxy.proxy_protocol"
    assert "not supported on an HTTPS listener" in str(caught.value)


# ---------------------------------------------------------------- checklist rules over host facts

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def facts(**more: Any) -> HostFacts:
    return HostFacts(**{"root": False, "now": NOW, **more})


def rule_levels(text: str, host: HostFacts) -> dict[str | None, str]:
    return levels(rules(parse_config(yaml.safe_load(text)), host))


def test_a_low_port_needs_privileges_only_when_not_root() -> None:
    text = MINIMAL + "proxy: {listen: '0.0.0.0:80'}\n"
    assert rule_levels(text, facts(root=False))["proxy.listen"] == "warn"
    assert "proxy.listen" not in rule_levels(text, facts(root=True))


def test_the_run_command_is_judged_by_what_the_host_said_about_its_program() -> None:
    on_path = {"python3": ProgramFacts(None, found=True)}
    assert rule_levels(MINIMAL, facts(programs=on_path))["run.command"] == "ok"
    missing = {"python3": ProgramFacts(None, found=False)}
    item = {
        i.key: i for i in rules(parse_config(yaml.safe_load(MINIMAL)), facts(programs=missing))
    }["run.command"]
    assert item.level == "error" and "not on PATH" in item.message
    script = MINIMAL.replace("python3 app.py", "./run.sh")
    not_exec = {"./run.sh": ProgramFacts("/srv/shop/run.sh", found=True, executable=False)}
    assert rule_levels(script, facts(programs=not_exec))["run.command"] == "error"
    assert rule_levels(MINIMAL, facts())["run.command"] == "warn"  # never looked up


@pytest.mark.parametrize(
    ("days_left", "level"), [(10, "warn"), (29, "warn"), (31, "ok"), (365, "ok")]
)
def test_a_certificate_is_warned_about_30_days_before_it_expires(
    days_left: int, level: str
) -> None:
    text = "app: shop\nproxy:\n  hosts: [shop.example.com]\n  tls: {certificate: /c.pem, key: /k.pem}\nrun: {command: x}\n"
    cert = CertificateFacts(NOW + datetime.timedelta(days=days_left))
    items = rules(parse_config(yaml.safe_load(text)), facts(certificate=cert))
    assert next(i.level for i in items if "certificate" in i.message) == level


def test_an_unusable_certificate_is_an_error_naming_why() -> None:
    text = "app: shop\nproxy:\n  hosts: [shop.example.com]\n  tls: {certificate: /c.pem, key: /k.pem}\nrun: {command: x}\n"
    cert = CertificateFacts(None, "/c.pem: not valid for shop.example.com")
    got = {i.key: i for i in rules(parse_config(yaml.safe_load(text)), facts(certificate=cert))}
    assert got["proxy.tls.certificate"].level == "error"
    assert "not valid for shop.example.com" in got["proxy.tls.certificate"].message


def test_host_facts_look_up_the_programs_of_the_command_and_hooks(tmp_path: Path) -> None:
    make_executable(tmp_path / "migrate.sh")
    text = (
        MINIMAL + "hooks:\n  pre_deploy: ./migrate.sh\n  smoke_test: exec no-such-program-baton\n"
    )
    gathered = gather_host_facts(load_config(write(tmp_path, text)))
    assert gathered.programs["python3"].found
    assert gathered.programs["./migrate.sh"] == ProgramFacts(
        str(tmp_path / "migrate.sh"), found=True, executable=True
    )
    assert not gathered.programs["no-such-program-baton"].found
    assert gathered.certificate is None and gathered.image is None


# ---------------------------------------------------------------- proxy.workers


@pytest.mark.parametrize(("text", "workers"), [("", 1), ("4", 4), ("auto", "auto")])
def test_proxy_workers_is_a_count_or_auto(tmp_path: Path, text: str, workers: object) -> None:
    extra = f"proxy: {{workers: {text}}}\n" if text else ""
    assert load_config(write(tmp_path, MINIMAL + extra)).config.proxy.workers == workers


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "many", "'2'", "true", "1000"])
def test_bad_proxy_workers_is_named_with_what_was_expected(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, MINIMAL + f"proxy: {{workers: {bad}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "proxy.workers"
    assert "integer from 1 to 256 or auto" in str(caught.value)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------- fleet keys (issue 13)


def test_fleet_keys_load_and_read_back(tmp_path: Path) -> None:
    from baton.cluster.settings import fleet_settings

    text = MINIMAL + "hosts: [web1, web2]\ndeploy:\n  hosts_at_once: 2\n  max_surge: 2\n"
    loaded = load_config(write(tmp_path, text))
    assert loaded.config.deploy.max_surge == 2  # the single-host keys beside them still apply
    settings = fleet_settings(loaded.raw)
    assert settings.hosts is not None and settings.hosts.names == ("web1", "web2")
    assert (settings.hosts_at_once, settings.max_unavailable_hosts) == (2, 2)
    by_role = fleet_settings(yaml.safe_load("hosts: {role: edge}"))
    assert by_role.hosts is not None
    assert by_role.hosts.pick([("b", ["edge"]), ("a", ["edge", "app"]), ("c", ["app"])]) == [
        "a",
        "b",
    ]
    assert fleet_settings(yaml.safe_load(MINIMAL)).hosts is None


def test_an_edge_listen_makes_fleet_deploys_go_through_the_edges(tmp_path: Path) -> None:
    from baton.cluster.settings import fleet_settings

    text = MINIMAL + "hosts: [web1, web2]\nedge:\n  listen: 0.0.0.0:80\n"
    loaded = load_config(write(tmp_path, text))
    settings = fleet_settings(loaded.raw)
    assert (settings.edge_listen, settings.edge_health_path) == ("0.0.0.0:80", "/up")
    raw = yaml.safe_load(text + "health:\n  path: /healthz\n")
    assert fleet_settings(raw).edge_health_path == "/healthz"  # the app's own check
    raw["edge"]["health_path"] = "/ready"
    assert fleet_settings(raw).edge_health_path == "/ready"
    assert fleet_settings(yaml.safe_load(MINIMAL)).edge_listen is None


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("hosts: []\n", "hosts", "at least one host"),
        ("hosts: [web1, web1]\n", "hosts", "named twice"),
        ("hosts: [web1, 'a/b']\n", "hosts[1]", "host name"),
        ("hosts: web1\n", "hosts", "list of host names"),
        ("hosts: {role: db}\n", "hosts.role", "app, edge, controller"),
        ("deploy:\n  hosts_at_once: 0\n", "deploy.hosts_at_once", "at least 1"),
        ("deploy:\n  hosts_at_once: two\n", "deploy.hosts_at_once", "whole number"),
        (
            "deploy:\n  hosts_at_once: 3\n  max_unavailable_hosts: 2\n",
            "deploy.max_unavailable_hosts",
            "at least deploy.hosts_at_once",
        ),
        ("edge:\n  listen: 0.0.0.0:80\n", "edge", "needs hosts"),
        (  # the half-and-half at the edges has half the hosts out of rotation by design
            "hosts: [web1, web2]\nedge:\n  listen: 1.2.3.4:80\n"
            "deploy:\n  max_unavailable_hosts: 1\n",
            "deploy.max_unavailable_hosts",
            "edge.listen and deploy.strategy blue-green",
        ),
        (
            "hosts: [web1, web2]\nedge:\n  listen: 1.2.3.4:80\n"
            "deploy:\n  strategy: canary\n  max_unavailable_hosts: 2\n",
            "deploy.max_unavailable_hosts",
            "or use deploy.strategy: rolling",
        ),
        ("hosts: [web1]\nedge: 0.0.0.0:80\n", "edge", "{listen: HOST:PORT}"),
        ("hosts: [web1]\nedge:\n  listen: nowhere\n", "edge.listen", "HOST:PORT"),
        ("hosts: [web1]\nedge:\n  listen: 1.2.3.4:80\n  tls: 1\n", "edge", "unknown key(s) tls"),
        (
            "hosts: [web1]\nedge:\n  listen: 1.2.3.4:80\n  health_path: up\n",
            "edge.health_path",
            "starting with /",
        ),
    ],
)
def test_bad_fleet_keys_name_the_file_and_key(
    tmp_path: Path, extra: str, key: str, expected: str
) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key and str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_max_unavailable_hosts_behind_edges_is_for_a_rolling_deploy(tmp_path: Path) -> None:
    from baton.cluster.settings import fleet_settings

    text = MINIMAL + (
        "hosts: [web1, web2, web3]\nedge:\n  listen: 1.2.3.4:80\n"
        "deploy:\n  strategy: rolling\n  max_unavailable_hosts: 2\n"
    )
    settings = fleet_settings(load_config(write(tmp_path, text)).raw)
    assert (settings.hosts_at_once, settings.max_unavailable_hosts) == (1, 2)


def test_stage_timeout_defaults_to_ten_minutes_and_is_read(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL)).config.deploy.stage_timeout == 600
    rows = {key: default for key, default, _ in defaults_table()}
    assert rows["deploy.stage_timeout"] == "10m"
    text = MINIMAL + "deploy: {stage_timeout: 90s}\n"
    assert load_config(write(tmp_path, text)).config.deploy.stage_timeout == 90
