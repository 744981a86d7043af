"""``baton proxy``: run the data plane in this process (uvloop), until SIGTERM/SIGINT.

Signal handlers only set an event; the main coroutine then stops accepting, lets in-flight
requests finish (up to ``--drain-deadline``) and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import click

from baton.errors import RouteTableError
from baton.proxy.admin import AdminAPI
from baton.proxy.handoff import HandoffServer, Takeover, handoff_path
from baton.proxy.health import HealthChecker
from baton.proxy.routing import parse_address, parse_table
from baton.proxy.server import Proxy, ProxySettings


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(
    listen: list[str],
    admin: str,
    settings: ProxySettings,
    routes: Path | None = None,
    takeover: bool = False,
    tls: tuple[str, str] | None = None,
) -> None:
    """Run one proxy until SIGTERM/SIGINT, or until a successor took over (``handoff.py``)."""
    proxy = Proxy(settings)
    if tls is not None:
        from baton.proxy.alpn import server_context

        proxy.tls = server_context(*tls)
    health = HealthChecker(proxy)
    successor: Takeover | None = None
    if takeover:
        successor = Takeover(admin)
        for address, sock in (await asyncio.to_thread(successor.receive)).items():
            await proxy.listen(address, sock=sock, serve=False)
        table = await _admin_get(admin, "/routes")
        await proxy.apply(parse_table({"apps": table["apps"]}), generation=table["generation"])
        await proxy.start_serving()  # only now: a client accepted earlier would find no route
    for address in listen:
        await proxy.listen(address)
    if routes is not None:
        await proxy.apply(parse_table(json.loads(routes.read_text())))
    # A successor serves beside the old proxy first, then renames its sockets over the old.
    own_admin = admin + ".next" if takeover else admin
    api = AdminAPI(proxy)
    await api.start(own_admin)
    stop = asyncio.Event()
    handoff = HandoffServer(handoff_path(own_admin), proxy.listening_fds, stop.set)
    handoff.start()
    proxy.start()
    if successor is not None:
        await _self_check(own_admin, proxy.table.generation)
        os.replace(own_admin, admin)
        os.replace(handoff_path(own_admin), handoff_path(admin))
        successor.finish()
        print(f"baton proxy: took over from pid {successor.old_pid}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"baton proxy: listening on {', '.join(sorted(proxy.servers)) or '-'}, admin {admin}",
        flush=True,
    )
    await stop.wait()
    handoff.stop()
    health.stop()
    await proxy.shutdown(settings.drain_deadline)
    await api.stop()


async def _admin_get(path: str, url: str, timeout: float = 10.0) -> dict[str, Any]:
    """GET a JSON document from an admin API over its Unix socket."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(f"GET {url} HTTP/1.0\r\nHost: baton\r\n\r\n".encode())
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if head.split(b" ", 2)[1:2] != [b"200"]:
        raise OSError(f"admin API at {path} answered {head.splitlines()[:1]!r}")
    result: dict[str, Any] = json.loads(body)
    return result


async def _self_check(own_admin: str, generation: int) -> None:
    """Before taking over: our own admin API answers and carries the same table."""
    health = await _admin_get(own_admin, "/health")
    if health.get("generation") != generation or health.get("pid") != os.getpid():
        raise OSError(f"self-check failed: {health}")


def _seconds(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from baton.config import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("proxy")
@click.option(
    "--listen",
    "listen",
    multiple=True,
    help="Address to accept clients on (repeatable). Apps' listen addresses in the route "
    "table are opened too, so none is needed when a table will be loaded.",
)
@click.option(
    "--takeover",
    is_flag=True,
    help="Take the listening sockets and route table over from the proxy running at --admin, "
    "then make it retire (a hitless upgrade).",
)
@click.option(
    "--admin", required=True, type=click.Path(dir_okay=False), help="Admin Unix socket path."
)
@click.option(
    "--routes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Route table JSON to load at start.",
)
@click.option(
    "--header-timeout",
    default="10s",
    callback=_seconds,
    show_default=True,
    help="A client slower than this to send request headers gets 408.",
)
@click.option(
    "--keepalive-timeout",
    default="75s",
    callback=_seconds,
    show_default=True,
    help="Idle keep-alive client connections are closed after this.",
)
@click.option(
    "--max-header-size",
    default=65536,
    type=click.IntRange(1024, 1 << 24),
    show_default=True,
    help="Largest request header block in bytes; larger gets 431.",
)
@click.option(
    "--upstream-idle-timeout",
    default="2s",
    callback=_seconds,
    show_default=True,
    help="Pooled upstream connections idle this long are closed (shorter than apps' own).",
)
@click.option(
    "--upstream-max-idle",
    default=256,
    type=click.IntRange(0, 100000),
    show_default=True,
    help="Idle keep-alive connections kept per target.",
)
@click.option(
    "--drain-deadline",
    default="30s",
    callback=_seconds,
    show_default=True,
    help="On SIGTERM: longest wait for in-flight requests before exiting.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="Serve every listener over TLS with this certificate chain (PEM), HTTP/2 and "
    "HTTP/1.1 by ALPN. Needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    help="The private key (PEM) for --tls-cert.",
)
def proxy_command(
    listen: tuple[str, ...],
    takeover: bool,
    admin: str,
    routes: Path | None,
    header_timeout: float,
    keepalive_timeout: float,
    max_header_size: int,
    upstream_idle_timeout: float,
    upstream_max_idle: int,
    drain_deadline: float,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run Baton's reverse proxy (the data plane)."""
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    for address in listen:
        try:
            parse_address(address, "--listen")
        except RouteTableError as exc:
            raise click.BadParameter(str(exc), param_hint="--listen") from None
    settings = ProxySettings(
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
        max_header_size=max_header_size,
        upstream_idle_timeout=upstream_idle_timeout,
        upstream_max_idle=upstream_max_idle,
        drain_deadline=drain_deadline,
    )
    logging.basicConfig(level=logging.WARNING, format="baton proxy: %(message)s")
    _raise_nofile_limit()
    import uvloop

    try:
        tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
        uvloop.run(serve(list(listen), admin, settings, routes, takeover, tls))
    except (OSError, ssl.SSLError) as exc:
        click.echo(f"baton proxy: cannot start: {exc}", err=True)
        sys.exit(1)
    except RouteTableError as exc:
        click.echo(f"baton proxy: {routes}: {exc}", err=True)
        sys.exit(2)
