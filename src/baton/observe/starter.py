"""Who or what started a deployment, recorded with it as a ``started_by`` event.

Through the API's Unix socket the kernel tells who is on the other end (``SO_PEERCRED``):
that user's name is recorded, not anything the client claims. Through the dashboard it is
"dashboard" and the client's address (the token says who may, not who did).
"""

from __future__ import annotations

import contextlib
import pwd
import socket
import struct
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from baton.deploy.engine import DeploymentRun, Engine


def peer_user(request: web.Request) -> str:
    """The user name behind a Unix-socket request ("unknown" if the kernel does not say)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return "unknown"
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
    except OSError:
        return "unknown"
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_name
    return f"uid {uid}"


def record(engine: Engine, run: DeploymentRun, by: str, via: str) -> None:
    engine.add_event(run.id, run.app, "started_by", {"by": by, "via": via})


def started_by(engine: Engine, deployment_id: int) -> dict[str, Any] | None:
    for event in engine.events(deployment_id):
        if event.kind == "started_by":
            return dict(event.data)
    return None
