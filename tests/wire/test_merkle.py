"""meterledger.wire.merkle against published RFC 6962 data and the naive RFC 9162 reference.

Known answers come from tests/vectors/merkle.json (the Certificate Transparency test data
as published by transparency-dev/merkle). Everything else is differential: the builders
must produce exactly the reference's PATH and PROOF, and the RFC-algorithm verifiers in
meterledger.wire.merkle must accept and reject exactly what the reference's recursive verifiers do.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterledger.wire import merkle
from meterledger.wire.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ConsistencyError,
    ConsistencyProof,
    InclusionError,
    InclusionProof,
    MerkleError,
    TreeRangeError,
)
from tests import merkle_reference as ref

VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[1] / "vectors" / "merkle.json").read_text())
CT_ENTRIES = [bytes.fromhex(h) for h in VECTORS["entries_hex"]]
CT_ROOTS = {int(n): bytes.fromhex(h) for n, h in VECTORS["roots_by_size"].items()}
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def unhex(hashes: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


@cache
def entries(n: int) -> tuple[bytes, ...]:
    # distinct, of varying length (including empty), so no two leaves collide
    return tuple(bytes(range(i % 7)) + i.to_bytes(4, "big") for i in range(n))


@cache
def ref_root(n: int) -> bytes:
    return ref.mth(entries(n))


def ref_subtree(d: Sequence[bytes]) -> Callable[[int, int], bytes]:
    """The builders' subtree oracle, answered by the reference: isolates their range logic."""
    return lambda lo, hi: ref.mth(d[lo:hi])


def flip(h: bytes, at: int = 0) -> bytes:
    return h[:at] + bytes([h[at] ^ 0x08]) + h[at + 1 :]


# --- hashing and known answers ------------------------------------------------------------


def test_hashes_are_rfc9162_prefixed_sha256() -> None:
    assert EMPTY_ROOT == bytes.fromhex(VECTORS["empty_root"])
    assert merkle.leaf_hash(b"") == CT_ROOTS[1]
    assert merkle.leaf_hash(b"abc") == ref.leaf(b"abc")
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.node_hash(a, b) == ref.node(a, b) != merkle.node_hash(b, a)


def test_split_point_is_the_largest_power_of_two_below_n() -> None:
    for n in range(2, 1100):
        assert merkle.split_point(n) == ref.split(n)
    assert merkle.split_point(2**40 + 1) == 2**40
    with pytest.raises(TreeRangeError, match="at least 2"):
        merkle.split_point(1)


def test_known_roots_for_sizes_0_to_8() -> None:
    leaves = [merkle.leaf_hash(e) for e in CT_ENTRIES]
    assert merkle.root_from_leaf_hashes([]) == EMPTY_ROOT
    for n, root in CT_ROOTS.items():
        assert merkle.root_from_leaf_hashes(leaves[:n]) == root, n
        assert ref.mth(CT_ENTRIES[:n]) == root, n
        assert CompactRange().root() == EMPTY_ROOT
        frontier = CompactRange()
        frontier.extend(leaves[:n])
        assert frontier.root() == root


@pytest.mark.parametrize(
    "vector", VECTORS["inclusion"], ids=lambda v: f"leaf{v['leaf_index']}-of-{v['tree_size']}"
)
def test_known_inclusion_proofs(vector: dict[str, object]) -> None:
    index, size = int(str(vector["leaf_index"])), int(str(vector["tree_size"]))
    want = unhex(vector["path"])  # type: ignore[arg-type]
    d = CT_ENTRIES[:size]
    assert merkle.inclusion_path(index, size, ref_subtree(d)) == want
    assert ref.path(index, d) == want
    leaf = merkle.leaf_hash(d[index])
    merkle.verify_inclusion(leaf, index, size, want, CT_ROOTS[size])
    assert ref.verify_inclusion(leaf, index, size, want, CT_ROOTS[size])


@pytest.mark.parametrize(
    "vector", VECTORS["consistency"], ids=lambda v: f"{v['first']}-to-{v['second']}"
)
def test_known_consistency_proofs(vector: dict[str, object]) -> None:
    first, second = int(str(vector["first"])), int(str(vector["second"]))
    want = unhex(vector["path"])  # type: ignore[arg-type]
    d = CT_ENTRIES[:second]
    assert merkle.consistency_path(first, second, ref_subtree(d)) == want
    assert ref.proof(first, d) == want
    merkle.verify_consistency(first, second, CT_ROOTS[first], CT_ROOTS[second], want)
    assert ref.verify_consistency(first, second, CT_ROOTS[first], CT_ROOTS[second], want)


