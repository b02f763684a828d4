"""`meterledger bill`: tariffs and bills (docs/PROTOCOL.md section 28), over the chain's and
the fog's HTTP APIs.

    meterledger bill propose --chain URL --key FILE --name N --version V --start T
                             --period MINUTE:RATE [--period ...] [--demand-rate R] [--fixed F]
                             [--estimated hold|bill] [--grace-s S] [--compensation-rate R]
                             [--compensation-cap C] [--tz-min M]
    meterledger bill approve --chain URL --key FILE --name N --version V --tx DIGEST
    meterledger bill tariff NAME --chain URL [--json]
    meterledger bill run --chain URL --key FILE --fog URL --fog-token-file FILE --tariff N
                         --start T --end T --customers FILE --out DIR [--interval-s S]
    meterledger bill receipts ACCOUNT --chain URL [--json]

`propose` is the utility's (role `utility`), `approve` the regulator's: a tariff applies
from its start once both signed. `run` bills each customer of --customers (CSV lines
`account,meter`, 16 hex characters each) for [--start, --end) under the approved tariff in
force: the intervals come from the fog's curve (its auditor token), each bill is written to
DIR/ACCOUNT-START.json for the customer and its receipt (digest and total only) goes to the
chain. Rates in milli-cents (1/1000 cent) per kWh or kW; times in unix seconds. Exit
status: 0; 1 when a service refuses or cannot be reached; 2 with one line for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meterledger.clients import billing as B
from meterledger.clients.chain import ChainClientError, ChainUnavailable, Sender
from meterledger.clients.fog import FogClient
from meterledger.errors import ConfigError
from meterledger.infra import datadir
from meterledger.infra.args import ArgumentParser
from meterledger.market_cli import SIGNER, Session, _chain_flags, _uint, exit_status
from meterledger.wire import billing as BL

_R = BL.BODY_RANGES[BL.BL_TARIFF]


def _period(text: str) -> tuple[int, int]:
    minute, _, rate = text.partition(":")
    try:
        return int(minute), int(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a period is MINUTE:RATE (e.g. 420:25000), not "
                                         f"{text!r}") from None


def _hex8(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise argparse.ArgumentTypeError(f"16 hex characters, not {text!r}")
    return raw


def _digest(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise argparse.ArgumentTypeError(f"a transaction digest is 64 hex characters, not "
                                         f"{text!r}")
    return raw


def _tariff_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="the tariff's name, e.g. residential")
    p.add_argument("--version", type=_uint(*_R[2]), required=True,
                   help="its version: 1, then one more each time")


def parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("propose", help="propose a tariff version (the utility: bl_tariff)")
    _tariff_flags(p)
    p.add_argument("--start", type=_uint(*_R[3]), required=True,
                   help="when it applies, unix s (after the chain's time)")
    p.add_argument("--period", type=_period, action="append", required=True,
                   metavar="MINUTE:RATE", help="a time-of-use period from this minute of the "
                   "local day at this rate, mc/kWh; the first from minute 0; repeatable")
    for flag, k, what in (("--demand-rate", 5, "mc per kW of the highest interval demand"),
                          ("--fixed", 6, "mc per bill"), ("--grace-s", 8, "an outage's grace, s"),
                          ("--compensation-rate", 9, "mc per kWh not served"),
                          ("--compensation-cap", 10, "mc per outage at most"),
                          ("--tz-min", 11, "the local time's offset from UTC, minutes"),
                          ("--points-rate", 12, "mc per market point redeemed against a "
                                                "bill; 0: points not accepted")):
        default = 3600 if k == 8 else 0
        p.add_argument(flag, type=_uint(*_R[k]) if k != 11 else int, default=default,
                       help=f"{what} (default {default})")
    p.add_argument("--estimated", choices=("hold", "bill"), default="bill",
                   help="estimated intervals: billed, or held until measured (default bill)")
    _chain_flags(p, SIGNER)
    p = sub.add_parser("approve", help="approve a proposed tariff (a regulator: bl_approve)")
    _tariff_flags(p)
    p.add_argument("--tx", type=_digest, required=True,
                   help="the proposal's transaction digest (what `tariff` lists as its tx)")
    _chain_flags(p, SIGNER)
    p = sub.add_parser("tariff", help="every version of a tariff, approved or not")
    p.add_argument("name", help="the tariff's name")
    _chain_flags(p, None)
    p = sub.add_parser("receipts", help="an account's bill receipts on the chain")
    p.add_argument("account", type=_hex8, help="the account, 16 hex characters")
    _chain_flags(p, None)
    p = sub.add_parser("redeem", help="redeem market points against an account's bill "
                                      "(bl_redeem, any participant holding points)")
    p.add_argument("--tariff", required=True, help="the tariff the account is billed under")
    p.add_argument("--account", type=_hex8, required=True,
                   help="the account, 16 hex characters")
    p.add_argument("--upt", type=_uint(1, BL.UPT_MAX), required=True,
                   help="micro-points (1,000,000 a point) taken from your market account")
    _chain_flags(p, SIGNER)
    p = sub.add_parser("run", help="bill customers for a period and send the receipts")
    p.add_argument("--fog", required=True, help="the customers' fog node's API URL")
    p.add_argument("--fog-token-file", type=Path, required=True, metavar="FILE",
                   help="the fog's auditor token (its data dir's auditor.token)")
    p.add_argument("--tariff", required=True, help="the tariff's name")
    p.add_argument("--start", type=_uint(0, 2**32 - 1), required=True, help="unix s")
    p.add_argument("--end", type=_uint(0, 2**32 - 1), required=True, help="unix s")
    p.add_argument("--customers", type=Path, required=True, metavar="FILE",
                   help="CSV lines account,meter (16 hex characters each)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the bills are written, one JSON file each")
    p.add_argument("--interval-s", type=_uint(60, 3600), default=900,
                   help="the fog's interval, s, to count missing intervals (default 900)")
    _chain_flags(p, SIGNER)
    return ap


def customers(path: Path) -> list[tuple[bytes, bytes]]:
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"--customers: {e.strerror}: {path}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            account, meter = (_hex8(x.strip()) for x in line.split(","))
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{path} line {n}: account,meter of 16 hex characters each "
                              f"({e})") from None
        out.append((account, meter))
    return out


def run(s: Session, args: argparse.Namespace) -> int:
    if args.end <= args.start:
        raise ConfigError("--end must be after --start")
    people = customers(args.customers)
    fog = FogClient(args.fog, token=datadir.read_secret(args.fog_token_file, "auditor token"),
                    ca_file=args.ca_file)
    t = B.tariff_in_force(s.client, args.tariff, args.start, args.end)
    sender = Sender(s.client, s.signer(), bytes.fromhex(s.client.head()["chain"]))
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for account, meter in people:
        try:
            _bill_one(s, args, fog, sender, t, account, meter)
        except ChainUnavailable:
            raise
        except ChainClientError as e:  # this customer's, not the run's: the others go on
            print(f"{account.hex()}: not billed: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _bill_one(s: Session, args: argparse.Namespace, fog: FogClient, sender: Sender,
              t: BL.Tariff, account: bytes, meter: bytes) -> None:
    """One customer's bill: its outage credits and redemptions, the receipt, then the
    file (a bill whose receipt the chain refused is not written: a run resumes)."""
    credits = B.outage_credits(fog, s.client, sender, t, meter, args.start, args.end,
                               int(args.end))
    points = B.redemptions(s.client, t, account, args.start, args.end)
    billed = B.bill(fog, t, account, meter, args.start, args.end, args.interval_s, credits,
                    points)
    r = B.receipt(sender, billed, int(args.end))
    path = args.out / f"{account.hex()}-{args.start}.json"
    path.write_text(json.dumps(billed.doc, indent=1) + "\n")
    print(f"{account.hex()}: {billed.doc['total'] / 100:.2f} over "
          f"{billed.doc['intervals']} intervals ({billed.missing} missing), {path}, "
          f"receipt in block {r.height}")


def _show(s: Session, doc: dict[str, Any], lines: list[str]) -> int:
    print(json.dumps(doc) if s.json else "\n".join(lines))
    return 0


def main(argv: list[str] | None = None, prog: str = "meterledger bill") -> int:
    args = parser(prog).parse_args(argv)
    return exit_status(f"{prog} {args.cmd}", lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    s = Session.of(args)
    if args.cmd == "propose":
        body = BL.tariff_body(args.name, args.version, args.start, args.period,
                              args.demand_rate, args.fixed,
                              BL.HOLD if args.estimated == "hold" else BL.BILL,
                              args.grace_s, args.compensation_rate, args.compensation_cap,
                              args.tz_min, args.points_rate)
        s.done(BL.BL_TARIFF, s.send(BL.BL_TARIFF, body))
    elif args.cmd == "approve":
        s.done(BL.BL_APPROVE, s.send(BL.BL_APPROVE, BL.approve_body(
            args.name, args.version, args.tx)))
    elif args.cmd == "redeem":
        s.done(BL.BL_REDEEM, s.send(BL.BL_REDEEM, BL.redeem_body(args.tariff, args.account,
                                                                 args.upt)))
    elif args.cmd == "tariff":
        doc = s.client.billing_tariff(args.name)
        return _show(s, doc, [f"{args.name} v{v['version']}: from {v['start']}, "
                              f"{'approved' if v['approved'] else 'proposed'}, periods "
                              f"{v['periods']}, tx {v['tx']}" for v in doc["versions"]])
    elif args.cmd == "receipts":
        doc = s.client.billing_receipts(args.account.hex())
        return _show(s, doc, [f"from {r['start']} to {r['end']}: {r['total'] / 100:.2f} "
                              f"(bill {r['bill']}, {args.account.hex()}, n {r['n']})"
                              for r in doc["receipts"]])
    else:
        return run(s, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
