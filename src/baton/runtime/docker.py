"""The Docker runtime: each instance is a container publishing its port on 127.0.0.1.

Theory of operation. ``DockerRuntime`` talks to the Docker Engine API through the ``docker``
SDK, whose calls block, so every call runs in a worker thread (``asyncio.to_thread``). The
client comes from ``docker.from_env()``, so ``DOCKER_HOST`` (and ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``) are honoured; it is made on first use and reused, and on a unix socket
its connections are kept alive across containers (``keep_alive``: the SDK opened a new one
for each new URL, i.e. nearly every request). An engine that does
not answer is ``DaemonUnreachable`` ("Docker engine not reachable at <host>: <reason>"),
never a traceback; the engine refusing a request is ``RuntimeFailure`` with its explanation.

What to run. ``Runtime.start(spec)`` takes one argument for every runtime, so the
container-only fields travel in ``DockerInstanceSpec``, a subclass of ``InstanceSpec``:
``image`` and ``port`` (the port the app listens on inside the container) are required,
``volumes``, ``memory``, ``cpus`` and ``network`` are optional, and ``command``/``cwd``
default to "none". ``command`` replaces the image's CMD as in ``docker run IMAGE COMMAND``
(the ENTRYPOINT stays): a list is passed as is, a string is split with ``shlex`` (there is
no ``/bin/sh`` in a ``FROM scratch`` image to run it through), ``$PORT``/``${PORT}`` in it
become the container port, and an empty command keeps the image's own. ``cwd`` is only used
to resolve relative bind-mount sources (``./data:/data``). The environment is ``spec.env``
plus ``PORT`` (the container port) and ``BATON_APP``/``BATON_VERSION``/``BATON_INSTANCE``.

A started instance. The container is named ``baton-<app>-<version>-<index>`` (characters
Docker refuses in a name become ``_``, and a short hash of the original label is appended
when that happened, so two versions never share a name); it carries the labels
``baton.managed=1``, ``baton.app``, ``baton.version``, ``baton.instance``, ``baton.port``
and ``baton.state_dir`` (this runtime's state dir). Its port is published on 127.0.0.1 only,
at a host port Docker picks; ``start`` reads it back and returns
``Instance(address="127.0.0.1:<host port>", ref=<container id>)``. A fleet host whose edges
route straight to its instances (``baton up --cluster ... --instance-ip IP``) sets ``bind``:
the port is then published on that private address instead, and the address is
``IP:<host port>``, reachable from the other hosts. A container that exits
before Docker has published its port has no address: ``start`` removes it and raises
``RuntimeFailure`` with its exit status and last log lines. A leftover container with the
same name and the same identity (app, version, index, state dir) is removed first; one with
that name that is not ours is never touched (``RuntimeFailure``).

``start`` does not pull: call ``ensure_image`` first, so a missing image fails a deployment
before anything changes. A pull that makes no progress for ``pull_idle_timeout`` seconds (or
takes longer than ``pull_timeout``) is abandoned.

Records. The labels, not this object, are the source of truth: a control plane that crashed
and restarted builds a new ``DockerRuntime`` on the same state dir and ``owned()`` lists
every container labelled with that state dir, running or not (exited ones too, so they can
be removed). Containers of other state dirs (another Baton, a test suite) are never listed
nor removed. A small JSON record per container under ``<state_dir>/docker/`` keeps what the
labels cannot (the host port Docker chose, the log file) so an exited container still has
the address it was started with.

Watching. The deploy engine asks ``alive`` and ``healthy`` before every readiness probe,
many times a second per instance; an Engine API inspect for each would cost a thread hop and
a round trip to the engine every time (tens of ms on a busy host). So the runtime follows
Docker's events stream for the containers of its state dir (``ContainerStates``, fed by a
daemon thread) and answers from it: a container is inspected once (by ``start`` itself,
which inspects it anyway for its port, or when first asked about), and from then on each
``start``/``die``/``destroy``/``health_status`` event updates what is known. Docker
subscribes the stream before it sends the answer's headers, and an inspect is only merged
when it started after those headers came, so no event after the inspect is missed; while the stream is not connected, or after it broke, every question is an inspect
again (and the next one re-subscribes). Only Baton's containers (``baton.managed=1``)
labelled with this state dir are remembered: the stream never reports the others. So a
remembered container is known to be Baton's, and ``stop`` needs no inspect to check it.

Stopping is ``docker stop`` with the grace period (the image's STOPSIGNAL, SIGTERM unless it
says otherwise, then SIGKILL), then the container's logs are saved to
``<log_dir>/<app>-<version>-<index>.log`` (``Instance.log_path``) and the container and its
anonymous volumes are removed. ``logs`` reads the container while it exists and that file
afterwards. Note that a PID 1 without a SIGTERM handler ignores SIGTERM inside a container:
such images are stopped by the SIGKILL at the end of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from baton.errors import (
    BatonError,
    DaemonUnreachable,
    DeploymentFailed,
    ImageNotFound,
    RuntimeFailure,
)
from baton.runtime.base import Instance, InstanceSpec
from baton.runtime.logtail import last_lines, tail_file
from baton.state.files import open_private, write_private

if TYPE_CHECKING:
    from baton.config import AppConfig

T = TypeVar("T")

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

LABEL_MANAGED = "baton.managed"
LABEL_APP = "baton.app"
LABEL_VERSION = "baton.version"
LABEL_INSTANCE = "baton.instance"
LABEL_PORT = "baton.port"
LABEL_STATE_DIR = "baton.state_dir"

_API_TIMEOUT = 30.0  # seconds for one ordinary Engine API call (stop adds its grace period)
_PULL_TIMEOUT = 600.0
_PULL_IDLE_TIMEOUT = 30.0
_LOG_TAIL_ON_FAILURE = 20
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_FORBIDDEN_NETWORKS = ("host", "none")


@dataclass(frozen=True, kw_only=True)
class DockerInstanceSpec(InstanceSpec):
    """An ``InstanceSpec`` for the Docker runtime; see the module docstring for the fields.

    ``memory`` is Docker's notation ("512m", "1g", bytes without a unit); ``cpus`` is a
    fraction of CPUs (0.5 = half of one); ``volumes`` are ``"SOURCE:TARGET[:ro|rw]"``, the
    source a named volume or a host path (relative paths are resolved from ``cwd``);
    ``network`` is a user-defined network to attach the container to instead of the default
    bridge.
    """

    # Same positions as in InstanceSpec, now with defaults; the fields below are keyword-only.
    command: str | list[str] = field(default="", kw_only=False)
    cwd: Path = field(default=Path("."), kw_only=False)
    image: str
    port: int
    volumes: Sequence[str] = ()
    memory: str | None = None
    cpus: float | None = None
    network: str | None = None


def _sdk() -> Any:
    try:
        import docker
    except ImportError:
        raise RuntimeFailure(
            "the Docker runtime needs the `docker` Python package (pip install docker)"
        ) from None
    return docker


def _safe_name_part(label: str) -> str:
    safe = _NAME_BAD.sub("_", label)[:63] or "_"
    if safe != label:
        safe += "-" + hashlib.sha1(label.encode()).hexdigest()[:8]
    return safe


def container_name(app: str, version: str, index: int) -> str:
    """``baton-<app>-<version>-<index>``, made fit for Docker's name rules."""
    return f"baton-{_safe_name_part(app)}-{_safe_name_part(version)}-{index}"


