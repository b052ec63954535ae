"""What counts as a valid name, address, port, node id or URL: one rule each, one message each.

Every configuration class (the node's, the HTTP layer's, the server's) checks
its fields with these functions in ``__post_init__``, so the command line, the
Python API and a config file refuse the same things with the same one-line
``ConfigError``. ``what`` names the field as the user wrote it (``--port``,
``name``), so the message points at it.

Rules:

- a name (a share's, a public name, a pool) is one lower-case DNS label:
  ``a-z``, ``0-9`` and ``-``, 1 to 63 characters, not starting or ending with
  ``-``; it is what ``NAME.DOMAIN`` and ``mesh connect NAME`` need, and safe to
  paste into a shell;
- ``HOST:PORT`` (or ``PORT`` alone, or ``[v6]:PORT``) is parsed in one place;
- a signaling URL is ``ws://`` or ``wss://`` with a host.

Sans-I/O: pure functions of their arguments.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from mesh.errors import ConfigError

from .identity import decode_node_id

LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
NAME_RULE = "one lower-case DNS label: a-z, 0-9 and -, at most 63 characters"


def valid_name(name: object) -> bool:
    """A share name: one lower-case DNS label (``hooks``, ``my-app-2``)."""
    return isinstance(name, str) and LABEL.fullmatch(name) is not None


def check_name(name: str, what: str = "--name") -> str:
    if not valid_name(name):
        raise ConfigError(f"{what} {name!r} is not a valid name: {NAME_RULE}")
    return name


def valid_domain(domain: object) -> bool:
    return (isinstance(domain, str) and 0 < len(domain) <= 200
            and all(valid_name(label) for label in domain.lower().split(".")))


def check_domain(domain: str, what: str = "--domain") -> str:
    if not valid_domain(domain):
        raise ConfigError(f"{what} {domain!r} is not a domain name")
    return domain.lower()


def default_share_name(hostname: str, port: int) -> str:
    """``<this machine's name>-<port>`` as a valid name, whatever the hostname looks like."""
    first = hostname.split(".", 1)[0].lower()
    label = re.sub(r"[^a-z0-9-]+", "-", first).strip("-")
    suffix = f"-{port}"
    label = label[: 63 - len(suffix)].rstrip("-") or "share"
    return label + suffix


def check_port(port: object, what: str, *, zero_ok: bool = False) -> int:
    low = 0 if zero_ok else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ConfigError(f"{what} {port!r} is out of range: ports are {low}-65535"
                          + (" (0 picks a free one)" if zero_ok else ""))
    return port


def is_number(text: str) -> bool:
    """ASCII digits only. ``str.isdigit()`` also takes superscripts (which ``int()``
    then refuses) and other scripts' digits (which ``int()`` reads as numbers): every
    number parsed from what a user or a peer sends goes through here."""
    return text.isascii() and text.isdigit()


def parse_hostport(text: str, what: str, *, default_host: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT``, checked for form; the port's range is
    the configuration's to check (so the CLI and the API say the same)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = default_host, text
    if host.startswith("[") != host.endswith("]") or not is_number(port_text):
        raise ConfigError(f"{what} {text!r}: give PORT or HOST:PORT")
    host = host.strip("[]") or default_host
    return check_host(host, what), int(port_text[:6])


def parse_loopback(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` on loopback only (127.0.0.0/8, ::1 or localhost)."""
    host, port = parse_hostport(text, what, default_host="127.0.0.1")
    check_port(port, what, zero_ok=True)
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"{what} {text!r}: binds loopback only (127.0.0.0/8, ::1 or "
                              "localhost)")
    return host, port


def check_host(host: str, what: str) -> str:
    """An IP address or a host name (not resolved here)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if host == "localhost" or valid_domain(host):
        return host
    raise ConfigError(f"{what}: {host!r} is not an IP address or a host name")


def check_ip(text: str, what: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not an IP address") from None
    return text


def check_cidr(text: str, what: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a CIDR range") from None
    return text


def check_node_id(node_id: str, what: str) -> str:
    try:
        decode_node_id(node_id)
    except ValueError:
        raise ConfigError(f"{what} {node_id!r} is not a node id (see `mesh id`)") from None
    return node_id


def check_signal_url(url: str, what: str = "--signal") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"signaling URL must start with ws:// or wss:// and name a host: "
                          f"{url!r} ({what})")
    return url


def check_http_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r} must be http(s)://HOST[:PORT]")
    return url


def check_positive(value: float, what: str, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or (
            value < 0 or (value == 0 and not zero_ok)):
        raise ConfigError(f"{what} must be a {'non-negative' if zero_ok else 'positive'} "
                          f"number, not {value!r}")
    return value


def check_basic_auth(value: str, what: str) -> tuple[str, str]:
    """``USER:PASS``, both non-empty."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password or any(c in value for c in "\r\n"):
        raise ConfigError(f"{what} must be USER:PASS, both non-empty")
    return user, password


@dataclass(frozen=True)
class IceUrl:
    """A ``stun:`` or ``turn:`` URL (RFC 7064, RFC 7065)."""

    scheme: str
    """``stun``, ``stuns``, ``turn`` or ``turns``."""
    host: str
    port: int
    transport: str | None
    """``udp`` or ``tcp`` for TURN; None for STUN."""


_ICE_URL = re.compile(r"(stuns?|turns?):(\[[0-9a-fA-F:.]+\]|[^?:\[\]]+)(?::(\d{1,5}))?"
                      r"(?:\?transport=(udp|tcp))?")


def parse_ice_url(url: str) -> IceUrl | None:
    """The parts of a STUN/TURN URL, or None if it is not one (a server handed it to us:
    anything odd is skipped, not fatal)."""
    match = _ICE_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        return None
    scheme, host, port, transport = match.groups()
    if scheme.startswith("stun") and transport is not None:
        return None
    number = int(port) if port else (5349 if scheme.endswith("s") else 3478)
    if not 0 < number < 65536:
        return None
    if scheme.startswith("turn"):
        transport = transport or ("tcp" if scheme == "turns" else "udp")
    return IceUrl(scheme, host.strip("[]"), number, transport)
