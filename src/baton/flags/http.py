"""Feature flags over HTTP: OFREP for apps, and the management calls the CLI makes.

OFREP (the OpenFeature Remote Evaluation Protocol, core + configuration) is what any
OpenFeature SDK with an OFREP provider speaks:

| method + path                              | answer                                         |
|--------------------------------------------|------------------------------------------------|
| POST /ofrep/v1/evaluate/flags/{key}        | 200 value, variant, reason; 404 FLAG_NOT_FOUND; |
|                                            | 400 INVALID_CONTEXT / TARGETING_KEY_MISSING    |
| POST /ofrep/v1/evaluate/flags              | 200 every flag (ETag; If-None-Match → 304)     |
| GET  /ofrep/v1/configuration               | 200 capabilities (polling every 1 s at least)  |

Each path also exists under ``/apps/{app}`` (an SDK's base URL
``http://HOST:PORT/apps/shop``); without that prefix the app is the ``X-Baton-App`` header,
else the only app that has flags. With a token (``BATON_FLAGS_TOKEN`` in the daemon's
environment; required off loopback) every OFREP call needs ``Authorization: Bearer TOKEN``
or ``X-API-Key: TOKEN``; a wrong one gets 401.

The management calls live on the daemon's Unix socket only (see ``server/api.py``):
``GET /flags``, ``POST /flags/apply``, ``POST /flags/change``, ``GET /flags/history``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from baton.errors import BatonError, UsageError
from baton.flags.model import (
    Evaluation,
    EvaluationError,
    check_context,
    flag_to_json,
    parse_percent,
)
from baton.flags.service import FlagService
from baton.observe.endpoints import bearer_ok, is_loopback, parse_address, token_matches
from baton.server.api import json_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 256 * 1024


def _success(ev: Evaluation, version: int) -> dict[str, Any]:
    return {
        "key": ev.key,
        "value": ev.value,
        "variant": ev.variant,
        "reason": ev.reason,
        "metadata": {"flagSetVersion": version},
    }


def _failure(err: EvaluationError) -> dict[str, Any]:
    return {"key": err.key, "errorCode": err.error_code, "errorDetails": err.details}


class Ofrep:
    """The OFREP handlers for one ``FlagService``."""

    def __init__(self, flags: FlagService, token: str | None = None) -> None:
        self.flags = flags
        self.token = token

    def routes(self) -> list[web.RouteDef]:
        routes: list[web.RouteDef] = []
        for prefix in ("", "/apps/{app}"):
            routes += [
                web.post(prefix + "/ofrep/v1/evaluate/flags/{key}", self.evaluate_one),
                web.post(prefix + "/ofrep/v1/evaluate/flags", self.evaluate_bulk),
                web.get(prefix + "/ofrep/v1/configuration", self.configuration),
            ]
        return routes

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(self.routes())
        return app

    def _authorised(self, request: web.Request) -> bool:
        if not self.token:
            return True
        return bearer_ok(request, self.token) or token_matches(
            request.headers.get("X-API-Key", ""), self.token
        )

    def _app_of(self, request: web.Request) -> str | None:
        app = request.match_info.get("app") or request.headers.get("X-Baton-App")
        if app:
            return app
        apps = self.flags.apps()
        return apps[0] if len(apps) == 1 else None

    async def _context(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object with a context")
        return check_context(body.get("context"))

    async def _prelude(self, request: web.Request) -> tuple[str, dict[str, Any]] | web.Response:
        if not self._authorised(request):
            return web.json_response({"errorDetails": "wrong or missing token"}, status=401)
        app = self._app_of(request)
        if app is None:
            return web.json_response(
                {
                    "errorCode": "GENERAL",
                    "errorDetails": "say which app: /apps/APP/ofrep/... or an X-Baton-App header"
                    f" (apps with flags: {', '.join(self.flags.apps()) or 'none'})",
                },
                status=400,
            )
        try:
            context = await self._context(request)
        except ValueError as exc:
            return web.json_response(
                {"errorCode": "INVALID_CONTEXT", "errorDetails": str(exc)}, status=400
            )
        return app, context

    async def evaluate_one(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        pre = await self._prelude(request)
        if isinstance(pre, web.Response):
            if pre.status == 400 and pre.text is not None:
                body = json.loads(pre.text)
                body["key"] = key
                return web.json_response(body, status=400)
            return pre
        app, context = pre
        result = self.flags.evaluate(app, key, context)
        if isinstance(result, EvaluationError):
            status = 404 if result.error_code == "FLAG_NOT_FOUND" else 400
            return web.json_response(_failure(result), status=status)
        current = self.flags.app_flags(app)
        return web.json_response(_success(result, current.version if current else 0))

    async def evaluate_bulk(self, request: web.Request) -> web.StreamResponse:
        pre = await self._prelude(request)
        if isinstance(pre, web.Response):
            return pre
        app, context = pre
        current = self.flags.app_flags(app)
        version = current.version if current else 0
        flags = [
            _success(r, version) if isinstance(r, Evaluation) else _failure(r)
            for r in self.flags.evaluate_all(app, context)
        ]
        body = json.dumps({"flags": flags}, sort_keys=True).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if etag in {t.strip() for t in request.headers.get("If-None-Match", "").split(",")}:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

    async def configuration(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.json_response({"errorDetails": "wrong or missing token"}, status=401)
        return web.json_response(
            {
                "name": "baton",
                "capabilities": {
                    "cacheInvalidation": {
                        "polling": {"enabled": True, "minPollingIntervalMs": 1000}
                    },
                    "flagEvaluation": {
                        "supportedTypes": ["boolean", "string", "int", "float", "object"]
                    },
                },
            }
        )


def check_ofrep_listen(address: str, token: str | None) -> tuple[str, int]:
    """``--flags ADDR``: a valid host:port; off loopback only with a token."""
    host, port = parse_address("--flags", address)
    if not is_loopback(host) and not token:
        raise UsageError(
            f"--flags {address}: off loopback, flag evaluations need a token"
            " (set BATON_FLAGS_TOKEN in the daemon's environment)"
        )
    return host, port


async def start_ofrep(ofrep: Ofrep, address: str) -> web.AppRunner:
    host, port = check_ofrep_listen(address, ofrep.token)
    runner = web.AppRunner(ofrep.app(), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise BatonError(f"--flags {address}: cannot listen: {exc.strerror}") from None
    return runner


# -- management (the daemon's Unix-socket API) ---------------------------------------------------


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key}: expected a non-empty string")
    return value


class FlagAdmin:
    """``/flags*`` handlers for the control plane's API; errors are ``BatonError``s."""

    def __init__(self, flags: FlagService) -> None:
        self.flags = flags

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/flags", self.list),
            web.post("/flags/apply", self.apply),
            web.post("/flags/change", self.change),
            web.get("/flags/history", self.history),
        ]

    async def list(self, request: web.Request) -> web.StreamResponse:
        only = request.query.get("app")
        apps = []
        for app in self.flags.apps():
            if only and app != only:
                continue
            current = self.flags.app_flags(app)
            assert current is not None
            apps.append(
                {
                    "app": app,
                    "version": current.version,
                    "kills": sorted(current.kills),
                    "file_error": self.flags.file_errors.get(app),
                    "verdicts": {
                        f"{key}={variant}": verdict.to_json()
                        for (a, key, variant), verdict in sorted(self.flags.last_verdicts.items())
                        if a == app
                    },
                    "flags": {
                        k: {**flag_to_json(f), "type": f.type}
                        for k, f in sorted(current.served.flags.items())
                    },
                }
            )
        if only and not apps:
            raise UsageError(f"app {only!r} has no flags")
        return web.json_response({"apps": apps})

    async def apply(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        app = _str(body, "app")
        if "file" in body:
            from pathlib import Path

            version = self.flags.apply_file(app, Path(_str(body, "file")), source="cli")
        else:
            version = self.flags.apply(app, body.get("flags"), file=None, source="api")
        return web.json_response({"app": app, "version": version})

    async def change(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        app, key, action = _str(body, "app"), _str(body, "key"), _str(body, "action")
        if action == "set":
            version = self.flags.set_variant(app, key, _str(body, "variant"))
        elif action == "rollout":
            share = parse_percent(body.get("share"), "share", None)
            version = self.flags.rollout(app, key, _str(body, "variant"), share)
        elif action == "kill":
            version = self.flags.kill(app, key)
        elif action == "revive":
            version = self.flags.revive(app, key)
        else:
            raise UsageError(f"action: expected set, rollout, kill or revive, got {action!r}")
        return web.json_response({"app": app, "key": key, "version": version})

    async def history(self, request: web.Request) -> web.StreamResponse:
        app = request.query.get("app", "")
        if not app:
            raise UsageError("app: required")
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise UsageError("limit: expected a number") from None
        return web.json_response({"app": app, "versions": self.flags.history(app, limit)})
