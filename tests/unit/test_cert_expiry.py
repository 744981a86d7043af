"""The certificate-expiry metric reads the files the proxy serves: seconds left per host."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from baton.server.certs import cert_paths, expiry_samples
from tests.support.certs import TestCA


def test_expiry_seconds_per_host_from_files_and_acme(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert, key = ca.issue(["shop.test"], "shop", days=10)
    acme_dir = tmp_path / "acme"
    acme_cert, _ = cert_paths(acme_dir, "blog.test")
    acme_cert.parent.mkdir(parents=True)
    acme_cert.write_bytes(ca.issue_pem(["blog.test"], days=40)[0])
    now = datetime.datetime.now(datetime.UTC)
    apps: list[tuple[list[str], dict[str, Any]]] = [
        (["shop.test"], {"certificate": str(cert), "key": str(key)}),
        (["blog.test", "missing.test"], {"acme": {"email": "ops@example.com"}}),
    ]
    samples = {
        labels["host"]: (labels["source"], v) for labels, v in expiry_samples(apps, acme_dir, now)
    }
    assert set(samples) == {"shop.test", "blog.test"}  # no file yet: no sample
    assert samples["shop.test"][0] == "file" and samples["blog.test"][0] == "acme"
    assert 9 * 86400 < samples["shop.test"][1] <= 10 * 86400
    assert 39 * 86400 < samples["blog.test"][1] <= 40 * 86400
