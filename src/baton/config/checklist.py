"""``baton check``: the zero-downtime checklist over a validated config.

This module owns the rules ``baton check`` applies after the config validated: readiness,
draining, stop and verify settings, canary choices, hooks, ports and TLS. Each finding is a
``CheckItem`` (ok, warning or error) naming the key it is about. The rules are pure: they
read a config and ``HostFacts``, which ``gather_host_facts`` fills once by asking the host
(is a program on PATH or executable, are we root, what does the certificate say, the time).
Unit tests build ``HostFacts`` by hand and call ``rules``; ``checklist`` does both steps.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal

from baton.config.loading import LoadedConfig
from baton.config.models import AppConfig, CanaryConfig
from baton.config.units import format_duration, format_percent

# --------------------------------------------------------------------------- checklist


@dataclass(frozen=True)
class CheckItem:
    """One line of ``baton check``. ``ok`` is False only for errors; warnings pass."""

    ok: bool
    level: Literal["ok", "warn", "error"]
    message: str
    key: str | None = None


def _ok(message: str, key: str | None = None) -> CheckItem:
    return CheckItem(True, "ok", message, key)


def _warn(message: str, key: str | None = None) -> CheckItem:
    return CheckItem(True, "warn", message, key)


def _error(message: str, key: str | None = None) -> CheckItem:
    return CheckItem(False, "error", message, key)


# Shell words that are not programs: a command starting with one cannot be looked up.
_SHELL_WORDS = {
    ".", ":", "[", "alias", "break", "case", "cd", "continue", "eval",
    "exit", "export", "for", "if", "read", "return", "set", "shift", "source", "test",
    "trap", "true", "false", "ulimit", "umask", "unset", "wait", "while", "{", "(",
}  # fmt: skip
_RUNNERS = {"exec", "command"}


def _program(command: str | list[str]) -> tuple[str | None, str, str]:
    """(the program a command starts with, "", "") or (None, "error" | "unknown", why not)."""
    if isinstance(command, list):
        words = command
    else:
        try:
            words = shlex.split(command)
        except ValueError as exc:
            return None, "error", f"is not valid shell syntax ({exc})"
    # Leading VAR=value assignments and `exec`/`command` run the next word as the program.
    while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in _RUNNERS):
        words = words[1:]
    if not words:
        return None, "unknown", "has no program to check"
    program = words[0]
    if program in _SHELL_WORDS or "$" in program or "`" in program:
        return None, "unknown", f"starts with {program!r}, which cannot be checked before it runs"
    return program, "", ""


@dataclass(frozen=True)
class ProgramFacts:
    """What the host says about a program a command runs.

    ``where`` is the file looked at for a program with a ``/`` (relative to the app's
    directory), None for a bare name looked up on PATH.
    """

    where: str | None
    found: bool
    executable: bool = True


def _find_program(command: str | list[str], facts: HostFacts) -> tuple[str, str]:
    """("ok" | "error" | "unknown", explanation) for the program a command starts with."""
    program, kind, why = _program(command)
    if program is None:
        return kind, why
    seen = facts.programs.get(program)
    if seen is None:
        return "unknown", f"runs {program!r}, which was not looked up"
    if seen.where is not None:
        if not seen.found:
            return "error", f"runs {program!r}, but {seen.where} does not exist"
        if not seen.executable:
            return "error", f"runs {program!r}, but {seen.where} is not an executable file"
        return "ok", f"runs {program!r} (found)"
    if not seen.found:
        return "error", f"runs {program!r}, which is not on PATH"
    return "ok", f"runs {program!r} (on PATH)"


@dataclass(frozen=True)
class ImageFacts:
    """What ``baton check`` learnt about a docker app's image from the Docker engine.

    ``found`` is None when the engine could not be asked (``error`` says why);
    ``healthcheck`` is the image's HEALTHCHECK test, None when it declares none.
    """

    image: str
    found: bool | None
    healthcheck: list[str] | None = None
    error: str | None = None


@dataclass(frozen=True)
class CertificateFacts:
    """What ``proxy.tls.certificate``/``key`` hold: the expiry, or why they cannot serve."""

    not_after: datetime.datetime | None
    error: str | None = None


@dataclass(frozen=True)
class HostFacts:
    """Everything the checklist's rules need to know about this host, gathered once."""

    root: bool  # may bind ports below 1024
    now: datetime.datetime
    programs: Mapping[str, ProgramFacts] = field(default_factory=dict)
    certificate: CertificateFacts | None = None
    image: ImageFacts | None = None


