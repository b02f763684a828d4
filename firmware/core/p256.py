# ECDSA over NIST P-256 with SHA-256: RFC 6979 deterministic nonces and low-S signatures,
# as SPEC section 3 requires. Pure Python over big integers, written for MicroPython:
# no int.bit_length, no pow(x, -1, m) (MicroPython silently returns 0 for it), Jacobian
# coordinates so that a scalar multiplication costs a single field inversion.
#
# Python integers are not constant time; a meter signs one reading per interval, and the
# nonce is derived from the key and message (never from a weak RNG), which removes the
# classic nonce-reuse failure. See docs/PROTOCOL.md for the side-channel note.
from core.sha import hmac_sha256

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
HALF_N = N >> 1

_G_TABLE = None  # [i*G for i in 0..15] in affine form, built on first use


class P256Error(ValueError):
    pass


def inverse(a, m):
    # extended Euclid; a must be non-zero modulo the prime m
    a = a % m
    if a == 0:
        raise P256Error("no inverse of 0")
    lm, hm = 1, 0
    low, high = a, m
    while low > 1:
        q = high // low
        lm, low, hm, high = hm - lm * q, high - low * q, lm, low
    return lm % m


def _double(pt):
    # dbl-2001-b for a = -3; pt is Jacobian (X, Y, Z), Z == 0 is infinity
    x, y, z = pt
    if z == 0 or y == 0:
        return (0, 1, 0)
    p = P
    delta = z * z % p
    gamma = y * y % p
    beta = x * gamma % p
    alpha = 3 * (x - delta) * (x + delta) % p
    x3 = (alpha * alpha - 8 * beta) % p
    z3 = ((y + z) * (y + z) - gamma - delta) % p
    y3 = (alpha * (4 * beta - x3) - 8 * gamma * gamma) % p
    return (x3, y3, z3)


def _finish(u1, s1, h, r, z3):
    # the common tail of both additions: X3 = r^2 - h^3 - 2 u1 h^2, Y3 = r (u1 h^2 - X3) - s1 h^3
    p = P
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    return (x3, (r * (v - x3) - s1 * hhh) % p, z3)


def _add(p1, p2):
    # Jacobian + Jacobian; handles infinity, doubling and inverse points
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    p = P
    z1z1 = z1 * z1 % p
    z2z2 = z2 * z2 % p
    u1 = x1 * z2z2 % p
    u2 = x2 * z1z1 % p
    s1 = y1 * z2 * z2z2 % p
    s2 = y2 * z1 * z1z1 % p
    h = (u2 - u1) % p
    r = (s2 - s1) % p
    if h == 0:
        if r == 0:
            return _double(p1)
        return (0, 1, 0)
    return _finish(u1, s1, h, r, h * z1 * z2 % p)


def _add_affine(p1, x2, y2):
    # Jacobian + affine (Z2 = 1): the cheap addition used with precomputed tables
    x1, y1, z1 = p1
    if z1 == 0:
        return (x2, y2, 1)
    p = P
    z1z1 = z1 * z1 % p
    u2 = x2 * z1z1 % p
    s2 = y2 * z1 * z1z1 % p
    h = (u2 - x1) % p
    r = (s2 - y1) % p
    if h == 0:
        if r == 0:
            return _double(p1)
        return (0, 1, 0)
    return _finish(x1, y1, h, r, h * z1 % p)


def to_affine(pt):
    x, y, z = pt
    if z == 0:
        raise P256Error("point at infinity")
    zi = inverse(z, P)
    zi2 = zi * zi % P
    return (x * zi2 % P, y * zi2 * zi % P)


def _table(x, y):
    # [0, Q, 2Q, ..., 15Q] in Jacobian form
    t = [(0, 1, 0), (x, y, 1)]
    for i in range(2, 16):
        t.append(_add_affine(t[i - 1], x, y))
    return t


def _g_table():
    global _G_TABLE
    if _G_TABLE is None:
        tab = [None]
        for pt in _table(GX, GY)[1:]:
            tab.append(to_affine(pt))
        _G_TABLE = tab
    return _G_TABLE