def _command(command: str | list[str], port: int) -> list[str] | None:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        return None
    return [a.replace("${PORT}", str(port)).replace("$PORT", str(port)) for a in argv]


def _volumes(spec: DockerInstanceSpec) -> list[str]:
    who = f"{spec.app} {spec.version} #{spec.index}"
    out = []
    for volume in spec.volumes:
        parts = volume.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/"):
            raise RuntimeFailure(
                f"{who}: volume {volume!r}: expected SOURCE:/TARGET[:ro|rw]"
                " (SOURCE a volume name or a host path)"
            )
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise RuntimeFailure(f"{who}: volume {volume!r}: the mode must be ro or rw")
        source = parts[0]
        if source.startswith((".", "~")):
            source = str((Path(spec.cwd) / Path(source).expanduser()).resolve())
        out.append(":".join([source, *parts[1:]]))
    return out


def _published_port(attrs: dict[str, Any], port: int, host_ip: str = "127.0.0.1") -> int | None:
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{port}/tcp") or []:
        if binding.get("HostIp") == host_ip and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def demultiplex(raw: bytes) -> bytes:
    """The output in Docker's multiplexed log format (frames of an 8-byte header: stream
    0/1/2, three zero bytes, a big-endian length; then that many bytes) as one byte string,
    frames in order. Anything else (a TTY container's raw output) is returned as it is."""
    out = []
    at = 0
    while at < len(raw):
        header = raw[at : at + 8]
        if len(header) < 8 or header[0] > 2 or header[1:4] != b"\0\0\0":
            return raw
        size = int.from_bytes(header[4:8], "big")
        out.append(raw[at + 8 : at + 8 + size])
        at += 8 + size
    return b"".join(out)


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation)
    return str(exc) or type(exc).__name__


def _reason(exc: BaseException) -> str:
    """The most telling cause of a connection failure (an OS error's text, if there is one)."""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, TimeoutError) or "Timeout" in type(current).__name__:
            return "no answer (timed out)"
        queue.extend(a for a in current.args if isinstance(a, BaseException))
        for nested in (current.__cause__, current.__context__):
            if nested is not None:
                queue.append(nested)
    return str(exc) or type(exc).__name__


_UNIX_POOL_KEY = "http+docker://localhost"
_UNIX_POOL_SIZE = 32  # connections kept open to the engine's socket (streams hold one each)


def keep_alive(client: Any) -> bool:
    """Make a client on a unix socket reuse its connections for every Engine API path.

    The SDK's unix-socket adapter keeps one connection pool per URL, so each new path (a
    container's create, start, inspect, stop, logs, remove: every new container id) opened
    a new connection to the engine (26 for two cycles of two containers started, probed
    ready and stopped; at most 4 with this). All paths share one pool here (a pool's URL
    only names it: every connection goes to the same socket).
    Returns whether the client was changed (a TCP or ssh client is left as it is: requests
    already keys those pools by host).
    """
    adapters = getattr(getattr(client, "api", None), "adapters", None) or {}
    adapter: Any = adapters.get("http+docker://")
    get_connection = getattr(adapter, "get_connection", None)
    if get_connection is None or not hasattr(adapter, "socket_path"):
        return False
    if getattr(adapter, "max_pool_size", 0) < _UNIX_POOL_SIZE:
        adapter.max_pool_size = _UNIX_POOL_SIZE  # read when the shared pool is made

    def one_pool(url: str, proxies: Any = None) -> Any:
        return get_connection(_UNIX_POOL_KEY, proxies)

    adapter.get_connection = one_pool
    return True


