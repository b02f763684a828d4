# COSE_Sign1 (RFC 9052) exactly as SPEC section 3 fixes it:
#   18([h'A10126', {4: kid}, payload, signature])
# parse() enforces every MUST-reject rule; each failure carries a stable reason code so
# receivers can count rejections by reason.
from core import cbor, p256
from core.compat import const
from core.sha import sha256

MAX_MESSAGE = const(4096)
PROTECTED = b"\xa1\x01\x26"  # {1: -7}, alg ES256
_TAG = const(18)
_KID = const(4)
# the payload key holding the signer id, per message type (SPEC section 4). The firmware
# manifest (type 20, docs/PROTOCOL.md section 22) is not a wire message: core/ota.py parses
# it with its own table, so every other receiver still calls type 20 unknown_type, as the
# host's meterledger.wire does.
SIGNER_FIELD = {1: 1, 2: 1, 5: 1, 3: 17, 4: 17, 6: 17, 8: 17}
# everything of ToBeSigned before the payload bstr: ["Signature1", h'A10126', h'', ...
_TBS_PREFIX = b"\x84\x6aSignature1\x43\xa1\x01\x26\x40"


class CoseError(ValueError):
    def __init__(self, reason, msg):
        super().__init__(msg)
        self.reason = reason


def _bstr_head(n):
    buf = bytearray()
    cbor._head(buf, 2, n)
    return bytes(buf)


def to_be_signed(payload):
    return _TBS_PREFIX + _bstr_head(len(payload)) + payload


def digest(msg):
    """Message digest (SPEC section 3): SHA-256 of the whole COSE_Sign1, tag included."""
    return sha256(msg)


def sign1(key, fields):
    """Sign a payload map with a core.keys.SigningKey; returns the message bytes."""
    payload = cbor.encode(fields)
    sig = key.sign_digest(sha256(to_be_signed(payload)))
    return cbor.encode(cbor.Tag(_TAG, [PROTECTED, {_KID: key.id}, payload, sig]))


class Sign1:
    def __init__(self, raw, kid, payload, fields, sig):
        self.raw = raw
        self.kid = kid
        self.payload = payload
        self.fields = fields
        self.sig = sig
        self.type = fields[0]

    def tbs_digest(self):
        return sha256(to_be_signed(self.payload))


def parse(msg, signers=SIGNER_FIELD):
    """Check structure and encoding (everything but the signature); returns Sign1.
    `signers`: message type -> the payload key of its signer (the types accepted)."""
    if len(msg) > MAX_MESSAGE:
        raise CoseError("too_large", "message is " + str(len(msg)) + " bytes, more than " + str(MAX_MESSAGE))
    try:
        env = cbor.decode(msg, (_TAG,))
    except cbor.CBORError as e:
        raise CoseError(e.reason, "envelope: " + str(e))
    if not isinstance(env, cbor.Tag) or env.tag != _TAG:
        raise CoseError("bad_tag", "not a tagged COSE_Sign1 (CBOR tag 18)")
    arr = env.value
    if not isinstance(arr, list) or len(arr) != 4:
        raise CoseError("bad_structure", "COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, sig = arr
    if protected != PROTECTED:
        raise CoseError("bad_protected", "protected header must be h'A10126' (alg ES256 only)")
    if not isinstance(unprotected, dict) or list(unprotected.keys()) != [_KID]:
        raise CoseError("bad_kid", "unprotected header must be exactly {4: kid}")
    kid = unprotected[_KID]
    if not isinstance(kid, bytes) or len(kid) != 8:
        raise CoseError("bad_kid", "kid must be a byte string of 8 bytes")
    if not isinstance(payload, bytes):
        raise CoseError("bad_structure", "payload must be a byte string")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise CoseError("bad_signature_encoding", "signature must be 64 bytes (r || s)")
    try:
        fields = cbor.decode(payload)
    except cbor.CBORError as e:
        raise CoseError(e.reason, "payload: " + str(e))
    if not isinstance(fields, dict) or not isinstance(fields.get(0), int) or isinstance(fields.get(0), bool):
        raise CoseError("bad_payload", "payload must be a map with an integer type at key 0")
    signer_key = signers.get(fields[0])
    if signer_key is None:
        raise CoseError("unknown_type", "unknown message type " + str(fields[0]))
    if fields.get(signer_key) != kid:
        raise CoseError("kid_mismatch", "kid does not equal the payload's signer field (key " + str(signer_key) + ")")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (1 <= r < p256.N and 1 <= s < p256.N):
        raise CoseError("sig_out_of_range", "signature r or s outside [1, n-1]")
    if s > p256.HALF_N:
        raise CoseError("high_s", "signature s is not low-S (s > n/2)")
    return Sign1(msg, kid, payload, fields, sig)


def verify(msg, key):
    """parse() and check the signature with a core.keys.VerifyingKey; returns Sign1."""
    return check_signature(parse(msg), key)


def check_signature(m, key):
    """The signer and signature checks of a parse()d Sign1; returns it."""
    if m.kid != key.id:
        raise CoseError("kid_mismatch", "message was signed by a different party")
    if not key.verify_digest(m.tbs_digest(), m.sig):
        raise CoseError("bad_signature", "ECDSA signature does not verify")
    return m
