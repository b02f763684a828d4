"""`python -m tests.kit.diverging_app run ...`: the aggregator with one rule changed, for
the consortium test of a validator whose application computes a different result: every
block that accepts a transaction gets another state root than the honest validators'."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence

from aggregator.__main__ import main
from aggregator.chain.app.state import Effect, block_state_root
from aggregator.chain.backends.cometbft import app

_honest = block_state_root


def _changed(prev_root: bytes, height: int, effects: Sequence[Effect]) -> bytes:
    if not effects or height == 0:  # the same genesis: it diverges from its first block
        return _honest(prev_root, height, effects)
    return hashlib.sha256(b"a changed rule" + _honest(prev_root, height, effects)).digest()


setattr(app, "block_state_root", _changed)  # noqa: B010  # the change under test (mypy: not exported)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
