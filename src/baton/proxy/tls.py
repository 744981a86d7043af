"""TLS termination: certificates per host, chosen by SNI, replaced without a restart.

Theory of operation. An app's route carries ``tls`` (``TlsSpec``): the paths of a
certificate chain and key (read by the proxy; key bytes never leave this module), or a
directory of ACME-managed pairs (``<acme_dir>/<host>/cert.pem`` + ``key.pem``, written by
the control plane). ``TlsManager`` owns, per TLS listen address, one server
``SSLContext`` whose ``sni_callback`` switches each handshake to the context of the pair
for the requested name: exact host first, then the longest ``*.suffix``, then the
listener's default (its first configured pair; a self-signed one when it has none, e.g.
while an ACME certificate is being issued). Lookups read one dict reference that is
swapped whole, like the route table.

A pair is loaded by reading both files once, validating them in full (PEM parses, the key
matches the certificate, the certificate covers the host) and building its context from
those same bytes; only then is it swapped in. ``poll`` re-reads pairs whose files changed
(inode, size or mtime): a bad new file is reported in ``status`` and the log, and the old
pair keeps serving. Handshakes already under way keep the context they started with.

``H2_AVAILABLE`` says whether HTTP/2 may be offered with ALPN; ``protocol_for_alpn`` is the
one place that picks the connection protocol for an accepted TLS connection.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from baton.errors import CertificateError, RouteTableError

log = logging.getLogger("baton.proxy")

# Set by ``register_h2`` (the HTTP/2 module): ALPN then offers "h2" first, and a TLS
# connection that agreed on "h2" is handed to ``_h2_factory(proxy, listen)``.
H2_AVAILABLE = False
_h2_factory: Callable[[Any, str], asyncio.BaseProtocol] | None = None
POLL_INTERVAL = 2.0  # seconds between checks of certificate files for a replacement
ACME_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
MAX_WANTED = 1000  # on-demand names waiting for the control plane, at most


def alpn_protocols() -> list[str]:
    return ["h2", "http/1.1"] if H2_AVAILABLE else ["http/1.1"]


def register_h2(factory: Callable[[Any, str], asyncio.BaseProtocol]) -> None:
    """Offer HTTP/2 with ALPN; call before the proxy opens its TLS listeners."""
    global H2_AVAILABLE, _h2_factory
    H2_AVAILABLE = True
    _h2_factory = factory


def protocol_for_alpn(name: str | None) -> Callable[[Any, str], asyncio.BaseProtocol] | None:
    """The protocol for an accepted TLS connection by the ALPN name it agreed on.

    None means HTTP/1.1: the connection stays with ``ClientConnection``. This is the one
    place where a TLS connection's protocol is chosen.
    """
    if name == "h2" and _h2_factory is not None:
        return _h2_factory
    return None


# ---------------------------------------------------------------------------------------
# The route table's view: which files serve which app.


@dataclass(frozen=True)
class TlsSpec:
    certificate: str | None = None  # PEM chain, leaf first
    key: str | None = None
    acme_dir: str | None = None  # ACME-managed pairs, one directory per host name
    redirect: bool = True  # the plain listener answers 308 to https
    hsts: float | None = None  # Strict-Transport-Security max-age, seconds
    on_demand: bool = False  # names under the app's *.suffix hosts may be issued on demand

    def to_json(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "key": self.key,
            "acme_dir": self.acme_dir,
            "redirect": self.redirect,
            "hsts": self.hsts,
            "on_demand": self.on_demand,
        }


_TLS_KEYS = {"certificate", "key", "acme_dir", "redirect", "hsts", "on_demand"}


def parse_tls(value: object, where: str) -> TlsSpec | None:
    """Validate an app's ``tls`` field of the route table."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RouteTableError(f"{where}: expected an object, got {value!r}")
    unknown = sorted(set(value) - _TLS_KEYS)
    if unknown:
        raise RouteTableError(
            f"{where}: unknown field {unknown[0]!r} (expected one of: {', '.join(sorted(_TLS_KEYS))})"
        )

    def path(name: str) -> str | None:
        v = value.get(name)
        if v is not None and (not isinstance(v, str) or not v.startswith("/")):
            raise RouteTableError(f"{where}.{name}: expected an absolute file path, got {v!r}")
        return v

    cert, key, acme_dir = path("certificate"), path("key"), path("acme_dir")
    if (cert is None) != (key is None):
        raise RouteTableError(f"{where}: expected both certificate and key, or neither")
    if cert is None and acme_dir is None:
        raise RouteTableError(f"{where}: expected certificate and key, or acme_dir")
    flags = {}
    for name in ("redirect", "on_demand"):
        v = value.get(name, name == "redirect")
        if not isinstance(v, bool):
            raise RouteTableError(f"{where}.{name}: expected true or false, got {v!r}")
        flags[name] = v
    hsts = value.get("hsts")
    if hsts is not None and (
        isinstance(hsts, bool) or not isinstance(hsts, int | float) or not 0 <= hsts <= 1e9
    ):
        raise RouteTableError(f"{where}.hsts: expected seconds (a number >= 0), got {hsts!r}")
    return TlsSpec(
        certificate=cert,
        key=key,
        acme_dir=acme_dir,
        redirect=flags["redirect"],
        hsts=float(hsts) if hsts is not None else None,
        on_demand=flags["on_demand"],
    )


