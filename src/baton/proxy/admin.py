"""The proxy's admin API: JSON over HTTP on a Unix socket (see docs/proxy-admin-api.md).

It is the only way the control plane changes the proxy. Every body is validated in full
before anything changes; a bad one gets 400 naming the field, and the table stays as it
was. Table changes go through ``Proxy.apply``, which swaps one reference.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from aiohttp import web

from baton import __version__
from baton.errors import RouteTableError
from baton.proxy.routing import check_conflicts, parse_app, parse_table
from baton.proxy.server import TUNNEL_CLOSE_GRACE, Proxy
from baton.state.files import private_umask

MAX_BODY = 4 * 1024 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise RouteTableError("request body: expected JSON, got nothing")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RouteTableError(f"request body: invalid JSON ({exc})") from None


def _address_list(body: Any) -> list[str]:
    if not isinstance(body, dict):
        raise RouteTableError('request body: expected an object like {"targets": [...]}')
    unknown = set(body) - {"targets", "wait", "close_tunnels"}
    if unknown:
        raise RouteTableError(f"request body: unknown field {sorted(unknown)[0]!r}")
    targets = body.get("targets")
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise RouteTableError("targets: expected a list of host:port strings")
    return targets


class AdminAPI:
    def __init__(self, proxy: Proxy, *, worker: bool = False) -> None:
        self.proxy = proxy
        # A worker of a supervisor (``supervisor.py``): tables come with the generation every
        # worker must carry, and active health-check results come from the supervisor.
        self.worker = worker
        self.lock = asyncio.Lock()  # table changes apply one at a time
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/routes", self.get_routes),
                web.put("/routes", self.put_routes),
                web.put("/apps/{app}", self.put_app),
                web.delete("/apps/{app}", self.delete_app),
                web.get("/targets", self.targets),
                web.post("/drain", self.drain),
                web.post("/undrain", self.undrain),
                web.get("/metrics", self.metrics_text),
                web.get("/metrics.json", self.metrics_json),
                web.get("/fuses", self.get_fuses),
                web.get("/tls", self.tls_status),
                web.post("/tls/reload", self.tls_reload),
                web.put("/acme/challenges/{token}", self.put_challenge),
                web.delete("/acme/challenges/{token}", self.delete_challenge),
                web.delete("/tls/wanted/{name}", self.forget_wanted),
            ]
        )
        if worker:
            app.add_routes([web.post("/worker/health", self.worker_health)])
        self.app = app
        self.runner: web.AppRunner | None = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except RouteTableError as exc:
            return _error(400, str(exc))
        except OSError as exc:
            return _error(409, f"cannot apply: {exc.strerror or exc}")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise

    async def start(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.UnixSite(self.runner, path)
        with private_umask():  # born 0600: no window with the process umask's mode
            await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        p = self.proxy
        return web.json_response(
            {
                "status": "stopping" if p.stopping else "ok",
                "pid": os.getpid(),
                "version": __version__,
                "generation": p.table.generation,
                "listeners": sorted(p.servers),
                "connections": len(p.connections),
                "queued": len(p.queues),  # requests waiting for a healthy target
            }
        )

    async def get_routes(self, request: web.Request) -> web.Response:
        return web.json_response(self.proxy.table.to_json())

    async def put_routes(self, request: web.Request) -> web.Response:
        specs = parse_table(await _json_body(request))
        async with self.lock:
            generation = await self.proxy.apply(specs, self._generation(request))
        return web.json_response({"generation": generation})

    async def put_app(self, request: web.Request) -> web.Response:
        name = request.match_info["app"]
        spec = parse_app(name, await _json_body(request))
        async with self.lock:
            specs = dict(self.proxy.table.specs)
            specs[name] = spec
            check_conflicts(specs)
            generation = await self.proxy.apply(specs, self._generation(request))
        return web.json_response({"generation": generation})

    async def delete_app(self, request: web.Request) -> web.Response:
        name = request.match_info["app"]
        async with self.lock:
            specs = dict(self.proxy.table.specs)
            if name not in specs:
                return _error(404, f"no app named {name!r}")
            del specs[name]
            generation = await self.proxy.apply(specs, self._generation(request))
        return web.json_response({"generation": generation})

    def _generation(self, request: web.Request) -> int | None:
        """The generation a supervisor gives every worker's copy of a table."""
        if not self.worker or "generation" not in request.query:
            return None
        return _int_query(request, "generation", 0, 1 << 62)

    async def worker_health(self, request: web.Request) -> web.Response:
        """Active health-check results, run once by the supervisor for every worker:
        ``{"results": [["127.0.0.1:40001", true, rise, fall], ...]}``."""
        body = await _json_body(request)
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or not all(
            isinstance(r, list)
            and len(r) == 4
            and isinstance(r[0], str)
            and isinstance(r[1], bool)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in r[2:])
            for r in results
        ):
            raise RouteTableError("results: expected a list of [address, ok, rise, fall]")
        healed = False
        for address, ok, rise, fall in results:
            target = self.proxy.targets.get(address)
            if target is None:
                continue
            was = target.healthy
            target.record_health(ok, rise, fall)
            healed = healed or (target.healthy and not was)
        if healed:
            self.proxy.wake_queued()  # requests waiting for this app may go now
        return web.json_response({"ok": True})

    async def targets(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"targets": {a: t.to_json() for a, t in sorted(self.proxy.targets.items())}}
        )

    async def drain(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        addresses = _address_list(body)
        wait = body.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 3600:
            raise RouteTableError("wait: expected a number of seconds between 0 and 3600")
        close_tunnels = body.get("close_tunnels", wait > 0)
        if not isinstance(close_tunnels, bool):
            raise RouteTableError("close_tunnels: expected true or false")
        self.proxy.drain(addresses)
        drained, busy = await self._wait_idle(addresses, float(wait))
        closed = 0
        if not drained and close_tunnels:
            # The deadline passed with tunnels open: end them politely (WebSocket 1001)
            # before the control plane stops their targets.
            closed = self.proxy.close_tunnels(set(addresses))
            drained, busy = await self._wait_idle(addresses, TUNNEL_CLOSE_GRACE + 0.5)
        return web.json_response({"drained": drained, "targets": busy, "tunnels_closed": closed})

    async def _wait_idle(
        self, addresses: list[str], wait: float
    ) -> tuple[bool, dict[str, dict[str, int]]]:
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while True:
            busy = self.proxy.busy(addresses)
            drained = all(b["in_flight"] + b["tunnels"] == 0 for b in busy.values())
            if drained or loop.time() >= end:
                return drained, busy
            await asyncio.sleep(0.02)

    async def undrain(self, request: web.Request) -> web.Response:
        self.proxy.drain(_address_list(await _json_body(request)), draining=False)
        return web.json_response({"ok": True})

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.proxy.metrics.to_prometheus(), content_type="text/plain", charset="utf-8"
        )

    async def get_fuses(self, request: web.Request) -> web.Response:
        """Every canary fuse and the trips so far; ``?after=N&wait=S`` waits up to S seconds
        for a trip numbered above N (the control plane watches this way)."""
        after, wait = _int_query(request, "after", 0, 1 << 62), 0.0
        if "wait" in request.query:
            try:
                wait = float(request.query["wait"])
            except ValueError:
                wait = -1.0
            if not 0 <= wait <= 60:
                raise RouteTableError(
                    f"wait: expected a number of seconds between 0 and 60, got"
                    f" {request.query['wait']!r}"
                )
        fuses = self.proxy.fuses
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while fuses.trips <= after and loop.time() < end:
            await asyncio.sleep(0.01)
        return web.json_response({**fuses.to_json(), "new": fuses.since(after)})

    async def metrics_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.proxy.metrics.to_json())

    # -- TLS: certificates (tls.py) and ACME HTTP-01 answers ---------------------------

    async def tls_status(self, request: web.Request) -> web.Response:
        """Each host's certificate, and on-demand names clients asked for (for ACME)."""
        tls = self.proxy.tls
        return web.json_response({"certificates": tls.status(), "wanted": sorted(tls.wanted)})

    async def tls_reload(self, request: web.Request) -> web.Response:
        """Re-read certificate files now instead of at the next poll."""
        changed = self.proxy.reload_certificates()
        return web.json_response({"changed": changed, "certificates": self.proxy.tls.status()})

    async def put_challenge(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        body = await _json_body(request)
        answer = body.get("key_authorization") if isinstance(body, dict) else None
        if not _is_token(token) or not isinstance(answer, str) or not _is_token(answer, "."):
            raise RouteTableError(
                'request body: expected {"key_authorization": "<token>.<thumbprint>"} and a '
                "base64url token in the path"
            )
        self.proxy.acme_challenges[token] = answer
        return web.json_response({"token": token})

    async def delete_challenge(self, request: web.Request) -> web.Response:
        self.proxy.acme_challenges.pop(request.match_info["token"], None)
        return web.json_response({})

    async def forget_wanted(self, request: web.Request) -> web.Response:
        """An on-demand name was issued or refused: stop listing it."""
        self.proxy.tls.wanted.pop(request.match_info["name"], None)
        return web.json_response({})


def _is_token(value: str, extra: str = "") -> bool:
    """base64url characters only (what ACME tokens and key authorizations are made of)."""
    return 0 < len(value) <= 512 and all(c.isalnum() or c in "-_" + extra for c in value)


def _int_query(request: web.Request, name: str, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return minimum
    if not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise RouteTableError(f"{name}: expected an integer of at least {minimum}, got {raw!r}")
    return int(raw)