# --- broken proofs: each named case rejected by both verifiers ------------------------------


def inclusion_probes(
    index: int, size: int, path: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, bytes, int, int, list[bytes], bytes]]:
    """transparency-dev's corruptions of a good proof plus ours: (name, leaf, index, size, path, root)."""
    probes = [
        ("index-1", leaf, index - 1, size, path, root),
        ("index+1", leaf, index + 1, size, path, root),
        ("index^2", leaf, index ^ 2, size, path, root),
        ("size*2", leaf, index, size * 2, path, root),
        ("size/2", leaf, index, size // 2, path, root),
        ("wrong leaf", merkle.leaf_hash(b"WrongLeaf"), index, size, path, root),
        ("empty-tree root", leaf, index, size, path, EMPTY_ROOT),
        ("random root", leaf, index, size, path, SOME_HASH),
        ("extended by root", leaf, index, size, [*path, root], root),
        ("extended by zeros", leaf, index, size, [*path, bytes(32)], root),
        ("preceded by root", leaf, index, size, [root, *path], root),
    ]
    for i in range(len(path)):
        for at in (0, 31):
            probes.append(
                (
                    f"byte {at} of path[{i}] flipped",
                    leaf,
                    index,
                    size,
                    [*path[:i], flip(path[i], at), *path[i + 1 :]],
                    root,
                )
            )
    if path:
        probes.append(("truncated", leaf, index, size, path[:-1], root))
        probes.append(("first element dropped", leaf, index, size, path[1:], root))
    if len(path) > 1:
        probes.append(
            ("inserted element", leaf, index, size, [path[0], SOME_HASH, *path[1:]], root)
        )
        probes.append(("elements swapped", leaf, index, size, [path[1], path[0], *path[2:]], root))
    return probes


def consistency_probes(
    first: int, second: int, r1: bytes, r2: bytes, path: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    probes = [
        ("first-1", first - 1, second, r1, r2, path),
        ("first+1", first + 1, second, r1, r2, path),
        ("first^2", first ^ 2, second, r1, r2, path),
        ("second*2", first, second * 2, r1, r2, path),
        ("second/2", first, second // 2, r1, r2, path),
        ("first > second", second, first, r1, r2, path),
        ("wrong first root", first, second, SOME_HASH, r2, path),
        ("wrong second root", first, second, r1, SOME_HASH, path),
        ("swapped roots", first, second, r2, r1, path),
        ("empty path", first, second, r1, r2, []),
        ("extended by zeros", first, second, r1, r2, [*path, bytes(32)]),
        ("extended by first root", first, second, r1, r2, [*path, r1]),
        ("extended by second root", first, second, r1, r2, [*path, r2]),
        ("preceded by first root", first, second, r1, r2, [r1, *path]),
        ("preceded by second root", first, second, r1, r2, [r2, *path]),
        ("preceded by path[0]", first, second, r1, r2, [path[0], *path]),
        ("truncated", first, second, r1, r2, path[:-1]),
    ]
    for i in range(len(path)):
        for at in (0, 31):
            probes.append(
                (
                    f"byte {at} of path[{i}] flipped",
                    first,
                    second,
                    r1,
                    r2,
                    [*path[:i], flip(path[i], at), *path[i + 1 :]],
                )
            )
    return probes


def _broken_inclusion_cases() -> list[object]:
    cases: list[object] = []
    for v in VECTORS["inclusion"]:
        index, size, path = v["leaf_index"], v["tree_size"], unhex(v["path"])
        leaf = merkle.leaf_hash(CT_ENTRIES[index])
        for name, *probe in inclusion_probes(index, size, path, CT_ROOTS[size], leaf):
            cases.append(pytest.param(*probe, id=f"leaf{index}-of-{size}: {name}"))
    return cases


def _broken_consistency_cases() -> list[object]:
    cases: list[object] = []
    for v in VECTORS["consistency"]:
        first, second, path = v["first"], v["second"], unhex(v["path"])
        if not path:
            continue
        for name, *probe in consistency_probes(
            first, second, CT_ROOTS[first], CT_ROOTS[second], path
        ):
            cases.append(pytest.param(*probe, id=f"{first}-to-{second}: {name}"))
    return cases


@pytest.mark.parametrize(("leaf", "index", "size", "path", "root"), _broken_inclusion_cases())
def test_broken_inclusion_rejected(
    leaf: bytes, index: int, size: int, path: list[bytes], root: bytes
) -> None:
    with pytest.raises(InclusionError):
        merkle.verify_inclusion(leaf, index, size, path, root)
    assert not ref.verify_inclusion(leaf, index, size, path, root)


@pytest.mark.parametrize(("first", "second", "r1", "r2", "path"), _broken_consistency_cases())
def test_broken_consistency_rejected(
    first: int, second: int, r1: bytes, r2: bytes, path: list[bytes]
) -> None:
    with pytest.raises(ConsistencyError):
        merkle.verify_consistency(first, second, r1, r2, path)
    assert not ref.verify_consistency(first, second, r1, r2, path)


def test_inclusion_errors_say_what_is_wrong() -> None:
    d = entries(5)
    leaf, root = merkle.leaf_hash(d[1]), ref_root(5)
    path = ref.path(1, d)
    merkle.verify_inclusion(leaf, 1, 5, path, root)
    cases: list[tuple[str, int, int, list[bytes], bytes, bytes]] = [
        ("size 0 has no leaves", 0, 0, [], leaf, EMPTY_ROOT),
        ("index 5 is beyond tree size 5", 5, 5, path, leaf, root),
        ("index -1 is negative", -1, 5, path, leaf, root),
        ("path too short: 2 elements.*needs exactly 3", 1, 5, path[:2], leaf, root),
        ("path too long: 4 elements.*needs exactly 3", 1, 5, [*path, root], leaf, root),
        ("root mismatch", 1, 5, path, leaf, SOME_HASH),
        ("root mismatch", 1, 5, [flip(path[0]), *path[1:]], leaf, root),
        ("path element 1 is 31 bytes", 1, 5, [path[0], path[1][:31], path[2]], leaf, root),
        ("leaf hash is str, not bytes", 1, 5, path, "x", root),  # type: ignore[list-item]
        ("root is 33 bytes", 1, 5, path, leaf, root + b"\x00"),
    ]
    for message, index, size, p, lh, r in cases:
        with pytest.raises(InclusionError, match=message):
            merkle.verify_inclusion(lh, index, size, p, r)


def test_consistency_errors_say_what_is_wrong() -> None:
    d = entries(7)
    r3, r7 = ref_root(3), ref_root(7)
    path = ref.proof(3, d)
    merkle.verify_consistency(3, 7, r3, r7, path)
    cases: list[tuple[str, int, int, bytes, bytes, list[bytes]]] = [
        ("first size 7 is larger than second size 3", 7, 3, r7, r3, path),
        ("negative", -1, 3, r3, r3, []),
        ("path too short: 0 elements.*need exactly 4", 3, 7, r3, r7, []),
        ("path too short: 3 elements", 3, 7, r3, r7, path[:3]),
        ("path too long: 5 elements", 3, 7, r3, r7, [*path, r7]),
        ("first root mismatch", 3, 7, SOME_HASH, r7, path),
        ("second root mismatch", 3, 7, r3, SOME_HASH, path),
        ("two trees of size 3 with different roots", 3, 3, r3, r7, []),
        ("path too long: 1 elements for equal sizes", 3, 3, r3, r3, [r3]),
        ("empty tree is a prefix of every tree and needs none", 0, 3, EMPTY_ROOT, r3, [r3]),
        ("not the empty tree's root", 0, 3, r3, r3, []),
        ("path element 0 is 0 bytes", 3, 7, r3, r7, [b"", *path[1:]]),
    ]
    for message, first, second, a, b, p in cases:
        with pytest.raises(ConsistencyError, match=message):
            merkle.verify_consistency(first, second, a, b, p)


def test_trivial_consistency_cases() -> None:
    r = ref_root(5)
    merkle.verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    merkle.verify_consistency(0, 5, EMPTY_ROOT, r, [])
    merkle.verify_consistency(5, 5, r, r, [])
    assert ref.verify_consistency(0, 5, EMPTY_ROOT, r, [])
    assert merkle.consistency_path(0, 5, ref_subtree(entries(5))) == []
    assert merkle.consistency_path(5, 5, ref_subtree(entries(5))) == []


def test_errors_are_one_hierarchy_of_value_errors() -> None:
    for cls in (InclusionError, ConsistencyError, TreeRangeError):
        assert issubclass(cls, MerkleError)
    assert issubclass(MerkleError, ValueError)


def test_builders_reject_impossible_requests() -> None:
    sub = ref_subtree(entries(4))
    with pytest.raises(TreeRangeError, match="size 0 has no leaves"):
        merkle.inclusion_path(0, 0, sub)
    with pytest.raises(TreeRangeError, match="leaf index 4 is outside a tree of size 4"):
        merkle.inclusion_path(4, 4, sub)
    with pytest.raises(TreeRangeError, match="larger than second size"):
        merkle.consistency_path(4, 3, sub)
    with pytest.raises(TreeRangeError, match="empty or negative"):
        merkle.subtree_root(2, 2, lambda level, index: b"")


# --- builders and verifiers against the reference ------------------------------------------


def test_inclusion_exhaustive_up_to_64() -> None:
    for n in range(1, 65):
        d = entries(n)
        root = ref_root(n)
        for m in range(n):
            path = merkle.inclusion_path(m, n, ref_subtree(d))
            assert path == ref.path(m, d), (m, n)
            leaf = ref.leaf(d[m])
            merkle.verify_inclusion(leaf, m, n, path, root)
            assert ref.verify_inclusion(leaf, m, n, path, root)


def test_inclusion_every_leaf_of_every_size_up_to_300_verifies_in_both() -> None:
    # PATH is compared with the reference up to 64 above (and sampled up to 300 below);
    # here every proof must pass both verifiers against the reference root, which for a
    # fixed tree shape admits only the one correct path
    d = entries(300)
    mth = cache(lambda lo, hi: ref.mth(d[lo:hi]))
    for n in range(1, 301):
        root = mth(0, n)
        for m in range(n):
            path = merkle.inclusion_path(m, n, mth)
            leaf = mth(m, m + 1)
            merkle.verify_inclusion(leaf, m, n, path, root)
            assert ref.verify_inclusion(leaf, m, n, path, root), (m, n)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_up_to_300(case: tuple[int, int]) -> None:
    n, m = case
    d = entries(n)
    path = merkle.inclusion_path(m, n, ref_subtree(d))
    assert path == ref.path(m, d)
    proof = InclusionProof(m, n, tuple(path))
    proof.verify(ref.leaf(d[m]), ref_root(n))
    assert ref.verify_inclusion(ref.leaf(d[m]), m, n, path, ref_root(n))


def test_consistency_exhaustive_up_to_70() -> None:
    for second in range(0, 71):
        d = entries(second)
        r2 = ref_root(second)
        for first in range(0, second + 1):
            path = merkle.consistency_path(first, second, ref_subtree(d))
            assert path == (ref.proof(first, d) if first else []), (first, second)
            r1 = ref_root(first)
            merkle.verify_consistency(first, second, r1, r2, path)
            assert ref.verify_consistency(first, second, r1, r2, path)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 1200).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))))
