"""`make run`: Baton's quick start, end to end, in a temp dir.

Starts the daemon (`baton up --detach`), deploys the example app as v1, then deploys v2
while a short live load runs against the app's public address, and prints how many
requests each version served and how many failed (the point: zero). Tears everything down
(`baton down`) at the end, even on failure. Only loopback traffic; standard library only,
besides Baton itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "app"
BATON = [sys.executable, "-m", "baton.cli"]
LOAD_WORKERS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def baton(state_dir: Path, *args: str) -> int:
    print(f"\n$ baton {' '.join(args)}", flush=True)
    return subprocess.call([*BATON, "--state-dir", str(state_dir), *args], timeout=300)


def write_config(path: Path, port: int) -> None:
    path.write_text(
        f"""app: quickstart
proxy:
  listen: 127.0.0.1:{port}
run:
  command: exec {sys.executable} app.py --port $PORT
  cwd: {APP_DIR}
  env: {{APP_VERSION: v1, SHUTDOWN_GRACE: "5"}}
instances: 2
health: {{path: /up, interval: 50ms, success_threshold: 2}}
deploy: {{ready_timeout: 30s, drain_timeout: 10s, stop_timeout: 5s, keep_previous: 1m, verify: 2s}}
"""
    )


async def load(port: int, stop: asyncio.Event) -> tuple[Counter[str], Counter[str]]:
    """Keep-alive GET / from several workers until ``stop``; count bodies and failures."""
    served: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def worker() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        for _ in range(1_000_000):  # bounded; stops at `stop` long before
            if stop.is_set():
                break
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                headers = head.decode("latin-1").lower()
                length = int(headers.split("content-length:", 1)[1].split("\r\n", 1)[0])
                body = await asyncio.wait_for(reader.readexactly(length), 10)
                status = int(headers.split(" ", 2)[1])
                served[body.decode().strip() if status == 200 else f"HTTP {status}"] += 1
                if "connection: close" in headers:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                failed[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.002)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(LOAD_WORKERS)))
    return served, failed


async def deploy_v2_under_load(state_dir: Path, config: Path, port: int) -> int:
    stop = asyncio.Event()
    counting = asyncio.create_task(load(port, stop))
    await asyncio.sleep(1.0)
    print("\n$ baton deploy --env APP_VERSION=v2  (under live load)", flush=True)
    proc = await asyncio.create_subprocess_exec(
        *BATON, "--state-dir", str(state_dir), "deploy", "-c", str(config),
        "--version", "v2", "--env", "APP_VERSION=v2",
    )  # fmt: skip
    code = await asyncio.wait_for(proc.wait(), 300)
    await asyncio.sleep(1.0)
    stop.set()
    served, failed = await counting
    print("\nRequests served during the deploy, by version:")
    for version, count in sorted(served.items()):
        print(f"  {version}: {count}")
    print(f"Failed requests: {sum(failed.values())}" + (f" {dict(failed)}" if failed else ""))
    return 1 if code != 0 or failed else 0


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="baton-quickstart-") as tmp:
        root = Path(tmp)
        state_dir = root / "state"
        config = root / "baton.yml"
        port = free_port()
        write_config(config, port)
        print(f"Quick start: the app answers on http://127.0.0.1:{port}/ (state in {state_dir})")
        if baton(state_dir, "up", "--detach") != 0:
            return 1
        try:
            if baton(state_dir, "deploy", "-c", str(config), "--version", "v1") != 0:
                return 1
            code = asyncio.run(deploy_v2_under_load(state_dir, config, port))
            baton(state_dir, "status")
            return code
        finally:
            started = time.monotonic()
            baton(state_dir, "down")
            print(f"(down in {time.monotonic() - started:.1f}s)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
