"""Application records in the chain state (aggregator.chain.app.state): a layered
MemoryState answers `record` and `next_record` as one flat map would, deletions included.
(Both block stores' range reads run in tests/aggregator/test_certificates.py.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.chain.app.state import MemoryState
from aggregator.chain.store.records import _prefix_end

KEYS = st.binary(min_size=0, max_size=3)
OPS = st.lists(st.tuples(st.sampled_from(["a", "b"]), KEYS,
                         st.one_of(st.none(), st.integers(0, 9))), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, min_size=1, max_size=4), st.sampled_from(["a", "b"]), KEYS)
def test_a_layered_state_reads_as_one_flat_map(layers: list[list[tuple[str, bytes, int | None]]],
                                               table: str, after: bytes) -> None:
    state: MemoryState | None = None
    flat: dict[tuple[str, bytes], int | None] = {}
    for ops in layers:
        state = MemoryState(state)
        for t, k, v in ops:
            state.put_record(t, k, v)
            flat[(t, k)] = v
    assert state is not None
    for (t, k), v in flat.items():
        assert state.record(t, k) == v
    live = sorted((k, v) for (t, k), v in flat.items() if t == table and k > after
                  and v is not None)
    assert state.next_record(table, after) == (live[0] if live else None)


def test_prefix_end_bounds_exactly_the_keys_with_the_prefix() -> None:
    assert _prefix_end(b"ab") == b"ac"
    assert _prefix_end(b"a\xff") == b"b"
    assert _prefix_end(b"\xff\xff") is None and _prefix_end(b"") is None

