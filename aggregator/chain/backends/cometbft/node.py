"""One consortium validator's application process: the ABCI server over the app's SQLite
store, and the Ledger the aggregator's HTTP API serves once CometBFT has given it the
genesis. `python -m aggregator run --data-dir DIR/NAME/app` runs it when the data dir holds a
consortium.json (written by `meterledger chain testnet`)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from aggregator.chain.backends.cometbft.abci import ABCIServer
from aggregator.chain.backends.cometbft.app import ChainApp
from aggregator.chain.backends.cometbft.ledger import CometLedger
from aggregator.chain.backends.cometbft.network import CONSORTIUM, NetworkError
from aggregator.chain.backends.cometbft.rpc import CometRPC
from aggregator.chain.store import SQLiteBlockStore


def is_validator_dir(data_dir: Path) -> bool:
    return (data_dir / CONSORTIUM).is_file()


class ValidatorNode:
    def __init__(self, data_dir: Path, chain_file: str, commit_timeout: float) -> None:
        try:
            c = json.loads((data_dir / CONSORTIUM).read_text())
            self.name, self.rpc_url, self.socket = c["name"], c["rpc"], Path(c["socket"])
            self.network = Path(c["network"]) if c.get("network") else None
        except (OSError, ValueError, KeyError) as e:
            raise NetworkError(f"{data_dir / CONSORTIUM} cannot be read: {e}") from None
        self.store = SQLiteBlockStore(data_dir / chain_file)
        try:
            self.app = ChainApp(self.store)
            self.server = ABCIServer(self.socket, self.app.handle)
        except BaseException:
            self.store.close()
            raise
        self.commit_timeout = commit_timeout

    def start(self) -> None:
        self.server.start()

    def wait_genesis(self, stop: threading.Event) -> bool:
        """Wait until CometBFT has called InitChain (at once on a restarted validator);
        False if `stop` is set first."""
        with self.app.committed:
            while self.app.chain_id is None:
                if stop.is_set():
                    return False
                self.app.committed.wait(0.5)
        return True

    def ledger(self) -> CometLedger:
        return CometLedger(self.app, CometRPC(self.rpc_url), self.commit_timeout,
                           network=self.network)

    def close(self) -> None:
        self.server.stop()
        self.app.close()
