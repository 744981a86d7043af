"""The fleet's records as ``baton status``/``history`` read them, and how they are shown:
pure, no etcd."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.cluster import keys
from baton.cluster.fleetview import (
    history_lines,
    local_cluster,
    status_lines,
    write_local_cluster,
)


def test_host_instances_and_progress_steps_round_trip() -> None:
    host = keys.HostRecord("web1", "10.213.0.2:8080", ("app",), "0.1", {"shop": "v2"}, {"shop": 2})
    assert keys.HostRecord.from_json(host.to_json()) == host
    progress = keys.Progress("shop", "v2", "d-7", "done", "result", "", 3, ("start", "result"))
    assert keys.Progress.from_json(progress.to_json()) == progress


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"name": "web1", "advertise": "a:1", "instances": {"shop": -1}}', "instances"),
        ('{"name": "web1", "advertise": "a:1", "instances": {"shop": true}}', "instances"),
        ('{"name": "web1", "advertise": "a:1", "instances": [1]}', "instances"),
    ],
)
def test_a_bad_instance_count_is_refused(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keys.HostRecord.from_json(raw)


def test_bad_progress_steps_are_refused() -> None:
    raw = '{"app": "shop", "version": "v2", "deployment": "d", "state": "done", "steps": "x"}'
    with pytest.raises(ValueError, match="steps"):
        keys.Progress.from_json(raw)


def test_a_records_written_older_without_the_new_fields_still_read() -> None:
    assert keys.HostRecord.from_json('{"name": "web1", "advertise": "a:1"}').instances == {}
    raw = '{"app": "shop", "version": "v2", "deployment": "d", "state": "done"}'
    assert keys.Progress.from_json(raw).steps == ()


def test_the_daemon_says_where_its_fleet_is_and_nothing_when_alone(tmp_path: Path) -> None:
    assert local_cluster(tmp_path) is None
    write_local_cluster(tmp_path, ["http://10.213.0.1:2379"], "web1")
    assert local_cluster(tmp_path) == (["http://10.213.0.1:2379"], "web1")
    assert (tmp_path / "cluster.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "cluster.json").write_text("{broken")
    assert local_cluster(tmp_path) is None


def test_status_lines_show_every_host_its_release_and_instances() -> None:
    rows = [
        {
            "name": "web1",
            "reachable": True,
            "advertise": "10.0.0.1:80",
            "roles": ["app"],
            "apps": {
                "shop": {
                    "live": "v2",
                    "instances": 2,
                    "deployment": "d",
                    "state": "done",
                    "step": "result",
                }
            },
        },
        {"name": "web2", "reachable": False, "advertise": "10.0.0.2:80", "roles": [], "apps": {}},
    ]
    text = "\n".join(status_lines(rows))
    assert "web1 reachable" in text and "shop: v2, 2 instance(s), done result" in text
    assert "web2 UNREACHABLE" in text


def test_history_lines_show_each_hosts_steps_and_the_switch_back() -> None:
    text = "\n".join(
        history_lines(
            [
                {
                    "app": "shop",
                    "deployment": "d",
                    "version": "v2",
                    "state": "failed",
                    "message": "web2: never ready",
                    "hosts": [
                        {
                            "host": "web1",
                            "deployment": "d-undo",
                            "state": "done",
                            "steps": ["switch", "result"],
                            "message": "",
                            "local_deployment": 4,
                        },
                        {
                            "host": "web3",
                            "deployment": None,
                            "state": "not started",
                            "steps": [],
                            "message": "",
                            "local_deployment": None,
                        },
                    ],
                }
            ]
        )
    )
    assert "fleet deployment d: shop v2 failed: web2: never ready" in text
    assert "web1 #4 (switched back): done: switch > result" in text
    assert "web3: not started: -" in text
