"""The web dashboard: aiohttp handlers for the page, its live feed and its three buttons.

It owns no state of its own: every view is ``view.build_state`` of the engine (shared by
all open pages through ``StateCache``), pushed over Server-Sent Events once a second and at
once when a deployment emits an event. The page is rendered on the server (``page.py``), so
it shows everything before any script runs; ``static/dashboard.js`` then keeps it current
and draws the charts with the vendored uPlot.

Access: with a token (required off loopback), a request needs ``Authorization: Bearer
<token>`` or the HttpOnly cookie that the login form sets; anything else is 401. The
buttons (promote, abort, rollback) are POSTs that must carry ``X-Baton-Action`` — a header
a cross-site form cannot send, so another web page open in the same browser cannot press
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from baton.dashboard import page
from baton.dashboard.view import StateCache
from baton.errors import BatonError, UsageError
from baton.observe import hub, starter
from baton.observe.endpoints import bearer_ok, token_matches

if TYPE_CHECKING:
    from baton.deploy.engine import Engine

STATIC = Path(__file__).with_name("static")
COOKIE = "baton_dashboard"
TICK = 1.0  # seconds between pushes when nothing happens
ACTIONS = ("promote", "abort", "rollback")
OPEN_PATHS = ("/login", "/static/", "/favicon.ico")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dashboard_app(engine: Engine, token: str | None, *, secure: bool = False) -> web.Application:
    return Dashboard(engine, token, secure).app()


class Dashboard:
    def __init__(self, engine: Engine, token: str | None, secure: bool) -> None:
        self.engine = engine
        self.token = token
        self.secure = secure
        self.cache = StateCache(engine)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth, self._headers])
        app.add_routes(
            [
                web.get("/", self.index),
                web.get("/favicon.ico", self.favicon),
                web.get("/login", self.login_form),
                web.post("/login", self.login),
                web.post("/logout", self.logout),
                web.get("/api/state", self.state),
                web.get("/api/events", self.events),
                web.post("/api/apps/{app}/{action}", self.action),
                web.static("/static", STATIC),
            ]
        )
        return app

    # -- access ---------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PATHS) or bearer_ok(request, self.token, COOKIE):
            return await handler(request)
        if request.path.startswith("/api/"):
            return web.json_response({"error": "a valid token is needed"}, status=401)
        return _html(page.login(error=None), status=401)

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        )
        return response

    async def login_form(self, request: web.Request) -> web.Response:
        return _html(page.login(error=None))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        offered = str(form.get("token", ""))
        if self.token is None:
            raise web.HTTPSeeOther("/")
        if not token_matches(offered, self.token):
            return _html(page.login(error="That token is not right."), status=401)
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            COOKIE, offered, httponly=True, samesite="Strict", secure=self.secure, path="/"
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # -- views ----------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        state = await self.cache.get()
        return _html(page.dashboard(state, signed_in=self.token is not None))

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(await self.cache.get())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``event: state`` with the whole view, every ``TICK`` and after each deploy event."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        woke = hub.pulse()
        fresh = False
        try:
            while True:
                woke.clear()
                data = json.dumps(page.feed(await self.cache.get(fresh=fresh)))
                await response.write(f"event: state\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woke.wait(), TICK)
                fresh = woke.is_set()
                if fresh:
                    await asyncio.sleep(0.05)  # a burst of events lands in one push
        except (ConnectionError, RuntimeError):
            pass  # the page went away
        finally:
            hub.forget_pulse(woke)
        return response

    # -- buttons ---------------------------------------------------------------------------

    async def action(self, request: web.Request) -> web.Response:
        app, action = request.match_info["app"], request.match_info["action"]
        if action not in ACTIONS:
            return web.json_response(
                {"error": f"unknown action {action!r} (expected {', '.join(ACTIONS)})"},
                status=404,
            )
        if request.headers.get("X-Baton-Action") != action:
            return web.json_response(
                {"error": f"X-Baton-Action: {action} header required"}, status=403
            )
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        if not self.engine.has_app(app):
            return web.json_response({"error": f"no app named {app!r}"}, status=404)
        try:
            answer = await self._act(request, app, action, body)
        except BatonError as exc:
            status = 409 if exc.exit_code == 3 else 400 if exc.exit_code == 2 else 500
            return web.json_response({"error": str(exc)}, status=status)
        await self.cache.get(fresh=True)
        return web.json_response({"ok": True, **answer})

    async def _act(
        self, request: web.Request, app: str, action: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        from baton.deploy.canary import request as canary_request

        if action == "rollback":
            version = body.get("version")
            if version is not None and not isinstance(version, str):
                raise UsageError("version: expected a string")
            run = await self.engine.prepare_rollback(app, version)
            starter.record(self.engine, run, f"dashboard client {request.remote}", "dashboard")
            self.engine.start(run)
            return {"deployment": run.id, "message": f"rolling {app} back to {run.version}"}
        run = canary_request(self.engine, app, "promote" if action == "promote" else "abort")
        return {"deployment": run.id, "message": f"asked the canary of {app} to {action}"}


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
