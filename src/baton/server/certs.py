"""Certificates from ACME (RFC 8555): obtained, renewed and handed to the proxy as files.

Theory of operation. The control plane owns the ACME account and every issued pair; the
proxy only serves files. ``issue`` (blocking, run in a thread) is one order with certbot's
``acme`` client: HTTP-01 for each name, answered by the proxy's plain listener (the key
authorization is put into the proxy over its admin API and removed afterwards), then a
fresh key, a CSR and the chain. ``CertManager`` decides *when*: every few seconds it looks
at each ACME app's exact hosts and at names clients asked for under an on-demand
``*.suffix`` (the proxy records them from SNI); a name without a certificate, or with less
than ``renew_before`` left, is (re)issued. The new pair is written key first, then
certificate, each by an atomic rename with mode 0600 under ``<state>/acme/certs/<name>/``;
the proxy is told to re-read, and validates the pair before it swaps. A failure is kept
per name (shown by ``baton status``) and retried with exponential back-off; the pair that
serves is never touched by a failure. On-demand names must be allowed by the ask URL
(``GET URL?domain=NAME`` answering 200) and are rate-limited per suffix.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWKRSA

from baton.deploy.engine import Router
from baton.deploy.proxyclient import ProxyClient
from baton.errors import BatonError
from baton.state.files import write_private

log = logging.getLogger("baton.server")

CHECK_INTERVAL = 2.0  # seconds between looks at what needs a certificate
BACKOFF_FIRST = 5.0
BACKOFF_MAX = 3600.0
ORDER_TIMEOUT = 90.0
ON_DEMAND_PER_MINUTE = 10  # issuances per on-demand suffix per minute
ASK_TIMEOUT = 5.0


class AcmeError(BatonError):
    """The ACME server could not be reached, or refused or failed an order."""


@dataclass(frozen=True)
class AcmeSettings:
    email: str
    directory: str
    ca_bundle: str | None = None
    renew_before: float = 30 * 86400.0
    on_demand_ask: str | None = None

    @classmethod
    def from_config(cls, tls: dict[str, Any]) -> AcmeSettings | None:
        acme = tls.get("acme")
        if not acme:
            return None
        return cls(
            email=acme["email"],
            directory=acme["directory"],
            ca_bundle=acme.get("ca_bundle"),
            renew_before=float(acme.get("renew_before", 30 * 86400.0)),
            on_demand_ask=tls.get("on_demand_ask"),
        )


# ---------------------------------------------------------------------------------------
# One order, blocking (the acme client is synchronous).


def _account_key(path: Path) -> JWKRSA:
    if path.exists():
        return JWKRSA.json_loads(path.read_text())
    key = JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    write_private(str(path), key.json_dumps().encode())
    return key


def _network(settings: AcmeSettings, key: JWKRSA) -> client.ClientNetwork:
    # requests takes a CA bundle path where the client's signature says bool.
    verify = cast(bool, settings.ca_bundle) if settings.ca_bundle else True
    return client.ClientNetwork(key, verify_ssl=verify, user_agent="baton", timeout=15)


def _client(settings: AcmeSettings, account_dir: Path) -> client.ClientV2:
    key = _account_key(account_dir / "account.json")
    net = _network(settings, key)
    try:
        directory = client.ClientV2.get_directory(settings.directory, net)
    except Exception as exc:
        raise AcmeError(
            f"ACME directory {settings.directory} is unreachable or not an ACME server "
            f"({_why(exc)})"
        ) from None
    acme = client.ClientV2(directory, net)
    registration = messages.NewRegistration.from_data(
        email=settings.email, terms_of_service_agreed=True
    )
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:  # this key has an account already: use it
        regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        acme.net.account = acme.query_registration(regr)
    return acme


def issue(
    settings: AcmeSettings,
    account_dir: Path,
    names: list[str],
    publish: Callable[[str, str], None],
    retract: Callable[[str], None],
) -> tuple[bytes, bytes]:
    """Obtain a certificate for ``names``; returns (chain PEM, key PEM). Raises AcmeError."""
    try:
        acme = _client(settings, account_dir)
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        published: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                chall = next(
                    (c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                    None,
                )
                if chall is None:
                    raise AcmeError(
                        f"the ACME server offers no http-01 challenge for "
                        f"{authz.body.identifier.value}"
                    )
                response, validation = chall.response_and_validation(acme.net.key)
                token = chall.chall.encode("token")
                publish(token, validation)
                published.append(token)
                acme.answer_challenge(chall, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in published:
                with contextlib.suppress(Exception):
                    retract(token)
        if not order.fullchain_pem:
            raise AcmeError(f"the ACME server returned no certificate for {', '.join(names)}")
        return order.fullchain_pem.encode(), key_pem
    except AcmeError:
        raise
    except errors.ValidationError as exc:
        problems = "; ".join(
            f"{a.body.identifier.value}: {_problem(a)}" for a in exc.failed_authzrs
        )
        raise AcmeError(f"ACME validation failed for {', '.join(names)}: {problems}") from None
    except Exception as exc:
        raise AcmeError(f"ACME order for {', '.join(names)} failed: {_why(exc)}") from None


def _problem(authz: messages.AuthorizationResource) -> str:
    for chall in authz.body.challenges:
        if chall.error is not None:
            return str(chall.error.detail or chall.error.typ)
    return str(authz.body.status)


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "…"


# ---------------------------------------------------------------------------------------
# When to issue: the manager.


@dataclass
class NameState:
    """What ``baton status`` says about one name's ACME certificate."""

    error: str | None = None
    failures: int = 0
    next_try: float = 0.0
    last_renewal: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "failures": self.failures,
            "last_renewal": self.last_renewal,
        }


