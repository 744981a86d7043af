"""What every benchmark needs: peers to compare against, wrk, memory, Baton's admin API.

Benchmarks are run by hand (`python bench/<name>.py`), never by `make test`. Every process
they start is a child on a free 127.0.0.1 port with its config in a temp dir, started through
`tests.support.procs.ManagedProcess` (the test suite's process handling, one copy of it) and
stopped when the `ExitStack` that started it closes. Timing is only ever reported next to a
peer measured in the same run.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.h1 import parse_status, send_raw  # noqa: E402
from tests.support.load import read_response  # noqa: E402
from tests.support.procs import LOOPBACK, ManagedProcess, ProcessError, free_port  # noqa: E402
from tests.support.proxy import admin_call  # noqa: E402

__all__ = [
    "LOOPBACK",
    "REPO",
    "ManagedProcess",
    "ProcessError",
    "WrkResult",
    "admin_call",
    "baton_process",
    "baton_single_app_table",
    "check_ok",
    "free_port",
    "haproxy_process",
    "nginx_backend_process",
    "nginx_h2_proxy_process",
    "nginx_proxy_process",
    "parse_wrk",
    "process_tree",
    "raise_nofile_limit",
    "read_response",
    "require_tools",
    "rss_bytes",
    "run_wrk",
    "terminate_on_sigterm",
    "wrk_command",
]


# -- the environment ---------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise SystemExit(
            f"missing tools: {', '.join(missing)} (Debian: apt-get install {' '.join(missing)})"
        )


def terminate_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so `with`/`finally` blocks stop the children."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# -- peers -------------------------------------------------------------------------------

_NGINX_MAIN = """\
{user}
worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
{body}
}}
"""


def _nginx_process(
    name: str, workdir: Path, port: int, http_body: str, nofile: int, workers: int = 1
) -> ManagedProcess:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(
        _NGINX_MAIN.format(
            # As root, nginx would switch its worker to a user that may not exist here.
            user="user root;" if os.geteuid() == 0 else "",
            nofile=nofile,
            connections=max(1024, nofile - 64),
            dir=d,
            body=http_body,
            workers=workers,
        )
    )
    cmd = [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
    return ManagedProcess(cmd, port=port, name=name, log_dir=d)


def nginx_backend_process(workdir: Path, port: int, nofile: int) -> ManagedProcess:
    """nginx, one worker, answering every request with 200 "ok\\n" (keep-alive)."""
    body = f"""\
    server {{
        listen {LOOPBACK}:{port} reuseport backlog=4096;
        location / {{ default_type text/plain; return 200 "ok\\n"; }}
    }}"""
    return _nginx_process("backend", workdir, port, body, nofile)


def nginx_proxy_process(
    workdir: Path, port: int, upstream_port: int, nofile: int, workers: int = 1
) -> ManagedProcess:
    """nginx as a reverse proxy: ``workers`` workers (sharing one listening socket, as
    Baton's do), each with an upstream keep-alive pool of 256."""
    body = f"""\
    upstream app {{ server {LOOPBACK}:{upstream_port}; keepalive 256; }}
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    name = "nginx" if workers == 1 else f"nginx{workers}w"
    return _nginx_process(name, workdir, port, body, nofile, workers)


def nginx_tls_proxy_process(
    workdir: Path,
    port: int,
    upstream_port: int,
    nofile: int,
    cert: Path,
    key: Path,
    *,
    http2: bool = False,
) -> ManagedProcess:
    """nginx terminating TLS in front of the backend (HTTP/1.1, or HTTP/2 to clients with
    ``http2``): one worker, the same keep-alive upstream pool."""
    listen = "ssl http2" if http2 else "ssl"
    extra = "http2_max_concurrent_streams 100;" if http2 else "ssl_protocols TLSv1.2 TLSv1.3;"
    body = f"""\
    upstream app {{ server {LOOPBACK}:{upstream_port}; keepalive 256; }}
    server {{
        listen {LOOPBACK}:{port} {listen} backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {extra}
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    return _nginx_process("nginx-h2" if http2 else "nginx-tls", workdir, port, body, nofile)


def nginx_h2_proxy_process(
    workdir: Path, port: int, upstream_port: int, nofile: int, cert: Path, key: Path
) -> ManagedProcess:
    """nginx as an HTTPS reverse proxy speaking HTTP/2 to clients."""
    return nginx_tls_proxy_process(workdir, port, upstream_port, nofile, cert, key, http2=True)


def haproxy_process(workdir: Path, port: int, upstream_port: int, nofile: int) -> ManagedProcess:
    """HAProxy, one thread, HTTP mode with keep-alive on both sides."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    d = workdir / "haproxy"
    d.mkdir(parents=True, exist_ok=True)
    # Each proxied connection costs HAProxy two fds; stay inside our limit.
    maxconn = max(256, min(20_000, (nofile - 256) // 2))
    conf = d / "haproxy.cfg"
    conf.write_text(
        f"""\
global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    option http-keep-alive
    maxconn {maxconn}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s

frontend fe
    bind {LOOPBACK}:{port}
    default_backend app

backend app
    server app1 {LOOPBACK}:{upstream_port}
"""
    )
    return ManagedProcess([haproxy, "-db", "-f", str(conf)], port=port, name="haproxy", log_dir=d)


def baton_process(
    cmd: Sequence[str] | str, workdir: Path, port: int, name: str = "baton"
) -> tuple[ManagedProcess, Path]:
    """`baton proxy` (or `cmd`) on `port` with its admin socket in `workdir`.

    `cmd` may contain `{listen}` and `{admin}`; otherwise `--listen ... --admin ...` is
    appended.
    """
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    admin = d / "admin.sock"
    listen = f"{LOOPBACK}:{port}"
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    if any("{listen}" in a or "{admin}" in a for a in argv):
        argv = [a.format(listen=listen, admin=admin) for a in argv]
    else:
        argv += ["--listen", listen, "--admin", str(admin)]
    proc = ManagedProcess(argv, port=port, unix_socket=admin, name=name, log_dir=d, cwd=REPO)
    return proc, admin


def baton_single_app_table(port: int, targets: Sequence[str]) -> dict[str, Any]:
    """A route table sending every request on `port` to `targets` (one release, v1)."""
    return {
        "apps": {
            "bench": {
                "listen": f"{LOOPBACK}:{port}",
                "hosts": [],
                "path_prefix": "/",
                "releases": [{"name": "v1", "weight": 100, "targets": list(targets)}],
            }
        }
    }


# -- talking to things -------------------------------------------------------------------


def check_ok(port: int, expect_body: bytes = b"ok\n", host: str = "bench") -> None:
    """One GET through `port`; raises if it is not 200 with `expect_body`."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    response = send_raw(LOOPBACK, port, request, timeout=10)
    status = parse_status(response)
    body = response.partition(b"\r\n\r\n")[2]
    if status != 200 or not body.endswith(expect_body):
        raise RuntimeError(f"GET / on port {port}: status {status}, response {response[:300]!r}")


# -- wrk ---------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency: dict[str, float]  # percentile ("50", "99", ...) -> seconds
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def p99(self) -> float:
        return self.latency["99"]

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"errors": self.errors}


def parse_wrk(output: str) -> WrkResult:
    """Parse `wrk --latency` output."""
    total = re.search(r"(\d+) requests in ([\d.]+\w+),", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not total or not rps:
        raise ValueError(f"unexpected wrk output:\n{output}")
    latency = {
        m.group(1): _seconds(m.group(2))
        for m in re.finditer(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+\w+)\s*$", output, re.MULTILINE)
    }
    if "99" not in latency:
        raise ValueError(f"wrk output has no latency distribution (--latency):\n{output}")
    errors: dict[str, int] = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_seconds(total.group(2)),
        rps=float(rps.group(1)),
        latency=latency,
        socket_errors=errors,
        non_2xx_3xx=int(non.group(1)) if non else 0,
    )


def wrk_command(
    url: str,
    connections: int,
    seconds: float,
    threads: int = 2,
    timeout: str = "5s",
    headers: Sequence[str] = (),
) -> list[str]:
    """`wrk --latency` against a loopback `url` for a fixed `seconds` (keep-alive)."""
    if not url.startswith((f"http://{LOOPBACK}:", f"https://{LOOPBACK}:")):
        raise ValueError(f"benchmarks only send traffic to {LOOPBACK}: {url}")
    threads = max(1, min(threads, connections))
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout}",
        "--latency",
        *(arg for h in headers for arg in ("-H", h)),
        url,
    ]


def run_wrk(
    url: str,
    connections: int,
    seconds: float,
    threads: int = 2,
    timeout: str = "5s",
    headers: Sequence[str] = (),
    cpus: set[int] | None = None,
) -> WrkResult:
    """Run wrk against a loopback `url`; bounded by `seconds` (and killed if it overstays).
    ``cpus``: the CPUs wrk may run on (``taskset``), else any."""
    cmd = wrk_command(url, connections, seconds, threads, timeout, headers)
    if cpus is not None:
        cmd = ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return parse_wrk(done.stdout)


# -- memory ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [
                    int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                ]
    return found


def pin(pid: int, cpus: set[int]) -> None:
    """Keep process ``pid`` and every process and thread under it on ``cpus``."""
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task), cpus)


def process_tree(pid: int) -> Iterator[int]:
    seen: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        yield p
        todo += _children(p)


def rss_bytes(pid: int, include_children: bool = True) -> int:
    """Resident memory (VmRSS) of `pid`, plus its descendants' unless told otherwise."""
    total = 0
    for p in process_tree(pid) if include_children else [pid]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total
