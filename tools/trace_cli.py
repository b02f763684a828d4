"""`meterledger trace`: device and operator traceability on the chain (docs/PROTOCOL.md
section 29): a device's timeline with every record's proof, and the `dv_*` transactions.

    meterledger trace DEVICE --chain URL [--format text|json] [--trust PUBHEX ...]
                             [--validators GENESIS.json]        (the same as `trace show`)
    meterledger trace register DEVICE --chain URL --key FILE --kind K --manufacturer M
                             --model M --serial S --made T --commissioned T [--rated-v V]
                             [--rated-a A] [--rated-w W] [--phases N] [--warranty-s S]
                             [--maintain-s S]
    meterledger trace status DEVICE --status installed|connected|disconnected|removed
                             [--site S] [--feeder F] [--fog HEX] [--note N] --chain .. --key ..
    meterledger trace maintain DEVICE --what W --result ok|repaired|replaced|defect
                             [--detail D] [--ticket DIGEST] --chain URL --key FILE
    meterledger trace firmware DEVICE --fw V [--hw H] --seen T [--birth DIGEST] --chain .. --key ..
    meterledger trace ticket DEVICE --op OP --reason R --start T --end T --chain .. --key ..
    meterledger trace approve TICKET [--reject] [--note N] --chain URL --key FILE
    meterledger trace execute TICKET [--result done|failed|aborted] [--detail D] --chain .. --key ..
    meterledger trace alarm DEVICE --op OP --observed T [--detail D] [--who ID] --chain .. --key ..
    meterledger trace determine DEVICE --fault DIGEST [--cause C] [--detail D] --chain .. --key ..

DEVICE is 16 hex characters (a meter's SPEC id); TICKET and DIGEST 64 (a transaction's
digest: a ticket is named by its request's). Who sends what: an `operator` (a person whose
key the dispatch key registered with their name: `meterledger chain register --data-dir
DIR --role operator --name NAME --pub HEX`; a key comes from `meterledger market keygen`) registers,
installs, maintains, requests and executes; the `utility` approves tickets and, with a
`regulator`, determines faults; a `fog` reports firmware and alarms (the utility may alarm
too). `determine` without --cause sends the cause the chain's rule gives for the device's
record (recomputed here from the timeline). Times in unix seconds.

The timeline prints one line per record, with its transaction's digest, its block and its
proof: the transaction is fetched and checked to be signed by its sender's registered key and
included in a block sealed by a trusted key (--trust, default the chain's own sealer as its
head names it) or, on a consortium, committed by the validators of --validators. Exit
status: 0; 1 when a proof fails, the chain refuses or cannot be reached; 2 with one line for
a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.errors import ConfigError
from meterledger.infra.args import ArgumentParser
from meterledger.market_cli import SIGNER, Session, _uint, connection_flags, exit_status
from meterledger.wire import trace as DV
from tools import audit
from tools import audit_consortium as consortium
from tools import trace_show as S

_R = DV.BODY_RANGES
COMMANDS = ("show", "register", "status", "maintain", "firmware", "ticket", "approve",
            "execute", "alarm", "determine")


def _hex(size: int, what: str) -> Callable[[str], bytes]:
    def parse(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(raw) != size:
            raise argparse.ArgumentTypeError(f"{what} is {2 * size} hex characters, not "
                                             f"{text!r}")
        return raw
    return parse


DEVICE, DIGEST = _hex(8, "a device id"), _hex(32, "a transaction digest")
PARTY = _hex(8, "a participant id")


def _text(lo: int, hi: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not lo <= len(text.encode()) <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} must be {lo} to {hi} bytes")
        return text
    return parse


def _signer(p: argparse.ArgumentParser) -> None:
    """The flags of a transaction: the connection, the signing key, --json."""
    connection_flags(p)
    p.add_argument("--key", "--key-file", dest="key", type=Path, required=True,
                   metavar="FILE", help=SIGNER)
    p.add_argument("--json", action="store_true", help="print the receipt as JSON")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", type=DEVICE, help="the device's id, 16 hex characters")


def _register_parser(sub: Any) -> None:
    r = _R[DV.DV_REGISTER]
    p = sub.add_parser("register", help="register a device with its nameplate (an operator: "
                                        "dv_register)")
    _device(p)
    for flag, k, what in (("--kind", 2, "what it is: a lowercase word, e.g. meter"),
                          ("--manufacturer", 3, "its manufacturer"),
                          ("--model", 4, "its model"), ("--serial", 5, "its serial number")):
        p.add_argument(flag, type=_text(*r[k]), required=True, help=what)
    p.add_argument("--made", type=_uint(*r[6]), required=True, help="manufactured, unix s")
    p.add_argument("--commissioned", type=_uint(*r[7]), required=True,
                   help="put in service, unix s: the warranty and maintenance run from it")
    plate = DV.Nameplate("", "", "", "", 0, 0)
    for flag, k, what, default in (
            ("--rated-v", 8, "rated voltage, V", plate.rated_v),
            ("--rated-a", 9, "rated current, A", plate.rated_a),
            ("--rated-w", 10, "rated power, W", plate.rated_w),
            ("--phases", 11, "phases, 1 to 3", plate.phases),
            ("--warranty-s", 12, "the warranty from commissioning, s", plate.warranty_s),
            ("--maintain-s", 13, "the maintenance interval, s", plate.maintain_s)):
        p.add_argument(flag, type=_uint(*r[k]), default=default,
                       help=f"{what} (default {default})")
    _signer(p)


def _record_parsers(sub: Any) -> None:
    p = sub.add_parser("status", help="record an installation or connection status (an "
                                      "operator: dv_status)")
    _device(p)
    p.add_argument("--status", choices=DV.STATUSES, required=True,
                   help="the new status: installed, connected, disconnected, removed")
    p.add_argument("--site", type=_text(1, DV.NAME_MAX), help="where it is installed "
                   "(installed only; required there)")
    p.add_argument("--feeder", type=_text(1, DV.NAME_MAX), help="its feeder (installed only)")
    p.add_argument("--fog", type=PARTY, help="the fog it reports through (installed only)")
    p.add_argument("--note", type=_text(0, DV.NOTE_MAX), default="", help="a remark")
    _signer(p)
    p = sub.add_parser("maintain", help="record a maintenance (an operator: dv_maintain)")
    _device(p)
    p.add_argument("--what", type=_text(1, DV.NOTE_MAX), required=True, help="what was done")
    p.add_argument("--result", choices=DV.RESULTS, required=True,
                   help="ok, repaired, replaced, or defect (found and left)")
    p.add_argument("--detail", type=_text(0, DV.NOTE_MAX), default="", help="parts, remarks")
    p.add_argument("--ticket", type=DIGEST, help="the approved ticket it was done under")
    _signer(p)
    p = sub.add_parser("firmware", help="record the firmware a device runs (a fog or an "
                                        "operator: dv_firmware)")
    _device(p)
    p.add_argument("--fw", type=_text(1, 64), required=True, help="the firmware version")
    p.add_argument("--hw", type=_text(0, 32), default="", help="the hardware revision")
    p.add_argument("--seen", type=_uint(0, 2**32 - 1), required=True,
                   help="when it was seen, unix s (a birth's boot time)")
    p.add_argument("--birth", type=DIGEST, help="the digest of the meter's birth message")
    _signer(p)


def _ticket_parsers(sub: Any) -> None:
    p = sub.add_parser("ticket", help="request an operation ticket (an operator: dv_ticket)")
    _device(p)
    p.add_argument("--op", choices=DV.OPS, required=True, help="the operation")
    p.add_argument("--reason", type=_text(1, DV.NOTE_MAX), required=True, help="why")
    for flag in ("--start", "--end"):
        p.add_argument(flag, type=_uint(0, 2**32 - 1), required=True,
                       help=f"the window's {flag[2:]}, unix s (at most 7 days)")
    _signer(p)
    p = sub.add_parser("approve", help="grant (or --reject) a ticket (the utility: "
                                       "dv_approve)")
    p.add_argument("ticket", type=DIGEST, help="the ticket: its request's digest")
    p.add_argument("--reject", action="store_true", help="reject it instead")
    p.add_argument("--note", type=_text(0, DV.NOTE_MAX), default="", help="a remark")
    _signer(p)
    p = sub.add_parser("execute", help="record a ticket's execution (its operator: "
                                       "dv_execute)")
    p.add_argument("ticket", type=DIGEST, help="the ticket: its request's digest")
    p.add_argument("--result", choices=DV.OUTCOMES, default=DV.DONE,
                   help="done, failed or aborted (default done)")
    p.add_argument("--detail", type=_text(0, DV.NOTE_MAX), default="", help="remarks")
    _signer(p)
    p = sub.add_parser("alarm", help="record an operation seen without a ticket (a fog or "
                                     "the utility: dv_alarm)")
    _device(p)
    p.add_argument("--op", choices=(*DV.OPS, DV.UNKNOWN_OP), required=True,
                   help="the operation seen")
    p.add_argument("--observed", type=_uint(0, 2**32 - 1), required=True,
                   help="when it was seen, unix s")
    p.add_argument("--detail", type=_text(0, DV.NOTE_MAX), default="", help="what was seen")
    p.add_argument("--who", type=PARTY, help="the participant believed to have done it")
    _signer(p)
    p = sub.add_parser("determine", help="record a fault's cause (the utility or a "
                                         "regulator: dv_determine)")
    _device(p)
    p.add_argument("--fault", type=DIGEST, required=True,
                   help="the fault report's transaction digest")
    p.add_argument("--cause", choices=DV.CAUSES,
                   help="the cause (default: what the rule gives for the device's record)")
    p.add_argument("--detail", type=_text(0, DV.NOTE_MAX), default="", help="remarks")
    _signer(p)


def parser(prog: str) -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("show", help="a device's timeline, every record proven (the "
                                    "default: `trace DEVICE`)")
    _device(p)
    connection_flags(p)
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="one line per record, or the timeline with its proofs as JSON")
    p.add_argument("--trust", action="append", default=[], metavar="PUBHEX",
                   help="a dispatch key's public key the blocks must be sealed by "
                        "(repeatable; default: the chain's own, as its head names it)")
    p.add_argument("--validators", type=Path, metavar="GENESIS.json",
                   help="a consortium's genesis.json: its validators commit the blocks")
    _register_parser(sub)
    _record_parsers(sub)
    _ticket_parsers(sub)
    return ap


# -- the timeline ---------------------------------------------------------------------------------
def _trust(client: ChainClient, args: argparse.Namespace) -> S.Trust:
    try:
        keys = [P.PublicKey(bytes.fromhex(t.strip())) for t in args.trust]
    except (ValueError, P.ProtocolError) as e:
        raise ConfigError(f"--trust: not a P-256 public key in hex: {e}") from None
    genesis = consortium.load_genesis(args.validators) if args.validators else None
    if keys or genesis is not None:
        return S.Trust(keys, genesis, True)
    sealer = client.head().get("sealer_pub") or ""
    return S.Trust([P.PublicKey(bytes.fromhex(sealer))] if sealer else [], None, False)


def show(args: argparse.Namespace) -> int:
    client = ChainClient(args.chain, token=audit.read_token(args.token, args.token_file),
                         ca_file=args.ca_file)
    trust = _trust(client, args)
    doc = S.timeline(client, args.device)
    people = client.participants()
    keys = {p["id"]: P.PublicKey(bytes.fromhex(p["pub"])) for p in people}
    names = {p["id"]: f"{p['name'] or '-'}, {p['role']}" for p in people}
    checked = S.check_all(client, doc, trust, keys)
    good = all(proof.ok and rule is None for proof, rule in checked)
    if args.format == "json":
        for ev, (proof, rule) in zip(doc["timeline"], checked, strict=True):
            ev.update(height=proof.height, index=proof.index, proof={
                "ok": proof.ok, "detail": proof.detail})
            if ev["kind"] == DV.DV_DETERMINE:
                ev["rule"] = {"ok": rule is None, "says": rule}
        print(json.dumps({**doc, "trusted": [k.id_hex for k in trust.keys],
                          "pinned": trust.pinned, "verified": good}))
        return 0 if good else 1
    print(S.header(doc))
    for ev, (proof, rule) in zip(doc["timeline"], checked, strict=True):
        print(S.line(ev, names, proof, rule))
    whose = ", ".join(k.id_hex for k in trust.keys) or "the genesis' validators"
    print(f"{sum(p.ok for p, _ in checked)} of {len(checked)} proofs verified against "
          f"{whose}" + ("" if trust.pinned else " (the chain's own sealer: pass --trust "
                                               "to pin it)"))
    return 0 if good else 1


# -- the transactions -------------------------------------------------------------------------------
def rule_cause(client: ChainClient, dev: bytes, fault: bytes) -> str:
    """What the chain's rule makes of the fault for this device, from its timeline."""
    doc = S.timeline(client, dev)
    f = P.parse(fault, schema=False).fields
    if f.get(3) != "fault":
        raise ConfigError(f"--fault names a {f.get(3)!r} transaction, not a fault report")
    return S.rule_of(doc["device"], doc["timeline"], int(f[4][3])).cause


