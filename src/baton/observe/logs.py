"""The control plane's log lines: plain text, or one JSON object per line.

``bind`` ties the current task (and every task it starts) to a deployment through a
context variable; the JSON formatter puts that deployment's id, app and version on every
line logged meanwhile, so ``jq 'select(.deployment_id == 7)'`` finds all of a deployment's
lines. A record's own ``extra`` fields win over the context.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from baton.errors import UsageError

FORMATS = ("text", "json")

_deployment: ContextVar[dict[str, Any] | None] = ContextVar("baton_deployment", default=None)


def bind(deployment_id: int, app: str, version: str) -> None:
    """Every log line of this task and its children carries this deployment."""
    _deployment.set({"deployment_id": deployment_id, "app": app, "version": version})


def current() -> dict[str, Any] | None:
    return _deployment.get()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_deployment.get() or {})
        for key in ("deployment_id", "app", "version", "event"):
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(fmt: str, prefix: str = "baton server") -> None:
    """Send the process's logs to stderr in ``fmt`` (``text`` or ``json``)."""
    if fmt not in FORMATS:
        raise UsageError(f"--log-format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
