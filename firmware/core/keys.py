# Party keys and ids (SPEC section 1): P-256 private scalar generated on the device by
# rejection sampling, SEC1 uncompressed public key, id = first 8 bytes of SHA-256(pub).
from core import p256
from core.compat import hexlify
from core.sha import sha256


def generate_private(random_bytes):
    # rejection sampling keeps the scalar uniform in [1, n-1] (no modulo bias)
    while True:
        d = int.from_bytes(random_bytes(32), "big")
        if 1 <= d < p256.N:
            return d


def party_id(pub):
    return sha256(pub)[:8]


def id_hex(pid):
    return hexlify(pid)


class SigningKey:
    def __init__(self, d):
        if isinstance(d, (bytes, bytearray)):
            if len(d) != 32:
                raise ValueError("private key must be 32 bytes")
            d = int.from_bytes(d, "big")
        self.pub = p256.public_key(d)  # also range-checks d
        self._d = d
        self.id = party_id(self.pub)

    def private_bytes(self):
        return self._d.to_bytes(32, "big")

    def sign_digest(self, h):
        return p256.sign_digest(self._d, h)


class VerifyingKey:
    def __init__(self, pub):
        self.point = p256.decode_point(pub)  # raises P256Error for bad keys
        self.pub = bytes(pub)
        self.id = party_id(self.pub)

    def verify_digest(self, h, sig):
        return p256.verify_digest(self.point, h, sig)
