"""Node identity: a persistent Ed25519 key pair (PyNaCl).

The node id is the public key in lowercase RFC 4648 base32 without padding
(52 characters). It names the node to the signaling server and pins it in
tickets. Signing and sealing helpers live here so that no other module touches
key material directly. Sans-I/O: where the key is kept on disk is
``mesh/node/home.py``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import nacl.exceptions
import nacl.public
import nacl.signing

NODE_ID_LEN = 52


def encode_node_id(public_key: bytes) -> str:
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def decode_node_id(node_id: str) -> bytes:
    """Public key bytes of a node id; raises ValueError if it is not one."""
    if not isinstance(node_id, str) or len(node_id) != NODE_ID_LEN:
        raise ValueError("node id must be 52 base32 characters")
    try:
        raw = base64.b32decode(node_id.upper() + "====")
    except (binascii.Error, ValueError) as exc:
        raise ValueError("node id is not base32") from exc
    if len(raw) != 32 or encode_node_id(raw) != node_id:
        raise ValueError("node id is not canonical")
    return raw


def verify(node_id: str, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` over ``message`` was made by ``node_id``'s key."""
    try:
        key = nacl.signing.VerifyKey(decode_node_id(node_id))
        key.verify(message, signature)
    except (ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def seal(node_id: str, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` so only ``node_id`` can read it (anonymous sealed box)."""
    curve = nacl.signing.VerifyKey(decode_node_id(node_id)).to_curve25519_public_key()
    return bytes(nacl.public.SealedBox(curve).encrypt(plaintext))


@dataclass(frozen=True)
class Identity:
    """A node's key pair."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> str:
        return encode_node_id(self.public_key)

    @property
    def short_id(self) -> str:
        return self.node_id[:8]

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte Ed25519 signature."""
        return bytes(self.signing_key.sign(message).signature)

    def unseal(self, ciphertext: bytes) -> bytes:
        """Open a sealed box addressed to this node; raises ValueError if it fails."""
        curve = self.signing_key.to_curve25519_private_key()
        try:
            return bytes(nacl.public.SealedBox(curve).decrypt(ciphertext))
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError) as exc:
            raise ValueError("sealed box does not open") from exc
