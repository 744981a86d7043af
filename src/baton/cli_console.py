"""The CLI's two rich consoles (stdout and stderr) and markup escaping, made on first use.

Importing rich costs a CLI start tens of milliseconds, and `baton deploy` pays every one of
them before the deploy begins unless its request is sent first: so ``console`` and
``errors`` are stand-ins that build the real ``rich.console.Console`` (same settings as
ever: no highlighting, soft wrap) the first time anything is asked of them, and forward
every attribute, assignment and ``with`` to it. ``escape`` imports ``rich.markup`` when
first called. ``warm()`` builds both consoles at once, for a caller with time to spare
(a command waiting for the daemon's answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console


class LazyConsole:
    """A ``rich.console.Console`` built on first use; everything is forwarded to it."""

    def __init__(self, *, stderr: bool) -> None:
        object.__setattr__(self, "_stderr", stderr)
        object.__setattr__(self, "_console", None)

    def real(self) -> Console:
        made: Console | None = object.__getattribute__(self, "_console")
        if made is None:
            from rich.console import Console

            made = Console(
                stderr=object.__getattribute__(self, "_stderr"), highlight=False, soft_wrap=True
            )
            object.__setattr__(self, "_console", made)
        return made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.real(), name, value)

    def __enter__(self) -> Console:
        return self.real().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.real().__exit__(*exc)

    def __repr__(self) -> str:
        return repr(self.real())


console = cast("Console", LazyConsole(stderr=False))
errors = cast("Console", LazyConsole(stderr=True))


def escape(markup: str) -> str:
    """``rich.markup.escape``: ``markup`` with rich's markup brackets escaped."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


def warm() -> None:
    """Build both consoles now, and what their first line needs (rich's markup and emoji
    tables, ~10 ms), so that the first line prints at once."""
    for stand_in in (console, errors):
        cast(LazyConsole, stand_in).real()
    console.render_str("[bold]ready[/bold] :sparkles:")
