"""Whether this Baton runs its hot path compiled (mypyc) or as pure Python, and the guard.

This module owns the import-time decision for the hot-path modules (`HOT_MODULES`): a
wheel built with a C compiler carries each of them twice, as a mypyc-compiled extension and
as its `.py` source; the extension wins at import unless `install_guard` (run by
`baton/__init__.py`, before any hot module is imported) sends the import to the `.py`:
- `BATON_PURE=1` in the environment: run the pure-Python fallback (inherited by every
  process Baton starts, so a proxy and its daemon agree);
- a compiled module whose source no longer matches the SHA-256 recorded when it was built
  (`baton/_build_info.py`, written into the wheel by setup.py), or a compiled module with no
  such record (e.g. a `.so` left beside the sources of an editable install): old compiled
  code is never run silently. Baton then runs the `.py` files and says so once on stderr.
  The sources are hashed when a hot module is first looked up (the proxy, the daemon,
  `describe()`), not at every `baton` start: a command that only talks to the daemon
  never imports the hot path, and hashing cost each of them hashlib's import.
It is all or nothing: either every hot module is compiled or none is.
`describe()` says which one runs (shown by `baton --version`).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["HOT_MODULES", "compiled", "describe", "install_guard", "pure_reason"]

# The modules setup.py compiles with mypyc (setup.py keeps its own copy; a test compares).
HOT_MODULES = (
    "baton.proxy.http",
    "baton.proxy.routing",
    "baton.proxy.metrics",
    "baton.proxy.upstream",
    "baton.proxy.server",
    # H2Stream subclasses ClientConnection, and an interpreted class cannot subclass a
    # compiled one: h2 is compiled with it.
    "baton.proxy.h2",
    # The exchange, the release/target choice and flow control run on every request too.
    "baton.proxy.exchange",
    "baton.proxy.choice",
    "baton.proxy.flow",
    # Baton's own request-head scanner (no httptools callback per header field).
    "baton.proxy.headscan",
)

PURE_ENV = "BATON_PURE"

_PACKAGE_DIR = Path(__file__).resolve().parent
_reason: str | None = None  # why the .py files run although compiled ones are installed


def _source(name: str) -> Path:
    return _PACKAGE_DIR.parent.joinpath(*name.split(".")).with_suffix(".py")


def _extension(name: str) -> Path | None:
    """The compiled module installed beside ``name``'s source, if any."""
    source = _source(name)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def _build_info() -> ModuleType | None:
    try:
        return importlib.import_module("baton._build_info")  # written into wheels by setup.py
    except ImportError:
        return None


def _recorded_hashes() -> dict[str, str] | None:
    hashes = getattr(_build_info(), "SOURCE_SHA256", None)
    return dict(hashes) if isinstance(hashes, dict) else None


def stale_modules() -> list[str]:
    """Hot modules whose compiled extension does not match their source (or has no record)."""
    extensions = {name: _extension(name) for name in HOT_MODULES}
    if not any(extensions.values()):
        return []
    recorded = _recorded_hashes() or {}
    stale = []
    for name in HOT_MODULES:
        source = _source(name)
        if not source.exists():
            continue  # compiled-only install: nothing to compare, nothing to fall back to
        import hashlib  # only when compiled modules are installed: not at every start

        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if extensions[name] is None or recorded.get(name) != digest:
            stale.append(name)
    return stale


class _PureFinder:
    """Imports the hot modules from their `.py` sources, whatever is compiled beside them,
    once ``pure`` is decided (``decide``: at the first hot module looked up).

    A meta path finder (``find_spec`` is all the import system asks of one); not a subclass
    of ``importlib.abc.MetaPathFinder``, whose import costs every `baton` start ~10 ms."""

    def __init__(self, pure: bool | None) -> None:
        self.pure = pure  # None: not decided yet

    def decide(self) -> bool:
        """Whether the hot modules run from their `.py` files: stale compiled ones do not run."""
        global _reason
        if self.pure is None:
            stale = stale_modules()
            self.pure = bool(stale)
            if stale:
                _reason = "compiled modules older than their sources were ignored: " + ", ".join(
                    stale
                )
                print(
                    f"baton: {_reason}; running pure Python (rebuild with `make`)",
                    file=sys.stderr,
                    flush=True,
                )
        return self.pure

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in HOT_MODULES or not path or not self.decide():
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path:
            candidate = os.path.join(entry, leaf)
            if os.path.isfile(candidate):
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def install_guard() -> None:
    """Route the hot modules to their `.py` files when asked to or when compiled ones are stale
    (decided when the first one is imported)."""
    global _reason
    if _guard() is not None:
        return
    asked = os.environ.get(PURE_ENV, "") not in ("", "0")
    if asked:
        _reason = f"{PURE_ENV}={os.environ[PURE_ENV]}"
    sys.meta_path.insert(0, _PureFinder(True if asked else None))


def _guard() -> _PureFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, _PureFinder)), None)


def compiled() -> bool:
    """True when every hot-path module runs (or would run, once imported) compiled by mypyc.

    Asks the import system where each module comes from without importing it: `baton
    --version` must not load the proxy's stack (httptools, uvloop) just to say so."""
    for name in HOT_MODULES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if module is None:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
        if not (origin or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            return False
    return True


def pure_reason() -> str | None:
    """Why the hot path runs as pure Python although it could run compiled (None otherwise)."""
    guard = _guard()
    if guard is not None:
        guard.decide()
    return _reason


def describe() -> str:
    """``compiled (mypyc)`` or ``pure Python (why)``, for `baton --version` and reports."""
    if compiled():
        return "compiled (mypyc)"
    if _reason:
        return f"pure Python ({_reason})"
    built = getattr(_build_info(), "PURE_REASON", None)
    if isinstance(built, str):
        return f"pure Python ({built})"  # the wheel was built without a compiler, or mypyc failed
    return "pure Python (no compiled modules installed: an editable install, or no wheel)"


F = TypeVar("F", bound=Callable[..., Any])


def version_option(version: str) -> Callable[[F], F]:
    """A click ``--version`` option printing the version and whether Baton runs compiled."""
    import click

    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if not value or ctx.resilient_parsing:
            return
        click.echo(f"baton, version {version}, {describe()}")
        ctx.exit()

    return click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=show,
        help="Show the version and whether the proxy runs compiled, then exit.",
    )
