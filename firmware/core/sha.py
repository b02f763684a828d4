# SHA-256 and HMAC-SHA256 (RFC 2104). MicroPython has hashlib.sha256 but no hmac module,
# and its hash objects can neither be copied nor updated after digest().
import hashlib

_BLOCK = 64
_IPAD = bytes(0x36 for _ in range(_BLOCK))
_OPAD = bytes(0x5C for _ in range(_BLOCK))


def sha256(data):
    return hashlib.sha256(data).digest()


def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = sha256(key)
    key = key + bytes(_BLOCK - len(key))
    h = hashlib.sha256(_xor(key, _IPAD))
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(_xor(key, _OPAD))
    h.update(inner)
    return h.digest()
