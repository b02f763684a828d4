"""RFC 9162 section 2.1 Merkle trees: hashing, proof building and proof verification.

Pure functions, no I/O. Proof builders do not hold leaves: they ask a `subtree(lo, hi)`
callable for MTH(D[lo:hi]) so that a store can answer from cached perfect-subtree nodes in
O(log n) reads. Verifiers follow the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2
step by step, so a proof they accept is one any standard verifier accepts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meterledger.errors import MeterLedgerError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256(): the root of the tree with no leaves."""

SubtreeHash = Callable[[int, int], bytes]
"""subtree(lo, hi) -> MTH(D[lo:hi]) for 0 <= lo < hi <= tree size."""

PerfectNode = Callable[[int, int], bytes]
"""node(level, index) -> hash of the perfect subtree of leaves [index*2^level, (index+1)*2^level)."""


class MerkleError(MeterLedgerError, ValueError):
    """A tree size, index, hash or proof that does not fit the tree it claims to be about."""


class TreeRangeError(MerkleError):
    """A proof or subtree was requested for sizes or indices the tree does not have."""


class InclusionError(MerkleError):
    """An inclusion proof failed verification."""


class ConsistencyError(MerkleError):
    """A consistency proof failed verification."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2): where MTH splits D[n]."""
    if n < 2:
        raise TreeRangeError(f"a tree of {n} leaves has no split point; it needs at least 2")
    return 1 << ((n - 1).bit_length() - 1)


def _is_perfect(lo: int, hi: int) -> bool:
    """Whether [lo, hi) is a whole aligned subtree: 2^level leaves starting at a multiple of 2^level."""
    n = hi - lo
    return n > 0 and n & (n - 1) == 0 and lo % n == 0


def _short(h: bytes) -> str:
    return h[:6].hex() + "…" if len(h) > 6 else h.hex()


def _check_hash(what: str, h: object, error: type[MerkleError]) -> None:
    if not isinstance(h, bytes):
        raise error(f"{what} is {type(h).__name__}, not bytes")
    if len(h) != HASH_SIZE:
        raise error(f"{what} is {len(h)} bytes, a SHA-256 hash is {HASH_SIZE}")


