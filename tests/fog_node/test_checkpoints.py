"""The side-chain of signed checkpoints over the log."""

from __future__ import annotations

import pytest

from fog_node.log.checkpoints import CheckpointError, Checkpoints
from fog_node.log.store import MemoryLogStore, SQLiteLogStore
from meterledger import wire as P
from meterledger.wire import merkle

FOG = P.SigningKey.from_int(0xF06)


def test_checkpoints_chain_through_prev_and_verify(tmp_path):
    log = SQLiteLogStore(tmp_path / "log.db")
    cps = Checkpoints(tmp_path / "cp.db", FOG, log)
    log.append_batch([b"a", b"b"])
    c1 = cps.seal(100)
    assert c1 is not None
    assert cps.seal(101) is None  # nothing new
    log.append_batch([b"c"])
    c2 = cps.seal(102, ivl=900)
    assert c2 is not None
    f1 = P.verify(c1.msg, FOG.public_key).fields
    f2 = P.verify(c2.msg, FOG.public_key).fields
    assert (f1[2], f1[3], f1[5]) == (1, 2, P.ZERO32)
    assert (f2[2], f2[3], f2[5], f2[7]) == (2, 3, c1.digest, 900)
    assert f2[4] == merkle.root_from_leaf_hashes([merkle.leaf_hash(x) for x in (b"a", b"b", b"c")])
    # the side-chain is append-only in the log's sense too
    proof = log.consistency_proof(2, 3)
    merkle.verify_consistency(2, 3, f1[4], f2[4], proof.path)
    cps.close()
    log.close()
    again = Checkpoints(tmp_path / "cp.db", FOG, SQLiteLogStore(tmp_path / "log.db"))
    latest = again.latest()
    assert latest is not None and latest.msg == c2.msg
    covering = again.covering(2)
    assert covering is not None and covering.height == 1
    assert again.at_height(2) == latest


def test_interval_close_seals_even_without_new_entries_and_time_never_goes_back(tmp_path):
    log = MemoryLogStore()
    cps = Checkpoints(tmp_path / "cp.db", FOG, log)
    log.append_batch([b"x"])
    cps.seal(500)
    c = cps.seal(400, ivl=900)  # a clock that stepped back
    assert c is not None and c.height == 2 and c.t == 500


def test_a_log_that_shrank_is_refused(tmp_path):
    log = MemoryLogStore()
    cps = Checkpoints(tmp_path / "cp.db", FOG, log)
    log.append_batch([b"x", b"y"])
    cps.seal(1)
    with pytest.raises(CheckpointError, match="shrank"):
        Checkpoints(tmp_path / "cp.db", FOG, MemoryLogStore()).seal(2, force=True)