def _nibbles(k):
    # the 64 4-bit windows of a 256-bit scalar, most significant first
    b = k.to_bytes(32, "big")
    out = []
    for byte in b:
        out.append(byte >> 4)
        out.append(byte & 15)
    return out


def mul_g(k):
    """k*G as affine (x, y); fixed 4-bit window over a precomputed affine table."""
    tab = _g_table()
    acc = (0, 1, 0)
    for w in _nibbles(k % N):
        acc = _double(_double(_double(_double(acc))))
        if w:
            gx, gy = tab[w]
            acc = _add_affine(acc, gx, gy)
    return to_affine(acc)


def _mul2(u1, u2, qx, qy):
    # u1*G + u2*Q with interleaved windows (Shamir's trick): 256 doublings in total
    tab_g = _g_table()
    tab_q = _table(qx, qy)
    acc = (0, 1, 0)
    n1 = _nibbles(u1)
    n2 = _nibbles(u2)
    for i in range(64):
        acc = _double(_double(_double(_double(acc))))
        w = n1[i]
        if w:
            gx, gy = tab_g[w]
            acc = _add_affine(acc, gx, gy)
        w = n2[i]
        if w:
            acc = _add(acc, tab_q[w])
    return acc


def on_curve(x, y):
    if not (0 <= x < P and 0 <= y < P):
        return False
    return (y * y - (x * x * x - 3 * x + B)) % P == 0


def decode_point(pub):
    """SEC1 uncompressed (65 bytes, 0x04 || X || Y) -> (x, y); raises P256Error."""
    if len(pub) != 65 or pub[0] != 4:
        raise P256Error("public key must be 65 bytes SEC1 uncompressed (0x04 || X || Y)")
    x = int.from_bytes(pub[1:33], "big")
    y = int.from_bytes(pub[33:65], "big")
    if not on_curve(x, y):
        raise P256Error("public key is not a point on P-256")
    return (x, y)


def encode_point(x, y):
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def public_key(d):
    if not 1 <= d < N:
        raise P256Error("private scalar outside [1, n-1]")
    x, y = mul_g(d)
    return encode_point(x, y)


def _nonces(d, h1):
    # RFC 6979 section 3.2 for qlen = hlen = 256: bits2octets(h) = int2octets(h mod n)
    x = d.to_bytes(32, "big")
    e = (int.from_bytes(h1, "big") % N).to_bytes(32, "big")
    v = b"\x01" * 32
    k = b"\x00" * 32
    k = hmac_sha256(k, v + b"\x00" + x + e)
    v = hmac_sha256(k, v)
    k = hmac_sha256(k, v + b"\x01" + x + e)
    v = hmac_sha256(k, v)
    while True:
        v = hmac_sha256(k, v)
        cand = int.from_bytes(v, "big")
        if 1 <= cand < N:
            yield cand
        k = hmac_sha256(k, v + b"\x00")
        v = hmac_sha256(k, v)


def sign_digest(d, h):
    """ECDSA signature (r || s, 64 bytes, low-S) over a 32-byte SHA-256 digest."""
    if not 1 <= d < N:
        raise P256Error("private scalar outside [1, n-1]")
    if len(h) != 32:
        raise P256Error("digest must be 32 bytes")
    e = int.from_bytes(h, "big")
    for k in _nonces(d, h):
        r = mul_g(k)[0] % N
        if r == 0:
            continue
        s = inverse(k, N) * (e + r * d) % N
        if s == 0:
            continue
        if s > HALF_N:
            s = N - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_digest(point, h, sig):
    """True if sig (r || s, 64 bytes) is a valid low-S ECDSA signature of digest h by point.

    Range and low-S checks are the caller's (cose) job for precise error reasons, but are
    repeated here so that this function is safe on its own.
    """
    if len(sig) != 64 or len(h) != 32:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (1 <= r < N and 1 <= s <= HALF_N):
        return False
    e = int.from_bytes(h, "big")
    w = inverse(s, N)
    acc = _mul2(e * w % N, r * w % N, point[0], point[1])
    if acc[2] == 0:
        return False
    return to_affine(acc)[0] % N == r
