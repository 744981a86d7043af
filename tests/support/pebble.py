"""A real ACME server for tests: Debian's ``pebble`` with ``pebble-challtestsrv`` as its DNS.

``Pebble(tmp, http_port)`` starts both on free loopback ports. Challenge validation is ON:
pebble resolves every name to 127.0.0.1 (challtestsrv's ``-defaultIPv4``) and fetches
HTTP-01 answers from ``http_port`` there, i.e. from Baton's plain listener. Pebble serves
its ACME API with a certificate from a test CA (``ca_bundle``); ``root_pem()`` is the root
that signs what it issues (from its management API, regenerated at every start).
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from pathlib import Path

from tests.support.certs import TestCA
from tests.support.procs import ManagedProcess, free_port

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


def available() -> bool:
    return Path(PEBBLE).exists() and Path(CHALLTESTSRV).exists()


class Pebble:
    def __init__(self, tmp: Path, http_port: int, *, validity: int | None = None) -> None:
        self.dir = tmp / "pebble"
        self.dir.mkdir()
        self.ca = TestCA(self.dir, "Pebble API test CA")
        cert, key = self.ca.issue(["localhost"], "pebble-api", ips=("127.0.0.1",))
        self.ca_bundle = str(self.ca.path)
        self.port = free_port()
        self.management_port = free_port()
        dns_port = free_port()
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                **({"certificateValidityPeriod": validity} if validity else {}),
            }
        }
        config_path = self.dir / "pebble-config.json"
        config_path.write_text(json.dumps(config))
        self.dns = ManagedProcess(
            [
                CHALLTESTSRV,
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{free_port()}",
            ],
            name="pebble-challtestsrv",
        )
        self.server = ManagedProcess(
            [PEBBLE, "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns_port}"],
            port=self.port,
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
            name="pebble",
        )
        self.directory = f"https://127.0.0.1:{self.port}/dir"

    def __enter__(self) -> Pebble:
        self.dns.start()
        try:
            self.server.start()
        except BaseException:
            self.dns.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()
        self.dns.close()

    def root_pem(self) -> bytes:
        ctx = ssl.create_default_context(cafile=self.ca_bundle)
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            data: bytes = resp.read()
        return data
