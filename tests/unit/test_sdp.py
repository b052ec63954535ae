"""Data-channel session descriptions (mesh/proto/sdp.py): what mesh writes, what
browsers and aiortc write, and what is refused."""

from __future__ import annotations

import pytest

from mesh.proto import sdp

FP = "sha-256 " + ":".join(["AB"] * 32)

CHROME_OFFER = """v=0
o=- 8433950435691160984 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS
m=application 49436 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 192.0.2.2
a=candidate:1951566586 1 udp 2113937151 192.0.2.2 49436 typ host generation 0 network-cost 999
a=ice-ufrag:5urd
a=ice-pwd:KmEuoloxEHSckehxXiGqZfzE
a=ice-options:trickle
a=fingerprint:sha-256 {fp}
a=setup:actpass
a=mid:0
a=sctp-port:5000
a=max-message-size:262144
""".format(fp=":".join(["63"] * 32))


def desc(**changes: object) -> sdp.Description:
    base = sdp.Description(ice_ufrag="abcd", ice_pwd="p" * 22,
                           fingerprints=(("sha-256", FP.split()[1]),), setup="actpass",
                           candidates=("1 1 udp 2130706431 127.0.0.1 4000 typ host",))
    return sdp.Description(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_what_mesh_writes_it_reads_back() -> None:
    original = desc(max_message_size=262144, mid="data")
    text = sdp.build(original)
    assert "m=application 4000 UDP/DTLS/SCTP webrtc-datachannel" in text
    assert "c=IN IP4 127.0.0.1" in text
    assert sdp.parse(text) == original


def test_a_browser_offer() -> None:
    got = sdp.parse(CHROME_OFFER)
    assert (got.ice_ufrag, got.setup, got.max_message_size, got.sctp_port) == (
        "5urd", "actpass", 262144, 5000)
    assert got.fingerprints[0][0] == "sha-256"
    assert len(got.candidates) == 1 and not got.end_of_candidates  # trickle


def test_session_level_attributes_and_the_older_sctpmap_form() -> None:
    text = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
            f"a=fingerprint:{FP}\r\na=ice-ufrag:wxyz\r\na=ice-pwd:{'q' * 22}\r\n"
            "m=application 9 DTLS/SCTP 5001\r\na=sctpmap:5001 webrtc-datachannel 1024\r\n")
    got = sdp.parse(text)
    assert (got.sctp_port, got.ice_ufrag, got.setup) == (5001, "wxyz", "actpass")
    assert got.max_message_size == sdp.DEFAULT_MAX_MESSAGE  # absent: 64 KiB (RFC 8841)


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda t: t.replace("v=0", "x=0"), "v=0"),
    (lambda t: t.replace("webrtc-datachannel", "foo"), "no data channel section"),
    (lambda t: t + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "data channels only"),
    (lambda t: t.replace("a=ice-pwd", "a=x-pwd"), "no ICE credentials"),
    (lambda t: t.replace("a=ice-ufrag:abcd", "a=ice-ufrag:a b"), "username fragment"),
    (lambda t: t.replace("a=fingerprint", "a=x-fingerprint"), "no DTLS fingerprint"),
    (lambda t: t.replace(":AB:AB", ":ZZ:AB", 1), "fingerprint is malformed"),
    (lambda t: t.replace("a=setup:actpass", "a=setup:holdconn"), "setup role"),
    (lambda t: t.replace("a=sctp-port:5000", "a=sctp-port:99999"), "sctp-port"),
    (lambda t: t.replace("a=max-message-size:65536", "a=max-message-size:-1"),
     "max-message-size"),
    (lambda t: t.replace("a=end-of-candidates",
                         "a=candidate:1 1 udp 1 1.2.3.4 1 typ host\r\n" * 65), "candidates"),
    (lambda t: t + "a=x:" + "y" * sdp.MAX_SDP + "\r\n", "over"),
    (lambda t: t + "garbage\r\n", "not an SDP line"),
])
def test_refused_with_a_reason(mutate: object, reason: str) -> None:
    text = mutate(sdp.build(desc()))  # type: ignore[operator]
    with pytest.raises(sdp.SdpError, match=reason):
        sdp.parse(text)
