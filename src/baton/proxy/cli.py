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
import socket
import sys
from pathlib import Path

import click

from baton.errors import RouteTableError
from baton.proxy import gcpolicy
from baton.proxy.accesslog import FORMATS as ACCESS_LOG_FORMATS
from baton.proxy.accesslog import AccessLogSpec
from baton.proxy.admin import AdminAPI
from baton.proxy.h2 import H2Session
from baton.proxy.handoff import HandoffServer, Takeover, handoff_path
from baton.proxy.health import HealthChecker
from baton.proxy.persist import load_table, save_table, table_path
from baton.proxy.routing import AppSpec, parse_address, parse_table
from baton.proxy.server import Proxy, ProxySettings
from baton.proxy.supervisor import admin_get, serve_worker, supervise
from baton.proxy.tls import register_h2
from baton.proxy.workers import parse_workers


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
    listen_fds: dict[str, int] | None = None,
) -> None:
    """Run one proxy until SIGTERM/SIGINT, or until a successor took over (``handoff.py``)."""
    register_h2(H2Session)  # HTTPS listeners offer h2 by ALPN (before any of them opens)
    proxy = Proxy(settings)
    if proxy.access_log is not None:
        proxy.access_log.start()
    health = HealthChecker(proxy)
    successor: Takeover | None = None
    if takeover:
        successor = Takeover(admin)
        # Every socket, even more than one per address (the old proxy had more workers):
        # closing one would reset the connections queued on it.
        received = await asyncio.to_thread(successor.receive_all)
        table = await admin_get(admin, "/routes")
        specs = parse_table({"apps": table["apps"]})
        proxy.tls.update(specs)  # HTTPS listeners need their certificates before they accept
        for address, sock in received:
            await proxy.listen_also(address, sock, serve=False)
        await proxy.apply(specs, generation=table["generation"])
    saved = table_path(admin)
    given = parse_table(json.loads(routes.read_text())) if routes is not None else None
    restored = _read_saved(saved) if given is None and successor is None else None
    first = given if given is not None else restored[0] if restored is not None else None
    if first is not None and successor is None:
        # Certificates before any listener: an inherited HTTPS socket must be served as HTTPS.
        try:
            proxy.tls.update(first)
        except RouteTableError as exc:
            if given is not None:
                raise
            logging.getLogger("baton.proxy").warning("%s; starting with an empty table", exc)
            restored = None
    for address, fd in (listen_fds or {}).items():
        # Sockets the control plane holds open for us (``baton.server.listeners``).
        await proxy.listen(address, sock=socket.socket(fileno=fd), serve=False)
    for address in listen:
        await proxy.listen(address, serve=False)
    if given is not None:
        await proxy.apply(given)
    elif restored is not None:
        await _apply_saved(proxy, *restored)
    # Only now: a client accepted earlier would find no route (404) or an old one.
    await proxy.start_serving()
    proxy.on_table_change.append(lambda: _save(saved, proxy))
    if routes is not None or successor is not None:
        _save(saved, proxy)
    # A successor serves beside the old proxy first, then renames its sockets over the old.
    own_admin = admin + ".next" if takeover else admin
    api = AdminAPI(proxy)
    await api.start(own_admin)
    stop = asyncio.Event()
    handoff = HandoffServer(handoff_path(own_admin), proxy.all_listening_fds, stop.set)
    handoff.start()
    proxy.start()
    gcpolicy.settle()  # start-up done: its objects are never walked again
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
    if proxy.access_log is not None:
        await proxy.access_log.close()


def _read_saved(saved: Path) -> tuple[dict[str, AppSpec], int] | None:
    """The table saved by this proxy's predecessor (``persist.py``), if any and readable."""
    try:
        return load_table(saved)
    except RouteTableError as exc:
        logging.getLogger("baton.proxy").warning("%s; starting with an empty table", exc)
        return None


async def _apply_saved(proxy: Proxy, specs: dict[str, AppSpec], generation: int) -> None:
    """Apply a saved table, leaving out apps whose address cannot be bound (logged)."""
    for spec in specs.values():
        if spec.listen not in proxy.servers:
            try:
                await proxy.listen(spec.listen, serve=False)
            except OSError as exc:
                logging.getLogger("baton.proxy").warning(
                    "saved route table: app %s: cannot listen on %s (%s)",
                    spec.name,
                    spec.listen,
                    exc.strerror or exc,
                )
    usable = {name: spec for name, spec in specs.items() if spec.listen in proxy.servers}
    await proxy.apply(usable, generation=generation)


def _save(saved: Path, proxy: Proxy) -> None:
    try:
        save_table(saved, proxy.table.to_json())
    except OSError as exc:
        logging.getLogger("baton.proxy").error(
            "cannot save the route table to %s: %s", saved, exc.strerror or exc
        )