def _body(s: Session, args: argparse.Namespace) -> tuple[str, dict[int, Any]]:
    """The kind and body of a transaction subcommand."""
    cmd = args.cmd
    if cmd == "register":
        return DV.DV_REGISTER, DV.register_body(args.device, DV.Nameplate(
            args.kind, args.manufacturer, args.model, args.serial, args.made,
            args.commissioned, args.rated_v, args.rated_a, args.rated_w, args.phases,
            args.warranty_s, args.maintain_s))
    if cmd == "status":
        return DV.DV_STATUS, DV.status_body(args.device, args.status, args.site, args.feeder,
                                            args.fog, args.note)
    if cmd == "maintain":
        return DV.DV_MAINTAIN, DV.maintain_body(args.device, args.what, args.result,
                                                args.detail, args.ticket)
    if cmd == "firmware":
        return DV.DV_FIRMWARE, DV.firmware_body(args.device, args.fw, args.hw, args.seen,
                                                args.birth)
    if cmd == "ticket":
        return DV.DV_TICKET, DV.ticket_body(args.device, args.op, args.reason, args.start,
                                            args.end)
    if cmd == "approve":
        return DV.DV_APPROVE, DV.approve_body(args.ticket, not args.reject, args.note)
    if cmd == "execute":
        return DV.DV_EXECUTE, DV.execute_body(args.ticket, args.result, args.detail)
    if cmd == "alarm":
        return DV.DV_ALARM, DV.alarm_body(args.device, args.op, args.observed, args.detail,
                                          args.who)
    fault = bytes.fromhex(s.client.tx(args.fault.hex())["tx"])
    cause = args.cause or rule_cause(s.client, args.device, fault)
    return DV.DV_DETERMINE, DV.determine_body(args.device, fault, cause, args.detail)


def _command(args: argparse.Namespace) -> int:
    if args.cmd == "show":
        return show(args)
    s = Session.of(args)
    kind, body = _body(s, args)
    r = s.send(kind, body)
    s.done(kind, r, {"cause": body[3]} if kind == DV.DV_DETERMINE else None)
    if kind == DV.DV_DETERMINE and not s.json:
        print(f"cause: {body[3]}")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m tools.trace_cli") -> int:
    """`trace DEVICE ...` is `trace show DEVICE ...`; the rest are subcommands."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    ap = parser(prog)
    if args_list and args_list[0] not in (*COMMANDS, "-h", "--help"):
        args_list = ["show", *args_list]
    args = ap.parse_args(args_list)
    return exit_status(f"{prog} {args.cmd}", lambda: _command(args))


if __name__ == "__main__":
    sys.exit(main())
