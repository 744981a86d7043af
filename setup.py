"""Baton's build: the proxy's hot-path modules compiled with mypyc when a wheel is built.

This file owns one decision: whether the wheel being built carries the hot-path modules
(`baton.build.HOT_MODULES`) compiled by mypyc or only as Python. It compiles them when a
wheel (or `build_ext`) is being built, a C compiler and `Python.h` work, mypyc is importable
and `BATON_PURE` is not set; otherwise, or when compiling fails for any reason, it builds the
same package as pure Python and says why on stderr. The `.py` sources always ship too: they
are the fallback (`BATON_PURE=1`) and the reference `baton.build` checks the compiled
modules against.

Editable installs (`pip install -e`) are always pure Python: setuptools would put the
compiled `.so` files beside the sources, where they would win at import over a later edit.
The compiled build goes into an installed wheel only (`make` builds and installs one).
Every build writes `baton/_build_info.py` into the wheel (never into the source tree): the
SHA-256 of each compiled module's source, so that a compiled module whose source no longer
matches is never imported (see `baton.build`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]
from setuptools.command.build_py import build_py  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"

# Kept in step with baton.build.HOT_MODULES (a test checks that they agree).
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


def say(message: str) -> None:
    print(f"baton build: {message}", file=sys.stderr, flush=True)


def module_path(name: str) -> Path:
    return SRC.joinpath(*name.split(".")).with_suffix(".py")


def compiler_problem() -> str | None:
    """Why a C extension cannot be built here, or None when it can."""
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").exists():
        return f"no Python.h in {include} (Debian: apt-get install python3-dev)"
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "probe.c")
        source.write_text("#include <Python.h>\nint main(void) { return 0; }\n")
        try:
            done = subprocess.run(
                [*cc, "-I", include, "-c", str(source), "-o", str(Path(tmp, "probe.o"))],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return (
                f"no working C compiler ({cc[0]}: {exc}) (Debian: apt-get install build-essential)"
            )
    if done.returncode != 0:
        return f"the C compiler ({cc[0]}) cannot build against Python.h: {done.stderr.decode(errors='replace').strip()[:300]}"
    return None


def wants_compiled() -> tuple[bool, str]:
    """(compile?, why not) for this invocation of setup.py."""
    commands = set(sys.argv[1:])
    if "editable_wheel" in commands or "develop" in commands:
        return False, "editable install (always pure Python: no .so beside the sources)"
    if not commands & {"bdist_wheel", "build", "build_ext", "install"}:
        return False, "no build command"  # egg_info, dist_info, sdist: nothing to compile
    if os.environ.get("BATON_PURE", "") not in ("", "0"):
        return False, "BATON_PURE is set"
    problem = compiler_problem()
    if problem:
        return False, problem
    try:
        import mypyc.build  # noqa: F401
    except ImportError as exc:
        return False, f"mypyc is not importable ({exc})"
    return True, ""


def mypyc_extensions() -> list[Any]:
    from mypyc.build import mypycify

    # mypy reads [tool.mypy] from pyproject.toml (strict); the paths are the modules compiled.
    return list(
        mypycify(
            [str(module_path(name).relative_to(ROOT)) for name in HOT_MODULES],
            opt_level="3",
            debug_level="0",
        )
    )


# Why this build is pure Python (None: the hot path is compiled). Recorded in the wheel, so
# that `baton --version` can say why an installed Baton runs pure Python.
pure_reason: str | None = None


def write_build_info(build_lib: str) -> None:
    hashes = {
        name: hashlib.sha256(module_path(name).read_bytes()).hexdigest() for name in HOT_MODULES
    }
    target = Path(build_lib, "baton", "_build_info.py")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        '"""Written by setup.py when this wheel was built; see baton.build."""\n\n'
        f"SOURCE_SHA256 = {hashes!r}\n"
        f"PURE_REASON = {pure_reason!r}\n"
    )


class BuildPy(build_py):  # type: ignore[misc]
    """Writes baton/_build_info.py into the build (never into src/)."""

    def run(self) -> None:
        super().run()
        write_build_info(self.build_lib)


class BuildExt(build_ext):  # type: ignore[misc]
    """Builds the mypyc extensions; on any failure the wheel stays pure Python."""

    def run(self) -> None:
        global pure_reason
        if getattr(self, "editable_mode", False) or self.inplace:
            say("not compiling in place (a .so beside a .py would outlive edits); pure Python")
            self.distribution.ext_modules = self.extensions = list[Any]()
            return
        try:
            super().run()
        except Exception as exc:
            pure_reason = f"compiling with mypyc failed: {str(exc)[:300]}"
            say(f"{pure_reason}; building pure Python instead")
            self.distribution.ext_modules = self.extensions = list[Any]()
            for name in HOT_MODULES:  # no half-compiled package: drop any built module
                for built in Path(self.build_lib, *name.split(".")[:-1]).glob(
                    name.rsplit(".", 1)[1] + ".*.so"
                ):
                    built.unlink()
            write_build_info(self.build_lib)


ext_modules: list[Any] = []
compile_it, why_not = wants_compiled()
if compile_it:
    try:
        ext_modules = mypyc_extensions()
        say(f"compiling {len(HOT_MODULES)} hot-path modules with mypyc")
    except BaseException as exc:  # mypyc reports type errors with sys.exit
        if isinstance(exc, KeyboardInterrupt):
            raise
        why = str(exc)[:300]
        if isinstance(exc, SystemExit) and isinstance(exc.code, int):
            # mypy printed the errors; usually Baton's dependencies are not where the build
            # runs (pip's isolated build of `pip install .`): `make` builds without isolation.
            why = f"mypy reported errors (exit {exc.code}); are Baton's dependencies installed?"
        pure_reason = f"mypyc could not compile the hot path: {why}"
        say(f"{pure_reason}; building pure Python instead")
        ext_modules = []
else:
    pure_reason = f"built without compiling: {why_not}"
    if why_not != "no build command":
        say(f"building pure Python: {why_not}")

setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPy, "build_ext": BuildExt})
