import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import AdmissionDenied, HandshakeError, ProtocolError
from mesh.proto import admission as adm

SDP_A = "v=0\r\na=fingerprint:sha-256 AA:BB:CC\r\n"
SDP_B = "v=0\r\na=fingerprint:sha-256 11:22:33\r\na=fingerprint:sha-512 44:55\r\n"
T = adm.Transcript("sharer", "connector", adm.fingerprints(SDP_A), adm.fingerprints(SDP_B))
NOW = 1_800_000_000
EXP = NOW + 3600


def sharer(master: bytes = b"k" * 16, t: adm.Transcript = T, now: float = NOW,
           open_key: bytes | None = None) -> adm.SharerAdmission:
    return adm.SharerAdmission(adm.Keys(master, open_key), t, now)


def connector(master: bytes = b"k" * 16, t: adm.Transcript = T, exp: int = EXP
              ) -> adm.ConnectorAdmission:
    """A connector holding the ticket that ``master``'s share printed for ``exp``."""
    return adm.ConnectorAdmission(adm.ticket_secret(master, exp), t, exp)


def run(sharer_secret: bytes, connector_secret: bytes,
        t_sharer: adm.Transcript = T, t_conn: adm.Transcript = T) -> adm.ConnectorAdmission:
    s = sharer(sharer_secret, t_sharer)
    c = connector(connector_secret, t_conn)
    proof = c.receive(json.loads(s.challenge()))
    assert proof is not None
    reply = s.receive(json.loads(proof))
    assert c.receive(json.loads(reply)) is None
    return c


def test_fingerprints_parsed_and_sorted() -> None:
    assert adm.fingerprints(SDP_B) == ("sha-256 11:22:33", "sha-512 44:55")


def test_admitted_with_right_secret() -> None:
    assert run(b"k" * 16, b"k" * 16).admitted


def test_denied_with_wrong_secret() -> None:
    with pytest.raises(AdmissionDenied, match="wrong ticket secret"):
        run(b"k" * 16, b"x" * 16)


def test_proof_bound_to_fingerprints() -> None:
    # A proof made for one DTLS session (say, relayed by a man in the middle holding
    # other certificates) does not verify in another.
    other = adm.Transcript("sharer", "connector", adm.fingerprints(SDP_A),
                           adm.fingerprints("a=fingerprint:sha-256 99:99\r\n"))
    with pytest.raises(AdmissionDenied):
        run(b"k" * 16, b"k" * 16, t_sharer=T, t_conn=other)


def test_proof_is_not_replayable_across_challenges() -> None:
    s1 = sharer()
    c = connector()
    proof = c.receive(json.loads(s1.challenge()))
    assert proof is not None
    s2 = sharer()
    s2.challenge()
    assert json.loads(s2.receive(json.loads(proof)))["t"] == "denied"


def test_sharer_must_prove_too() -> None:
    s = sharer()
    c = connector()
    c.receive(json.loads(s.challenge()))
    with pytest.raises(HandshakeError):
        c.receive({"t": "admitted", "mac": "00" * 32})


def test_second_proof_is_a_protocol_error() -> None:
    s = sharer()
    s.challenge()
    s.receive({"t": "proof", "mac": "00" * 32, "exp": EXP})
    with pytest.raises(ProtocolError):
        s.receive({"t": "proof", "mac": "00" * 32, "exp": EXP})


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_fuzz_control_parse(text: str) -> None:
    try:
        obj = adm.parse(text)
        sharer().receive(obj)
    except ProtocolError:
        pass


@given(st.dictionaries(st.sampled_from(["t", "mac", "nonce", "reason"]),
                       st.one_of(st.text(max_size=70), st.integers(), st.none())))
@settings(max_examples=300)
def test_fuzz_connector_messages(obj: dict[str, object]) -> None:
    c = connector()
    with contextlib.suppress(ProtocolError, AdmissionDenied, HandshakeError):
        c.receive(obj)


def proof_for(s: adm.SharerAdmission, secret: bytes, exp: int) -> dict[str, object]:
    c = adm.ConnectorAdmission(secret, T, exp)
    proof = c.receive(json.loads(s.challenge()))
    assert proof is not None
    return dict(json.loads(proof))


def test_the_sharer_refuses_an_expired_ticket_even_with_the_right_secret() -> None:
    """A client patched to skip its own expiry check, or a share restarted with the
    same master secret: the ticket's own secret and expiry, and still refused."""
    for now in (EXP + 1, EXP + 86400 * 30):
        s = sharer(now=now)
        reply = json.loads(s.receive(proof_for(s, adm.ticket_secret(b"k" * 16, EXP), EXP)))
        assert reply == {"t": "denied", "reason": "the ticket has expired"}


def test_claiming_a_later_expiry_than_the_ticket_gives_a_wrong_key() -> None:
    s = sharer(now=EXP + 10)
    old = adm.ticket_secret(b"k" * 16, EXP)
    for later in (EXP + 3600, 2**32 - 1):
        s = sharer(now=EXP + 10)
        reply = json.loads(s.receive(proof_for(s, old, later)))
        assert reply == {"t": "denied", "reason": "wrong ticket secret"}


def test_the_master_secret_itself_is_not_a_ticket_secret() -> None:
    s = sharer()
    assert json.loads(s.receive(proof_for(s, b"k" * 16, EXP)))["t"] == "denied"


@pytest.mark.parametrize("exp", [None, "1800000000", True, -1, 2**32, 1.5])
def test_a_malformed_expiry_is_a_protocol_error(exp: object) -> None:
    s = sharer()
    s.challenge()
    with pytest.raises(ProtocolError):
        s.receive({"t": "proof", "mac": "00" * 32, "exp": exp})


def test_the_lan_open_secret_admits_only_where_the_caller_passes_it() -> None:
    """The derivable LAN secret (anyone knowing node id and name has it) works for an
    offer that came through the LAN endpoint and nowhere else."""
    open_key = b"o" * 32
    via_lan = sharer(open_key=open_key)
    assert json.loads(via_lan.receive(proof_for(via_lan, open_key, EXP)))["t"] == "admitted"
    via_server = sharer(open_key=None)
    reply = json.loads(via_server.receive(proof_for(via_server, open_key, EXP)))
    assert reply == {"t": "denied", "reason": "wrong ticket secret"}
    # a ticket holder is admitted on either path
    for s in (sharer(open_key=open_key), sharer()):
        good = proof_for(s, adm.ticket_secret(b"k" * 16, EXP), EXP)
        assert json.loads(s.receive(good))["t"] == "admitted"
