"""Build the consortium's engine at set-up time: `python -m aggregator.chain.backends.cometbft.build`.

1. `go install github.com/cometbft/cometbft/cmd/cometbft@VERSION` with GOBIN in the
   git-ignored `.cometbft/bin` (engine.py), skipped when that version is already built;
2. the ABCI `.proto` files of that module and of the gogoproto version its go.mod requires,
   both from the Go module cache (`go mod download -json`), compiled by grpcio-tools into
   `.cometbft/pb`.

Any failure exits non-zero with the reason on one line: CI must fail, not skip, when the
engine cannot be built.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from aggregator.chain.backends.cometbft import engine

# what the ABCI app and the tests use, with everything they import
_PROTOS = ("tendermint/abci/types.proto", "tendermint/types/types.proto",
           "tendermint/types/canonical.proto", "tendermint/types/params.proto",
           "tendermint/types/validator.proto", "tendermint/crypto/keys.proto",
           "tendermint/crypto/proof.proto", "tendermint/version/types.proto")


class BuildError(Exception):
    pass


def _go(*args: str, env: dict[str, str] | None = None) -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError("`go` is not on PATH: install Go 1.22 or newer (the Go module proxy "
                         "must be reachable) and run `make setup` again")
    r = subprocess.run([go, *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(f"go {' '.join(args)} failed: {last}")
    return r.stdout


def _module_dir(path: str, version: str) -> Path:
    info = json.loads(_go("mod", "download", "-json", f"{path}@{version}"))
    return Path(info["Dir"])


def build_binary(home: Path) -> Path:
    binary = home / "bin" / "cometbft"
    if binary.is_file() and _built_version(binary) == engine.VERSION.lstrip("v"):
        return binary
    (home / "bin").mkdir(parents=True, exist_ok=True)
    print(f"building CometBFT {engine.VERSION} into {binary} (go install)", flush=True)
    _go("install", f"{engine.MODULE}/cmd/cometbft@{engine.VERSION}",
        env={"GOBIN": str(home / "bin"), "GOFLAGS": "-mod=mod"})
    got = _built_version(binary)
    if got != engine.VERSION.lstrip("v"):
        raise BuildError(f"the built cometbft says version {got!r}, not {engine.VERSION}")
    return binary


def _built_version(binary: Path) -> str:
    try:
        r = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip()


def build_protos(home: Path) -> Path:
    out = home / "pb"
    stamp = out / ".version"
    if stamp.is_file() and stamp.read_text().strip() == engine.VERSION:
        return out
    comet = _module_dir(engine.MODULE, engine.VERSION)
    m = re.search(r"^\s*" + re.escape(engine.GOGOPROTO) + r"\s+(v\S+)",
                  (comet / "go.mod").read_text(), re.M)
    if m is None:
        raise BuildError(f"{engine.MODULE}@{engine.VERSION}'s go.mod names no {engine.GOGOPROTO}")
    gogo = _module_dir(engine.GOGOPROTO, m.group(1))
    try:
        import grpc_tools  # type: ignore[import-untyped]  # the consortium extra's
        from grpc_tools import protoc
    except ImportError:
        raise BuildError("grpcio-tools is not installed: pip install '.[consortium]' (make "
                         "setup does)") from None

    std = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    protos = [*_PROTOS, "gogoproto/gogo.proto"]
    rc = protoc.main(["protoc", f"-I{comet / 'proto'}", f"-I{gogo}", f"-I{std}",
                      f"--python_out={out}", *protos])
    if rc != 0:
        raise BuildError(f"protoc failed ({rc}) compiling {', '.join(protos)}")
    for d in {(out / p).parent for p in protos}:  # packages for the generated modules
        while d != out:
            (d / "__init__.py").touch()
            d = d.parent
    stamp.write_text(engine.VERSION + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aggregator.chain.backends.cometbft.build",
                                 description=f"build CometBFT {engine.VERSION} and its ABCI "
                                             "protobuf types into a git-ignored folder")
    ap.add_argument("--home", type=Path, default=None, metavar="DIR",
                    help="where to build (default: $METERLEDGER_COMETBFT_HOME or the "
                         "checkout's .cometbft)")
    a = ap.parse_args(argv)
    home = a.home or engine.home()
    try:
        binary = build_binary(home)
        out = build_protos(home)
    except (BuildError, OSError) as e:
        print(f"error: CometBFT could not be built: {e}", file=sys.stderr)
        return 1
    print(f"CometBFT {engine.VERSION}: {binary}; protobuf types: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
