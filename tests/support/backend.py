"""A test backend: a small HTTP app that plays "one release of a user's app" in tests.

Run it as a child process, either way:

    python tests/support/backend.py --port PORT --name NAME      (any cwd; stdlib + aiohttp only)
    python -m tests.support.backend --port PORT --name NAME      (cwd = repository root)

`--port` defaults to the `PORT` environment variable (what Baton's process runtime sets), and
`--name` to `BACKEND_NAME` or "backend". It listens on 127.0.0.1 only and prints nothing on
stdout; wait for the port to accept TCP (`tests.support.procs.Backend` does). Every response
carries `X-Backend: NAME`.

Endpoints:

- `GET /` (and any other unknown path, any method) -> NAME
- `GET /up` -> 200 "ok" (or `--up-status`)
- `GET /slow?s=SECONDS` -> sleeps, then NAME
- `POST /echo` -> the request body, streamed back as it arrives
- `GET /headers` -> JSON object of the request headers: lower-case names, repeated headers
  joined with ", "
- `GET /status/CODE` -> that status (body NAME unless the status forbids a body)
- `GET /stream?n=N&interval=S` -> `text/event-stream`, N lines `data: i\\n\\n`, S seconds apart
- `GET /ws` -> WebSocket: sends NAME first, then echoes every text/binary message
- `GET /big?kb=N` -> N KiB body (`Content-Length` set)

SIGTERM / SIGINT: stop accepting, let in-flight requests (and open streams and WebSockets)
finish for up to `--grace` seconds, then exit 0. `--startup-delay` waits before listening, to
play a slow-booting release.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from aiohttp import WSMsgType, web

NAME_KEY = web.AppKey("name", str)
UP_STATUS_KEY = web.AppKey("up_status", int)


def _name(request: web.Request) -> str:
    return request.app[NAME_KEY]


async def index(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text=_name(request))


async def up(request: web.Request) -> web.Response:
    return web.Response(text="ok", status=request.app[UP_STATUS_KEY])


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text=_name(request))


async def echo(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    if request.content_length is not None:
        response.content_length = request.content_length
    response.content_type = request.content_type or "application/octet-stream"
    await response.prepare(request)
    async for chunk in request.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response


async def headers(request: web.Request) -> web.Response:
    seen: dict[str, str] = {}
    for key, value in request.headers.items():
        name = key.lower()
        seen[name] = f"{seen[name]}, {value}" if name in seen else value
    return web.json_response(seen)


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if code in (204, 304) or 100 <= code < 200:
        return web.Response(status=code)
    return web.Response(status=code, text=_name(request))


async def stream(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "10"))
    interval = float(request.query.get("interval", "0.1"))
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for i in range(n):
        if i:
            await asyncio.sleep(interval)
        await response.write(f"data: {i}\n\n".encode())
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(_name(request))
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def big(request: web.Request) -> web.Response:
    kb = int(request.query.get("kb", "1024"))
    return web.Response(body=b"x" * (kb * 1024), content_type="application/octet-stream")


async def _add_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Backend"] = _name(request)


def make_app(name: str, up_status: int = 200) -> web.Application:
    app = web.Application()
    app[NAME_KEY] = name
    app[UP_STATUS_KEY] = up_status
    app.on_response_prepare.append(_add_header)
    app.router.add_get("/up", up)
    app.router.add_get("/slow", slow)
    app.router.add_post("/echo", echo)
    app.router.add_get("/headers", headers)
    app.router.add_get("/status/{code:\\d{3}}", status)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/big", big)
    app.router.add_route("*", "/{tail:.*}", index)
    return app


async def serve(port: int, name: str, grace: float, up_status: int, startup_delay: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if startup_delay > 0:
        try:
            await asyncio.wait_for(stop.wait(), startup_delay)
            return
        except TimeoutError:
            pass
    runner = web.AppRunner(make_app(name, up_status), access_log=None, shutdown_timeout=grace)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    try:
        await stop.wait()
    finally:
        # Closes the listener, waits up to `grace` for in-flight handlers, then closes the rest.
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Baton test backend")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    parser.add_argument("--name", default=os.environ.get("BACKEND_NAME", "backend"))
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to finish work")
    parser.add_argument("--up-status", type=int, default=200, help="status of GET /up")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before listen")
    args = parser.parse_args(argv)
    if not args.port:
        parser.error("--port (or PORT) is required")
    asyncio.run(serve(args.port, args.name, args.grace, args.up_status, args.startup_delay))


if __name__ == "__main__":
    main()
