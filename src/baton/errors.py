"""Errors a user can act on.

Every failure Baton reports to a person is one of these types; the CLI maps each to an
exit code (see ``exit_code``) and prints its message without a traceback.
"""

from __future__ import annotations


class BatonError(Exception):
    """Base of every error Baton reports to a user."""

    exit_code = 1


class ConfigError(BatonError):
    """A config file or flag is wrong. Names the file, the key and what was expected."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        where = ""
        if file and key:
            where = f"{file}: {key}: "
        elif file:
            where = f"{file}: "
        elif key:
            where = f"{key}: "
        super().__init__(f"{where}{message}")


class UsageError(BatonError):
    """Bad command-line usage; nothing changed."""

    exit_code = 2


class DaemonUnreachable(BatonError):
    """The control plane (or the Docker engine) does not answer."""

    exit_code = 3


class DeploymentLocked(BatonError):
    """Another deployment of the same app is running."""

    exit_code = 3


class DeploymentFailed(BatonError):
    """The deployment failed; users were left on the previous release."""

    exit_code = 1


class RuntimeFailure(BatonError):
    """A runtime could not start, stop or inspect an instance."""

    exit_code = 1


class ImageNotFound(RuntimeFailure):
    """A docker image is not present locally (``baton deploy`` pulls it; ``check`` says so)."""

    def __init__(self, image: str, message: str | None = None) -> None:
        self.image = image
        super().__init__(message or f"image {image!r} not found locally")


class ProxyAnswered(BatonError):
    """The proxy's admin API answered a request with an error status (``status``)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class EntryError(ValueError):
    """One entry of a list value is wrong: ``index`` says which (None: the list itself).

    ``str()`` reads ``[index]: problem``; callers that name the key put it in their words.
    """

    def __init__(self, problem: str, index: int | None = None) -> None:
        self.problem = problem
        self.index = index
        super().__init__(problem if index is None else f"[{index}]: {problem}")


class RouteTableError(BatonError):
    """A route table (snapshot) sent to the proxy is invalid; the proxy keeps the old one."""

    exit_code = 2


class ProxyProtocolError(BatonError):
    """A connection's first bytes are not a valid PROXY protocol header."""


class CertificateError(RouteTableError):
    """A certificate or key cannot serve its host (unreadable, mismatched, other names).

    Names the file and the host; whatever was serving keeps serving.
    """

    exit_code = 2


class EtcdUnavailable(BatonError):
    """No etcd endpoint answered (all down, unreachable or timed out). Names the endpoints."""

    exit_code = 3


class EtcdError(BatonError):
    """etcd answered with an error (a lease not found, a bad request); carries its message."""

    exit_code = 1


class Fenced(BatonError):
    """A fleet write refused because its writer no longer holds what it was fenced on: the
    controller's term (``/baton/controller``'s create revision) or the app's deploy lock.
    The writer was deposed (its lease lapsed while it was paused or cut off) and must stop."""

    exit_code = 3


class IllegalTransition(BatonError):
    """A state change the transition table does not allow (``baton.state.states``): a bug in
    Baton, refused by the store before anything was written. Names app, object, from, to."""

    def __init__(self, *, app: str, what: str, old: str, new: str, allowed: str) -> None:
        self.app, self.what, self.old, self.new = app, what, old, new
        super().__init__(
            f"{app}: {what} cannot go from {old!r} to {new!r} (from {old!r} it can go to:"
            f" {allowed}); nothing was changed"
        )
