"""A real four-validator CometBFT network on loopback for tests (marker `consortium`):
`meterledger chain local_net` writes it into a short temporary folder (a Unix socket path has
at most 108 bytes), supervise.start runs each validator's application and cometbft, and
every process is killed on the way out, passed or failed."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft import network, supervise
from aggregator.chain.backends.cometbft.rpc import CometRPC, RPCError, RPCUnavailable
from meterledger import wire as P
from meterledger.infra import datadir
from meterledger.wire import chain as C
from tests.kit.fogkit import wait

T0 = 1_800_000_000


def post(url: str, raw: bytes, timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/v1/tx", data=raw, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path, timeout=30) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


class LocalNet:
    def __init__(self, root: Path, n: int = 4, commit_ms: int = 100) -> None:
        self.net = network.create(root, network.free_base_port(n), commit_ms, n)
        app = self.net.validators[0].app_dir(self.net.root)
        self.key = datadir.read_key(app / "dispatch.key", "dispatch key", "")
        self.running: dict[str, supervise.Running] = {}
        self.nonce = 1  # the genesis used the dispatch key's first nonce

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.net.validators]

    def start(self, *names: str) -> None:
        for r in supervise.start(self.net, list(names) or None):
            self.running[r.validator.name] = r

    def stop(self, *names: str) -> None:
        chosen = [self.running.pop(n) for n in (names or list(self.running))]
        supervise.stop(chosen)

    def kill(self, name: str) -> None:
        """SIGKILL the validator's CometBFT and application, as a power cut would."""
        r = self.running.pop(name)
        for p in (r.comet, r.app):
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in r.logs:
            f.close()

    def api(self, name: str) -> str:
        return self.net.validator(name).api_url

    def rpc(self, name: str) -> CometRPC:
        return CometRPC(self.net.validator(name).rpc_url, timeout=10)

    def height(self, name: str) -> int:
        """The validator's committed height, -1 while its node does not answer."""
        try:
            return int(self.rpc(name).status()["sync_info"]["latest_block_height"])
        except (RPCUnavailable, RPCError):
            return -1

    def app_hash(self, name: str, height: int) -> str:
        return str(self.rpc(name).commit(height + 1)["signed_header"]["header"]["app_hash"])

    def wait_api(self, *names: str) -> None:
        for n in names or self.names:
            wait(functools.partial(self.serving, n), timeout=120,
                 what=f"{n}'s API and CometBFT node", every=0.2)

    def serving(self, name: str) -> bool:
        return supervise.answers(self.api(name) + "/healthz") and self.height(name) >= 0

    def register_tx(self, role: str = "fog", key: P.SigningKey | None = None) -> bytes:
        """The dispatch key's next register transaction (nonces counted here)."""
        key = key or P.SigningKey.generate()
        self.nonce += 1
        return P.sign1(self.key, C.tx(self.key.id, self.nonce, C.REGISTER,
                                      C.register_body(role, key.public_key.raw, ""), T0,
                                      self.key.id))

    def close(self) -> None:
        for name in list(self.running):
            self.kill(name)


@contextlib.contextmanager
def local_net(n: int = 4) -> Iterator[LocalNet]:
    root = Path(tempfile.mkdtemp(prefix="ml-net-"))
    t = LocalNet(root / "n", n)
    try:
        yield t
    finally:
        t.close()
        if os.environ.get("METERLEDGER_KEEP_TESTNET"):
            print(f"local_net kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
