"""CLI start-up benchmark: the CPU time `baton deploy` and `baton --version` cost the CLI.

    .venv/bin/python bench/cli_startup.py [--runs 20] [--deploys 5] [--src OTHER/src]

One real daemon (`baton up --detach`, the test suite's `Host`) in a temp dir. Each figure
is the CPU time (user + system, ``RUSAGE_CHILDREN``) of the console script ``baton``, run
``--runs`` times in a row; the median and the mean are reported:

- ``--version``: the CLI's start-up alone.
- ``deploy (bad config)``: `baton deploy` of a file the daemon refuses (a bad key): the CLI's
  whole path up to its request and the error it prints (exit 2).
- ``deploy (no daemon)``: the same against a state dir where no daemon answers (exit 3).
- ``deploy (to the switch)``: ``--deploys`` real deploys of the example app: every CPU
  second the CLI spends, rendering the progress included.

``--src`` runs the same against another checkout's ``src`` (``PYTHONPATH``), e.g. the commit
before a change, so both columns come from one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.host import Host  # noqa: E402

SCRIPT = Path(sys.executable).parent / "baton"  # the console script a user runs


def cpu_of(argv: Sequence[str], env: dict[str, str], expect: int) -> float:
    """One run's CPU seconds (user + system) of ``argv``, a child of this process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}, expected {expect}\n{done}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def figures(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} s (mean {statistics.fmean(samples):.3f}, n {len(samples)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--deploys", type=int, default=5)
    parser.add_argument("--src", type=Path, default=None, help="another checkout's src dir")
    args = parser.parse_args()
    env = {**os.environ, "COLUMNS": "200"}
    if args.src is not None:
        env["PYTHONPATH"] = str(args.src.resolve())
    with tempfile.TemporaryDirectory(prefix="baton-bench-cli-") as tmp:
        host = Host(Path(tmp))
        good = host.config()
        bad = host.config({"deploy": {"drain_timeout": "soon"}}, name="bad.yml")
        baton = [str(SCRIPT), "--state-dir", str(host.state_dir)]
        up = host.run("up", "--detach", timeout=60)
        if up.rc != 0:
            raise SystemExit(str(up))
        try:
            results = {
                "--version": [cpu_of([str(SCRIPT), "--version"], env, 0) for _ in range(args.runs)],
                "deploy (bad config)": [
                    cpu_of([*baton, "deploy", "-c", str(bad)], env, 2) for _ in range(args.runs)
                ],
                "deploy (no daemon)": [
                    cpu_of(
                        [str(SCRIPT), "--state-dir", f"{tmp}/none", "deploy", "-c", str(good)],
                        env,
                        3,
                    )
                    for _ in range(args.runs)
                ],
                "deploy (to the switch)": [
                    cpu_of([*baton, "deploy", "-c", str(good), "--version", f"v{n}"], env, 0)
                    for n in range(args.deploys)
                ],
            }
        finally:
            host.down()
    print(f"CLI CPU time, {args.src or 'this checkout'}:")
    for name, samples in results.items():
        print(f"  {name:24} {figures(samples)}")


if __name__ == "__main__":
    main()
