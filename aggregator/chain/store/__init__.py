"""Block storage: the `BlockStore` interface (`base`), SQLite (`sqlite`) and its in-memory
twin (`memory`)."""

from aggregator.chain.store.base import BlockStore, StoredBlock
from aggregator.chain.store.memory import MemoryBlockStore
from aggregator.chain.store.sqlite import SQLiteBlockStore

__all__ = ["BlockStore", "MemoryBlockStore", "SQLiteBlockStore", "StoredBlock"]
