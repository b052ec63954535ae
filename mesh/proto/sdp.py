"""Session descriptions for a data-channel-only WebRTC session (RFC 8866, 8839, 8841, 8842).

mesh offers and answers one ``m=application ... UDP/DTLS/SCTP
webrtc-datachannel`` section; what a peer connection needs from the other
side's description is its ICE credentials (``a=ice-ufrag``, ``a=ice-pwd``),
candidates (``a=candidate``), DTLS certificate fingerprints
(``a=fingerprint``), DTLS role (``a=setup``: the offerer says ``actpass``,
the answerer ``active``, so the offerer is the DTLS server) and SCTP port and
maximum message size (``a=sctp-port``, ``a=max-message-size``; 64 KiB when
absent, RFC 8841 6.1). The older ``DTLS/SCTP 5000`` form with
``a=sctpmap`` is read too. Session-level attributes apply to the section
unless it sets its own.

``parse`` raises ``SdpError`` with a one-line reason; candidates stay text
(the transport parses them with aioice). Sans-I/O.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from .names import is_number

MAX_SDP = 64 * 1024
MAX_CANDIDATES = 64
DEFAULT_MAX_MESSAGE = 65536
_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
_FINGERPRINT = re.compile(r"^([A-Za-z0-9-]+) ((?:[0-9A-Fa-f]{2}:)+[0-9A-Fa-f]{2})$")


class SdpError(ValueError):
    """A description mesh cannot use."""


@dataclass(frozen=True)
class Description:
    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    """(algorithm, colon-separated hex), as given."""
    setup: str
    """``actpass``, ``active`` or ``passive``."""
    candidates: tuple[str, ...] = ()
    """Candidate attribute values (``foundation component transport ...``)."""
    mid: str = "0"
    sctp_port: int = 5000
    max_message_size: int = DEFAULT_MAX_MESSAGE
    """0: no limit (RFC 8841 6.1)."""
    end_of_candidates: bool = True


def build(desc: Description, session_id: int | None = None) -> str:
    sid = session_id if session_id is not None else secrets.randbits(62)
    port, addr = 9, "0.0.0.0"
    for cand in desc.candidates:  # the default candidate: the first, as aiortc does
        parts = cand.split()
        if len(parts) >= 6 and ":" not in parts[4]:
            addr, port = parts[4], int(parts[5])
            break
    lines = [
        "v=0", f"o=- {sid} {sid} IN IP4 0.0.0.0", "s=-", "t=0 0",
        f"a=group:BUNDLE {desc.mid}", "a=msid-semantic:WMS *",
        f"m=application {port} UDP/DTLS/SCTP webrtc-datachannel", f"c=IN IP4 {addr}",
        f"a=mid:{desc.mid}", f"a=sctp-port:{desc.sctp_port}",
        f"a=max-message-size:{desc.max_message_size}",
    ]
    lines += [f"a=candidate:{cand}" for cand in desc.candidates]
    if desc.end_of_candidates:
        lines.append("a=end-of-candidates")
    lines += [f"a=ice-ufrag:{desc.ice_ufrag}", f"a=ice-pwd:{desc.ice_pwd}"]
    lines += [f"a=fingerprint:{alg} {value}" for alg, value in desc.fingerprints]
    lines.append(f"a=setup:{desc.setup}")
    return "\r\n".join(lines) + "\r\n"


def parse(text: str) -> Description:
    if len(text) > MAX_SDP:
        raise SdpError(f"the description is over {MAX_SDP} bytes")
    session: dict[str, list[str]] = {}
    sections: list[tuple[str, dict[str, list[str]]]] = []
    current = session
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"not an SDP line: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            current = {}
            sections.append((value, current))
        elif kind == "a":
            name, _, rest = value.partition(":")
            current.setdefault(name, []).append(rest)
    if not text.startswith("v=0"):
        raise SdpError("the description does not start with v=0")
    data = [(m, attrs) for m, attrs in sections if _is_data(m)]
    if not data:
        raise SdpError("the description has no data channel section")
    if len(sections) != 1:
        raise SdpError("the description carries media or several sections; "
                       "mesh speaks data channels only")
    media, attrs = data[0]

    def one(name: str) -> str | None:
        values = attrs.get(name) or session.get(name)
        return values[0].strip() if values else None

    ufrag, pwd = one("ice-ufrag"), one("ice-pwd")
    if not ufrag or not pwd:
        raise SdpError("the description has no ICE credentials")
    if not (4 <= len(ufrag) <= 256 and _ICE_CHARS.match(ufrag)):
        raise SdpError("the ICE username fragment is malformed")
    if not (22 <= len(pwd) <= 256 and _ICE_CHARS.match(pwd)):
        raise SdpError("the ICE password is malformed")
    prints = []
    for value in attrs.get("fingerprint") or session.get("fingerprint") or []:
        found = _FINGERPRINT.match(value.strip())
        if found is None:
            raise SdpError("a DTLS fingerprint is malformed")
        prints.append((found.group(1).lower(), found.group(2).upper()))
    if not prints:
        raise SdpError("the description has no DTLS fingerprint")
    setup = one("setup") or "actpass"
    if setup not in ("actpass", "active", "passive"):
        raise SdpError(f"unknown DTLS setup role {setup[:20]!r}")
    candidates = tuple(v.strip() for v in attrs.get("candidate", []))
    if len(candidates) > MAX_CANDIDATES:
        raise SdpError(f"more than {MAX_CANDIDATES} candidates")
    return Description(
        ice_ufrag=ufrag, ice_pwd=pwd, fingerprints=tuple(prints), setup=setup,
        candidates=candidates, mid=one("mid") or "0", sctp_port=_sctp_port(media, attrs),
        max_message_size=_number(one("max-message-size"), DEFAULT_MAX_MESSAGE,
                                 "max-message-size"),
        end_of_candidates="end-of-candidates" in attrs or "end-of-candidates" in session)


def _is_data(media: str) -> bool:
    parts = media.split()
    return len(parts) >= 4 and parts[0] == "application" and (
        (parts[2] == "UDP/DTLS/SCTP" and parts[3] == "webrtc-datachannel")
        or parts[2] == "DTLS/SCTP")


def _sctp_port(media: str, attrs: dict[str, list[str]]) -> int:
    if "sctp-port" in attrs:
        return _number(attrs["sctp-port"][0], 5000, "sctp-port", top=65535)
    parts = media.split()
    if parts[2] == "DTLS/SCTP":  # the older form: the format is the port
        return _number(parts[3], 5000, "sctp port", top=65535)
    return 5000


def _number(value: str | None, default: int, what: str, top: int = 1 << 32) -> int:
    if value is None:
        return default
    text = value.strip()
    if not is_number(text) or len(text) > 10 or int(text) > top:
        raise SdpError(f"{what} is not a number in range")
    return int(text)