def test_consistency_larger(case: tuple[int, int]) -> None:
    first, second = case
    d = entries(second)
    path = merkle.consistency_path(first, second, ref_subtree(d))
    assert path == ref.proof(first, d)
    r1, r2 = ref.mth(d[:first]), ref.mth(d)
    ConsistencyProof(first, second, tuple(path)).verify(r1, r2)
    assert ref.verify_consistency(first, second, r1, r2, path)


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(1, 40),
    data=st.data(),
)
def test_verifiers_agree_on_mismatched_proofs(n: int, data: st.DataObject) -> None:
    """A proof for one (index, size) checked against another: both verifiers decide alike.

    Some such pairs are genuinely valid (leaf 0's path in a tree of 3 also fits size 4 with
    the same root), so the property is agreement, not rejection.
    """
    m = data.draw(st.integers(0, n - 1), label="proved index")
    claimed_m = data.draw(st.integers(-1, 45), label="claimed index")
    claimed_n = data.draw(st.integers(0, 45), label="claimed size")
    d = entries(n)
    path = ref.path(m, d)
    leaf, root = ref.leaf(d[m]), ref_root(n)
    try:
        merkle.verify_inclusion(leaf, claimed_m, claimed_n, path, root)
        fog_ok = True
    except InclusionError:
        fog_ok = False
    assert fog_ok == ref.verify_inclusion(leaf, claimed_m, claimed_n, path, root)

    first = data.draw(st.integers(1, n), label="proved first")
    claimed_first = data.draw(st.integers(0, 45), label="claimed first")
    claimed_second = data.draw(st.integers(0, 45), label="claimed second")
    cpath = ref.proof(first, d)
    r1 = ref_root(first)
    try:
        merkle.verify_consistency(claimed_first, claimed_second, r1, root, cpath)
        fog_ok = True
    except ConsistencyError:
        fog_ok = False
    assert fog_ok == ref.verify_consistency(claimed_first, claimed_second, r1, root, cpath)


