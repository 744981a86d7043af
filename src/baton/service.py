"""systemd integration: the unit file ``baton install-service`` writes, and where.

One unit, ``baton.service``, runs the control plane (``baton server``) in the foreground with
``KillMode=process``. The reasoning: the control plane starts the proxy and the process
runtime's instances itself, so they live in its unit's cgroup. With systemd's default
``KillMode=control-group``, ``systemctl stop``/``restart baton`` would SIGTERM (then SIGKILL)
every process of that cgroup: the proxy and every app with it, and a separate proxy unit
would not save the apps. With ``KillMode=process`` systemd signals the main process only;
Baton's control plane answers SIGTERM by stopping itself alone, the proxy and the instances
go on serving from the same cgroup, and the next start of the unit adopts them. A reboot
still stops everything (systemd's final kill), and at boot the unit converges the host to
the stored desired state before it answers. Docker containers live in dockerd's cgroups
either way. ``baton down`` (not ``systemctl stop``) is what stops the apps.

Everything here but ``install`` is pure: the unit's text from its inputs.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "baton.service"


@dataclass(frozen=True)
class ServiceSpec:
    state_dir: Path
    user_unit: bool  # a systemd --user unit (else a system unit)
    python: str = sys.executable
    run_as: str | None = None  # User= of a system unit (None: root)


def default_output_dir(user_unit: bool) -> Path:
    if user_unit:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def unit_text(spec: ServiceSpec) -> str:
    """The text of ``baton.service`` for ``spec``."""
    command = shlex.join(
        [spec.python, "-m", "baton.cli", "--state-dir", str(spec.state_dir), "server"]
    )
    user = f"User={spec.run_as}\n" if spec.run_as and not spec.user_unit else ""
    wanted_by = "default.target" if spec.user_unit else "multi-user.target"
    after = "network-online.target" if spec.user_unit else "network-online.target docker.service"
    return f"""\
# Written by `baton install-service`. The control plane of Baton; the proxy and the apps it
# starts outlive a stop or restart of this unit (KillMode=process): the next start adopts
# them. `baton down` stops the apps, the proxy and this daemon; `baton up` starts them again.
[Unit]
Description=Baton control plane (zero-downtime deploys; the proxy and apps survive its restarts)
After={after}
Wants=network-online.target

[Service]
Type=simple
{user}Environment=PYTHONUNBUFFERED=1
ExecStart={command}
# Signal the control plane only: it stops alone and the data plane keeps serving.
KillMode=process
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2

[Install]
WantedBy={wanted_by}
"""


def spec_for(state_dir: Path, user_unit: bool) -> ServiceSpec:
    """The spec for this Baton (this Python) and this user."""
    run_as = None if user_unit or os.geteuid() == 0 else getpass.getuser()
    return ServiceSpec(state_dir=state_dir, user_unit=user_unit, run_as=run_as)


def install(spec: ServiceSpec, output_dir: Path) -> Path:
    """Write the unit file atomically into ``output_dir``; returns its path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / UNIT_NAME
    tmp = path.with_name(f".{UNIT_NAME}.tmp")
    tmp.write_text(unit_text(spec))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
