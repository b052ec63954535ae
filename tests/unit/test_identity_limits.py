import os
import stat
from pathlib import Path

import pytest

from mesh.errors import IdentityError
from mesh.node.home import load_or_create
from mesh.proto.identity import Identity, decode_node_id, verify
from mesh.proto.limits import ConnectionCounter, TokenBucket


def test_created_0600_and_stable(tmp_path: Path) -> None:
    a = load_or_create(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "identity.key").st_mode)
    assert mode == 0o600
    assert load_or_create(tmp_path).node_id == a.node_id
    assert decode_node_id(a.node_id) == a.public_key


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "identity.key").write_text("nonsense")
    (tmp_path / "identity.key").chmod(0o600)
    with pytest.raises(IdentityError, match="not a mesh identity"):
        load_or_create(tmp_path)


def test_sign_verify() -> None:
    a = Identity.generate()
    sig = a.sign(b"m")
    assert verify(a.node_id, b"m", sig)
    assert not verify(a.node_id, b"n", sig)
    assert not verify("garbage", b"m", sig)


@pytest.mark.parametrize("bad", ["", "a" * 51, "A" * 52, "1" * 52, "a" * 53])
def test_bad_node_ids(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_node_id(bad)


def test_token_bucket() -> None:
    b = TokenBucket(rate=10, burst=5)
    assert all(b.take(0.0) for _ in range(5))
    assert not b.take(0.0)
    assert b.take(0.1)  # one token back after 100 ms
    assert not b.take(0.1)


def test_connection_counter() -> None:
    c = ConnectionCounter(2)
    assert c.acquire("a") and c.acquire("a") and not c.acquire("a")
    assert c.acquire("b")
    c.release("a")
    assert c.acquire("a")
    assert c.total() == 3
