"""python -m aggregator.notary init | run

    python -m aggregator.notary init --data-dir D
    python -m aggregator.notary run --data-dir D --gc URL --carbon URL [--period-s 2]
        [--once]

`init` makes the notary's key (D/notary.key, 0600) and prints its public key, which each
chain's operator registers with role `notary` (`python -m aggregator register --role
notary --pub HEX`). `run` relays both chains' outboxes every --period-s seconds until
SIGTERM or SIGINT (--once: one pass, then exit 0), keeping its cursors in D/notary.db. It
needs nothing but the chains' public APIs; several notaries, each with its own key and
data dir, make the committee (docs/PROTOCOL.md section 26).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from aggregator.notary.relay import Notary, Side
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.errors import ConfigError
from meterledger.infra import datadir, logs
from meterledger.infra.args import ArgumentParser

KEY, PUB, DB = "notary.key", "notary.pub", "notary.db"
log = logging.getLogger("meterledger.notary")


def _parser(prog: str) -> ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init", help="make the notary's key and print its public key")
    i.add_argument("--data-dir", type=Path, required=True, help="the notary's directory")
    r = sub.add_parser("run", help="relay both chains' records until stopped")
    r.add_argument("--data-dir", type=Path, required=True,
                   help="the notary's directory (its key and cursors)")
    r.add_argument("--gc", required=True, help="the green-certificate chain's API URL")
    r.add_argument("--carbon", required=True, help="the carbon chain's API URL")
    r.add_argument("--period-s", type=float, default=2.0,
                   help="seconds between passes over the outboxes (default 2)")
    r.add_argument("--once", action="store_true", help="one pass, then exit")
    logs.add_arguments(r)
    return p


def _run(args: argparse.Namespace) -> int:
    if args.period_s <= 0:
        raise ConfigError(f"--period-s must be above 0, not {args.period_s}")
    key = datadir.read_key(args.data_dir / KEY, "notary key",
                           f"run `python -m aggregator.notary init --data-dir {args.data_dir}`")
    try:
        gc = Side.of("gc", ChainClient(args.gc))
        carbon = Side.of("carbon", ChainClient(args.carbon))
    except ChainClientError as e:
        raise ConfigError(f"a chain does not answer: {e}") from None
    notary = Notary(key, gc, carbon, args.data_dir / DB, time.time)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("notary %s relaying between gc chain %s and carbon chain %s", key.id_hex,
             gc.chain_id.hex(), carbon.chain_id.hex())
    print(f"notary {key.id_hex} relaying", flush=True)
    try:
        while True:
            notary.step()
            if args.once or stop.wait(args.period_s):
                return 0
    finally:
        notary.close()


def main(argv: list[str] | None = None, prog: str = "python -m aggregator.notary") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        if args.cmd == "init":
            args.data_dir.mkdir(parents=True, exist_ok=True)
            key = datadir.create_key(args.data_dir / KEY, args.data_dir / PUB,
                                     "a notary keeps its key")
            print(key.public_key.raw.hex())
            return 0
        logs.from_arguments(args)
        return _run(args)
    except ConfigError as e:
        print(f"error: {prog}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