class CompactRange:
    """The root of leaves [0, size) in O(log size) memory, extended one leaf at a time.

    Holds the hashes of the perfect subtrees that the binary decomposition of `size` splits
    the leaves into, largest (leftmost) first: one per set bit of `size`. This is the
    frontier that every later append merges into, so the fog can seal a checkpoint after
    each batch without rereading the log, and a store can persist or rebuild it from its
    perfect-subtree nodes.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        hashes = list(hashes)
        if size < 0:
            raise TreeRangeError(f"compact range size {size} is negative")
        if len(hashes) != size.bit_count():
            raise TreeRangeError(
                f"a compact range of size {size} holds {size.bit_count()} hashes "
                f"(one per set bit), not {len(hashes)}"
            )
        for i, h in enumerate(hashes):
            _check_hash(f"compact range hash {i}", h, TreeRangeError)
        self._size = size
        self._hashes = hashes

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect-subtree hashes, largest first: with `size`, the whole serialised state."""
        return tuple(self._hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)

    def append(self, leaf: bytes) -> list[bytes]:
        """Add the leaf hash of entry `size`; return the perfect subtrees it completed.

        The result is indexed by level: [leaf, 2-leaf subtree, 4-leaf subtree, ...], the
        subtree at level l covering leaves [(size+1) - 2^l, size+1). A store writes these
        as its cached nodes.
        """
        _check_hash("appended leaf hash", leaf, TreeRangeError)
        completed = [leaf]
        node = leaf
        n = self._size
        # every trailing 1 bit of the old size is a perfect subtree of the same height as
        # the one being carried up, immediately to its left: merge them like binary carry
        while n & 1:
            node = node_hash(self._hashes.pop(), node)
            completed.append(node)
            n >>= 1
        self._hashes.append(node)
        self._size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """MTH of leaves [0, size): the perfect subtrees folded right to left.

        MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of two < n,
        and D[0:k] is exactly the leftmost (largest) perfect subtree, so folding from the
        right reproduces RFC 9162's left-heavy shape.
        """
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            root = node_hash(h, root)
        return root

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={_short(self.root())})"


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of the given leaf hashes, in O(n) time and O(log n) memory."""
    frontier = CompactRange()
    frontier.extend(hashes)
    return frontier.root()


def subtree_root(lo: int, hi: int, node: PerfectNode) -> bytes:
    """MTH(D[lo:hi]) from cached perfect-subtree hashes `node(level, index)`.

    MTH splits at the largest power of two below the range length, which is not the same
    as combining aligned chunks left to right (for [0, 6) it is node([0,4), [4,6)), but
    for [1, 4) it is node(node(1, 2), 3), whose chunks are not aligned), so recurse on the
    RFC's own split and read a node whenever a part is a whole aligned subtree. For the
    ranges proofs ask for, every part is aligned and this costs O(log n) reads.
    """
    if not 0 <= lo < hi:
        raise TreeRangeError(f"subtree [{lo}, {hi}) is empty or negative; MTH needs lo < hi")
    if _is_perfect(lo, hi):
        n = hi - lo
        return node(n.bit_length() - 1, lo // n)
    k = split_point(hi - lo)
    return node_hash(subtree_root(lo, lo + k, node), subtree_root(lo + k, hi, node))


def inclusion_path(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(index, D[size]), leaf-side first.

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) if m < k, else PATH(m-k, D[k:n]) :
    MTH(D[0:k]). Walking from the root down, each level contributes the sibling on the
    other side of the split; the RFC lists them bottom-up, hence the reversal.
    """
    if size < 1:
        raise TreeRangeError(f"tree size {size} has no leaves to prove inclusion of")
    if not 0 <= index < size:
        raise TreeRangeError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_path(first: int, second: int, subtree: SubtreeHash) -> list[bytes]:
    """RFC 9162 2.1.4.1 PROOF(first, D[second]) = SUBPROOF(first, D[second], true).

    SUBPROOF(m, D[n], b): m == n gives [] if b (the verifier knows this root already) else
    [MTH(D[n])]; m <= k gives SUBPROOF(m, D[0:k], b) : MTH(D[k:n]); m > k gives
    SUBPROOF(m-k, D[k:n], false) : MTH(D[0:k]). Outer levels are appended last, so the
    descent collects them in reverse.
    """
    if first < 0 or second < 0:
        raise TreeRangeError(f"tree sizes {first} and {second} cannot be negative")
    if first > second:
        raise TreeRangeError(
            f"first size {first} is larger than second size {second}; a log only grows"
        )
    if first == 0 or first == second:
        return []
    path: list[bytes] = []
    lo, hi = 0, second
    # SUBPROOF's b: D[0:first] has not been cut yet, so if it ends as a whole node the
    # verifier already has its hash (first_root) and it is left out of the proof
    known = True
    while first - lo != hi - lo:
        k = split_point(hi - lo)
        if first - lo <= k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
            known = False
    if not known:
        path.append(subtree(lo, hi))
    path.reverse()
    return path


def _expected_inclusion_length(index: int, size: int) -> int:
    return len(inclusion_path(index, size, lambda lo, hi: b""))


