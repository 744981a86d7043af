"""The proxy's last route table on disk, so a restarted proxy serves from its first client.

Theory of operation. Every table the proxy swaps in (from the admin API, ``--routes`` or
a takeover) is written beside its admin socket (``proxy.sock`` -> ``proxy.routes.json``),
atomically: a temporary file in the same directory, then ``os.replace``, so a crash of any
process at any moment leaves the old table or the new one, never half of one. It is not
fsync'ed: the write is on the path of every switch (an fsync took 10-50 ms there, with the
proxy's event loop blocked), and the file serves a proxy restarted while the machine runs. A
power loss ends every instance the table names anyway; after it the control plane starts
them again and pushes the table, and a saved file the power loss left empty or stale is
reported or replaced by that push. When the proxy
(re)starts it reads that file and applies it before its listeners accept a connection; the
control plane then pushes its current table as usual. A missing file means a first start;
an unreadable or invalid one is reported and ignored (the control plane's push repairs it),
never a reason not to start. The file holds what the admin API's ``GET /routes`` shows
(including an app's ``release_secret``), so it is written mode 0600.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from baton.errors import RouteTableError
from baton.proxy.routing import AppSpec, parse_table
from baton.state.files import write_private


def table_path(admin_socket: str | Path) -> Path:
    """Where the proxy answering on ``admin_socket`` keeps its table."""
    sock = Path(admin_socket)
    stem = sock.name[: -len(".sock")] if sock.name.endswith(".sock") else sock.name
    return sock.with_name(f"{stem}.routes.json")


def save_table(path: Path, table: dict[str, Any]) -> None:
    """Write ``table`` (``RouteTable.to_json()``) to ``path`` atomically, mode 0600."""
    write_private(path, json.dumps(table, sort_keys=True).encode(), durable=False)


def load_table(path: Path) -> tuple[dict[str, AppSpec], int] | None:
    """The saved table's specs and generation; None when there is none.

    Raises RouteTableError naming the file when it exists but cannot be used.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RouteTableError(f"{path}: cannot read the saved route table ({exc})") from None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise RouteTableError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RouteTableError(f"{path}: expected an object with apps and generation")
    generation = value.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise RouteTableError(f"{path}: generation: expected an integer >= 0, got {generation!r}")
    try:
        specs = parse_table({"apps": value.get("apps", {})})
    except RouteTableError as exc:
        raise RouteTableError(f"{path}: {exc}") from None
    return specs, generation


__all__ = ["load_table", "save_table", "table_path"]
