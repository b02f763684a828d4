"""The example configs in docs/examples, written from the settings' own definitions (the
same ones that drive `--help` and the checks at load), so they never drift from the code:

    python -m tools.examples           # write docs/examples/fog.toml and chain.toml
    python -m tools.examples --check   # exit 1 if a file differs from what the code says

docs/examples/rules.toml, a rule set, is written by hand: its grammar is a parser
(aggregator/chain/rulesets.py), and tests/meterledger/test_examples.py parses it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aggregator.chain.service.node import AggregatorConfig
from fog_node.config import FogConfig
from meterledger.infra import config
from meterledger.infra.args import ArgumentParser

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"

FOG_HEADER = """\
A fog node's configuration: `meterledger fog run --config fog.toml`. Every setting is
shown at its default with its range; a flag on the command line (`meterledger fog run
--help`) overrides the file. Written by `python -m tools.examples` from fog_node/config.py.

Feeders (docs/PROTOCOL.md section 18): replace `feeders = []` by tables at the end:
  [[fog.feeders]]
  name = "feeder-a"
  meters = ["0011223344556677", "8899aabbccddeeff"]
  head = "0102030405060708"      # optional: the feeder's head meter
"""

CHAIN_HEADER = """\
A dispatch chain node's configuration: `meterledger chain run --config chain.toml`. Every
setting is shown at its default with its range; a flag (`meterledger chain run --help`)
overrides the file. Written by `python -m tools.examples` from
aggregator/chain/service/node.py.
"""


def generated() -> dict[str, str]:
    """File name -> the text the code's definitions give."""
    return {"fog.toml": config.example(FogConfig, "fog", FOG_HEADER),
            "chain.toml": config.example(AggregatorConfig, "aggregator", CHAIN_HEADER)}


def main(argv: list[str] | None = None, prog: str = "python -m tools.examples") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="only compare: exit 1 naming the files that differ")
    ap.add_argument("--out", type=Path, default=EXAMPLES,
                    help="the directory to write (default: docs/examples)")
    args = ap.parse_args(argv)
    stale = []
    for name, text in generated().items():
        path = args.out / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)} (run python -m tools.examples)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
