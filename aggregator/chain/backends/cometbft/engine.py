"""Where the consortium's engine and its protobuf types live, and the one pinned version.

CometBFT is built at set-up time (`make setup`: `python -m
aggregator.chain.backends.cometbft.build`) with `go install` into a git-ignored folder of
the checkout, `.cometbft/`, and its ABCI `.proto` files (with gogoproto's, from the Go module
cache) are compiled there by grpcio-tools. Nothing of CometBFT's source is committed.

    .cometbft/bin/cometbft      the engine, version VERSION
    .cometbft/pb/               the generated Python protobuf modules (tendermint.*, gogoproto)
    .cometbft/pb/.version       the version the protobuf types were made from (the binary
                                says its own: `cometbft version`)

METERLEDGER_COMETBFT_HOME names another such folder (a Pi installed with `pip install .`
points it at a folder it built once).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from meterledger import errors

# the one place the engine's version is pinned: the newest v0.38.x release not retracted
# on the Go module proxy (ABCI 2.0: PrepareProposal/ProcessProposal/FinalizeBlock)
VERSION = "v0.38.26"
MODULE = "github.com/cometbft/cometbft"
GOGOPROTO = "github.com/cosmos/gogoproto"

_REPO = Path(__file__).resolve().parents[4]


class EngineMissing(errors.ConfigError):
    """The CometBFT binary or its protobuf types are not built here."""


def home() -> Path:
    env = os.environ.get("METERLEDGER_COMETBFT_HOME")
    return Path(env) if env else _REPO / ".cometbft"


def binary() -> Path:
    """The built cometbft binary; EngineMissing (with what to run) when it is not there."""
    path = home() / "bin" / "cometbft"
    if not path.is_file():
        raise EngineMissing(f"CometBFT {VERSION} is not built at {path}: run `make setup` "
                            "(it needs Go and the Go module proxy)")
    return path


def pb(name: str) -> Any:
    """A generated protobuf module (e.g. "tendermint.abci.types_pb2"), typed Any: the
    generated code has no annotations."""
    return _load(name)


def _load(name: str) -> ModuleType:
    folder = home() / "pb"
    if not (folder / "tendermint").is_dir():
        raise EngineMissing(f"CometBFT's protobuf types are not built at {folder}: run "
                            "`make setup`")
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return importlib.import_module(name)
