"""A number that a user or a peer sends is ASCII digits, or it is refused cleanly.

``str.isdigit()`` is true for superscripts ("²", which ``int()`` then refuses
with a ValueError nobody expected: the TURN server answered 200 such
usernames with 200 tracebacks) and for other scripts' digits ("٨٠", fullwidth "80",
which ``int()`` reads as 80, so a signed LAN advert could carry a port no
ASCII tool would show). Every parser of remote or user text that reads a
number is covered here: the TURN username, SDP, the LAN advert, HOST:PORT.
"""

from __future__ import annotations

import base64

import pytest

from mesh.errors import ConfigError
from mesh.proto import advert, sdp
from mesh.proto.identity import Identity
from mesh.proto.names import is_number, parse_hostport
from tests.unit.test_sdp import CHROME_OFFER as BROWSER_OFFER

TRICKY = ["²", "٨٠", "\uff18\uff10", "5²", "\u0663" * 10]


@pytest.mark.parametrize("text", TRICKY)
def test_only_ascii_digits_are_numbers(text: str) -> None:
    assert text.isdigit() and not is_number(text)


def test_ascii_digits_are() -> None:
    assert is_number("0") and is_number("65535") and not is_number("") and not is_number("-1")


@pytest.mark.parametrize("text", TRICKY)
def test_hostport_refuses_them_with_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(f"127.0.0.1:{text}", "--port", default_host="127.0.0.1")


@pytest.mark.parametrize("text", TRICKY)
def test_sdp_refuses_them(text: str) -> None:
    with pytest.raises(sdp.SdpError):
        sdp.parse(BROWSER_OFFER.replace("a=sctp-port:5000", f"a=sctp-port:{text}"))
    with pytest.raises(sdp.SdpError):
        sdp.parse(BROWSER_OFFER.replace("a=max-message-size:262144",
                                        f"a=max-message-size:{text}"))


@pytest.mark.parametrize("text", TRICKY)
def test_a_signed_advert_with_them_is_refused(text: str) -> None:
    me = Identity.generate()
    for port, made in ((text, "1800000000"), ("8000", text)):
        props = {"v": "1", "n": "bench", "id": me.node_id, "p": port, "a": "10.0.0.1",
                 "t": made, "o": "0"}
        sig = me.sign(advert._signed("bench", me.node_id, port, "10.0.0.1", made, "0"))
        props["s"] = base64.b64encode(sig).decode()
        assert advert.verify_properties(props) is None
    good = advert.make_properties(me, "bench", 8000, ["10.0.0.1"], 1800000000.0, False)
    assert advert.verify_properties(good) is not None