def _commands(cfg: AppConfig) -> list[str | list[str]]:
    hooks = [getattr(cfg.hooks, name) for name in ("pre_deploy", "smoke_test", "post_deploy")]
    run = [cfg.run.command] if cfg.runtime != "docker" and cfg.run.command is not None else []
    return [*run, *(h for h in hooks if h is not None)]


def _look_up(program: str, app_dir: Path) -> ProgramFacts:
    if "/" in program:
        target = Path(program) if os.path.isabs(program) else app_dir / program
        return ProgramFacts(
            str(target),
            found=target.exists(),
            executable=target.is_file() and os.access(target, os.X_OK),
        )
    return ProgramFacts(None, found=shutil.which(program) is not None)


def _certificate(cfg: AppConfig) -> CertificateFacts | None:
    tls = cfg.proxy.tls
    if tls is None or tls.acme is not None:
        return None
    from baton.errors import CertificateError
    from baton.proxy.tls import CertPair

    assert tls.certificate is not None and tls.key is not None
    try:
        pair = CertPair.load(tls.certificate, tls.key, list(cfg.proxy.hosts), "file")
    except CertificateError as exc:
        return CertificateFacts(None, str(exc))
    return CertificateFacts(pair.info.not_after)


def gather_host_facts(loaded: LoadedConfig, image: ImageFacts | None = None) -> HostFacts:
    """Ask the host what the rules need: programs, privileges, the certificate, the time."""
    programs: dict[str, ProgramFacts] = {}
    for command in _commands(loaded.config):
        program, _, _ = _program(command)
        if program is not None and program not in programs:
            programs[program] = _look_up(program, loaded.app_dir)
    return HostFacts(
        root=os.geteuid() == 0,
        now=datetime.datetime.now(datetime.UTC),
        programs=programs,
        certificate=_certificate(loaded.config),
        image=image,
    )


def _canary_items(c: CanaryConfig) -> list[CheckItem]:
    """What ``baton check`` says about a canary: its steps, and choices users regret."""
    steps = ", ".join(f"{s.weight}% for {format_duration(s.hold)}" for s in c.steps)
    a = c.analysis
    items = [
        _ok(
            f"canary: {steps}; each step needs {a.min_requests} requests per release"
            f" (held again up to {c.max_hold_extensions} time(s), then it fails safe)",
            "deploy.canary.steps",
        )
    ]
    weights = [s.weight for s in c.steps]
    if any(later < earlier for earlier, later in pairwise(weights)):
        items.append(
            _warn(
                "deploy.canary.steps: a weight goes down; with header or client-ip stickiness,"
                " users already moved to the new release are moved back",
                "deploy.canary.steps",
            )
        )
    if c.stickiness == "none":
        items.append(
            _warn(
                "deploy.canary.stickiness is none: a user may flip between the two releases"
                " from one request to the next",
                "deploy.canary.stickiness",
            )
        )
    return items


def checklist(loaded: LoadedConfig, image: ImageFacts | None = None) -> list[CheckItem]:
    """The zero-downtime checklist ``baton check`` prints after the config validated."""
    return rules(loaded.config, gather_host_facts(loaded, image))


