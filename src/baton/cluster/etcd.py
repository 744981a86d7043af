"""A small etcd v3 client over etcd's JSON gateway (HTTP + JSON, base64 keys and values).

It owns the connection to an etcd cluster: a list of client endpoints, one aiohttp session,
and which endpoint answered last. A call goes to that endpoint first; when it cannot be
reached, times out or answers "unavailable" (a member that lost its quorum), the call moves
on to the next endpoint, so one dead member costs one failed connection, not an error.
Only when no endpoint answers does a call raise ``EtcdUnavailable`` (naming them all); an
answer that is an etcd error (a bad request, a lease not found) raises ``EtcdError``.

Why hand-written: ``etcd3gw`` is synchronous (requests) and ``aetcd`` and ``python-etcd3``
speak gRPC with generated protobuf code (the latter breaks with current protobuf). The
gateway's JSON is a handful of calls — range, put, delete, txn, lease grant/keep-alive/
revoke and a streaming watch — on the aiohttp Baton already uses. Debian's etcd 3.4 serves
them under ``/v3/``.

Retrying a write on another member after a time-out may apply it twice; every write Baton
makes is either idempotent (a put of a whole record) or guarded by a compare (a txn), so
that is safe.

``Etcd.guarded`` returns a view of a client (same connection) whose every write is one
transaction that also compares keys the writer holds — fencing (``baton.cluster.fence``):
a guard that no longer holds makes the write change nothing and raise ``Fenced``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from baton.errors import EtcdError, EtcdUnavailable, Fenced, UsageError

DEFAULT_TIMEOUT = 5.0  # one call on one endpoint
CONNECT_TIMEOUT = 1.0  # a dead member refuses at once; a partitioned one is given this long
# gRPC codes that mean "this member cannot answer now, another may": DeadlineExceeded,
# Unavailable (e.g. "etcdserver: no leader", "request timed out").
_RETRY_ELSEWHERE = {4, 14}
_STREAMED = {"/v3/lease/keepalive"}  # answered as a stream of lines


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix`` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return _b64(bytes(raw))
        raw.pop()
    return _b64(b"\0")  # every key


def parse_endpoints(text: str) -> list[str]:
    """``http://a:2379,http://b:2379`` (or bare ``host:port``) → URLs; bad ones are refused."""
    endpoints: list[str] = []
    for item in text.split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        if "://" not in item:
            item = f"http://{item}"
        scheme, _, rest = item.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme not in ("http", "https") or not host or not port.isdigit():
            raise UsageError(
                f"etcd endpoint {item!r}: expected http://HOST:PORT (several: comma-separated)"
            )
        endpoints.append(item)
    if not endpoints:
        raise UsageError("etcd endpoints: expected at least one http://HOST:PORT")
    return endpoints


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(kv.get("key")).decode(errors="replace"),
            value=_unb64(kv.get("value")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            lease=int(kv.get("lease", 0)),
        )

    def json(self) -> Any:
        return json.loads(self.value)


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction, e.g. ``Compare.absent(key)``."""

    key: str
    target: Literal["CREATE", "MOD", "VERSION", "VALUE", "LEASE"]
    value: int | bytes
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"] = "EQUAL"

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "CREATE", 0)

    @classmethod
    def created_at(cls, key: str, revision: int) -> Compare:
        return cls(key, "CREATE", revision)

    @classmethod
    def modified_at(cls, key: str, revision: int) -> Compare:
        return cls(key, "MOD", revision)

    def to_json(self) -> dict[str, Any]:
        field = {
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "VERSION": "version",
            "VALUE": "value",
            "LEASE": "lease",
        }[self.target]
        value: Any = _b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: value}


@dataclass(frozen=True)
class Guard:
    """A key a writer holds, and the create revision it holds it at (``Etcd.guarded``)."""

    key: str
    revision: int
    what: str  # for the error: "the controller's term 4", "the deploy lock of shop"

    def compare(self) -> Compare:
        return Compare.created_at(self.key, self.revision)


def _check_guard(guard: Guard, kvs: list[KeyValue]) -> None:
    """Raise ``Fenced`` unless ``kvs`` (the guard key's range) shows it still held."""
    if kvs and kvs[0].create_revision == guard.revision:
        return
    now = (
        f"now held since revision {kvs[0].create_revision} by"
        f" {kvs[0].value.decode(errors='replace')}"
        if kvs
        else "no longer held"
    )
    raise Fenced(
        f"write refused: {guard.what} (created at revision {guard.revision}) is {now};"
        " this controller was deposed and stops"
    )


def put_op(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


def get_op(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]

    def ranges(self) -> list[list[KeyValue]]:
        """The key-values of each range (get) operation, in order."""
        out: list[list[KeyValue]] = []
        for response in self.responses:
            if "response_range" in response:
                kvs = response["response_range"].get("kvs", [])
                out.append([KeyValue.from_json(kv) for kv in kvs])
        return out


class Etcd:
    """One client per cluster; reuse it (it keeps one connection pool). ``close()`` it."""

    def __init__(self, endpoints: Sequence[str] | str, *, timeout: float = DEFAULT_TIMEOUT):
        self.endpoints = (
            parse_endpoints(endpoints) if isinstance(endpoints, str) else list(endpoints)
        )
        if not self.endpoints:
            raise UsageError("etcd endpoints: expected at least one http://HOST:PORT")
        self.timeout = timeout
        self._current = 0  # the endpoint that answered last
        self._session: aiohttp.ClientSession | None = None
        self._root: Etcd = self  # the client that owns the connection (a view shares it)
        self._guards: tuple[Guard, ...] = ()

    def guarded(self, guards: Sequence[Guard]) -> Etcd:
        """A view of this client, on the same connection, whose every write (put, delete,
        txn) is one transaction that also requires each guard's key to exist at its create
        revision. When one does not, the write changes nothing and raises ``Fenced`` naming
        the guard (see ``baton.cluster.fence``); reads, leases and watches are unchanged."""
        view = copy.copy(self)
        view._root = self._root
        known = {g.key: g for g in self._guards}
        view._guards = (*self._guards, *(g for g in guards if known.get(g.key) != g))
        return view

    async def close(self) -> None:
        if self._root is not self:  # a view: the client it came from owns the connection
            return
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        root = self._root
        if root._session is None or root._session.closed:
            root._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
            )
        return root._session

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._current + i) % n for i in range(n)]

    def _unavailable(self, failures: list[str]) -> EtcdUnavailable:
        return EtcdUnavailable(
            "no etcd endpoint answered: " + "; ".join(failures)
            if failures
            else "no etcd endpoint answered"
        )

    async def _post(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        failures: list[str] = []
        limit = aiohttp.ClientTimeout(total=timeout or self.timeout, sock_connect=CONNECT_TIMEOUT)
        for index in self._order():
            endpoint = self.endpoints[index]
            try:
                async with self._client().post(endpoint + path, json=body, timeout=limit) as resp:
                    if path in _STREAMED:
                        # The gateway streams these answers: the first line is the one.
                        raw = await _first_line(resp)
                    else:
                        raw = await resp.read()  # a range may be large: no line limit
                    answer = json.loads(raw or b"{}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failures.append(f"{endpoint}: {_describe(exc)}")
                continue
            if isinstance(answer, dict) and "error" in answer:
                error = answer["error"]
                message = error.get("message") if isinstance(error, dict) else error
                code = int((error if isinstance(error, dict) else answer).get("code", 2))
                if code in _RETRY_ELSEWHERE:
                    failures.append(f"{endpoint}: {message}")
                    continue
                raise EtcdError(f"etcd ({endpoint}{path}): {message}")
            self._current = index
            if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
                return answer["result"]
            return answer
        raise self._unavailable(failures)

    # -- key-value ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        answer = await self._post("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        return KeyValue.from_json(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (sorted by key) and the store's revision they are at."""
        answer = await self._post(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)}
        )
        kvs = [KeyValue.from_json(kv) for kv in answer.get("kvs") or []]
        return kvs, int(answer.get("header", {}).get("revision", 0))

    async def put(self, key: str, value: str | bytes, *, lease: int = 0) -> int:
        """Store ``value`` at ``key`` (under ``lease`` when given); returns the new revision."""
        if self._guards:
            return (await self.txn([], [put_op(key, value, lease)])).revision
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        answer = await self._post("/v3/kv/put", body)
        return int(answer.get("header", {}).get("revision", 0))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        if self._guards:
            done = await self.txn([], [{"request_delete_range": body}])
            first = done.responses[0] if done.responses else {}
            return int(first.get("response_delete_range", {}).get("deleted", 0))
        answer = await self._post("/v3/kv/deleterange", body)
        return int(answer.get("deleted", 0))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> TxnResult:
        guards = self._guards
        answer = await self._post(
            "/v3/kv/txn",
            {
                "compare": [c.to_json() for c in (*(g.compare() for g in guards), *compare)],
                "success": list(success),
                "failure": [*failure, *(get_op(g.key) for g in guards)],
            },
        )
        succeeded = bool(answer.get("succeeded", False))
        responses = list(answer.get("responses") or [])
        if guards and not succeeded:  # the guards' gets came last: check them, then drop them
            cut = max(0, len(responses) - len(guards))
            held, responses = responses[cut:], responses[:cut]
            for i, guard in enumerate(guards):
                found = held[i].get("response_range", {}).get("kvs") if i < len(held) else None
                _check_guard(guard, [KeyValue.from_json(kv) for kv in found or []])
        return TxnResult(
            succeeded=succeeded,
            revision=int(answer.get("header", {}).get("revision", 0)),
            responses=responses,
        )

    # -- leases ------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        if ttl < 1:
            raise UsageError(f"lease TTL: expected at least 1 second, got {ttl}")
        answer = await self._post("/v3/lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its TTL, or 0 when it has already lapsed (it is gone)."""
        answer = await self._post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(answer.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End ``lease`` now: every key under it is deleted. A lapsed lease is no error."""
        try:
            await self._post("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise

    # -- watch -------------------------------------------------------------------------------

    async def watch(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[tuple[int, list[WatchEvent]], None]:
        """Changes under ``prefix`` from ``start_revision`` on: (revision, events) batches.

        Ends with ``EtcdUnavailable`` when the stream breaks (the member died or the link
        went down) and ``EtcdError`` when the revision was compacted; the caller lists the
        prefix again and watches from there. A silent partition is not detected here: the
        caller bounds each wait (see ``baton.cluster.agent``).
        """
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": prefix_end(prefix),
                "start_revision": str(start_revision),
            }
        }
        failures: list[str] = []
        for index in self._order():
            endpoint = self.endpoints[index]
            try:
                resp = await self._client().post(
                    endpoint + "/v3/watch",
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{endpoint}: {_describe(exc)}")
                continue
            self._current = index
            try:
                async for batch in _watch_stream(resp, endpoint):
                    yield batch
            finally:
                resp.close()
            return
        raise self._unavailable(failures)


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body's newline-separated lines, however long (aiohttp's readline has a limit)."""
    pending = b""
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            if pending.strip():
                yield pending
            return
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line


async def _first_line(resp: aiohttp.ClientResponse) -> bytes:
    async for line in _lines(resp):
        if line.strip():
            return line
    return b""


async def _watch_stream(
    resp: aiohttp.ClientResponse, endpoint: str
) -> AsyncIterator[tuple[int, list[WatchEvent]]]:
    lines = _lines(resp)
    while True:
        try:
            line = await anext(lines)
        except StopAsyncIteration:
            raise EtcdUnavailable(f"the watch on {endpoint} ended (the member went away)") from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise EtcdUnavailable(f"the watch on {endpoint} broke: {_describe(exc)}") from None
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:
            raise EtcdUnavailable(f"the watch on {endpoint} sent a line that is not JSON") from None
        if "error" in message:
            error = message["error"]
            raise EtcdUnavailable(f"the watch on {endpoint} failed: {error.get('message', error)}")
        result = message.get("result", {})
        if int(result.get("compact_revision", 0) or 0):
            raise EtcdError(f"etcd ({endpoint}): the watch's revision was compacted")
        if result.get("canceled"):
            raise EtcdUnavailable(f"etcd ({endpoint}) canceled the watch")
        events = [
            WatchEvent(
                "delete" if event.get("type") == "DELETE" else "put",
                KeyValue.from_json(event.get("kv", {})),
            )
            for event in result.get("events") or []
        ]
        revision = int(result.get("header", {}).get("revision", 0))
        if events:
            yield revision, events


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
