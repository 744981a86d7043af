"""``baton deploy --host-config HOST=PATH`` values, checked before anything is asked of the
fleet (pure: no etcd)."""

from __future__ import annotations

import pytest

from baton.cluster.cli import check_host_configs, parse_host_configs
from baton.errors import UsageError


def test_host_configs_map_each_host_to_its_absolute_path() -> None:
    given = ("web2=/srv/app/baton.yml", "web3=/opt/app//baton.yml")
    assert parse_host_configs(given) == {
        "web2": "/srv/app/baton.yml",
        "web3": "/opt/app/baton.yml",
    }
    assert parse_host_configs(()) == {}
    check_host_configs({"web2": "/srv/app/baton.yml"}, ["web1", "web2"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("web2", "expected HOST=PATH"),
        ("=/srv/baton.yml", "expected HOST=PATH"),
        ("web2=", "expected HOST=PATH"),
        ("../x=/srv/baton.yml", "host name"),
        ("web2=srv/baton.yml", "expected an absolute path"),
    ],
)
def test_a_bad_host_config_is_refused_naming_it(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        parse_host_configs((value,))
    assert "--host-config" in str(caught.value)


def test_a_host_given_twice_or_not_the_apps_is_refused() -> None:
    with pytest.raises(UsageError, match="web2 is given twice"):
        parse_host_configs(("web2=/a/baton.yml", "web2=/b/baton.yml"))
    with pytest.raises(UsageError, match=r"web9 is not one of the app's hosts \(web1, web2\)"):
        check_host_configs({"web9": "/srv/baton.yml"}, ["web1", "web2"])
