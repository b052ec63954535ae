import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import TicketError
from mesh.proto import ticket as tk
from mesh.proto.identity import Identity

IDENT = Identity.from_seed(b"\x01" * 32)
OTHER = Identity.from_seed(b"\x02" * 32)

names = st.text(max_size=20).filter(lambda s: len(s.encode()) <= tk.MAX_NAME)
urls = st.lists(st.text(min_size=1, max_size=60), max_size=3).map(tuple)
hints = st.lists(st.text(min_size=1, max_size=16), max_size=3).map(tuple)


def make(**kw: object) -> tk.Ticket:
    base: dict[str, object] = dict(node_id=IDENT.node_id, secret=b"s" * 16, expires=2_000_000_000,
                                   name="web", signal_urls=("ws://127.0.0.1:8765/",))
    base.update(kw)
    return tk.Ticket(**base)  # type: ignore[arg-type]


@given(name=names, signal_urls=urls, hints=hints, secret=st.binary(min_size=16, max_size=32),
       expires=st.integers(0, 2**32 - 1))
@settings(max_examples=200)
def test_round_trip(name: str, signal_urls: tuple[str, ...], hints: tuple[str, ...],
                    secret: bytes, expires: int) -> None:
    t = make(name=name, signal_urls=signal_urls, lan_hints=hints, secret=secret, expires=expires)
    assert tk.decode(t.encode(IDENT)) == t


def test_text_form_is_case_insensitive_and_whitespace_tolerant() -> None:
    text = make().encode(IDENT)
    assert text.startswith("mesh1")
    assert tk.decode("  " + text.upper()[:50] + "\n" + text.upper()[50:]) == make()


def test_secret_is_128_bits_or_more() -> None:
    assert len(tk.new_secret()) * 8 >= 128


def _raw(text: str) -> bytes:
    data = text[len(tk.PREFIX):].upper()
    return base64.b32decode(data + "=" * (-len(data) % 8))


def _text(raw: bytes) -> str:
    return tk.PREFIX + base64.b32encode(raw).decode().rstrip("=").lower()


def test_every_flipped_byte_is_refused() -> None:
    raw = _raw(make().encode(IDENT))
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        with pytest.raises(TicketError):
            tk.decode(_text(bytes(bad)))


def test_signed_by_another_key_is_refused_if_key_swapped() -> None:
    raw = bytearray(_raw(make().encode(IDENT)))
    raw[1:33] = OTHER.public_key  # swap the pinned key, keep the old signature
    with pytest.raises(TicketError, match="signature"):
        tk.decode(_text(bytes(raw)))


def test_cannot_encode_for_someone_else() -> None:
    with pytest.raises(ValueError):
        make().encode(OTHER)


def test_expired() -> None:
    text = make(expires=1000).encode(IDENT)
    assert tk.decode(text).expires == 1000
    with pytest.raises(TicketError, match="expired"):
        tk.decode(text, now=1001)


@pytest.mark.parametrize("text,match", [
    ("", "not a mesh ticket"),
    ("hello", "not a mesh ticket"),
    ("mesh1!!!!", "characters a ticket never has"),
    ("mesh1ab1c", "characters a ticket never has"),
    ("mesh1abcd", "truncated"),
    ("mesh1" + "a" * 5000, "too long"),
])
def test_malformed(text: str, match: str) -> None:
    with pytest.raises(TicketError, match=match):
        tk.decode(text)


def test_truncated_copy() -> None:
    """Any cut says "truncated" (not "garbled", which made users hunt for typos)."""
    text = make().encode(IDENT)
    for cut in range(6, len(text)):
        with pytest.raises(TicketError, match=r"truncated|signature"):
            tk.decode(text[:cut])


@given(st.text(max_size=600))
@settings(max_examples=500)
def test_fuzz_text_never_raises_anything_but_ticket_error(text: str) -> None:
    with contextlib.suppress(TicketError):
        tk.decode(text)


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_fuzz_binary_never_raises_anything_but_ticket_error(raw: bytes) -> None:
    with contextlib.suppress(TicketError):
        tk.decode(_text(raw))


def test_http_mode_travels_in_the_ticket_and_old_tickets_have_none() -> None:
    assert tk.decode(make(http=True).encode(IDENT)).http is True
    assert tk.decode(make().encode(IDENT)).http is False


def test_the_guard_follows_the_ticket_unless_told_otherwise() -> None:
    from mesh.errors import ConfigError
    from mesh.node.config import ConnectConfig

    http_share, plain_share = make(http=True), make()
    assert ConnectConfig(ticket=http_share).guard_http
    assert not ConnectConfig(ticket=http_share, no_http_guard=True).guard_http
    assert not ConnectConfig(ticket=plain_share).guard_http
    assert ConnectConfig(ticket=plain_share, http=True).guard_http
    with pytest.raises(ConfigError, match="contradict"):
        ConnectConfig(ticket=http_share, http=True, no_http_guard=True)