@dataclass
class ContainerState:
    """What is known of one container: each field None until an inspect or an event says.

    ``health`` is Docker's HEALTHCHECK status ("starting", "healthy", "unhealthy");
    ``has_healthcheck`` whether its config declares one (an inspect tells, events do not).
    """

    exists: bool | None = None
    running: bool | None = None
    health: str | None = None
    has_healthcheck: bool | None = None

    @property
    def known(self) -> bool:
        return self.exists is False or (
            self.running is not None and self.has_healthcheck is not None
        )


_MAX_STATES = 4096  # containers remembered by ContainerStates before gone ones are pruned
_RUNNING_ACTIONS = {"start": True, "restart": True, "unpause": True, "die": False, "pause": False}


def state_from_inspect(attrs: dict[str, Any] | None) -> ContainerState:
    """What an inspect says (None: the container is gone)."""
    if attrs is None:
        return ContainerState(exists=False, running=False, has_healthcheck=False)
    test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test")
    state = attrs.get("State") or {}
    return ContainerState(
        exists=True,
        running=state.get("Status") == "running",
        health=(state.get("Health") or {}).get("Status"),
        has_healthcheck=bool(test) and test != ["NONE"],
    )


def apply_event(state: ContainerState, event: dict[str, Any]) -> None:
    """Update ``state`` with one container event of Docker's events stream."""
    action = str(event.get("Action") or event.get("status") or "")
    if action == "destroy":
        state.exists, state.running = False, False
    elif action.startswith("health_status"):
        state.health = action.partition(":")[2].strip() or None
    elif action in _RUNNING_ACTIONS:
        state.exists = True
        state.running = _RUNNING_ACTIONS[action]
        if action == "start" and state.has_healthcheck:
            state.health = "starting"


def merge_inspect(state: ContainerState, seen: ContainerState) -> None:
    """Fill what ``state`` does not know yet from an inspect: events that arrived while the
    inspect ran are newer than it, so they win."""
    if state.exists is None:
        state.exists = seen.exists
    if state.running is None:
        state.running = seen.running
    if state.health is None:
        state.health = seen.health
    if state.has_healthcheck is None:
        state.has_healthcheck = seen.has_healthcheck