@dataclass
class _Suffix:
    settings: AcmeSettings
    issued: list[float] = field(default_factory=list)  # recent issuance times (rate limit)


def cert_paths(acme_dir: Path, name: str) -> tuple[Path, Path]:
    return acme_dir / name / "cert.pem", acme_dir / name / "key.pem"


def not_after(path: Path) -> datetime.datetime | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


def needs_issue(path: Path, renew_before: float, now: datetime.datetime) -> bool:
    """Pure enough: a missing/unreadable certificate, or one within ``renew_before``."""
    end = not_after(path)
    return end is None or (end - now).total_seconds() < renew_before


def rate_limit(
    issued: list[float], now: float, per_minute: int = ON_DEMAND_PER_MINUTE
) -> tuple[bool, list[float]]:
    """Whether one more on-demand issuance fits in the last minute; the times to keep."""
    recent = [t for t in issued if t > now - 60.0]
    if len(recent) >= per_minute:
        return False, recent
    return True, [*recent, now]


def backoff(failures: int) -> float:
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, failures - 1)))


class CertManager:
    """Keeps every ACME host's certificate present and fresh; answers status."""

    def __init__(
        self,
        state_dir: Path,
        proxy: ProxyClient,
        wants: Callable[[], list[tuple[list[str], dict[str, Any]]]],
    ) -> None:
        self.account_dir = state_dir / "acme"
        self.acme_dir = self.account_dir / "certs"
        self.proxy = proxy
        self.wants = wants  # [(hosts, proxy.tls config)] of every live app
        self.names: dict[str, NameState] = {}
        self.suffixes: dict[str, _Suffix] = {}
        self.refused: dict[str, float] = {}  # on-demand names the ask URL refused, until
        self._status_path = self.account_dir / "status.json"
        self._lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # one bad round must not end renewals for good
                log.warning("certificate check failed: %s", _why(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_INTERVAL)

    async def check(self, *, force: bool = False) -> None:
        """One round: issue or renew what is due (everything with ``force``)."""
        async with self._lock:
            now = datetime.datetime.now(datetime.UTC)
            before, self.suffixes = self.suffixes, {}
            due: list[tuple[str, AcmeSettings]] = []
            for hosts, tls in self.wants():
                settings = AcmeSettings.from_config(tls)
                if settings is None:
                    continue
                for host in hosts:
                    if host.startswith("*."):
                        if settings.on_demand_ask:
                            # Keep the suffix's recent issuances: the rate limit spans rounds.
                            old = before.get(host[1:])
                            entry = _Suffix(settings, old.issued if old is not None else [])
                            self.suffixes[host[1:]] = entry
                        continue
                    cert, _ = cert_paths(self.acme_dir, host)
                    if force or needs_issue(cert, settings.renew_before, now):
                        due.append((host, settings))
            due += await self._on_demand(now)
            for name, settings in due:
                state = self.names.setdefault(name, NameState())
                if not force and time.monotonic() < state.next_try:
                    continue
                await self._obtain(name, settings, state)

    async def _on_demand(self, now: datetime.datetime) -> list[tuple[str, AcmeSettings]]:
        if not self.suffixes:
            return []
        try:
            wanted: list[str] = (await self.proxy.tls_status()).get("wanted", [])
        except BatonError:
            return []
        due: list[tuple[str, AcmeSettings]] = []
        for name in wanted:
            suffix = next(
                (s for s in self.suffixes if name.endswith(s) and "." not in name[: -len(s)]),
                None,
            )
            if suffix is None:
                continue
            cert, _ = cert_paths(self.acme_dir, name)
            entry = self.suffixes[suffix]
            if not needs_issue(cert, entry.settings.renew_before, now):
                await self.proxy.forget_wanted(name)
                continue
            if self.refused.get(name, 0.0) > time.monotonic():
                continue
            ask = entry.settings.on_demand_ask
            assert ask is not None
            if not await asyncio.to_thread(ask_allows, ask, name):
                log.warning("on-demand certificate for %s refused by %s", name, ask)
                self.refused[name] = time.monotonic() + 60.0
                self.names[name] = NameState(error=f"refused by the ask URL {ask}")
                await self.proxy.forget_wanted(name)
                continue
            allowed, entry.issued = rate_limit(entry.issued, time.monotonic())
            if not allowed:
                continue  # try again in a later round
            due.append((name, entry.settings))
        return due

    async def _obtain(self, name: str, settings: AcmeSettings, state: NameState) -> None:
        loop = asyncio.get_running_loop()

        def publish(token: str, answer: str) -> None:
            asyncio.run_coroutine_threadsafe(self.proxy.put_challenge(token, answer), loop).result(
                30
            )

        def retract(token: str) -> None:
            asyncio.run_coroutine_threadsafe(self.proxy.delete_challenge(token), loop).result(30)

        try:
            chain, key = await asyncio.to_thread(
                issue, settings, self.account_dir, [name], publish, retract
            )
        except AcmeError as exc:
            state.failures += 1
            state.error = str(exc)
            state.next_try = time.monotonic() + backoff(state.failures)
            log.warning(
                "certificate for %s not obtained (attempt %d, next in %.0fs): %s",
                name,
                state.failures,
                backoff(state.failures),
                exc,
            )
            self._save_status()
            return
        cert_path, key_path = cert_paths(self.acme_dir, name)
        os.makedirs(cert_path.parent, mode=0o700, exist_ok=True)
        # Key first: until the certificate is renamed too, the proxy keeps the old pair
        # (a new key with the old certificate does not validate, so it is not swapped in).
        write_private(str(key_path), key)
        write_private(str(cert_path), chain)
        state.failures = 0
        state.error = None
        state.next_try = 0.0
        state.last_renewal = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._save_status()
        log.warning("certificate for %s obtained from %s", name, settings.directory)
        with contextlib.suppress(BatonError):
            await self.proxy.reload_certificates()
            await self.proxy.forget_wanted(name)

    def _save_status(self) -> None:
        data = {name: st.to_json() for name, st in sorted(self.names.items())}
        write_private(str(self._status_path), json.dumps(data, indent=1).encode())

    async def certificates(self) -> list[dict[str, Any]]:
        """Each host's certificate as the proxy serves it, with ACME's last error."""
        try:
            rows: list[dict[str, Any]] = (await self.proxy.tls_status())["certificates"]
        except BatonError as exc:
            return [{"host": "*", "error": f"proxy: {exc}"}]
        names = self.status()
        for row in rows:
            acme = names.pop(row.get("host", ""), None)
            if acme is not None:
                row["last_renewal"] = acme["last_renewal"]
                row["error"] = acme["error"] or row.get("error")
        for name, acme in names.items():
            if acme["error"]:
                rows.append({"host": name, "source": "acme", "error": acme["error"]})
        return rows

    def status(self) -> dict[str, dict[str, Any]]:
        """Per name: the last error, failures in a row, and when it was last (re)issued."""
        return {name: st.to_json() for name, st in sorted(self.names.items())}


def expiry_samples(
    apps: list[tuple[list[str], dict[str, Any]]], acme_dir: Path, now: datetime.datetime
) -> list[tuple[dict[str, str], float]]:
    """``baton_certificate_expiry_seconds``: per HTTPS host, seconds until its certificate's
    not-after (negative once expired), read from the files the proxy serves."""
    out: list[tuple[dict[str, str], float]] = []
    for hosts, tls in apps:
        for host in hosts or ["*"]:
            if tls.get("certificate"):
                path, source = Path(str(tls["certificate"])), "file"
            else:
                path, source = cert_paths(acme_dir, host)[0], "acme"
            end = not_after(path)
            if end is not None:
                labels = {"host": host, "source": source}
                out.append((labels, round((end - now).total_seconds(), 1)))
    return out


def live_acme_apps(router: Router) -> list[tuple[list[str], dict[str, Any]]]:
    """(hosts, proxy.tls) of every app whose routed release asks for TLS."""
    out: list[tuple[list[str], dict[str, Any]]] = []
    for app in router.store.apps():
        config = router.live_config(app.name)
        proxy = (config or {}).get("proxy") or {}
        if proxy.get("tls"):
            out.append((list(proxy.get("hosts") or []), proxy["tls"]))
    return out


def ask_allows(url: str, name: str) -> bool:
    """The on-demand gate: GET ``url?domain=name``; only a 200 allows."""
    sep = "&" if "?" in url else "?"
    full = f"{url}{sep}{urllib.parse.urlencode({'domain': name})}"
    try:
        with urllib.request.urlopen(full, timeout=ASK_TIMEOUT) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


__all__ = ["AcmeError", "AcmeSettings", "CertManager", "ask_allows", "issue", "needs_issue"]