async def _self_check(own_admin: str, generation: int) -> None:
    """Before taking over: our own admin API answers and carries the same table."""
    health = await admin_get(own_admin, "/health")
    if health.get("generation") != generation or health.get("pid") != os.getpid():
        raise OSError(f"self-check failed: {health}")


def _is_listening_socket(fd: int) -> bool:
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        probe.close()


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
    "--listen-fd",
    "listen_fd",
    multiple=True,
    metavar="ADDRESS=FD",
    help="An inherited listening socket to accept clients on for ADDRESS (repeatable); "
    "the control plane holds these open so clients wait while a proxy restarts.",
)
@click.option(
    "--takeover",
    is_flag=True,
    help="Take the listening sockets and route table over from the proxy running at --admin, "
    "then make it retire (a hitless upgrade).",
)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    metavar="N|auto",
    help="Worker processes sharing the listeners (auto: one per core), under one admin API.",
)
@click.option("--worker-of", "worker_of", default=None, hidden=True)
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
    "--max-headers",
    default=100,
    type=click.IntRange(1, 10000),
    show_default=True,
    help="Most header (or trailer) fields in one request; more gets 431.",
)
@click.option(
    "--max-connections",
    default=10000,
    type=click.IntRange(1, 10_000_000),
    show_default=True,
    help="Most open client connections per listener; beyond it new ones get 503 and close.",
)
@click.option(
    "--tunnel-idle-timeout",
    default="1h",
    callback=_seconds,
    show_default=True,
    help="A tunnel (WebSocket) with no bytes either way for this long is closed.",
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
    "--access-log",
    "access_log",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one line per answered request to this file (off by default).",
)
@click.option(
    "--access-log-format",
    type=click.Choice(ACCESS_LOG_FORMATS),
    default="json",
    show_default=True,
    help="json, or the combined log format plus app, release and request id.",
)
@click.option(
    "--access-log-sample",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Fraction of requests logged (e.g. 0.1).",
)
def proxy_command(
    listen: tuple[str, ...],
    listen_fd: tuple[str, ...],
    takeover: bool,
    workers: str,
    worker_of: str | None,
    admin: str,
    routes: Path | None,
    header_timeout: float,
    keepalive_timeout: float,
    max_header_size: int,
    max_headers: int,
    max_connections: int,
    tunnel_idle_timeout: float,
    upstream_idle_timeout: float,
    upstream_max_idle: int,
    drain_deadline: float,
    access_log: Path | None,
    access_log_format: str,
    access_log_sample: float,
) -> None:
    """Run Baton's reverse proxy (the data plane)."""
    try:
        count = parse_workers(workers, "--workers")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--workers") from None
    for address in listen:
        try:
            parse_address(address, "--listen")
        except RouteTableError as exc:
            raise click.BadParameter(str(exc), param_hint="--listen") from None
    listen_pairs: list[tuple[str, int]] = []  # a worker may get several sockets per address
    for item in listen_fd:
        address, _, fd = item.rpartition("=")
        try:
            parse_address(address, "--listen-fd")
        except RouteTableError as exc:
            raise click.BadParameter(str(exc), param_hint="--listen-fd") from None
        if not fd.isdigit() or not _is_listening_socket(int(fd)):
            raise click.BadParameter(
                f"expected ADDRESS=FD with FD an inherited listening socket, got {item!r}",
                param_hint="--listen-fd",
            )
        listen_pairs.append((address, int(fd)))
    listen_fds = dict(listen_pairs)
    settings = ProxySettings(
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
        max_header_size=max_header_size,
        max_headers=max_headers,
        max_connections=max_connections,
        tunnel_idle_timeout=tunnel_idle_timeout,
        upstream_idle_timeout=upstream_idle_timeout,
        upstream_max_idle=upstream_max_idle,
        drain_deadline=drain_deadline,
        access_log=AccessLogSpec(access_log, access_log_format, access_log_sample)
        if access_log is not None
        else None,
    )
    logging.basicConfig(level=logging.WARNING, format="baton proxy: %(message)s")
    _raise_nofile_limit()
    import uvloop

    if worker_of is not None:
        main = serve_worker(admin, worker_of, settings, listen_pairs)
    elif count > 1:
        main = supervise(list(listen), admin, settings, count, routes, takeover, listen_fds)
    else:
        main = serve(list(listen), admin, settings, routes, takeover, listen_fds)
    try:
        uvloop.run(main)
    except OSError as exc:
        click.echo(f"baton proxy: cannot start: {exc}", err=True)
        sys.exit(1)
    except RouteTableError as exc:
        click.echo(f"baton proxy: {routes}: {exc}", err=True)
        sys.exit(2)
