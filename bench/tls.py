"""TLS benchmark: HTTPS through Baton against nginx, same certificate, measured in one run.

    .venv/bin/python bench/tls.py [--duration 8] [--connections 50] [--handshake-connections 16]
                                  [--threads 2] [--rounds 1] [--json out.json]

One run starts, each on a free 127.0.0.1 port with its own config in a temp dir:

- `backend`: nginx, one worker, `return 200 "ok\\n"`, plain HTTP;
- `nginx`: nginx terminating TLS (one worker, upstream keep-alive pool of 256);
- `baton`: `baton proxy` with one app whose `listen` is HTTPS (`tls.certificate`/`key`).

Both proxies serve the same ECDSA P-256 certificate (made here with `cryptography`) and
negotiate TLS 1.3. Two measures per proxy, targets interleaved, 2 s warm-up each:

- keep-alive: `wrk -c CONNECTIONS` over HTTPS, requests per second;
- new handshakes: `wrk -c HANDSHAKE_CONNECTIONS -H "Connection: close"`: every request is
  a new TCP connection and a full TLS handshake (wrk does not resume sessions), so
  requests per second = handshakes per second.

Then Baton's ratio to nginx for each. HTTP/2 (`h2load` against nginx's `http2`) is
measured by `bench/http2.py`.

Everything runs on the same (possibly small, noisy) machine as wrk itself; read the
ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    WrkResult,
    admin_call,
    baton_process,
    free_port,
    nginx_backend_process,
    nginx_tls_proxy_process,
    raise_nofile_limit,
    require_tools,
    run_wrk,
    terminate_on_sigterm,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

WARMUP_SECONDS = 2
H2_SECTION = "HTTP/2: see bench/http2.py (h2load, Baton against nginx's http2)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=50, help="keep-alive connections")
    parser.add_argument(
        "--handshake-connections", type=int, default=16, help="connections for new handshakes"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the median is reported")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[tls-bench] {message}", file=sys.stderr, flush=True)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench.test")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bench.crt", directory / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def start(stack: ExitStack, workdir: Path, nofile: int) -> dict[str, int]:
    cert, key = make_certificate(workdir)
    backend_port, nginx_port, baton_plain, baton_tls = (free_port() for _ in range(4))
    backend = nginx_backend_process(workdir, backend_port, nofile)
    stack.enter_context(backend)
    nginx = nginx_tls_proxy_process(workdir, nginx_port, backend_port, nofile, cert, key)
    stack.enter_context(nginx)
    baton, admin = baton_process([sys.executable, "-m", "baton.proxy"], workdir, baton_plain)
    baton.ready_timeout = 20.0
    stack.enter_context(baton)
    table = {
        "apps": {
            "bench": {
                "listen": f"{LOOPBACK}:{baton_tls}",
                "releases": [
                    {"name": "v1", "weight": 100, "targets": [f"{LOOPBACK}:{backend_port}"]}
                ],
                "tls": {"certificate": str(cert), "key": str(key)},
            }
        }
    }
    status, answer = admin_call(str(admin), "PUT", "/routes", table)
    if status != 200:
        raise RuntimeError(f"PUT /routes answered {status}: {answer}")
    return {"nginx": nginx_port, "baton": baton_tls}


def measure(ports: dict[str, int], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    kinds = {
        "keep-alive": (args.connections, ()),
        "handshakes": (args.handshake_connections, ("Connection: close",)),
    }
    runs: dict[str, dict[str, list[WrkResult]]] = {k: {n: [] for n in ports} for k in kinds}
    for round_no in range(args.rounds):
        order = list(ports) if round_no % 2 == 0 else list(reversed(ports))
        for kind, (conns, headers) in kinds.items():
            for name in order:
                url = f"https://{LOOPBACK}:{ports[name]}/"
                run_wrk(url, conns, WARMUP_SECONDS, args.threads, headers=headers)
                result = run_wrk(url, conns, args.duration, args.threads, headers=headers)
                log(
                    f"round {round_no + 1} {kind:10} {name:6} {result.rps:10,.0f} req/s"
                    f"  p99 {result.p99 * 1000:.2f} ms  errors {result.errors}"
                )
                runs[kind][name].append(result)
    summary: dict[str, dict[str, Any]] = {}
    for kind, by_name in runs.items():
        summary[kind] = {
            name: {
                "rps": statistics.median(r.rps for r in results),
                "p99_ms": statistics.median(r.p99 for r in results) * 1000,
                "errors": sum(r.errors for r in results),
            }
            for name, results in by_name.items()
        }
        summary[kind]["ratio"] = summary[kind]["baton"]["rps"] / summary[kind]["nginx"]["rps"]
    return summary


def report(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nHTTPS through Baton vs nginx (one worker each), {args.duration:g}s runs")
    print(f"{'measure':12} {'proxy':6} {'req/s':>10} {'p99 ms':>8} {'errors':>7}")
    for kind, rows in summary.items():
        for name in ("nginx", "baton"):
            row = rows[name]
            print(f"{kind:12} {name:6} {row['rps']:10,.0f} {row['p99_ms']:8.2f} {row['errors']:7}")
    print()
    print(f"keep-alive req/s     Baton/nginx: {summary['keep-alive']['ratio']:.2f}x")
    print(f"new handshakes/s     Baton/nginx: {summary['handshakes']['ratio']:.2f}x")
    print(H2_SECTION)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tools("wrk", "nginx")
    terminate_on_sigterm()
    nofile = raise_nofile_limit()
    with tempfile.TemporaryDirectory(prefix="baton-tls-bench-") as tmp, ExitStack() as stack:
        ports = start(stack, Path(tmp), nofile)
        log("targets: " + ", ".join(f"{n} :{p}" for n, p in ports.items()))
        summary = measure(ports, args)
        report(summary, args)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every process this benchmark started has been stopped")
        sys.exit(130)
