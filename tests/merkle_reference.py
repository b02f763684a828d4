"""A naive, slow, obviously-correct RFC 9162 section 2.1 Merkle tree, for tests only.

Written straight from the RFC's recursive definitions over the entry list D, sharing no
code with meterledger/wire/merkle.py: MTH, PATH, PROOF/SUBPROOF recompute every subtree from the
entries, and the verifiers do not use the RFC's bit-twiddling algorithms (which is what
meterledger.wire.merkle implements) but rebuild the roots by recursing down the same tree shape
the builders use. Two derivations agreeing is the point.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(entry: bytes) -> bytes:
    return sha256(b"\x00" + entry)


def node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def split(n: int) -> int:
    """k, the largest power of two smaller than n (n > 1)."""
    assert n > 1
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over the entries themselves."""
    n = len(d)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaf(d[0])
    k = split(n)
    return node(mth(d[:k]), mth(d[k:]))


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) for 0 <= m < n."""
    n = len(d)
    assert 0 <= m < n
    if n == 1:
        return []
    k = split(n)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) for 0 < m <= n (empty for m == n)."""
    assert 0 < m <= len(d)
    return subproof(m, d, True)


def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = split(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def root_from_path(m: int, n: int, leaf_hash: bytes, p: list[bytes]) -> bytes | None:
    """The root that PATH(m, D[n]) = p implies for leaf m, or None if p has the wrong shape.

    PATH appends the sibling of each level after the deeper levels' elements, so the last
    element is the top-level sibling: peel it off and recurse into the side m is on.
    """
    if n == 1:
        return leaf_hash if not p else None
    if not p:
        return None
    k = split(n)
    sibling, rest = p[-1], p[:-1]
    if m < k:
        below = root_from_path(m, k, leaf_hash, rest)
        return None if below is None else node(below, sibling)
    below = root_from_path(m - k, n - k, leaf_hash, rest)
    return None if below is None else node(sibling, below)


def verify_inclusion(leaf_hash: bytes, m: int, n: int, p: Sequence[bytes], root: bytes) -> bool:
    if not 0 <= m < n:
        return False
    return root_from_path(m, n, leaf_hash, list(p)) == root


def roots_from_subproof(
    m: int, n: int, b: bool, p: list[bytes], first_root: bytes
) -> tuple[bytes, bytes, list[bytes]] | None:
    """(MTH(D[0:m]) within this subtree, MTH of the subtree, unused prefix of p).

    Mirrors SUBPROOF(m, D[n], b), consuming elements from the end of p. When b holds at
    m == n, the subtree is the whole first tree, whose root the verifier already has.
    """
    if m == n:
        if b:
            return first_root, first_root, p
        if not p:
            return None
        return p[-1], p[-1], p[:-1]
    if not p:
        return None
    k = split(n)
    sibling, rest = p[-1], p[:-1]
    if m <= k:
        inner = roots_from_subproof(m, k, b, rest, first_root)
        if inner is None:
            return None
        old, new, left = inner
        return old, node(new, sibling), left
    # m > k: D[0:k] is complete in both trees, and k is also where MTH(D[0:m]) splits
    inner = roots_from_subproof(m - k, n - k, False, rest, first_root)
    if inner is None:
        return None
    old, new, left = inner
    return node(sibling, old), node(sibling, new), left


def verify_consistency(
    m: int, n: int, first_root: bytes, second_root: bytes, p: Sequence[bytes]
) -> bool:
    if not 0 <= m <= n:
        return False
    if m == n:
        return not p and first_root == second_root
    if m == 0:
        return not p and first_root == sha256(b"")
    got = roots_from_subproof(m, n, True, list(p), first_root)
    if got is None:
        return False
    old, new, left = got
    return not left and old == first_root and new == second_root
