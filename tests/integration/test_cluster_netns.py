"""The network-namespace harness: hosts on a private subnet, a link that can be cut."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.netns import NetLab
from tests.support.procs import port_open


def wait_open(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port, address, timeout=0.2):
        assert time.monotonic() < deadline, f"{address}:{port} did not open"
        time.sleep(0.05)


def test_hosts_reach_each_other_until_a_link_is_cut(netlab: NetLab, tmp_path: Path) -> None:
    web1, web2 = netlab.add_host("web1"), netlab.add_host("web2")
    (tmp_path / "index.html").write_text("served from web1")
    server = [sys.executable, "-m", "http.server", "--bind", web1.address, "8080"]
    netlab.run("web1", server, cwd=tmp_path)
    wait_open(web1.address, 8080)
    url = f"http://{web1.address}:8080/index.html"
    with urllib.request.urlopen(url, timeout=5) as resp:  # from the root namespace
        assert resp.read() == b"served from web1"
    fetch = [sys.executable, "-c", f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).read().decode())"]  # fmt: skip
    assert netlab.exec("web2", fetch).stdout.strip() == "served from web1"

    netlab.cut("web1")
    assert not port_open(8080, web1.address, timeout=0.5)
    assert netlab.exec("web2", fetch).returncode != 0
    # web1 itself still serves on its own address: a partition stops nobody's processes.
    local = [sys.executable, "-c", f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).status)"]  # fmt: skip
    assert netlab.exec("web1", local).stdout.strip() == "200"

    netlab.restore("web1")
    wait_open(web1.address, 8080)
    assert web2.address != web1.address


def test_delete_removes_every_namespace_and_link() -> None:
    from tests.support.netns import require_netns

    require_netns()
    lab = NetLab()
    lab.add_host("a")
    names = [lab.hub, lab.hosts["a"].namespace]
    lab.delete()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab.root_link not in links