def rules(cfg: AppConfig, facts: HostFacts) -> list[CheckItem]:
    """The zero-downtime checklist ``baton check`` prints after the config validated.

    Decisions: for the process runtime a ``stop_timeout`` shorter than ``drain_timeout`` is
    fine, because Baton drains an instance at the proxy *before* it sends SIGTERM; only a stop
    time-out under one second is flagged, since few apps shut down gracefully that fast. For
    docker apps it is flagged (as the Docker runtime issue asks): a request the drain gave up
    on gets only ``stop_timeout`` before Docker SIGKILLs the container.

    Docker readiness: docker-proxy accepts TCP on the published port before the app inside
    listens, so for docker apps an accepted connection proves nothing. Without
    ``health.path`` a container is ready once it answers one HTTP request (``GET /``, any
    status); with an image HEALTHCHECK, Docker must also report it healthy. A docker app with
    neither a health path nor a HEALTHCHECK is warned about. ``facts.image`` carries what
    the engine said about the image (None: not asked).
    """
    image = facts.image
    d = cfg.deploy
    h = cfg.health
    items: list[CheckItem] = []
    docker = cfg.runtime == "docker"
    has_healthcheck = bool(image and image.found and image.healthcheck is not None)

    if docker:
        shown = cfg.run.image
        if image is None or image.found is None:
            why = f" ({image.error})" if image is not None and image.error else ""
            items.append(_warn(f"run.image {shown}: could not inspect it{why}", "run.image"))
        elif not image.found:
            items.append(
                _warn(
                    f"run.image {shown} is not present locally: `baton deploy` pulls it, and"
                    " fails before changing anything if it cannot",
                    "run.image",
                )
            )
        else:
            hc = "with a HEALTHCHECK" if has_healthcheck else "without a HEALTHCHECK"
            items.append(_ok(f"run.image {shown} is present locally ({hc})", "run.image"))
    else:
        assert cfg.run.command is not None
        kind, why = _find_program(cfg.run.command, facts)
        items.append(
            {"ok": _ok, "error": _error, "unknown": _warn}[kind](
                f"run.command {why}", "run.command"
            )
        )

    also = " and Docker must report the HEALTHCHECK healthy" if has_healthcheck else ""
    if h.path is None and docker and not has_healthcheck:
        items.append(
            _warn(
                "health.path is not set and the image declares no HEALTHCHECK: a container"
                " counts as ready once it answers one HTTP request (any status), which may"
                " be before it can serve; set health.path",
                "health.path",
            )
        )
    elif h.path is None and docker:
        items.append(
            _ok(f"readiness: one HTTP answer (any status){also}", "health.path"),
        )
    elif h.path is None:
        items.append(
            _warn(
                "health.path is not set: an instance counts as ready as soon as its port "
                "accepts TCP, which may be before it can serve requests",
                "health.path",
            )
        )
    else:
        items.append(
            _ok(
                f"readiness: GET {h.path} must answer 2xx {h.success_threshold} time(s) in a"
                f" row{also}",
                "health.path",
            )
        )
    if h.timeout * h.success_threshold > d.ready_timeout:
        items.append(
            _warn(
                f"deploy.ready_timeout ({format_duration(d.ready_timeout)}) is shorter than "
                f"health.timeout times success_threshold; slow checks will fail the deployment",
                "deploy.ready_timeout",
            )
        )

    if d.drain_timeout == 0:
        items.append(
            _warn(
                "deploy.drain_timeout is 0: requests in flight on the old release are cut off",
                "deploy.drain_timeout",
            )
        )
    else:
        items.append(
            _ok(
                f"old instances drain for up to {format_duration(d.drain_timeout)}",
                "deploy.drain_timeout",
            )
        )

    if docker and d.stop_timeout < d.drain_timeout:
        items.append(
            _warn(
                f"deploy.stop_timeout ({format_duration(d.stop_timeout)}) is shorter than"
                f" deploy.drain_timeout ({format_duration(d.drain_timeout)}): a request still"
                " running when the drain gives up gets only stop_timeout before Docker"
                " SIGKILLs the container",
                "deploy.stop_timeout",
            )
        )
    elif d.stop_timeout < 1:
        items.append(
            _warn(
                f"deploy.stop_timeout is {format_duration(d.stop_timeout)}: the app is "
                "SIGKILLed before most apps can shut down gracefully (1s or more recommended)",
                "deploy.stop_timeout",
            )
        )
    else:
        items.append(
            _ok(
                f"stop: SIGTERM, then SIGKILL after {format_duration(d.stop_timeout)}",
                "deploy.stop_timeout",
            )
        )

    if d.verify == 0:
        items.append(
            _warn("deploy.verify is 0: no automatic rollback after the switch", "deploy.verify")
        )
    elif d.max_error_rate >= 0.5:
        items.append(
            _warn(
                f"deploy.max_error_rate is {format_percent(d.max_error_rate)}: a release must "
                "fail at least half its requests before it is rolled back",
                "deploy.max_error_rate",
            )
        )
    elif d.max_error_rate == 0:
        items.append(
            _warn(
                "deploy.max_error_rate is 0%: a single error during verify rolls back",
                "deploy.max_error_rate",
            )
        )
    else:
        items.append(
            _ok(
                f"verify: rolls back if over {format_percent(d.max_error_rate)} of requests fail "
                f"in the first {format_duration(d.verify)}",
                "deploy.verify",
            )
        )

    if d.strategy == "canary":
        items.extend(_canary_items(d.canary))
    if d.strategy == "rolling" and cfg.instances < 2:
        items.append(
            _warn(
                "rolling deploys with 1 instance work, but 2 or more are recommended so "
                "capacity stays up while instances are replaced",
                "instances",
            )
        )
    if d.strategy == "rolling" and d.max_surge > cfg.instances:
        items.append(
            _warn(
                f"deploy.max_surge ({d.max_surge}) is more than instances ({cfg.instances}); "
                "it acts as blue-green",
                "deploy.max_surge",
            )
        )

    for name in ("pre_deploy", "smoke_test", "post_deploy"):
        command = getattr(cfg.hooks, name)
        if command is None:
            continue
        kind, why = _find_program(command, facts)
        key = f"hooks.{name}"
        items.append({"ok": _ok, "error": _error, "unknown": _ok}[kind](f"{key} {why}", key))
    if cfg.hooks.smoke_test is None:
        items.append(
            _warn(
                "hooks.smoke_test is not set: only the health check guards the switch",
                "hooks.smoke_test",
            )
        )

    host, _, port = cfg.proxy.listen.rpartition(":")
    if int(port) < 1024 and not facts.root:
        items.append(
            _warn(f"proxy.listen port {port} needs root or CAP_NET_BIND_SERVICE", "proxy.listen")
        )
    del host
    items += _tls_items(cfg, facts)
    return items


