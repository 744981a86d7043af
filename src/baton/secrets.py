"""Secret values: where they are read, where they are kept, and keeping them out of text.

A secret is an environment variable whose *name* is in baton.yml (``secrets:``) and whose
value is not. The CLI reads the values at deploy time from ``.baton/secrets`` beside
baton.yml (a dotenv file, refused unless only its owner can read it) or from its own
environment, and sends them in the deploy request. The control plane keeps them in one file
per app, ``<state dir>/secrets/<app>.env``, mode 0600 in a 0700 directory, written
atomically; they never go to the SQLite store, the history, the status, a log or an error
message. ``redact`` replaces every known value in a text that could echo one (a hook's
output, an instance's last log lines, an error). Parsing and redaction are pure; the file
functions are the only I/O.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from baton.errors import ConfigError, UsageError
from baton.state.files import write_private

SECRETS_FILE = Path(".baton") / "secrets"  # beside baton.yml
REDACTED = "[secret]"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPE = {"n": "\n", "r": "\r"}


def parse_dotenv(text: str, *, file: str) -> dict[str, str]:
    """``NAME=value`` lines (``export`` allowed, ``#`` comments, optional quotes).

    A line that is not an assignment is an error naming the file and line, never the value.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ConfigError(
                f"line {number}: expected NAME=value (the value is not shown)", file=file
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = _ESCAPE.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), value[1:-1])
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[name] = value
    return values


def format_dotenv(values: dict[str, str]) -> str:
    """The file ``parse_dotenv`` reads back to ``values`` (double quotes, escapes)."""
    lines = []
    for name in sorted(values):
        value = values[name].replace("\\", "\\\\").replace('"', '\\"')
        value = value.replace("\n", "\\n").replace("\r", "\\r")
        lines.append(f'{name}="{value}"')
    return "\n".join(lines) + ("\n" if lines else "")


def read_user_secrets(config_dir: Path) -> dict[str, str]:
    """The values in ``.baton/secrets`` beside baton.yml ({} when there is no such file).

    Refused (``ConfigError`` naming the file and its mode) when group or others may read or
    write it: a secret readable by every user of the host is not one.
    """
    path = config_dir / SECRETS_FILE
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", file=str(path)) from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"mode {mode:04o} lets other users read or change it; expected 0600 (chmod 600 {path})",
            file=str(path),
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", file=str(path)) from None
    return parse_dotenv(text, file=str(path))


def gather(names: Iterable[str], config_dir: Path, environ: dict[str, str]) -> dict[str, str]:
    """The values the CLI sends for ``names``: the environment first, else the file."""
    wanted = list(names)
    if not wanted:
        return {}
    from_file = read_user_secrets(config_dir)
    out: dict[str, str] = {}
    for name in wanted:
        if name in environ:
            out[name] = environ[name]
        elif name in from_file:
            out[name] = from_file[name]
    return out


def missing(names: Iterable[str], values: dict[str, str]) -> list[str]:
    return [name for name in names if name not in values]


def check_given(given: object, allowed: Iterable[str], app: str) -> dict[str, str]:
    """Validate the ``secrets`` field of an API request (names in errors, never values)."""
    if given is None:
        return {}
    if not isinstance(given, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in given.items()
    ):
        raise UsageError("secrets: expected an object of NAME: string value")
    allowed_set = set(allowed)
    for name in given:
        if not _NAME.match(name):
            raise UsageError(f"secrets: {name!r} is not an environment variable name")
        if name not in allowed_set:
            listed = ", ".join(sorted(allowed_set)) or "none"
            raise UsageError(
                f"secrets: {name} is not listed under secrets: in {app}'s baton.yml"
                f" (listed: {listed})"
            )
    return dict(given)


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``[secret]`` (longest first)."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


class SecretStore:
    """The per-app secret files of one state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "secrets"

    def path(self, app: str) -> Path:
        return self.dir / f"{app}.env"

    def read(self, app: str) -> dict[str, str]:
        try:
            text = self.path(app).read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return parse_dotenv(text, file=str(self.path(app)))

    def forget(self, app: str) -> None:
        """Remove the app's file (``baton app remove``)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(app).unlink()

    def write(self, app: str, values: dict[str, str]) -> None:
        """Replace the app's file atomically; created 0600 (never readable by others)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        write_private(self.path(app), format_dotenv(values).encode("utf-8"))
