"""The reads of `meterledger market` (meterledger.market_cli): the chain API's market answers
as text (or, with --json, as the API gave them)."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.errors import ConfigError

_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
_SIGNED = ((1, "buyer"), (2, "seller"), (4, "grid"))  # a contract's signature bits
UPT = 10**6  # micro-points in a point


def pid_arg(text: str) -> str:
    """An argparse type: a participant id, 16 hex characters (lowercased)."""
    if not _HEX16.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a participant id (16 hex "
                                         "characters)")
    return text.lower()


def when(t: int | None) -> str:
    """A unix time with its UTC date, or "-"."""
    if t is None:
        return "-"
    return f"{t} ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))})"


def points(upt: int) -> str:
    return f"{upt // UPT}.{upt % UPT:06d} points ({upt} upt)"


def _value(v: Any) -> str:
    return "-" if v is None else str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(header), *[[_value(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _next(doc: dict[str, Any]) -> None:
    if doc.get("next") is not None:
        print(f"more: --after {doc['next']}")


def _whose(key: P.SigningKey | None, args: argparse.Namespace) -> str:
    if args.participant is not None:
        return str(args.participant)
    if key is None:
        raise ConfigError("whose? give --participant ID or --key FILE")
    return key.id_hex


def _json(doc: Any) -> int:
    print(json.dumps(doc))
    return 0


def show_access(doc: dict[str, Any]) -> None:
    dec = doc["decision"]
    if dec is None:
        print(f"{doc['participant']} never applied for grid access")
    elif dec["granted"]:
        print(f"access granted until {when(dec['until'])}")
    else:
        print(f"access refused: {', '.join(dec['reasons'])}")
    if dec is not None:
        print(f"decided at {when(dec['t'])}; stated: "
              + (", ".join(f"{k} {v}" for k, v in dec["attributes"].items()) or "nothing"))
    if not doc["enrolled"]:
        print("not enrolled in the market (the grid operator enrols a metering point)")


def access(client: ChainClient, key: P.SigningKey | None, args: argparse.Namespace) -> int:
    doc = client.market_access(_whose(key, args))
    if args.json:
        return _json(doc)
    show_access(doc)
    return 0


def account(client: ChainClient, key: P.SigningKey | None, args: argparse.Namespace) -> int:
    doc = client.market_account(_whose(key, args))
    if args.json:
        return _json(doc)
    rep = doc["reputation"]
    print(f"participant {doc['participant']}")
    for name in ("balance", "held", "owed"):
        print(f"{name:<8}{points(doc[name])}")
    print(f"reputation {rep['ppm'] / 10_000:.4f} % ({rep['ppm']} ppm): {rep['bid']} bid, "
          f"{rep['done']} done, {rep['good']} good, penalty {rep['penalty']} ppm")
    return 0


def network(client: ChainClient, key: P.SigningKey | None, args: argparse.Namespace) -> int:
    doc = client.market_network()
    if args.json:
        return _json(doc)
    print(f"grid operator {_value(doc['operator'])}")
    net = doc["network"]
    if net is None:
        print("no network published")
        return 0
    print(f"network version {net['version']}, {len(net['lines'])} lines")
    _table(("line", "parent", "capacity_w", "redispatch"),
           [(lid, parent or "(root)", cap, cost) for lid, parent, cap, cost in net["lines"]])
    return 0


def cycle(client: ChainClient, key: P.SigningKey | None, args: argparse.Namespace) -> int:
    doc = client.market_cycle(args.cycle)
    floor = client.market_floor()
    if args.json:
        return _json({**doc, "floor": floor})
    print(f"cycle {when(doc['cycle'])}: {doc['state']} ({doc['mode']} market)")
    print(f"gate {when(doc['gate'])}")
    if doc["reveal_until"] is not None:
        print(f"reveal until {when(doc['reveal_until'])}")
    print(f"delivery until {when(doc['delivery_end'])}")
    print(f"contracts {doc['contracts']}")
    if doc["state"] != "open":
        print(f"CEP {_value(doc.get('cep'))} mpt/kWh; lowest price {_value(doc.get('low'))} "
              f"mpt/kWh; unmatched {_value(doc.get('unmatched'))}")
    if floor["cycle"] is not None:
        print(f"bid floor {floor['floor']} mpt/kWh (cycle {floor['cycle']})")
    return 0


def book(client: ChainClient, key: P.SigningKey | None, args: argparse.Namespace) -> int:
    doc = client.market_book(args.cycle, args.side, args.after, args.limit)
    sealed = doc["mode"] == "sealed"
    commits = client.market_commitments(args.cycle) if sealed and args.after is None else None
    if args.json:
        return _json(doc if commits is None else {**doc, "commitments": commits})
    print(f"cycle {args.cycle} ({doc['mode']} market): {len(doc['orders'])} orders")
    _table(("side", "participant", "left_wh", "wh", "price", "fee_max", "seq", "quotes",
            "green"),
           [(o["side"], o["participant"], o["left"], o["wh"], o["price"], o["fee_max"],
             o["seq"], o["quotes"], "yes" if o.get("green") else "-") for o in doc["orders"]])
    _next(doc)
    if commits is not None:
        listed = commits["commitments"]
        print(f"{len(listed)} commitments{' (more)' if commits['next'] else ''}, "
              f"{sum(c['revealed'] for c in listed)} revealed")
    return 0


def contracts(client: ChainClient, key: P.SigningKey | None,
              args: argparse.Namespace) -> int:
    doc = client.market_contracts(args.cycle, args.after, args.limit)
    if args.json:
        return _json(doc)
    print(f"cycle {args.cycle}: {len(doc['contracts'])} contracts")
    _table(("n", "state", "wh", "bid", "ask", "pf", "buyer", "seller", "signed", "delivered"),
           [(c["n"], c["state"], c["wh"], c["bid"], c["ask"], c["pf"], c["buyer"], c["seller"],
             "+".join(n for bit, n in _SIGNED if c["signed"] & bit) or "-", c.get("delivered"))
            for c in doc["contracts"]])
    _next(doc)
    return 0


Read = Callable[[ChainClient, P.SigningKey | None, argparse.Namespace], int]
READS: dict[str, Read] = {"access": access, "account": account, "network": network,
                          "cycle": cycle, "book": book, "contracts": contracts}
