"""The control plane's JSON HTTP API, served on a Unix socket in the state dir.

It owns no state: each handler validates its input, asks the engine, and answers JSON.
Every error is ``{"error": "...", "exit_code": N}`` with the exit code the CLI should use
(400 for bad input or config: 2; 409 when the app is locked: 3; 500 otherwise: 1).
Deployments stream their progress as newline-delimited JSON events; the last one has
``"event": "result"``. A client that goes away does not stop the deployment.

| method + path        | body / query                                    | answer              |
|----------------------|-------------------------------------------------|---------------------|
| GET  /health         |                                                 | pid, proxy          |
| GET  /status         |                                                 | apps, releases      |
| POST /deploy         | config, version?, env?, command?, strategy?,    | event stream        |
|                      | image?, canary_weight? (a driven canary)        |                     |
| POST /rollback       | app? or config?, version?                       | event stream        |
| GET  /deployments/ID/events |                                          | event stream        |
| POST /promote        | app? or config? (a running canary: promote now) | event stream        |
| POST /abort          | app? or config? (a running canary: abort now)   | event stream        |
| POST /canary/weight  | app? or config?, weight (a driven canary)       | app, weight         |
| GET  /history        | ?app=&limit=                                    | deployments         |
| GET  /logs           | ?app=&version=&lines=&follow=1                  | line stream         |
| GET  /migrate/status | ?app=                                           | each app's schema   |
| POST /migrate/contract | app? or config?                               | event stream        |
| POST /shutdown       |                                                 | ok, then stops      |
| GET  /env            | ?app=                                           | the app's plain env |
| POST /env            | app, unset [NAME] (stop carrying those --env)   | the app's plain env |
| GET  /secrets        | ?app=                                           | secret names only   |
| POST /secrets        | app, set? {NAME: value}, unset? [NAME]          | secret names only   |

``/deploy`` also takes ``secrets`` ({NAME: value}, only names listed in baton.yml); secret
values are never in an answer, only their names.
| GET  /watch          | ?app= (default: the only app, or the only one  | event stream        |
|                      | deploying): the running deployment, else the    |                     |
|                      | last one's outcome                              |                     |
| POST /apps/NAME/stop |  drain, stop, mark stopped (stays down on `up`) | app, stopped        |
| POST /apps/NAME/start|  start the live release again                   | app, version        |
| POST /apps/NAME/remove| drain, stop, forget it and its releases        | app, stopped        |
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from aiohttp import web

from baton.config import load_config
from baton.deploy.canary import Request, annotate_status, canary_events, check_weight, drive
from baton.deploy.canary import request as canary_request
from baton.deploy.engine import DeploymentRun, Engine
from baton.errors import BatonError, UsageError
from baton.events import Intro
from baton.observe import starter
from baton.observe.signals import stored as stored_signals
from baton.observe.views import annotate_live
from baton.runtime.base import Instance, Runtime
from baton.secrets import redact

STATUS_FOR_EXIT = {2: 400, 3: 409}


def _error(message: str, exit_code: int) -> web.Response:
    return web.json_response(
        {"error": message, "exit_code": exit_code},
        status=STATUS_FOR_EXIT.get(exit_code, 500),
    )


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise UsageError(f"{key}: required")
        return None
    if not isinstance(value, str):
        raise UsageError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise UsageError(f"{key}: expected true or false")
    return value


def _env(body: dict[str, Any]) -> dict[str, str]:
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise UsageError("env: expected an object of string values")
    return env


class Api:
    """Handlers bound to one engine. ``shutdown`` is called after /shutdown answered."""

    def __init__(
        self,
        engine: Engine,
        *,
        proxy_info: Callable[[], dict[str, Any]],
        shutdown: Callable[[], None],
        upgrade_proxy: Callable[[list[str] | None, float], Awaitable[dict[str, Any]]] | None = None,
        certificates: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
    ) -> None:
        self.engine = engine
        self._certificates = certificates
        self._proxy_info = proxy_info
        self._shutdown = shutdown
        self._upgrade_proxy = upgrade_proxy

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/status", self.status),
                web.post("/deploy", self.deploy),
                web.post("/rollback", self.rollback),
                web.get("/deployments/{id}/events", self.events),
                web.post("/promote", self.promote),
                web.post("/abort", self.abort),
                web.post("/canary/weight", self.canary_weight),
                web.post("/staged/{verb}", self.staged),
                web.get("/history", self.history),
                web.get("/logs", self.logs),
                web.post("/shutdown", self.shutdown),
                web.post("/proxy/upgrade", self.upgrade_proxy),
                web.get("/migrate/status", self.migrate_status),
                web.post("/migrate/contract", self.migrate_contract),
                web.get("/env", self.env),
                web.post("/env", self.unset_env),
                web.get("/secrets", self.secrets),
                web.post("/secrets", self.set_secrets),
                web.get("/watch", self.watch),
                web.post("/apps/{name}/{verb}", self.app_verb),
            ]
        )
        return app

    @web.middleware
    async def _errors(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return _error(f"{request.method} {request.path}: {exc.reason}", 2)
        except BatonError as exc:
            return _error(str(exc), exc.exit_code)

    def _app_name(self, app: str | None, config: str | None) -> str:
        if app:
            return app
        if config:
            return load_config(config).config.app
        names = self.engine.app_names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise UsageError("no app was deployed on this host yet")
        raise UsageError(f"several apps are deployed ({', '.join(names)}); name one")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid(), "proxy": self._proxy_info()})

    async def status(self, request: web.Request) -> web.Response:
        status = await self.engine.status()
        status["proxy"].update(self._proxy_info())
        annotate_status(self.engine, status)
        if self._certificates is not None:
            status["certificates"] = await self._certificates()
        if "window" in request.query:  # `baton top`: each release's figures over a short window
            annotate_live(self.engine, status, request.query["window"])
        return web.json_response(status)

    async def deploy(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        strategy = _string(body, "strategy")
        driven = body.get("canary_weight")  # a fleet canary without edges (cluster.hostcanary)
        driven = None if driven is None else check_weight(driven)
        strategy = "canary" if driven is not None else strategy
        run = await self.engine.prepare_deploy(
            _string(body, "config", required=True) or "",
            version=_string(body, "version"),
            env=_env(body),
            command=_string(body, "command"),
            strategy=strategy,
            image=_string(body, "image"),
            secrets=body.get("secrets"),
            stage=_flag(body, "stage"),
        )
        starter.record(self.engine, run, starter.peer_user(request), "cli")
        if driven is not None:
            self.engine.drive_canary(run.id, driven)
        self.engine.start(run)
        return await self._stream(request, run)

    async def rollback(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        app = self._app_name(_string(body, "app"), _string(body, "config"))
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise UsageError("force: expected true or false")
        run = await self.engine.prepare_rollback(app, _string(body, "version"), force=force)
        starter.record(self.engine, run, starter.peer_user(request), "cli")
        self.engine.start(run)
        return await self._stream(request, run)

    async def migrate_status(self, request: web.Request) -> web.Response:
        only = request.query.get("app")
        names = [only] if only else self.engine.app_names()
        apps = []
        for name in names:
            if not self.engine.has_app(name):
                raise UsageError(f"no app named {name!r} was ever deployed on this host")
            apps.append(await self.engine.migration_status(name))
        return web.json_response({"apps": apps})

    async def migrate_contract(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        app = self._app_name(_string(body, "app"), _string(body, "config"))
        run = await self.engine.prepare_contract(app)
        self.engine.start(run)
        return await self._stream(request, run)

    async def events(self, request: web.Request) -> web.StreamResponse:
        given = request.match_info["id"]
        run = self.engine.run(int(given)) if given.isdigit() else None
        if run is None:
            raise UsageError(f"no deployment {given} is running")
        return await self._stream(request, run)

    async def promote(self, request: web.Request) -> web.StreamResponse:
        return await self._canary_request(request, "promote")

    async def abort(self, request: web.Request) -> web.StreamResponse:
        return await self._canary_request(request, "abort")

    async def canary_weight(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        app = self._app_name(_string(body, "app"), _string(body, "config"))
        control = drive(self.engine, app, check_weight(body.get("weight"), "weight"))
        return web.json_response({"app": app, "weight": control.target})

    async def staged(self, request: web.Request) -> web.StreamResponse:
        """``POST /staged/switch`` or ``/staged/discard`` (``{"app", "version"?}``): decide a
        release staged by ``POST /deploy`` with ``"stage": true``; its events to the end."""
        given = request.match_info["verb"]
        if given not in ("switch", "discard"):
            raise UsageError(f"POST /staged/{given}: expected /staged/switch or /staged/discard")
        verb: Literal["switch", "discard"] = "switch" if given == "switch" else "discard"
        body = await json_body(request)
        app = self._app_name(_string(body, "app"), _string(body, "config"))
        run = self.engine.staged_request(app, verb, _string(body, "version"))
        if run is None:  # a discard with nothing staged: nothing to do
            return web.json_response({"event": "result", "ok": True, "message": "nothing staged"})
        return await self._stream(request, run, skip=len(run.events))

    async def _canary_request(self, request: web.Request, what: Request) -> web.StreamResponse:
        body = await json_body(request)
        app = self._app_name(_string(body, "app"), _string(body, "config"))
        run = canary_request(self.engine, app, what)
        return await self._stream(request, run, skip=len(run.events))

    async def _stream(
        self, request: web.Request, run: DeploymentRun, skip: int = 0
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            seen = 0
            async for event in run.follow():
                seen += 1
                if seen <= skip and not isinstance(event, Intro):
                    continue
                await response.write(json.dumps(event.to_dict()).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; the deployment goes on
        return response

    async def history(self, request: web.Request) -> web.Response:
        app = request.query.get("app") or None
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise UsageError("limit: expected a number") from None
        deployments = self.engine.history(app, limit)
        for dep in deployments:
            if dep.get("strategy") == "canary":
                dep["canary"] = canary_events(self.engine, dep["id"])
            dep["signals"] = stored_signals(self.engine, dep["id"])
            dep["started_by"] = starter.started_by(self.engine, dep["id"])
        return web.json_response({"deployments": deployments})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        app = self._app_name(request.query.get("app"), request.query.get("config"))
        version = request.query.get("version") or None
        follow = request.query.get("follow") in ("1", "true", "yes")
        try:
            lines = int(request.query.get("lines", "100"))
        except ValueError:
            raise UsageError("lines: expected a number") from None
        sources = self.engine.log_sources(app, version)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            hidden = list(self.engine.secrets.read(app).values())
            async for label, line in _tail(sources, lines, follow):
                line = redact(line, hidden) if hidden else line
                await response.write(json.dumps({"instance": label, "line": line}).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def env(self, request: web.Request) -> web.Response:
        from baton.deploy.appenv import app_env

        app = self._app_name(request.query.get("app"), request.query.get("config"))
        return web.json_response(app_env(self.engine, app))

    async def unset_env(self, request: web.Request) -> web.Response:
        from baton.deploy.appenv import unset_env

        body = await json_body(request)
        unknown = sorted(set(body) - {"app", "config", "unset"})
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r} (expected app, unset)")
        app = self._app_name(_string(body, "app"), _string(body, "config"))
        return web.json_response(unset_env(self.engine, app, body.get("unset")))

    async def secrets(self, request: web.Request) -> web.Response:
        from baton.deploy.appenv import secret_names

        app = self._app_name(request.query.get("app"), request.query.get("config"))
        return web.json_response(secret_names(self.engine, app))

    async def set_secrets(self, request: web.Request) -> web.Response:
        from baton.deploy.appenv import change_secrets

        body = await json_body(request)
        unknown = sorted(set(body) - {"app", "config", "set", "unset"})
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r} (expected app, set, unset)")
        app = self._app_name(_string(body, "app"), _string(body, "config"))
        return web.json_response(
            change_secrets(self.engine, app, body.get("set"), body.get("unset"))
        )

    async def watch(self, request: web.Request) -> web.StreamResponse:
        """Re-attach to an app's deployment in progress, or replay its last one's outcome."""
        from baton.deploy.lifecycle import last_outcome, running_run

        app = request.query.get("app") or None
        run = running_run(self.engine, app)
        if run is not None:
            return await self._stream(request, run)
        name = self._app_name(app, request.query.get("config"))
        if not self.engine.has_app(name):
            raise UsageError(f"no app named {name!r} on this host")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for event in last_outcome(self.engine, name):
            await response.write(json.dumps(event.to_dict()).encode() + b"\n")
        await response.write_eof()
        return response

    async def app_verb(self, request: web.Request) -> web.Response:
        """``baton app stop|start|remove NAME``."""
        from baton.deploy import lifecycle

        verbs = {
            "stop": lifecycle.stop_app,
            "start": lifecycle.start_app,
            "remove": lifecycle.remove_app,
        }
        verb = request.match_info["verb"]
        if verb not in verbs:
            raise UsageError(f"unknown app verb {verb!r} (expected stop, start or remove)")
        return web.json_response(await verbs[verb](self.engine, request.match_info["name"]))

    async def shutdown(self, request: web.Request) -> web.Response:
        asyncio.get_running_loop().call_later(0.05, self._shutdown)
        return web.json_response({"ok": True, "pid": os.getpid()})

    async def upgrade_proxy(self, request: web.Request) -> web.Response:
        """Replace the proxy process without refusing a connection (``baton upgrade``)."""
        body = await json_body(request)
        unknown = sorted(set(body) - {"command", "timeout"})
        if unknown:
            raise UsageError(f"unknown field {unknown[0]!r} (expected command, timeout)")
        command = body.get("command")
        if command is not None and (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) and c for c in command)
        ):
            raise UsageError("command: expected a non-empty list of strings")
        timeout = body.get("timeout", 30)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 600
        ):
            raise UsageError("timeout: expected a number of seconds between 0 and 600")
        running = self.engine.running_deployments()
        if running:
            return _error(
                f"a deployment of {running[0].app!r} is running; upgrade the proxy after it", 3
            )
        if self._upgrade_proxy is None:
            return _error("this server cannot upgrade its proxy", 1)
        try:
            return web.json_response(await self._upgrade_proxy(command, float(timeout)))
        except BatonError as exc:
            return _error(str(exc), 1)


async def _tail(
    sources: list[tuple[str, Runtime, Instance]], lines: int, follow: bool
) -> AsyncIterator[tuple[str, str]]:
    """The last ``lines`` of each instance's log, then (with ``follow``) new lines, forever.

    The runtime reads them: log files for processes, the containers for docker.
    """
    for label, runtime, instance in sources:
        try:
            tail = await runtime.logs(instance, lines) if lines > 0 else []
        except BatonError as exc:
            tail = [f"(baton: cannot read the logs: {exc})"]
        for line in tail:
            yield label, line
    if not follow or not sources:
        return
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)

    async def pump(label: str, runtime: Runtime, instance: Instance) -> None:
        try:
            async for line in runtime.follow_logs(instance):
                await queue.put((label, line))
        except BatonError as exc:
            await queue.put((label, f"(baton: stopped following: {exc})"))

    tasks = [asyncio.create_task(pump(*source)) for source in sources]
    try:
        while True:
            yield await queue.get()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