# --- subtrees from cached nodes, and the compact range ---------------------------------------


def nodes_from_compact_range(leaves: Sequence[bytes]) -> dict[tuple[int, int], bytes]:
    """(level, index) -> hash, as a store records them from CompactRange.append."""
    nodes: dict[tuple[int, int], bytes] = {}
    frontier = CompactRange()
    for i, leaf in enumerate(leaves):
        for level, h in enumerate(frontier.append(leaf)):
            nodes[(level, ((i + 1) >> level) - 1)] = h
    return nodes


def test_appended_nodes_are_the_perfect_subtrees() -> None:
    d = entries(70)
    nodes = nodes_from_compact_range([ref.leaf(e) for e in d])
    for (level, index), h in nodes.items():
        assert h == ref.mth(d[index << level : (index + 1) << level]), (level, index)
    # every complete aligned subtree is there, and nothing else
    want = {(lvl, i) for lvl in range(7) for i in range(70 >> lvl)}
    assert set(nodes) == want


def test_subtree_root_from_nodes_equals_mth_for_every_range() -> None:
    d = entries(40)
    nodes = nodes_from_compact_range([ref.leaf(e) for e in d])
    reads: list[tuple[int, int]] = []

    def node(level: int, index: int) -> bytes:
        reads.append((level, index))
        return nodes[(level, index)]

    for lo in range(40):
        for hi in range(lo + 1, 41):
            assert merkle.subtree_root(lo, hi, node) == ref.mth(d[lo:hi]), (lo, hi)
    # the ranges proofs ask for read O(log n) nodes: at most one per level
    for n in range(1, 41):
        reads.clear()
        merkle.subtree_root(0, n, node)
        assert len(reads) == n.bit_count()