def _expected_consistency_length(first: int, second: int) -> int:
    return len(consistency_path(first, second, lambda lo, hi: b""))


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`.

    RFC 9162 section 2.1.3.2, step by step. Raises InclusionError saying what is wrong.
    """
    if size < 1:
        raise InclusionError(f"tree size {size} has no leaves, so nothing is included in it")
    if index < 0:
        raise InclusionError(f"leaf index {index} is negative")
    if index >= size:  # step 1
        raise InclusionError(f"leaf index {index} is beyond tree size {size}")
    _check_hash("leaf hash", leaf_hash, InclusionError)
    _check_hash("root", root, InclusionError)
    for i, p in enumerate(path):
        _check_hash(f"path element {i}", p, InclusionError)

    fn, sn = index, size - 1  # step 2
    r = leaf_hash  # step 3
    for p in path:  # step 4
        if sn == 0:  # 4a
            raise InclusionError(
                f"path too long: {len(path)} elements, but leaf {index} of a tree of size "
                f"{size} needs exactly {_expected_inclusion_length(index, size)}"
            )
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:  # 4b.ii
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    if sn != 0:  # step 5
        raise InclusionError(
            f"path too short: {len(path)} elements, but leaf {index} of a tree of size "
            f"{size} needs exactly {_expected_inclusion_length(index, size)}"
        )
    if r != root:
        raise InclusionError(
            f"root mismatch: the path for leaf {index} of {size} leads to {_short(r)}, "
            f"not to the expected root {_short(root)}"
        )


# long: RFC 9162 section 2.1.4.2 step by step, so it can be read against the RFC
def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> None:
    """Check that the tree of `first` leaves with `first_root` is a prefix of the tree of
    `second` leaves with `second_root`.

    RFC 9162 section 2.1.4.2 step by step for 0 < first < second. Its edge cases: equal
    sizes need an empty path and equal roots; from the empty tree (whose root is
    SHA-256() by definition) any later tree is consistent, with an empty path.
    Raises ConsistencyError saying what is wrong.
    """
    if first < 0 or second < 0:
        raise ConsistencyError(f"tree sizes {first} and {second} cannot be negative")
    if first > second:
        raise ConsistencyError(
            f"first size {first} is larger than second size {second}; a log cannot shrink"
        )
    _check_hash("first root", first_root, ConsistencyError)
    _check_hash("second root", second_root, ConsistencyError)
    for i, p in enumerate(path):
        _check_hash(f"path element {i}", p, ConsistencyError)

    if first == second:
        if path:
            raise ConsistencyError(
                f"path too long: {len(path)} elements for equal sizes {first}, which need none"
            )
        if first_root != second_root:
            raise ConsistencyError(
                f"root mismatch: two trees of size {first} with different roots "
                f"{_short(first_root)} and {_short(second_root)}"
            )
        return
    if first == 0:
        if path:
            raise ConsistencyError(
                f"path too long: {len(path)} elements, but the empty tree is a prefix of "
                "every tree and needs none"
            )
        if first_root != EMPTY_ROOT:
            raise ConsistencyError(
                f"first root {_short(first_root)} is not the empty tree's root "
                f"{_short(EMPTY_ROOT)} for size 0"
            )
        return

    def wrong_length(kind: str) -> ConsistencyError:
        return ConsistencyError(
            f"path {kind}: {len(path)} elements, but sizes {first} -> {second} need exactly "
            f"{_expected_consistency_length(first, second)}"
        )

    if not path:  # step 1
        raise wrong_length("too short")
    elements = list(path)
    if first & (first - 1) == 0:  # step 2: first is a power of two, its root is a node
        elements.insert(0, first_root)
    fn, sn = first - 1, second - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = elements[0]  # step 5
    for c in elements[1:]:  # step 6
        if sn == 0:  # 6a
            raise wrong_length("too long")
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:  # 6b.iii
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    if sn != 0:  # step 7
        raise wrong_length("too short")
    if fr != first_root:
        raise ConsistencyError(
            f"first root mismatch: the path rebuilds {_short(fr)} for size {first}, "
            f"not the expected {_short(first_root)}"
        )
    if sr != second_root:
        raise ConsistencyError(
            f"second root mismatch: the path rebuilds {_short(sr)} for size {second}, "
            f"not the expected {_short(second_root)}"
        )


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 inclusion proof of leaf `leaf_index` in the tree of `tree_size` leaves."""

    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]

    def verify(self, leaf_hash: bytes, root: bytes) -> None:
        verify_inclusion(leaf_hash, self.leaf_index, self.tree_size, self.path, root)


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency proof that tree `first` is a prefix of tree `second`."""

    first: int
    second: int
    path: tuple[bytes, ...]

    def verify(self, first_root: bytes, second_root: bytes) -> None:
        verify_consistency(self.first, self.second, first_root, second_root, self.path)
