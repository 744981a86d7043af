"""Views that redraw in place in the terminal (``baton status --watch``, ``baton top``).

``watch`` fetches, renders into a captured string (so the one-shot renderers serve the live
view too) and lets rich's ``Live`` redraw it every ``interval`` seconds until Ctrl-C, which
ends it quietly with exit 0. A daemon that stops answering shows as a line, not a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from baton.errors import BatonError


def watch(
    fetch: Callable[[], Any],
    show: Callable[[Any], None],
    console: Console,
    interval: float = 1.0,
) -> None:
    def render(live: Live | None = None) -> Text:
        # While ``live`` runs it hooks every print of ``console`` to add the frame on screen:
        # the next frame is captured without that hook, or it would carry the last one along.
        if live is not None:
            console.pop_render_hook()
        try:
            with console.capture() as captured:
                try:
                    show(fetch())
                except BatonError as exc:
                    console.print(f"(cannot reach the daemon: {exc})")
        finally:
            if live is not None:
                console.push_render_hook(live)
        stamp = time.strftime("%H:%M:%S")
        return Text.from_ansi(f"{captured.get().rstrip()}\n\nupdated {stamp} · Ctrl-C to quit")

    try:
        with Live(render(), console=console, auto_refresh=False, transient=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(live), refresh=True)
    except KeyboardInterrupt:
        pass