class ContainerStates:
    """The containers of one state dir as Docker's events stream reports them.

    ``ensure(connect)`` opens the stream in a daemon thread that applies its events until
    it ends or ``close``; ``generation`` changes each time the stream (re)connects or
    breaks, so an inspect started under one subscription is only merged (``seed``) under
    the same one. ``get`` answers only while the stream is connected.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self._states: dict[str, ContainerState] = {}
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._generation = 0
        self._last_attempt = -math.inf

    @property
    def live(self) -> bool:
        return self._connected.is_set()

    def generation(self) -> int:
        with self._lock:
            return self._generation if self._connected.is_set() else -1

    def get(self, ref: str) -> ContainerState | None:
        """What the stream knows of ``ref``, when it is connected and knows enough."""
        with self._lock:
            state = self._states.get(ref)
            if not self._connected.is_set() or state is None or not state.known:
                return None
            return ContainerState(**vars(state))

    def seed(self, ref: str, seen: ContainerState, generation: int) -> None:
        with self._lock:
            if generation < 0 or generation != self._generation or not self._connected.is_set():
                return
            merge_inspect(self._states.setdefault(ref, ContainerState()), seen)

    def ensure(self, connect: Callable[[], Any], retry_after: float = 1.0) -> None:
        """Start following the stream unless it runs (or failed less than ``retry_after``
        s ago); returns at once, the subscription is made in a daemon thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            now = time.monotonic()
            if now - self._last_attempt < retry_after:
                return
            self._last_attempt = now
            self._thread = threading.Thread(
                target=self._follow, args=(connect,), name="baton-docker-events", daemon=True
            )
            self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _follow(self, connect: Callable[[], Any]) -> None:
        stream: Any = None
        try:
            client = connect()
            stream = client.api.events(
                decode=True,
                filters={"type": "container", "label": [f"{LABEL_STATE_DIR}={self.state_dir}"]},
            )
            with self._lock:
                self._stream = stream
                self._states.clear()
                self._generation += 1
                self._connected.set()
            for event in stream:
                if not isinstance(event, dict):
                    continue
                actor = event.get("Actor") or {}
                ref = str(event.get("id") or actor.get("ID") or "")
                # Only Baton's own (a container given this state dir's label by hand is not):
                # a container known here is one ``stop`` may touch without checking.
                if not ref or (actor.get("Attributes") or {}).get(LABEL_MANAGED) != "1":
                    continue
                with self._lock:
                    apply_event(self._states.setdefault(ref, ContainerState()), event)
                    if len(self._states) > _MAX_STATES:
                        self._prune()
        except Exception:
            pass  # the engine went away or close() cut the stream: fall back to inspects
        finally:
            with self._lock:
                self._connected.clear()
                self._generation += 1
                self._states.clear()
                self._stream = None
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    def _prune(self) -> None:
        # Removed containers stay known as gone (an inspect racing their removal must not
        # bring them back as running); the oldest of them go once there are many.
        gone = [ref for ref, state in self._states.items() if state.exists is False]
        for ref in gone[: len(gone) // 2 + 1]:
            del self._states[ref]

    def close(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
            self._connected.clear()
            self._generation += 1
            self._states.clear()
            self._last_attempt = -math.inf
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


_RECENT_IMAGE_SECONDS = 5.0


class RecentImages:
    """Image inspects just made, each answered once more within a few seconds.

    A deploy's prepare asks whether its image is there (``ensure_image``) and, right after,
    which ID it is (``resolve_image``): the second question is answered from the first
    inspect instead of a second round trip to the engine. Kept ``ttl`` seconds and used
    once, so a tag moved later is read again; a moved tag between the two questions of one
    prepare changes nothing either way (the release records the ID it was given).
    """

    def __init__(self, ttl: float = _RECENT_IMAGE_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, dict[str, Any]]] = {}

    def remember(self, image: str, attrs: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.ttl}
            self._seen[image] = (now, attrs)

    def recall(self, image: str) -> dict[str, Any] | None:
        with self._lock:
            seen = self._seen.pop(image, None)
        if seen is None or time.monotonic() - seen[0] >= self.ttl:
            return None
        return seen[1]


class DockerRuntime:
    """Runs instances as Docker containers. See the module docstring."""

    name = "docker"
    # docker-proxy accepts on the published port before the app in the container listens.
    tcp_proves_listening = False

    def __init__(
        self,
        state_dir: Path,
        client_factory: Callable[[], Any] | None = None,
        *,
        pull_timeout: float = _PULL_TIMEOUT,
        pull_idle_timeout: float = _PULL_IDLE_TIMEOUT,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.records_dir = self.state_dir / "docker"
        self.pull_timeout = pull_timeout
        self.pull_idle_timeout = pull_idle_timeout
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()
        self.states = ContainerStates(self.state_dir)
        self._images = RecentImages()
        self.bind = "127.0.0.1"  # where ports are published (see "A started instance")

    # ----------------------------------------------------------------- the client

    @property
    def host(self) -> str:
        """Where the engine is expected: ``DOCKER_HOST``, or Docker's default socket."""
        return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST

    def _unreachable(self, exc: BaseException) -> DaemonUnreachable:
        return DaemonUnreachable(f"Docker engine not reachable at {self.host}: {_reason(exc)}")

    def _connect(self) -> Any:
        """The client, made on first use (in a worker thread: it asks the engine's version)."""
        with self._lock:
            if self._client is None:
                docker = _sdk()
                try:
                    if self._factory is not None:
                        self._client = self._factory()
                    else:
                        self._client = docker.from_env(timeout=int(_API_TIMEOUT))
                except (OSError, docker.errors.DockerException) as exc:
                    raise self._unreachable(exc) from None
                keep_alive(self._client)
            return self._client

    def _sync(self, fn: Callable[[Any], T]) -> T:
        client = self._connect()
        docker = _sdk()
        try:
            return fn(client)
        except BatonError:
            raise
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"Docker engine: {_explain(exc)}") from None
        except OSError as exc:  # requests' connection errors and time-outs are OSErrors
            raise self._unreachable(exc) from None
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"Docker: {_explain(exc)}") from None

    async def _run(self, fn: Callable[[Any], T]) -> T:
        return await asyncio.to_thread(self._sync, fn)

    def close(self) -> None:
        """Close the client's connections (a later call opens new ones)."""
        self.states.close()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # ----------------------------------------------------------------- records

    def _record_path(self, container_id: str) -> Path:
        return self.records_dir / f"{container_id}.json"

    def _write_record(self, instance: Instance, name: str) -> None:
        record = {
            "runtime": self.name,
            "id": instance.ref,
            "name": name,
            "app": instance.app,
            "version": instance.version,
            "index": instance.index,
            "address": instance.address,
            "log_path": str(instance.log_path) if instance.log_path else None,
        }
        # Not fsync'ed (it was, 4-16 ms per instance on a busy disk, in each start's path):
        # the labels stay the source of truth, and what the record adds (an exited
        # container's address and log file) a power loss makes moot, as for the process
        # runtime's records: the containers are then orphans, listed by label and removed.
        with contextlib.suppress(OSError):
            write_private(
                self._record_path(instance.ref),
                json.dumps(record, indent=1).encode(),
                durable=False,
            )

    def _read_record(self, container_id: str) -> dict[str, Any]:
        try:
            record = json.loads(self._record_path(container_id).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _remove_record(self, container_id: str) -> None:
        with contextlib.suppress(OSError):
            self._record_path(container_id).unlink()

    # ----------------------------------------------------------------- images

    async def ensure_image(self, image: str) -> None:
        """Return when ``image`` exists locally or was pulled; else ``DeploymentFailed``."""
        docker = _sdk()
        if not image or any(c.isspace() for c in image):
            raise DeploymentFailed(f"image {image!r} is not a valid image reference")

        def local(client: Any) -> str | None:
            try:
                attrs = client.api.inspect_image(image)
            except docker.errors.ImageNotFound:
                return "not found"
            except docker.errors.APIError as exc:
                return _explain(exc)
            self._images.remember(image, attrs)
            return None

        missing = await self._run(local)
        if missing is None:
            return
        try:
            await self._pull(image)
        except DeploymentFailed:
            raise
        except RuntimeFailure as exc:
            raise DeploymentFailed(
                f"image {image!r} not found locally and could not be pulled: {exc}"
            ) from None
        if await self._run(local) is not None:
            raise DeploymentFailed(
                f"image {image!r} not found locally and could not be pulled: "
                "the pull ended without the image"
            )

    async def _pull(self, image: str) -> None:
        """Pull in a daemon thread, watched for progress: the SDK sets no time-out on pulls."""
        docker = _sdk()
        repository, tag = docker.utils.parse_repository_tag(image)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        last_progress = [time.monotonic()]

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def pull(client: Any) -> None:
            stream = client.api.pull(repository, tag=tag or "latest", stream=True, decode=True)
            for message in stream:
                last_progress[0] = time.monotonic()
                if isinstance(message, dict) and message.get("error"):
                    raise RuntimeFailure(str(message["error"]).strip())

        def work() -> None:
            error: BaseException | None = None
            try:
                self._sync(pull)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be gone
                loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=work, name=f"baton-pull {image}", daemon=True).start()
        started = time.monotonic()
        try:
            while True:
                await asyncio.wait([done], timeout=0.2)
                if done.done():
                    done.result()
                    return
                now = time.monotonic()
                if now - last_progress[0] > self.pull_idle_timeout:
                    why = f"the pull made no progress for {now - last_progress[0]:.0f}s"
                elif now - started > self.pull_timeout:
                    why = f"the pull took longer than {self.pull_timeout:.0f}s"
                else:
                    continue
                raise DeploymentFailed(
                    f"image {image!r} not found locally and could not be pulled: {why}"
                )
        finally:
            if not done.done():
                done.cancel()  # the abandoned thread's late answer is then dropped

    async def resolve_image(self, image: str) -> tuple[str, str | None]:
        """The image's ID (``sha256:...``) and, when Docker knows one, its RepoDigest
        (``repo@sha256:...``): what a release records and runs, so a moved tag changes
        nothing. ``DeploymentFailed`` naming the image when it is not there."""
        docker = _sdk()

        def facts(attrs: dict[str, Any]) -> tuple[str, str | None]:
            digests = attrs.get("RepoDigests") or []
            return str(attrs["Id"]), (str(digests[0]) if digests else None)

        recent = self._images.recall(image)
        if recent is not None:  # the prepare's own inspect: no thread hop to answer it
            return facts(recent)

        def inspect(client: Any) -> tuple[str, str | None]:
            try:
                attrs = client.api.inspect_image(image)
            except docker.errors.ImageNotFound:
                raise DeploymentFailed(f"image {image!r} not found locally") from None
            except docker.errors.APIError as exc:
                raise DeploymentFailed(f"image {image!r}: {_explain(exc)}") from None
            return facts(attrs)

        result: tuple[str, str | None] = await self._run(inspect)
        return result

    async def image_healthcheck(self, image: str) -> list[str] | None:
        """The image's HEALTHCHECK test (e.g. ``["CMD", ...]``), None when it declares none."""
        docker = _sdk()

        def get(client: Any) -> list[str] | None:
            try:
                attrs = client.images.get(image).attrs
            except docker.errors.ImageNotFound:
                raise ImageNotFound(image) from None
            test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test")
            if not test or test == ["NONE"]:
                return None
            return [str(t) for t in test]

        return await self._run(get)

    # ----------------------------------------------------------------- the engine's view

    def spec(self, cfg: AppConfig, base: InstanceSpec) -> InstanceSpec:
        """A ``DockerInstanceSpec`` from ``base`` and the app's ``run.*`` container keys."""
        run = cfg.run
        if run.image is None or run.port is None:
            raise RuntimeFailure(f"{base.app}: runtime docker needs run.image and run.port")
        return DockerInstanceSpec(
            app=base.app,
            version=base.version,
            index=base.index,
            command=base.command or "",
            cwd=base.cwd,
            env=dict(base.env),
            log_dir=base.log_dir,
            image=run.image,
            port=run.port,
            volumes=tuple(run.volumes),
            memory=run.memory,
            cpus=run.cpus,
            network=run.network,
        )

    async def prepare(self, cfg: AppConfig) -> None:
        """The image exists locally, or is pulled now; else ``DeploymentFailed`` naming it."""
        if cfg.run.image is None:
            raise DeploymentFailed(f"{cfg.app}: runtime docker needs run.image")
        await self.ensure_image(cfg.run.image)

    async def follow_logs(self, instance: Instance) -> AsyncIterator[str]:
        """The container's new log lines (a streaming ``docker logs -f --tail 0``)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        streams: list[Any] = []
        closed = threading.Event()

        def put(item: str | BaseException | None) -> None:
            if not closed.is_set():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            errors = _sdk().errors
            try:

                def open_stream(client: Any) -> Any:
                    container = self._get(client, instance.ref)
                    if container is None:
                        return None
                    try:
                        return container.logs(
                            stdout=True, stderr=True, stream=True, follow=True, tail=0
                        )
                    except errors.NotFound:
                        return None

                stream = self._sync(open_stream)
                if stream is None:
                    return
                streams.append(stream)
                if closed.is_set():
                    return
                rest = b""
                for chunk in stream:
                    *lines, rest = (rest + chunk).split(b"\n")
                    for line in lines:
                        put(line.decode(errors="replace"))
                if rest:
                    put(rest.decode(errors="replace"))
            except BatonError as exc:
                put(exc)
            except Exception:
                pass  # the stream was closed under us: the caller stopped following
            finally:
                put(None)

        thread = threading.Thread(target=pump, name="baton-docker-logs", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            closed.set()
            for stream in streams:
                with contextlib.suppress(Exception):
                    stream.close()

    # ----------------------------------------------------------------- interface

    async def start(self, spec: InstanceSpec) -> Instance:
        if not isinstance(spec, DockerInstanceSpec):
            raise RuntimeFailure(
                f"{spec.app} {spec.version} #{spec.index}: the docker runtime needs a"
                " DockerInstanceSpec (image, port), got a plain InstanceSpec"
            )
        who = f"{spec.app} {spec.version} #{spec.index}"
        if not spec.image:
            raise RuntimeFailure(f"{who}: no image")
        if not 1 <= spec.port <= 65535:
            raise RuntimeFailure(f"{who}: port {spec.port} is not a TCP port (1-65535)")
        if spec.cpus is not None and not spec.cpus > 0:
            raise RuntimeFailure(f"{who}: cpus must be more than 0, got {spec.cpus}")
        network = spec.network or None
        if network is not None and (
            network in _FORBIDDEN_NETWORKS or network.startswith("container:")
        ):
            raise RuntimeFailure(
                f"{who}: network {network!r}: expected a user-defined network; the app port"
                " must be published on 127.0.0.1, which host/none/container networking cannot do"
            )
        name = container_name(spec.app, spec.version, spec.index)
        labels = {
            LABEL_MANAGED: "1",
            LABEL_APP: spec.app,
            LABEL_VERSION: spec.version,
            LABEL_INSTANCE: str(spec.index),
            LABEL_PORT: str(spec.port),
            LABEL_STATE_DIR: str(self.state_dir),
        }
        env = {
            **spec.env,
            "PORT": str(spec.port),
            "BATON_APP": spec.app,
            "BATON_VERSION": spec.version,
            "BATON_INSTANCE": str(spec.index),
        }
        options: dict[str, Any] = {
            "image": spec.image,
            "name": name,
            "command": _command(spec.command, spec.port),
            "environment": env,
            "labels": labels,
            "detach": True,
        }
        host_options: dict[str, Any] = {"port_bindings": {spec.port: (self.bind, None)}}
        volumes = _volumes(spec)
        if volumes:
            host_options["binds"] = volumes
            options["volumes"] = [v.split(":")[1] for v in volumes]
        if spec.memory:
            host_options["mem_limit"] = spec.memory
        if spec.cpus is not None:
            host_options["nano_cpus"] = round(spec.cpus * 1e9)
        if network is not None:
            host_options["network_mode"] = network
            options["networking_config"] = {network: None}

        self._follow_events()
        # Taken before the container exists, so the inspect that ends the start (which we
        # need anyway for the published port) may seed the events stream's view of it: the
        # first readiness probe then needs no inspect of its own.
        generation = self.states.generation()
        log_path = (Path(spec.log_dir) / f"{name.removeprefix('baton-')}.log").absolute()

        def start(client: Any) -> tuple[Instance, dict[str, Any]]:
            container_id, attrs = self._start_sync(client, spec, name, options, host_options)
            instance = Instance(
                app=spec.app,
                version=spec.version,
                index=spec.index,
                address=f"{self.bind}:{_published_port(attrs, spec.port, self.bind)}",
                ref=container_id,
                log_path=log_path,
            )
            # In this worker thread too: the record is fsync'ed (milliseconds, more on a busy
            # disk) and the event loop has readiness probes to run meanwhile.
            self._write_record(instance, name)
            return instance, attrs

        instance, attrs = await self._run(start)
        self.states.seed(instance.ref, state_from_inspect(attrs), generation)
        return instance

    def _start_sync(
        self,
        client: Any,
        spec: DockerInstanceSpec,
        name: str,
        options: dict[str, Any],
        host_options: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        """Create, start and inspect the container: three Engine API calls (the SDK's
        ``containers.create`` would add an inspect of its own after the create)."""
        docker = _sdk()
        errors = docker.errors
        api = client.api
        who = f"{spec.app} {spec.version} #{spec.index}"
        try:
            args = {
                **options,
                "host_config": api.create_host_config(**host_options),
                "ports": [(str(spec.port), "tcp")],
            }
            try:
                created = api.create_container(**args)
            except errors.APIError as exc:
                # The name is taken (409): a leftover of this very instance is replaced; any
                # other container keeps it. Checked only then, which saves a round trip.
                if exc.status_code != 409:
                    raise
                self._remove_leftover(client, spec, name)
                created = api.create_container(**args)
        except errors.ImageNotFound:
            raise ImageNotFound(
                spec.image, f"{who}: image {spec.image!r} not found locally (ensure_image pulls it)"
            ) from None
        except errors.APIError as exc:
            raise RuntimeFailure(
                f"{who}: cannot create container {name}: {_explain(exc)}"
            ) from None
        except (errors.DockerException, ValueError, TypeError) as exc:
            if isinstance(exc, OSError):
                raise
            raise RuntimeFailure(f"{who}: cannot create container {name}: {exc}") from None
        container_id = str(created["Id"])
        try:
            api.start(container_id)
            attrs: dict[str, Any] = dict(api.inspect_container(container_id))
            if _published_port(attrs, spec.port, self.bind) is not None:
                return container_id, attrs
            state = attrs.get("State") or {}
            tail = last_lines(
                api.logs(container_id, stdout=True, stderr=True, tail=_LOG_TAIL_ON_FAILURE), None
            )
            status = state.get("ExitCode")
            how = (
                f"exited at once with status {status}"
                if not state.get("Running")
                else "is running but Docker published no port for it"
            )
            details = ": " + " | ".join(tail) if tail else ""
            raise RuntimeFailure(f"{who}: container {name} {how}{details}")
        except errors.APIError as exc:
            self._discard(client, container_id)
            raise RuntimeFailure(
                f"{who}: container {name} did not start: {_explain(exc)}"
            ) from None
        except BaseException:
            self._discard(client, container_id)
            raise

    def _discard(self, client: Any, container_id: str) -> None:
        with contextlib.suppress(Exception):
            client.api.remove_container(container_id, force=True, v=True)

    def _remove_leftover(self, client: Any, spec: DockerInstanceSpec, name: str) -> None:
        errors = _sdk().errors
        try:
            old = client.containers.get(name)
        except errors.NotFound:
            return
        labels = (old.attrs.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_MANAGED) != "1":
            raise RuntimeFailure(
                f"a container named {name} already exists and Baton does not manage it"
                f" (no {LABEL_MANAGED} label); remove or rename it"
            )
        identity = (labels.get(LABEL_APP), labels.get(LABEL_VERSION), labels.get(LABEL_INSTANCE))
        if identity != (spec.app, spec.version, str(spec.index)) or labels.get(
            LABEL_STATE_DIR
        ) != str(self.state_dir):
            raise RuntimeFailure(
                f"a container named {name} already exists for {identity[0]} {identity[1]}"
                f" #{identity[2]} of the Baton state dir {labels.get(LABEL_STATE_DIR)};"
                " not touching it"
            )
        try:
            old.remove(force=True, v=True)
        except errors.NotFound:
            pass
        self._remove_record(str(old.id))

    def _managed(self, container: Any) -> bool:
        labels = (container.attrs.get("Config") or {}).get("Labels") or {}
        return bool(labels.get(LABEL_MANAGED) == "1")

    def _get(self, client: Any, ref: str) -> Any:
        """The container, or None when it is gone; ``RuntimeFailure`` if it is not ours."""
        errors = _sdk().errors
        try:
            container = client.containers.get(ref)
        except errors.NotFound:
            return None
        if not self._managed(container):
            raise RuntimeFailure(f"container {ref} is not managed by Baton; not touching it")
        return container

    async def stop(self, instance: Instance, timeout: float) -> None:
        errors = _sdk().errors
        grace = max(0, math.ceil(timeout))

        def stop(client: Any) -> bytes | None:
            ref = instance.ref
            # A container the events stream knows carries this state dir's label, so it is
            # ours: no inspect to check its labels first. Any other is checked (and one that
            # is not Baton's is never touched).
            known = self.states.get(ref)
            if known is not None and not known.exists:
                return None
            if known is None and self._get(client, ref) is None:
                return None
            api = client.api
            try:
                api.stop(ref, timeout=grace)
            except errors.NotFound:
                return None
            logs: bytes | None = None
            with contextlib.suppress(errors.APIError, OSError, ValueError):
                logs = self._saved_logs(api, ref)
            try:
                api.remove_container(ref, force=True, v=True)
            except errors.NotFound:
                pass
            except errors.APIError as exc:
                if "already in progress" not in _explain(exc):
                    raise
            return logs

        logs = await self._run(stop)
        path = instance.log_path or self._record_log_path(instance.ref)
        if logs is not None and path is not None:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open_private(path) as saved:
                    saved.truncate(0)
                    saved.write(logs)
        self._remove_record(instance.ref)

    def _saved_logs(self, api: Any, ref: str) -> bytes:
        """The container's whole output, in one request (the SDK's ``logs`` inspects the
        container first to learn whether it has a TTY: Baton never gives one)."""
        url = f"{api.base_url}/v{api.api_version}/containers/{ref}/logs"
        response = api.get(
            url, params={"stdout": 1, "stderr": 1, "tail": "all"}, timeout=_API_TIMEOUT
        )
        if response.status_code == 404:
            raise _sdk().errors.NotFound(f"no container {ref}")
        response.raise_for_status()
        return demultiplex(bytes(response.content))

    def _record_log_path(self, ref: str) -> Path | None:
        log_path = self._read_record(ref).get("log_path")
        return Path(log_path) if log_path else None

    def _inspect(self, ref: str) -> Callable[[Any], dict[str, Any] | None]:
        def inspect(client: Any) -> dict[str, Any] | None:
            container = self._get(client, ref)
            return None if container is None else dict(container.attrs)

        return inspect

    def _follow_events(self) -> None:
        """Follow the events stream (if it does not run yet); see "Watching" above."""
        self.states.ensure(self._connect)

    async def state(self, ref: str) -> ContainerState:
        """What is known of container ``ref``: from the events stream, else an inspect."""
        self._follow_events()
        known = self.states.get(ref)
        if known is not None:
            return known
        generation = self.states.generation()
        attrs = await self._run(self._inspect(ref))
        seen = state_from_inspect(attrs)
        labels = ((attrs or {}).get("Config") or {}).get("Labels") or {}
        # The stream only reports containers labelled with this state dir: any other one
        # (the same dir spelt another way) is inspected each time, never remembered stale.
        ours = (
            labels.get(LABEL_STATE_DIR) == str(self.state_dir) and labels.get(LABEL_MANAGED) == "1"
        )
        if attrs is None or ours:
            self.states.seed(ref, seen, generation)
        return seen

    async def alive(self, instance: Instance) -> bool:
        return bool((await self.state(instance.ref)).running)

    async def healthy(self, instance: Instance) -> bool | None:
        """None when the image declares no HEALTHCHECK, else whether Docker says ``healthy``.

        A container that is gone or not running is not healthy (False).
        """
        state = await self.state(instance.ref)
        if not state.exists:
            return False
        if not state.has_healthcheck:
            return None
        if not state.running:
            return False
        return state.health == "healthy"

    async def exit_code(self, instance: Instance) -> int | None:
        """The container's exit status once it has exited, else None (running or gone)."""
        attrs = await self._run(self._inspect(instance.ref))
        if attrs is None:
            return None
        state = attrs.get("State") or {}
        if state.get("Status") not in ("exited", "dead"):
            return None
        code = state.get("ExitCode")
        return int(code) if code is not None else None

    async def logs(self, instance: Instance, lines: int | None = None) -> list[str]:
        if lines is not None and lines <= 0:
            return []

        def read(client: Any) -> bytes | None:
            container = self._get(client, instance.ref)
            if container is None:
                return None
            errors = _sdk().errors
            try:
                data: bytes = container.logs(
                    stdout=True, stderr=True, tail="all" if lines is None else lines
                )
            except errors.NotFound:
                return None
            return data

        data = await self._run(read)
        if data is not None:
            return last_lines(data, lines)
        path = instance.log_path or self._record_log_path(instance.ref)
        if path is None:
            return []
        return await asyncio.to_thread(tail_file, path, lines)

    async def owned(self) -> list[Instance]:
        """Every container of this state dir, running or not (exited ones are listed too)."""

        def listing(client: Any) -> list[dict[str, Any]]:
            containers = client.containers.list(
                all=True,
                filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_STATE_DIR}={self.state_dir}"]},
                ignore_removed=True,
            )
            return [dict(c.attrs) for c in containers]

        listed_at = time.time()
        found = []
        for attrs in await self._run(listing):
            instance = self._instance_from(attrs)
            if instance is not None:
                found.append(instance)
        found.sort(key=lambda i: (i.app, i.version, i.index, i.ref))
        self._prune_records({i.ref for i in found}, older_than=listed_at)
        return found

    def _instance_from(self, attrs: dict[str, Any]) -> Instance | None:
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        container_id = str(attrs.get("Id", ""))
        try:
            index = int(labels.get(LABEL_INSTANCE, ""))
            port = int(labels.get(LABEL_PORT, ""))
        except ValueError:
            return None
        record = self._read_record(container_id)
        host_port = _published_port(attrs, port, self.bind)
        if host_port is not None:
            address = f"{self.bind}:{host_port}"
        else:
            address = str(record.get("address") or "127.0.0.1:0")
        log_path = record.get("log_path")
        return Instance(
            app=str(labels.get(LABEL_APP, "")),
            version=str(labels.get(LABEL_VERSION, "")),
            index=index,
            address=address,
            ref=container_id,
            log_path=Path(log_path) if log_path else None,
        )

    def _prune_records(self, live: set[str], older_than: float) -> None:
        """Drop records of containers that are gone (not those a concurrent start just wrote)."""
        if not self.records_dir.is_dir():
            return
        for path in self.records_dir.glob("*.json"):
            with contextlib.suppress(OSError):
                if path.stem not in live and path.stat().st_mtime < older_than:
                    path.unlink()

    async def remove_orphans(self, keep: set[str], timeout: float = 10.0) -> list[Instance]:
        """Stop and remove every owned container whose ref (container id) is not in ``keep``.

        Returns the instances removed. Containers are stopped concurrently, each with
        ``timeout`` seconds of grace.
        """
        orphans = [i for i in await self.owned() if i.ref not in keep]
        await asyncio.gather(*(self.stop(i, timeout) for i in orphans))
        return orphans
