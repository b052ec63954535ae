"""Automatic HTTPS for the gateway (RFC 8555 ACME), with certbot's ``acme`` client library.

A certificate per ``NAME.DOMAIN`` (or the domain itself) is obtained the first
time a TLS client asks for that name (SNI), and only once the gateway has
checked that the name exists and is public (``allowed``): nobody can make the
gateway order certificates for made-up labels. Until it is there, the
handshake gets a self-signed certificate for the domain (a client that
verifies fails that first attempt; the next one gets the real certificate).

- Challenge: HTTP-01, answered by the gateway's plain HTTP listener
  (``challenge(token)``; the gateway routes ``/.well-known/acme-challenge/``).
- Cache: ``$MESH_HOME/certs`` (0700): ``NAME.pem`` (chain) and ``NAME.key``
  (0600), and the account key; loaded at start.
- Renewal at ``renew_fraction`` (two-thirds) of a certificate's lifetime.
- Failures: retried with backoff (``Backoff``: 30 s doubling to 1 h, per name),
  reported as a warning event, counted for ``/metrics``; never blocking another
  name or the HTTP listener.

The ACME client is synchronous (requests): orders run in a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError
from mesh.proto.names import valid_name

from . import events
from .home import private_dir, write_private

log = logging.getLogger("mesh.certs")

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
RENEW_FRACTION = 2 / 3
FIRST_RETRY = 30.0
LAST_RETRY = 3600.0
ORDER_TIMEOUT = 90.0


@dataclass
class Backoff:
    """When a name may be tried again after failures (sans-I/O: ``now`` is given)."""

    first: float = FIRST_RETRY
    last: float = LAST_RETRY
    failures: dict[str, int] = field(default_factory=dict)
    next_try: dict[str, float] = field(default_factory=dict)

    def may_try(self, name: str, now: float) -> bool:
        return now >= self.next_try.get(name, 0.0)

    def failed(self, name: str, now: float) -> float:
        """Record a failure; the seconds until the next try."""
        count = self.failures.get(name, 0) + 1
        self.failures[name] = count
        delay = float(min(self.last, self.first * 2 ** (count - 1)))
        self.next_try[name] = now + delay
        return delay

    def succeeded(self, name: str) -> None:
        self.failures.pop(name, None)
        self.next_try.pop(name, None)


def renew_at(not_before: float, not_after: float, fraction: float = RENEW_FRACTION) -> float:
    """Unix time at which a certificate valid from ``not_before`` to ``not_after`` is
    renewed."""
    return not_before + fraction * (not_after - not_before)


@dataclass
class Held:
    context: ssl.SSLContext
    not_before: float
    not_after: float


class CertManager:
    def __init__(self, domain: str, email: str, directory: str, cache: Path,
                 allowed: Callable[[str], Awaitable[bool]], *, ca_bundle: str | None = None,
                 renew_fraction: float = RENEW_FRACTION,
                 on_event: events.OnEvent = events.ignore) -> None:
        self.domain, self.email, self.directory = domain, email, directory
        self.cache = cache
        self.allowed = allowed
        self.ca_bundle = ca_bundle
        self.renew_fraction = renew_fraction
        self.on_event = on_event
        self.held: dict[str, Held] = {}
        self.backoff = Backoff()
        self.challenges: dict[str, str] = {}
        self.issued = 0
        self.failures = 0
        self._client: Any = None
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._renewals: dict[str, asyncio.TimerHandle] = {}
        self.fallback = self._fallback_context()

    # -- the TLS side ---------------------------------------------------------------
    def _fallback_context(self) -> ssl.SSLContext:
        """Served while a name has no certificate yet: self-signed for the domain."""
        cert, key = self_signed([self.domain])
        private_dir(self.cache)
        (self.cache / "fallback.pem").write_bytes(cert)
        key_path = self.cache / "fallback.key"
        write_private(key_path, key)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cache / "fallback.pem", key_path)
        context.sni_callback = self.sni
        return context

    def sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
            context: ssl.SSLContext) -> int | None:
        if not name:
            return None
        name = name.lower().rstrip(".")
        held = self.held.get(name)
        if held is not None:
            sock.context = held.context
        elif self.wanted(name):
            self.want(name)
        return None

    def wanted(self, name: str) -> bool:
        """``name`` is the domain or one label under it (anything else is refused)."""
        if name == self.domain:
            return True
        label, _, rest = name.partition(".")
        return rest == self.domain and valid_name(label)

    def challenge(self, token: str) -> str | None:
        return self.challenges.get(token)

    # -- getting certificates --------------------------------------------------------
    def start(self) -> None:
        private_dir(self.cache)
        for pem in sorted(self.cache.glob("*.pem")):
            name = pem.stem
            if name != "fallback" and self.wanted(name):
                try:
                    self._load(name)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    log.warning("cached certificate for %s is unusable: %s", name, exc)

    async def close(self) -> None:
        for task in self._pending.values():
            task.cancel()
        for timer in self._renewals.values():
            timer.cancel()

    def want(self, name: str) -> None:
        """Get (or renew) ``name``'s certificate in the background, once at a time."""
        if name in self._pending or not self.backoff.may_try(name, time.monotonic()):
            return
        task = asyncio.get_running_loop().create_task(self._obtain(name))
        self._pending[name] = task
        task.add_done_callback(lambda _: self._pending.pop(name, None))

    async def _obtain(self, name: str) -> None:
        label = name.removesuffix("." + self.domain) if name != self.domain else name
        if name != self.domain and not await self.allowed(label):
            self.backoff.failed(name, time.monotonic())
            log.info("no certificate for %s: no public share has that name", name)
            return
        try:
            await asyncio.to_thread(self._order, name)
            self._load(name)
        except Exception as exc:  # the ACME server's and the network's errors alike
            self.failures += 1
            delay = self.backoff.failed(name, time.monotonic())
            self.on_event(events.Warning(f"cannot get a certificate for {name} from "
                                         f"{self.directory}: {_reason(exc)}; retrying in "
                                         f"{delay:.0f} s (HTTP keeps working)"))
            if name in self.held:  # a renewal: the old certificate serves until then
                self._renewals[name] = asyncio.get_running_loop().call_later(
                    delay, self.want, name)
            return
        self.backoff.succeeded(name)
        self.issued += 1
        held = self.held[name]
        self.on_event(events.Certificate(name, _iso(held.not_after)))

    def _load(self, name: str) -> None:
        from cryptography import x509

        pem = self.cache / f"{name}.pem"
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pem, self.cache / f"{name}.key")
        held = self.held[name] = Held(context, cert.not_valid_before_utc.timestamp(),
                                      cert.not_valid_after_utc.timestamp())
        self._schedule(name, held)

    def _schedule(self, name: str, held: Held) -> None:
        """Renew ``name`` at its renewal point (checked again daily until then)."""
        old = self._renewals.pop(name, None)
        if old is not None:
            old.cancel()
        due = renew_at(held.not_before, held.not_after, self.renew_fraction) - time.time()
        loop = asyncio.get_running_loop()
        if due <= 0:
            self._renewals[name] = loop.call_later(1.0, self.want, name)
        else:
            self._renewals[name] = loop.call_later(min(due, 86400.0), self._recheck, name)

    def _recheck(self, name: str) -> None:
        held = self.held.get(name)
        if held is not None:
            self._schedule(name, held)

    # -- the ACME exchange (a worker thread) ---------------------------------------------
    def _order(self, name: str) -> None:
        from acme import challenges, crypto_util, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        client, account_key = self._account()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = client.new_order(crypto_util.make_csr(key_pem, [name]))
        answered = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # a renewal: the server kept the name's earlier authorization
            for chall in authz.body.challenges:
                if isinstance(chall.chall, challenges.HTTP01):
                    response, validation = chall.response_and_validation(account_key)
                    token = chall.chall.encode("token")
                    self.challenges[token] = validation
                    answered.append(token)
                    client.answer_challenge(chall, response)
                    break
            else:
                raise ConfigError("the ACME server offers no HTTP-01 challenge")
        try:
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            done = client.poll_and_finalize(order, deadline)
        finally:
            for token in answered:
                self.challenges.pop(token, None)
        write_private(self.cache / f"{name}.key", key_pem)
        (self.cache / f"{name}.pem").write_text(done.fullchain_pem)

    def _account(self) -> tuple[Any, Any]:
        from acme import client, errors, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        if self._client is not None:
            return self._client[0], self._client[1]
        path = self.cache / "account.key"
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), None)
            assert isinstance(loaded, rsa.RSAPrivateKey)
            private = loaded
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            write_private(path, private.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        from josepy.jwk import JWKRSA

        account_key = JWKRSA(key=private)
        # requests takes a CA bundle's path where acme's signature says bool
        verify: Any = self.ca_bundle or True
        net = client.ClientNetwork(account_key, user_agent="mesh-gateway", verify_ssl=verify)
        directory = client.ClientV2.get_directory(self.directory, net)
        acme = client.ClientV2(directory, net=net)
        registration = messages.NewRegistration.from_data(email=self.email,
                                                          terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:  # this key has an account already
            acme.net.account = acme.query_registration(
                messages.RegistrationResource(uri=exc.location, body=messages.Registration()))
        self._client = (acme, account_key)
        return acme, account_key

    def metrics(self) -> dict[str, float]:
        """For ``/metrics`` (``mesh serve`` adds them to the signaling server's)."""
        return {"mesh_acme_certificates": len(self.held), "mesh_acme_issued_total": self.issued,
                "mesh_acme_failures_total": self.failures}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


def self_signed(names: list[str], addresses: tuple[str, ...] = (), days: float = 30
                ) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key (PEM) for DNS ``names`` and IP ``addresses``,
    usable as its own CA: the gateway's fallback, and the tests' throwaway servers."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
