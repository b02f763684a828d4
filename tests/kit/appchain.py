"""An embedded chain in-process for the applications' rule tests (certificates, carbon,
notaries): the operator's genesis, a fog stating its generators' energy, transactions sent
with each sender's next nonce, and the chain's reason for a refusal; on the SQLite store or
its in-memory twin (`open_store`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.ledger import ChainError
from aggregator.chain.store import BlockStore, MemoryBlockStore, SQLiteBlockStore
from meterledger import wire as P
from meterledger.wire import chain as C
from tests.kit.chainkit import T0, FogSide


def open_store(kind: str, tmp_path: Path) -> BlockStore:
    """"memory" or "sqlite" (a chain.db under tmp_path)."""
    return MemoryBlockStore() if kind == "memory" else SQLiteBlockStore(tmp_path / "chain.db")


class AppChain:
    """The chain of `operator` on `store`, sealing at `clock`, with a fog registered."""

    def __init__(self, store: BlockStore, tmp_path: Path, operator: P.SigningKey,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.operator = operator
        create_genesis(store, operator, T0)
        self.ledger = EmbeddedLedger(store, operator, clock)
        self.fog = FogSide(tmp_path)
        self.register("fog", self.fog.key)

    def register(self, role: str, key: P.SigningKey) -> None:
        self.send(self.operator, C.REGISTER, C.register_body(role, key.public_key.raw, role))

    def send(self, key: P.SigningKey, kind: str, body: dict[int, Any],
             check: bool = True) -> None:
        p = self.ledger.participant(key.id)
        nonce = (p.nonce if p is not None else 0) + 1
        self.ledger.submit(P.sign1(key, C.tx(key.id, nonce, kind, body, T0, self.operator.id),
                                   check=check))

    def refused(self, key: P.SigningKey, kind: str, body: dict[int, Any]) -> str:
        """The chain's reason for refusing it (signed without the signer's own checks)."""
        with pytest.raises(ChainError) as e:
            self.send(key, kind, body, check=False)
        return e.value.reason

    def close(self) -> None:
        self.ledger.close()
        self.fog.close()
        self.store.close()
