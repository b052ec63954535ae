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


def run(sharer_secret: bytes, connector_secret: bytes,
        t_sharer: adm.Transcript = T, t_conn: adm.Transcript = T) -> adm.ConnectorAdmission:
    s = adm.SharerAdmission(sharer_secret, t_sharer)
    c = adm.ConnectorAdmission(connector_secret, t_conn)
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
    s1 = adm.SharerAdmission(b"k" * 16, T)
    c = adm.ConnectorAdmission(b"k" * 16, T)
    proof = c.receive(json.loads(s1.challenge()))
    assert proof is not None
    s2 = adm.SharerAdmission(b"k" * 16, T)
    s2.challenge()
    assert json.loads(s2.receive(json.loads(proof)))["t"] == "denied"


def test_sharer_must_prove_too() -> None:
    s = adm.SharerAdmission(b"k" * 16, T)
    c = adm.ConnectorAdmission(b"k" * 16, T)
    c.receive(json.loads(s.challenge()))
    with pytest.raises(HandshakeError):
        c.receive({"t": "admitted", "mac": "00" * 32})


def test_second_proof_is_a_protocol_error() -> None:
    s = adm.SharerAdmission(b"k" * 16, T)
    s.challenge()
    s.receive({"t": "proof", "mac": "00" * 32})
    with pytest.raises(ProtocolError):
        s.receive({"t": "proof", "mac": "00" * 32})


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_fuzz_control_parse(text: str) -> None:
    try:
        obj = adm.parse(text)
        adm.SharerAdmission(b"k" * 16, T).receive(obj)
    except ProtocolError:
        pass


@given(st.dictionaries(st.sampled_from(["t", "mac", "nonce", "reason"]),
                       st.one_of(st.text(max_size=70), st.integers(), st.none())))
@settings(max_examples=300)
def test_fuzz_connector_messages(obj: dict[str, object]) -> None:
    c = adm.ConnectorAdmission(b"k" * 16, T)
    with contextlib.suppress(ProtocolError, AdmissionDenied, HandshakeError):
        c.receive(obj)
