"""`meterledger dr`: home demand response (docs/PROTOCOL.md section 30), over the chain's
HTTP API.

    meterledger dr offer --chain URL --key FILE --customer ID --meter ID --fog ID --feeder F
                         --threshold MC --max-w W [--floor-w W] [--window FROM-TO ...]
                         [--tz-min M] --rate MPT --valid-from T --valid-to T
    meterledger dr accept --chain URL --key FILE --offer DIGEST
    meterledger dr pref --chain URL --key FILE --contract DIGEST
                        (--skip-event ID | --skip-window FROM:TO | --pause-until T)
    meterledger dr event --chain URL --key FILE --id ID --price MC --start T --end T
                         --target FOG[:FEEDER] [--target ...] [--note TEXT]
    meterledger dr settle --chain URL --key FILE --event ID --meter ID
    meterledger dr contracts CUSTOMER --chain URL [--json]
    meterledger dr events --chain URL [--fog ID] [--after T] [--limit N] [--json]
    meterledger dr reports EVENT --chain URL [--json]

`offer`, `event` and `settle` are the utility's (role `utility`); `accept` and `pref` the
customer's (the participant the offer names). Ids are 16 hex characters, digests 64; prices
and thresholds in milli-cents per kWh, the compensation rate in milli-points per kWh
(micro-points per Wh), power in W, times in unix seconds (events on quarter hours). Exit
status: 0; 1 when the chain refuses or cannot be reached; 2 with one line for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meterledger.infra.args import ArgumentParser
from meterledger.market_cli import SIGNER, Session, _chain_flags, _uint, exit_status
from meterledger.wire import dr as DR
from meterledger.wire.schema import TIME_MAX

_R = DR.BODY_RANGES
_TIME = _uint(0, TIME_MAX)


def _hex(text: str, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise argparse.ArgumentTypeError(f"{what} is {2 * size} hex characters, not {text!r}")
    return raw


def _hex8(text: str) -> bytes:
    return _hex(text, 8, "an id")


def _digest(text: str) -> bytes:
    return _hex(text, 32, "a transaction digest")


def _pair(text: str, sep: str, what: str) -> tuple[int, int]:
    a, _, b = text.partition(sep)
    try:
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}, not {text!r}") from None


def _window(text: str) -> tuple[int, int]:
    return _pair(text, "-", "a comfort window is FROM-TO in minutes of the local day "
                            "(e.g. 1020-1260 for 17:00-21:00)")


def _span(text: str) -> tuple[int, int]:
    return _pair(text, ":", "a window is FROM:TO in unix seconds")


def _target(text: str) -> tuple[bytes, str]:
    fog, _, feeder = text.partition(":")
    return _hex8(fog), feeder


def _offer_parser(sub: Any) -> None:
    p = sub.add_parser("offer", help="offer a customer a DR contract (a utility: dr_offer)")
    o = _R[DR.DR_OFFER]
    for flag, what in (("--customer", "the customer's participant id (a holder or market "
                                      "participant)"),
                       ("--meter", "the meter's id (16 hex characters)"),
                       ("--fog", "the meter's fog's participant id")):
        p.add_argument(flag, type=_hex8, required=True, help=what)
    p.add_argument("--feeder", required=True, help="the meter's feeder (events may name it)")
    p.add_argument("--threshold", type=_uint(*o[5]), required=True,
                   help="the lowest event price the customer curtails at, mc/kWh")
    p.add_argument("--max-w", type=_uint(*o[6]), required=True,
                   help="the most the cap takes off the baseline power, W; also caps the "
                        "energy paid (max W x the event's hours)")
    p.add_argument("--floor-w", type=_uint(*o[7]), default=0,
                   help="the least power the home keeps during an event, W (default 0)")
    p.add_argument("--window", type=_window, action="append", default=[],
                   metavar="FROM-TO", help="a comfort window (no event curtails the meter "
                   "if it touches one), minutes of the local day; repeatable")
    p.add_argument("--tz-min", type=int, default=0,
                   help="the customer's local time's offset from UTC, minutes (default 0)")
    p.add_argument("--rate", type=_uint(*o[10]), required=True,
                   help="the compensation, mpt per kWh curtailed (= upt per Wh)")
    p.add_argument("--valid-from", type=_TIME, required=True, help="unix s")
    p.add_argument("--valid-to", type=_TIME, required=True, help="unix s")
    _chain_flags(p, SIGNER)


def _tx_parsers(sub: Any) -> None:
    _offer_parser(sub)
    p = sub.add_parser("accept", help="accept an offer made to you (the customer: dr_accept)")
    p.add_argument("--offer", type=_digest, required=True,
                   help="the offer's transaction digest (`contracts` lists it)")
    _chain_flags(p, SIGNER)
    p = sub.add_parser("pref", help="a preference on your contract (the customer: dr_pref)")
    p.add_argument("--contract", type=_digest, required=True,
                   help="the contract: its offer's transaction digest")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--skip-event", type=_hex8, metavar="ID", help="opt out of this event")
    g.add_argument("--skip-window", type=_span, metavar="FROM:TO",
                   help="opt out of every event touching [FROM, TO), unix s")
    g.add_argument("--pause-until", type=_TIME, metavar="T",
                   help="opt out of every event touching [now, T), unix s")
    _chain_flags(p, SIGNER)
    p = sub.add_parser("event", help="call a DR event (a utility: dr_event)")
    p.add_argument("--id", type=_hex8, required=True, help="the event's id, 16 hex characters")
    p.add_argument("--price", type=_uint(*_R[DR.DR_EVENT][2]), required=True,
                   help="the price signal, mc/kWh")
    p.add_argument("--start", type=_TIME, required=True,
                   help="unix s, on a quarter hour, after the chain's time")
    p.add_argument("--end", type=_TIME, required=True,
                   help=f"unix s, on a quarter hour, {DR.EVENT_MIN_S} to {DR.EVENT_MAX_S} s "
                        "after the start")
    p.add_argument("--target", type=_target, action="append", required=True,
                   metavar="FOG[:FEEDER]", help="a fog (and one of its feeders; none: all) "
                   "the event applies to; repeatable")
    p.add_argument("--note", default="", help="why, for the customers (at most 255 bytes)")
    _chain_flags(p, SIGNER)
    p = sub.add_parser("settle", help="pay the compensation still owed for a report (a "
                                      "utility: dr_settle)")
    p.add_argument("--event", type=_hex8, required=True, help="the event's id")
    p.add_argument("--meter", type=_hex8, required=True, help="the reported meter's id")
    _chain_flags(p, SIGNER)


def parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    _tx_parsers(sub)
    p = sub.add_parser("contracts", help="a customer's contracts and preferences")
    p.add_argument("customer", type=_hex8, help="the customer's participant id")
    _chain_flags(p, None)
    p = sub.add_parser("events", help="DR events by their end")
    p.add_argument("--fog", type=_hex8, help="only those naming this fog")
    p.add_argument("--after", help="only those ending after this time (unix s), or a "
                                   "previous answer's next")
    p.add_argument("--limit", type=_uint(1, 1000), help="at most this many (default 100)")
    _chain_flags(p, None)
    p = sub.add_parser("reports", help="an event's reports and the points paid")
    p.add_argument("event", type=_hex8, help="the event's id")
    _chain_flags(p, None)
    return ap


def _show(s: Session, doc: dict[str, Any], lines: list[str]) -> int:
    print(json.dumps(doc) if s.json else "\n".join(lines))
    return 0


def main(argv: list[str] | None = None, prog: str = "meterledger dr") -> int:
    args = parser(prog).parse_args(argv)
    return exit_status(f"{prog} {args.cmd}", lambda: _command(args))


def _body(args: argparse.Namespace) -> dict[int, Any]:
    """The transaction a command sends."""
    if args.cmd == "offer":
        return DR.offer_body(args.customer, args.meter, args.fog, args.feeder, args.threshold,
                             args.max_w, args.floor_w, args.window, args.tz_min, args.rate,
                             args.valid_from, args.valid_to)
    if args.cmd == "accept":
        return DR.accept_body(args.offer)
    if args.cmd == "pref":
        if args.skip_event is not None:
            return DR.pref_body(args.contract, DR.SKIP_EVENT, args.skip_event)
        if args.skip_window is not None:
            return DR.pref_body(args.contract, DR.SKIP_WINDOW, None, *args.skip_window)
        return DR.pref_body(args.contract, DR.PAUSE, hi=args.pause_until)
    if args.cmd == "event":
        return DR.event_body(args.id, args.price, args.start, args.end, args.target,
                             args.note)
    return DR.settle_body(args.event, args.meter)


_KINDS = {"offer": DR.DR_OFFER, "accept": DR.DR_ACCEPT, "pref": DR.DR_PREF,
          "event": DR.DR_EVENT, "settle": DR.DR_SETTLE}


def _command(args: argparse.Namespace) -> int:
    s = Session.of(args)
    kind = _KINDS.get(args.cmd)
    if kind is not None:
        s.done(kind, s.send(kind, _body(args)))
        return 0
    if args.cmd == "contracts":
        doc = s.client.dr_contracts(args.customer.hex())
        return _show(s, doc, [
            f"{c['contract']}: meter {c['meter']} of fog {c['fog']}, threshold "
            f"{c['threshold']} mc/kWh, max {c['max_w']} W, rate {c['rate']} mpt/kWh, from "
            f"{c['valid_from']} to {c['valid_to']}, "
            + (f"accepted at {c['accepted']}" if c["accepted"] is not None else "offered")
            + f", {len(c['prefs'])} preference(s)" for c in doc["contracts"]])
    if args.cmd == "events":
        doc = s.client.dr_events(None if args.fog is None else args.fog.hex(), args.after,
                                 args.limit)
        return _show(s, doc, [f"{e['event']}: {e['price']} mc/kWh from {e['start']} to "
                              f"{e['end']}, {len(e['targets'])} target(s) {e['note']}"
                              for e in doc["events"]]
                     + ([f"more: --after {doc['next']}"] if doc["next"] else []))
    doc = s.client.dr_reports(args.event.hex())
    return _show(s, doc, [f"meter {r['meter']}: {r['curtailed']} Wh curtailed (baseline "
                          f"{r['baseline']}, measured {r['measured']}), {r['paid']} upt "
                          f"paid, {r['owed']} owed" + (f", not paid: {r['why']}"
                                                       if r["why"] else "")
                          for r in doc["reports"]])


if __name__ == "__main__":
    sys.exit(main())