def hsts_header(spec: TlsSpec | None) -> bytes:
    if spec is None or spec.hsts is None:
        return b""
    return b"Strict-Transport-Security: max-age=%d\r\n" % int(spec.hsts)


def https_location(listen: str, host: bytes | None, url: bytes) -> bytes:
    """Where a plain-HTTP request is redirected: the same host and path on the TLS port."""
    port = listen.rpartition(":")[2]
    name = (host or b"").strip()
    bracket = name.find(b"]") if name.startswith(b"[") else -1
    name = name[: bracket + 1] if bracket > 0 else name.partition(b":")[0]
    if not name:
        name = listen.rpartition(":")[0].encode()
    suffix = b"" if port == "443" else b":" + port.encode()
    path = url if url.startswith(b"/") else b"/"
    return b"https://" + name + suffix + path


# ---------------------------------------------------------------------------------------
# Pure checks on certificate bytes.


def host_matches(pattern: str, host: str) -> bool:
    """RFC 6125 matching: a wildcard covers exactly one left-most label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def cert_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]  # type: ignore[misc]
    names: list[str] = list(san.value.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)]
    return names


def covers(names: list[str], host: str) -> bool:
    """Whether a certificate for ``names`` is valid for ``host`` (a name or ``*.suffix``)."""
    if host.startswith("*."):
        return any(n.lower() == host for n in names)
    return any(host_matches(n, host) for n in names)


@dataclass
class CertInfo:
    """What ``baton status`` shows about one certificate."""

    names: list[str]
    issuer: str
    not_after: datetime.datetime
    source: str  # "file" | "acme" | "self-signed"
    path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "issuer": self.issuer,
            "not_after": self.not_after.isoformat(),
            "source": self.source,
            "path": self.path,
        }


def check_pair(
    cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str, hosts: list[str]
) -> x509.Certificate:
    """Validate a chain and key (bytes); raise CertificateError naming the file and host."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"{cert_path}: not a PEM certificate chain ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # The message of a failed key load never contains the key bytes.
        raise CertificateError(
            f"{key_path}: not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    leaf = chain[0]
    pub = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if pub != mine:
        raise CertificateError(
            f"{key_path}: this key does not belong to the certificate {cert_path}"
        )
    names = cert_names(leaf)
    for host in hosts:
        if not covers(names, host):
            raise CertificateError(
                f"{cert_path}: the certificate is for {', '.join(names) or 'no names'}, "
                f"not for host {host!r}"
            )
    return leaf


def _context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context holding exactly these bytes (no second read of the files)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(alpn_protocols())
    # load_cert_chain wants a path: an anonymous in-memory file, never on disk.
    fd = os.memfd_create("baton-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem.rstrip(b"\n") + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return ctx


def self_signed(names: list[str]) -> tuple[bytes, bytes]:
    """A throw-away certificate (PEM) for ``names``: the last resort for a handshake."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baton default")])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(alt or [x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# ---------------------------------------------------------------------------------------
# Live pairs and the SNI switch.


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(eq=False)
class CertPair:
    """One loaded certificate and key, and the files they came from."""

    cert_path: str
    key_path: str
    hosts: list[str]
    context: ssl.SSLContext
    info: CertInfo
    stamps: tuple[tuple[int, int, int], tuple[int, int, int]]
    error: str | None = None  # the last failed reload, if any (the pair keeps serving)

    @classmethod
    def load(cls, cert_path: str, key_path: str, hosts: list[str], source: str) -> CertPair:
        serving = f" for {', '.join(hosts)}" if hosts else ""
        # Stamps first: a file replaced while it is read is read again at the next poll.
        try:
            cert_stamp = _stamp(cert_path)
            with open(cert_path, "rb") as f:
                cert_pem = f.read()
        except OSError as exc:
            raise CertificateError(
                f"{cert_path}: cannot read the certificate{serving} ({exc.strerror})"
            ) from None
        try:
            key_stamp = _stamp(key_path)
            with open(key_path, "rb") as f:
                key_pem = f.read()
        except OSError as exc:
            raise CertificateError(
                f"{key_path}: cannot read the key{serving} ({exc.strerror})"
            ) from None
        stamps = (cert_stamp, key_stamp)
        leaf = check_pair(cert_pem, key_pem, cert_path, key_path, hosts)
        try:
            context = _context(cert_pem, key_pem)
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError(f"{cert_path}: OpenSSL refused the pair ({exc})") from None
        info = CertInfo(
            names=cert_names(leaf),
            issuer=leaf.issuer.rfc4514_string(),
            not_after=leaf.not_valid_after_utc,
            source=source,
            path=cert_path,
        )
        return cls(cert_path, key_path, hosts, context, info, stamps)

    def changed(self) -> bool:
        try:
            return (_stamp(self.cert_path), _stamp(self.key_path)) != self.stamps
        except OSError:
            return True


@dataclass
class _Listener:
    """Per TLS listen address: the pair for each host, and the default one."""

    exact: dict[str, CertPair] = field(default_factory=dict)
    wild: list[tuple[str, CertPair]] = field(default_factory=list)  # (".suffix", pair)
    default: CertPair | None = None

    def find(self, name: str | None) -> CertPair | None:
        if name:
            name = name.lower().rstrip(".")
            pair = self.exact.get(name)
            if pair is not None:
                return pair
            for suffix, pair in self.wild:
                if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                    return pair
        return self.default


@dataclass(frozen=True)
class _Want:
    """A pair some app needs: which files, for which hosts, from where."""

    cert_path: str
    key_path: str
    source: str


def _check_kinds(specs: Mapping[str, Any], plain: Set[str], bound_tls: Set[str]) -> None:
    """A listen address is HTTPS or plain HTTP, for every app on it, as long as it is bound."""
    tls_listen = TlsManager.tls_addresses(specs)
    for spec in specs.values():
        for address in (spec.listen, spec.http_listen):
            if address in bound_tls and address not in tls_listen:
                raise CertificateError(
                    f"apps.{spec.name}: {address} already serves HTTPS; it cannot serve "
                    "plain HTTP in place (use another address, or restart the proxy)"
                )
        if spec.tls is None and spec.listen in tls_listen:
            raise CertificateError(
                f"apps.{spec.name}: listen {spec.listen} serves HTTPS for another app; "
                "this app needs proxy.tls too (or another listen address)"
            )
        if spec.http_listen is not None and spec.http_listen in tls_listen:
            raise CertificateError(
                f"apps.{spec.name}: http_listen {spec.http_listen} is an HTTPS listener "
                "of another app; plain HTTP needs an address of its own"
            )
    for address in sorted(tls_listen & plain):
        raise CertificateError(
            f"listen {address} already serves plain HTTP; it cannot become an HTTPS "
            "listener in place (use another address, or restart the proxy)"
        )


class TlsManager:
    """Owns the SSL contexts of every TLS listener and the certificate pairs behind them."""

    def __init__(self) -> None:
        self.listeners: dict[str, _Listener] = {}
        self.pairs: dict[tuple[str, str], CertPair] = {}
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.missing: dict[str, str] = {}  # ACME hosts without a certificate yet -> why
        self.wanted: dict[str, float] = {}  # on-demand names asked for by a client (SNI)
        # (".suffix", acme_dir, listen) of apps open to on-demand issuance
        self.on_demand: list[tuple[str, str, str]] = []

    # -- what the route table asks for -------------------------------------------------

    @staticmethod
    def tls_addresses(specs: Mapping[str, Any]) -> set[str]:
        return {s.listen for s in specs.values() if getattr(s, "tls", None) is not None}

    def update(
        self,
        specs: Mapping[str, Any],
        plain: Set[str] = frozenset(),
        bound_tls: Set[str] = frozenset(),
    ) -> None:
        """Load every pair the table needs, then swap them in; raise and change nothing.

        ``specs`` are the route table's AppSpecs; ``plain`` the listen addresses already
        serving plain HTTP and ``bound_tls`` those serving HTTPS: neither can change kind
        in place.
        """
        _check_kinds(specs, plain, bound_tls)
        listeners: dict[str, _Listener] = {}
        pairs: dict[tuple[str, str], CertPair] = {}
        missing: dict[str, str] = {}
        on_demand: list[tuple[str, str, str]] = []
        for spec in sorted(specs.values(), key=lambda s: s.name):
            tls: TlsSpec | None = spec.tls
            if tls is None:
                continue
            listener = listeners.setdefault(spec.listen, _Listener())
            for host in spec.hosts or ("",):
                want = self._want(tls, host)
                if want is None:
                    if host.startswith("*.") and tls.on_demand and tls.acme_dir:
                        on_demand.append((host[1:], tls.acme_dir, spec.listen))
                    elif host.startswith("*."):
                        missing[host] = "ACME cannot certify a wildcard: set on_demand_ask"
                    else:
                        missing[host] = "no certificate yet"
                    continue
                key = (want.cert_path, want.key_path)
                pair = pairs.get(key)
                if pair is None:
                    hosts = [h for h in spec.hosts if self._want(tls, h) == want]
                    pair = self._reuse_or_load(want, hosts)
                    pairs[key] = pair
                self._place(listener, host, pair)
        # On-demand names issued earlier: their pairs live in acme_dir/<name>.
        for suffix, acme_dir, listen in on_demand:
            self._load_issued(listeners[listen], suffix, acme_dir, pairs)
        self.listeners = listeners
        self.pairs = pairs
        self.missing = missing
        self.on_demand = on_demand

    def _reuse_or_load(self, want: _Want, hosts: list[str]) -> CertPair:
        """The loaded pair for these files, re-read if they changed.

        A pair that serves already and whose files went bad keeps serving (with the error
        recorded); a pair never loaded must load, or the caller's change is refused.
        """
        old = self.pairs.get((want.cert_path, want.key_path))
        if old is None or any(h not in old.hosts for h in hosts):
            return CertPair.load(want.cert_path, want.key_path, hosts, want.source)
        if not old.changed():
            return old
        try:
            return CertPair.load(want.cert_path, want.key_path, hosts, want.source)
        except CertificateError as exc:
            if old.error != str(exc):
                log.warning("certificate not reloaded, the old one keeps serving: %s", exc)
            old.error = str(exc)
            return old

    @staticmethod
    def _want(tls: TlsSpec, host: str) -> _Want | None:
        if tls.certificate is not None and tls.key is not None:
            return _Want(tls.certificate, tls.key, "file")
        if tls.acme_dir is None or not host or host.startswith("*."):
            return None
        cert = os.path.join(tls.acme_dir, host, "cert.pem")
        key = os.path.join(tls.acme_dir, host, "key.pem")
        if not os.path.exists(cert) or not os.path.exists(key):
            return None
        return _Want(cert, key, "acme")

    @staticmethod
    def _place(listener: _Listener, host: str, pair: CertPair) -> None:
        if not host:
            listener.default = pair
        elif host.startswith("*."):
            listener.wild.append((host[1:], pair))
            listener.wild.sort(key=lambda kv: len(kv[0]), reverse=True)
        else:
            listener.exact[host] = pair
        if listener.default is None:
            listener.default = pair

    def _load_issued(
        self,
        listener: _Listener,
        suffix: str,
        acme_dir: str,
        pairs: dict[tuple[str, str], CertPair],
    ) -> None:
        try:
            names = os.listdir(acme_dir)
        except OSError:
            return
        for name in names:
            if not name.endswith(suffix) or "." in name[: -len(suffix)]:
                continue
            want = _Want(
                os.path.join(acme_dir, name, "cert.pem"),
                os.path.join(acme_dir, name, "key.pem"),
                "acme",
            )
            key = (want.cert_path, want.key_path)
            pair = pairs.get(key)
            if pair is None:
                try:
                    pair = self._reuse_or_load(want, [name])
                except CertificateError as exc:
                    log.warning("%s", exc)
                    continue
            pairs[key] = pair
            listener.exact[name] = pair

    # -- contexts for listeners ----------------------------------------------------------

    def is_tls(self, address: str) -> bool:
        return address in self.listeners

    def server_context(self, address: str) -> ssl.SSLContext:
        """The listener's context: its SNI callback picks a pair per handshake."""
        ctx = self.contexts.get(address)
        if ctx is None:
            ctx = self.contexts[address] = self._fallback_context()
            ctx.sni_callback = self._sni_callback(address)
        return ctx

    def _fallback_context(self) -> ssl.SSLContext:
        cert_pem, key_pem = self_signed(["localhost"])
        return _context(cert_pem, key_pem)

    def _sni_callback(
        self, address: str
    ) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]:
        def choose(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            listener = self.listeners.get(address)
            if listener is None:
                return None
            if name:
                low = name.lower()
                room = len(self.wanted) < MAX_WANTED  # random names must not grow it
                if (
                    room
                    and low not in listener.exact
                    and any(
                        low.endswith(s) and "." not in low[: -len(s)] for s, _, _ in self.on_demand
                    )
                ):
                    self.wanted.setdefault(low, 0.0)
            pair = listener.find(name)
            if pair is not None:
                sslobj.context = pair.context
            return None

        return choose

    # -- replaced files ------------------------------------------------------------------

    def poll(self, specs: Mapping[str, Any]) -> bool:
        """Re-read pairs whose files changed; True when anything new was swapped in."""
        changed = any(pair.changed() for pair in self.pairs.values())
        if not changed and not self.missing and not self.on_demand:
            return False
        before = {k: id(p) for k, p in self.pairs.items()}
        try:
            self.update(specs)
        except CertificateError as exc:  # a pair never loaded is still unreadable
            log.warning("%s", exc)
            return False
        return {k: id(p) for k, p in self.pairs.items()} != before

    def status(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for address, listener in sorted(self.listeners.items()):
            seen: set[str] = set()
            hosts = [(h, p) for h, p in listener.exact.items()]
            hosts += [("*" + s, p) for s, p in listener.wild]
            if listener.default is not None and not hosts:
                hosts.append(("", listener.default))
            for host, pair in hosts:
                if host in seen:
                    continue
                seen.add(host)
                row = {"listen": address, "host": host or "*", **pair.info.to_json()}
                row["error"] = pair.error
                out.append(row)
        for host, why in sorted(self.missing.items()):
            out.append({"host": host, "source": "acme", "error": why})
        return out


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = [
    "ACME_CHALLENGE_PREFIX",
    "H2_AVAILABLE",
    "CertPair",
    "TlsManager",
    "TlsSpec",
    "alpn_protocols",
    "check_pair",
    "hsts_header",
    "https_location",
    "parse_tls",
    "protocol_for_alpn",
    "register_h2",
    "self_signed",
]