_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
EXPIRY_WARNING = 30 * 86400.0


def _tls_items(cfg: AppConfig, facts: HostFacts) -> list[CheckItem]:
    """HTTPS checks: DNS-valid hosts, port 80 for HTTP-01, certificate files and expiry."""
    tls = cfg.proxy.tls
    if tls is None:
        return []
    items: list[CheckItem] = []
    for i, host in enumerate(cfg.proxy.hosts):
        name = host[2:] if host.startswith("*.") else host
        labels = name.split(".")
        if len(labels) < 2 or not all(_DNS_LABEL.match(label) for label in labels):
            items.append(
                _warn(
                    f"proxy.hosts[{i}] {host!r} is not a DNS name a public CA can certify",
                    f"proxy.hosts[{i}]",
                )
            )
    if not cfg.proxy.hosts:
        items.append(_warn("proxy.tls without proxy.hosts: no name to choose a certificate by"))
    http_port = int((cfg.proxy.http_listen or "0.0.0.0:80").rpartition(":")[2])
    if http_port < 1024 and not facts.root:
        items.append(
            _warn(
                f"proxy.http_listen port {http_port} needs root or CAP_NET_BIND_SERVICE"
                + ("" if cfg.proxy.http_listen else " (the default with proxy.tls)"),
                "proxy.http_listen",
            )
        )
    if tls.acme is not None:
        if http_port != 80:
            items.append(
                _warn(
                    f"proxy.http_listen is on port {http_port}: ACME HTTP-01 validation "
                    "reaches port 80 (forward it here)",
                    "proxy.http_listen",
                )
            )
        if any(h.startswith("*.") for h in cfg.proxy.hosts) and tls.on_demand_ask is None:
            items.append(
                _warn(
                    "*.suffix hosts get no ACME certificate without proxy.tls.on_demand_ask",
                    "proxy.tls.on_demand_ask",
                )
            )
        return items
    cert = facts.certificate
    if cert is None or cert.not_after is None:
        why = cert.error if cert is not None and cert.error else "the certificate was not read"
        items.append(_error(why, "proxy.tls.certificate"))
        return items
    left = (cert.not_after - facts.now).total_seconds()
    when = cert.not_after.date().isoformat()
    if left < EXPIRY_WARNING:
        items.append(
            _warn(
                f"proxy.tls.certificate expires {when} ({max(0, left) / 86400:.0f} days left)",
                "proxy.tls.certificate",
            )
        )
    else:
        items.append(_ok(f"proxy.tls.certificate valid for the hosts until {when}"))
    return items
