"""The compiled build: the installed Baton runs its hot path compiled, the pure-Python
fallback imports and serves, and a compiled module never outlives an edit of its source.

`make test` runs the suite against the wheel `make` built (`.venv-compiled`), so where a C
compiler and Python.h are present the Baton under test must be compiled (in CI,
`BATON_REQUIRE_COMPILED=1` makes that unconditional); an editable install is pure Python by
design, and the compiled check is skipped there (unless BATON_REQUIRE_COMPILED=1).
"""

from __future__ import annotations

import ast
import importlib.machinery
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

import baton
from baton import build
from tests.support.h1 import send_raw
from tests.support.procs import Backend
from tests.support.proxy import ProxyProcess

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(baton.__file__).resolve().parent
EDITABLE = (ROOT / "src" / "baton").resolve() == PACKAGE
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def toolchain_present() -> bool:
    include = sysconfig.get_paths()["include"]
    return (
        shutil.which(os.environ.get("CC", "cc")) is not None and Path(include, "Python.h").exists()
    )


def without_pure() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(build.PURE_ENV, None)
    return env


def run_python(
    code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in this environment without BATON_PURE, plus ``env``."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**without_pure(), **(env or {})},
    )


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**without_pure(), **(env or {})},
    )


def test_setup_compiles_the_modules_baton_build_checks() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "HOT_MODULES" for t in node.targets)
    ]
    assert len(listed) == 1
    assert ast.literal_eval(listed[0]) == build.HOT_MODULES


def test_installed_baton_runs_compiled_where_a_compiler_is_present() -> None:
    required = os.environ.get("BATON_REQUIRE_COMPILED") == "1"
    if not required and EDITABLE:
        pytest.skip("editable install: pure Python by design (`make` installs the compiled wheel)")
    if not required and not toolchain_present():
        pytest.skip("no C compiler or Python.h: the wheel is pure Python")
    done = run_python(
        "import baton.proxy.server, baton.proxy.http, baton.build as b;"
        "print(baton.proxy.server.__file__); print(b.describe())"
    )
    assert done.returncode == 0, done.stderr
    origin, described = done.stdout.splitlines()
    assert origin.endswith(SUFFIX), origin
    assert described == "compiled (mypyc)"
    assert done.stderr == ""  # no stale-module warning
    version = run_cli("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"baton, version {baton.__version__}, compiled (mypyc)"


def test_pure_fallback_is_what_runs_with_baton_pure() -> None:
    done = run_python(
        "import baton.build as b, baton.proxy.server as s, baton.proxy.routing as r;"
        "print(s.__file__); print(r.__file__); print(b.describe())",
        env={build.PURE_ENV: "1"},
    )
    assert done.returncode == 0, done.stderr
    server, routing, described = done.stdout.splitlines()
    assert server.endswith("server.py") and routing.endswith("routing.py")
    assert described == "pure Python (BATON_PURE=1)"
    version = run_cli("--version", env={build.PURE_ENV: "1"})
    assert version.stdout.strip().endswith("pure Python (BATON_PURE=1)"), version.stdout


def test_pure_fallback_proxy_serves(
    monkeypatch: pytest.MonkeyPatch, backend_factory: Callable[..., Backend]
) -> None:
    monkeypatch.setenv(build.PURE_ENV, "1")  # inherited by the proxy child process
    v1 = backend_factory("v1")
    with ProxyProcess() as proxy:
        proxy.route(("v1", 100, [v1.addr]))
        response = send_raw(
            "127.0.0.1",
            proxy.port,
            b"GET /hello HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        )
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert response.split(b"\r\n\r\n", 1)[1].startswith(b"v1")


def copy_of_installed_baton(tmp_path: Path) -> Path:
    """The installed package (and mypyc's shared library beside it) copied under tmp_path."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "baton", ignore=shutil.ignore_patterns("__pycache__"))
    for shared in PACKAGE.parent.glob(f"*__mypyc{SUFFIX}"):
        shutil.copy2(shared, site / shared.name)
    return site


def test_a_stray_compiled_module_without_a_build_record_is_never_imported(
    tmp_path: Path,
) -> None:
    # E.g. a .so left beside the sources of an editable install by an in-place build: it
    # would win at import over the .py. Here it is not even a valid module, so importing it
    # would fail outright.
    site = copy_of_installed_baton(tmp_path)
    (site / "baton" / "_build_info.py").unlink(missing_ok=True)
    for name in build.HOT_MODULES:
        path = site.joinpath(*name.split("."))
        path.with_suffix(SUFFIX).write_bytes(b"not a compiled module")
    done = run_python(
        "import baton.proxy.server as s, baton.build as b; print(s.__file__); print(b.describe())",
        env={"PYTHONPATH": str(site)},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    origin, described = done.stdout.splitlines()
    assert origin == str(site / "baton" / "proxy" / "server.py")
    assert described.startswith("pure Python (compiled modules older than their sources")
    assert "running pure Python (rebuild with `make`)" in done.stderr


def test_an_edited_source_runs_instead_of_its_compiled_module(tmp_path: Path) -> None:
    if not all(
        PACKAGE.joinpath(*n.split(".")[1:]).with_suffix(SUFFIX).exists() for n in build.HOT_MODULES
    ):
        pytest.skip("the Baton under test is not compiled")
    site = copy_of_installed_baton(tmp_path)
    source = site / "baton" / "proxy" / "http.py"
    source.write_text(source.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    code = (
        "import baton.proxy.http as h, baton.proxy.server as s, baton.build as b;"
        "print(h.EDITED_AFTER_THE_BUILD, s.__file__.endswith('server.py'), b.compiled())"
    )
    env = {"PYTHONPATH": str(site)}
    done = run_python(code, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The edit runs, and the other hot modules fall back with it (all or nothing).
    assert done.stdout.split() == ["True", "True", "False"]
    assert "baton.proxy.http" in done.stderr and "rebuild with `make`" in done.stderr
    # Untouched, the same copy runs compiled.
    source.write_text(source.read_text().replace("\nEDITED_AFTER_THE_BUILD = True\n", ""))
    again = run_python("import baton.build as b; print(b.describe())", env=env, cwd=tmp_path)
    assert again.stdout.strip() == "compiled (mypyc)", again.stderr
