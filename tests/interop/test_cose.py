"""A standard COSE library (pycose) reads and verifies what the firmware signs, and the
firmware verifies what pycose signs."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pycose.keys import EC2Key
from pycose.keys.curves import P256
from pycose.messages import Sign1Message

from core import cbor, cose, keys, p256
from core import messages as M

D = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721


def _cose_key(pub: bytes, d: int | None = None) -> EC2Key:
    if d is None:
        return EC2Key(crv=P256, x=pub[1:33], y=pub[33:])
    return EC2Key(crv=P256, x=pub[1:33], y=pub[33:], d=d.to_bytes(32, "big"))


def _pycose_decode(msg: bytes) -> Sign1Message:
    # pycose 1.1's CoseMessage.decode expects cbor2 to return lists and dicts, but
    # cbor2 >= 6 returns tuples and frozendicts; decode the tag ourselves and hand pycose
    # the array in the types it expects (it still parses the headers and checks the sig)
    obj = cbor2.loads(msg)
    assert obj.tag == 18  # COSE_Sign1
    protected, unprotected, payload, signature = obj.value
    decoded = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    assert isinstance(decoded, Sign1Message)
    return decoded


@pytest.mark.parametrize("seq", [1, 2, 96, 2880])
def test_pycose_verifies_firmware_reading(seq: int):
    k = keys.SigningKey(D)
    prev = bytes(32) if seq == 1 else hashlib.sha256(str(seq).encode()).digest()
    msg = cose.sign1(k, M.reading(k.id, seq, 1_800_000_000, 900, 1000 + seq, 0, 0, prev, {1: 2300}))
    decoded = _pycose_decode(msg)
    decoded.key = _cose_key(k.pub)
    assert decoded.verify_signature()
    assert decoded.payload is not None and cbor2.loads(decoded.payload)[2] == seq
    assert k.id in [v for v in decoded.uhdr.values() if isinstance(v, bytes)]


def test_pycose_rejects_firmware_message_with_flipped_payload_byte():
    k = keys.SigningKey(D)
    msg = bytearray(cose.sign1(k, M.reading(k.id, 1, 1_800_000_000, 900, 5, 0, 0, bytes(32))))
    msg[30] ^= 0x01  # inside the payload
    decoded = _pycose_decode(bytes(msg))
    decoded.key = _cose_key(k.pub)
    assert not decoded.verify_signature()


@pytest.mark.parametrize("seq", range(1, 9))
def test_firmware_verifies_message_signed_by_pycose(seq: int):
    pub = ec.derive_private_key(D, ec.SECP256R1()).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)
    kid = keys.party_id(pub)
    fields = M.ack(kid, seq, b"\x07" * 32, 1_800_000_905, kid)
    m = Sign1Message(phdr={1: -7}, uhdr={4: kid}, payload=cbor.encode(fields))
    m.key = _cose_key(pub, D)
    raw = m.encode(tag=True)
    vk = keys.VerifyingKey(pub)
    s = int.from_bytes(raw[-32:], "big")
    if s > p256.HALF_N:
        # pycose does not canonize; SPEC rejects high-S, and the canonized twin is valid
        with pytest.raises(cose.CoseError) as err:
            cose.verify(raw, vk)
        assert err.value.reason == "high_s"
        raw = raw[:-32] + (p256.N - s).to_bytes(32, "big")
        again = _pycose_decode(raw)
        again.key = _cose_key(pub)
        assert again.verify_signature()
    assert cose.verify(raw, vk).fields == fields
