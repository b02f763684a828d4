"""SPEC section 1: P-256 keys and party ids.

`SigningKey` signs the SPEC way (RFC 6979 deterministic nonce, then low-S) with OpenSSL's
deterministic ECDSA through `cryptography` >= 43; `PublicKey` validates a SEC1 point and
verifies r || s signatures. An independent CPython implementation of firmware/core/keys.py.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meterledger.errors import ProtocolError

__all__ = ["FIELD_PRIME", "HALF_N", "N", "PublicKey", "SigningKey", "party_id"]

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 group order
HALF_N = N >> 1
FIELD_PRIME = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF  # P-256's p


def party_id(pub: bytes) -> bytes:
    """SPEC section 1: the first 8 bytes of SHA-256 of the 65-byte public key."""
    return hashlib.sha256(pub).digest()[:8]


class PublicKey:
    """A party's P-256 public key: SEC1 uncompressed (65 bytes) and its 8-byte id."""

    __slots__ = ("_key", "id", "raw")

    def __init__(self, raw: bytes) -> None:
        # a value straight from a payload may be anything: only a byte string can be a key
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise ProtocolError("bad_public_key", f"public key must be a byte string, not "
                                                  f"{type(raw).__name__}")
        raw = bytes(raw)
        if len(raw) != 65 or raw[0] != 4:
            raise ProtocolError("bad_public_key",
                                "public key must be 65 bytes SEC1 uncompressed (0x04 || X || Y)")
        if max(int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")) >= FIELD_PRIME:
            raise ProtocolError("bad_public_key", "public key is not a point on P-256")
        try:
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except ValueError:
            raise ProtocolError("bad_public_key", "public key is not a point on P-256") from None
        self.raw = raw
        self.id = party_id(raw)

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def key(self) -> ec.EllipticCurvePublicKey:
        return self._key

    def verify(self, signature: bytes, data: bytes) -> bool:
        """ECDSA P-256/SHA-256 over data, signature r || s (64 bytes); no low-S rule here."""
        der = utils.encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                         int.from_bytes(signature[32:], "big"))
        try:
            self._key.verify(der, data, _ECDSA)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.id_hex})"


_ECDSA = ec.ECDSA(hashes.SHA256())
# RFC 6979 nonces (cryptography >= 43, OpenSSL >= 3.2, which its wheels bundle): the same
# key and data always give the same signature, as on the meter
_DETERMINISTIC = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


class SigningKey:
    """A P-256 private key that signs the SPEC way: RFC 6979 nonce, then low-S."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("SPEC keys are P-256")
        self._key = key
        self._d = key.private_numbers().private_value
        self.public_key = PublicKey(key.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint))
        self.id = self.public_key.id

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_int(cls, d: int) -> SigningKey:
        if not 1 <= d < N:
            raise ValueError("private scalar outside [1, n-1]")
        return cls(ec.derive_private_key(d, ec.SECP256R1()))

    @classmethod
    def from_bytes(cls, private: bytes) -> SigningKey:
        if len(private) != 32:
            raise ValueError("private key must be 32 bytes")
        return cls.from_int(int.from_bytes(private, "big"))

    def private_bytes(self) -> bytes:
        return self._d.to_bytes(32, "big")

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def sign(self, data: bytes) -> bytes:
        """64-byte r || s over SHA-256(data), deterministic (RFC 6979) and low-S."""
        r, s = utils.decode_dss_signature(self._key.sign(data, _DETERMINISTIC))
        if s > HALF_N:
            s = N - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"SigningKey({self.id_hex})"