def test_compact_range_root_at_every_size_and_restore() -> None:
    d = entries(300)
    frontier = CompactRange()
    assert frontier.root() == EMPTY_ROOT and frontier.size == 0
    for n in range(1, 301):
        frontier.append(ref.leaf(d[n - 1]))
        assert frontier.size == n
        assert len(frontier.hashes) == n.bit_count()
        assert frontier.root() == ref_root(n)
        restored = CompactRange(frontier.size, frontier.hashes)
        assert restored == frontier and restored.root() == frontier.root()
        if n % 29 == 0:
            # a restored range continues exactly like the original
            twin = CompactRange(n, list(frontier.hashes))
            for e in d[n : n + 40]:
                twin.append(ref.leaf(e))
            assert twin.root() == ref.mth(d[: n + 40])
    assert frontier.root() == ref_root(300)
    assert merkle.root_from_leaf_hashes([ref.leaf(e) for e in d]) == ref_root(300)


def test_compact_range_copy_is_independent() -> None:
    a = CompactRange()
    a.extend(ref.leaf(e) for e in entries(5))
    b = a.copy()
    b.append(ref.leaf(b"more"))
    assert a.size == 5 and b.size == 6 and a != b


def test_compact_range_rejects_inconsistent_state() -> None:
    h = ref.leaf(b"x")
    with pytest.raises(TreeRangeError, match="size 3 holds 2 hashes"):
        CompactRange(3, [h])
    with pytest.raises(TreeRangeError, match="negative"):
        CompactRange(-1, [])
    with pytest.raises(TreeRangeError, match="compact range hash 0 is 31 bytes"):
        CompactRange(1, [h[:31]])
    with pytest.raises(TreeRangeError, match="appended leaf hash is 0 bytes"):
        CompactRange().append(b"")
