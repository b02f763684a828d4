"""`meterledger market agent`: a participant's (or the grid operator's) agent that trades each
cycle on its own (docs/PROTOCOL.md section 27; meterledger.clients.market_agent).

    meterledger market agent --chain URL --key FILE --side sell --price 380
                             [--default-wh 1000] [--fee-max 0] [--sim-clock PATH]
                             [--cycles N] [--period-s 2]
    meterledger market agent --chain URL --key FILE --operator

A trader's forecast is its meter's: what the chain's delivery record of it says it exported
(a seller) or imported (a buyer) in the last cycle the fog has stated, else --default-wh; it
orders that much for the next cycle whose gate is ahead, signs its contracts, and reviews
each delivered one. --operator runs the grid operator's duties instead: its signature on
every contract, each cycle closed at its gate and settled after delivery. Time is the wall
clock, or a fog's simulated clock (--sim-clock). It runs until --cycles cycles were ordered
(0: until Ctrl-C); each action is one line.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterledger.clients.chain import ChainClient, ChainRefused, Sender
from meterledger.clients.market_agent import (
    GridOperator,
    Trader,
    market_params,
)
from meterledger.infra import simclock
from meterledger.wire import market as MK

LOOKBACK = 4  # cycles back the forecast looks for the newest stated one


def add_parser(sub: Any, chain_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("agent", help="trade every cycle from the meter's forecast (or run the "
                                     "grid operator's duties with --operator)")
    chain_flags(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--side", choices=MK.SIDES, help="what the participant does each cycle")
    g.add_argument("--operator", action="store_true",
                   help="the grid operator's duties: sign, close and settle every cycle")
    p.add_argument("--price", type=int, default=0,
                   help="a seller's ask or a buyer's highest bid, mpt/kWh (a trader's)")
    p.add_argument("--fee-max", type=int, default=0,
                   help="the congestion fee a buyer accepts on top, mpt/kWh (default 0)")
    p.add_argument("--default-wh", type=int, default=1_000,
                   help="the forecast before the meter has a stated cycle, Wh (default 1000)")
    p.add_argument("--sim-clock", type=Path, metavar="PATH",
                   help="run on a fog's simulated clock (its sim-clock.json or data dir)")
    p.add_argument("--cycles", type=int, default=0,
                   help="stop after ordering for this many cycles (default 0: never)")
    p.add_argument("--period-s", type=float, default=2.0,
                   help="seconds between two looks at the chain (default 2)")


def meter_forecast(client: ChainClient, pid: str, side: str, cycle_s: int,
                   default: int) -> Callable[[int], int]:
    """A persistence forecast from the chain: the newest stated cycle before `cycle`'s
    export (a seller) or import (a buyer), in 100 Wh; `default` before any."""
    what = "exp" if side == MK.SELL else "imp"

    def forecast(cycle: int) -> int:
        for back in range(1, LOOKBACK + 1):
            doc = client.get(f"/v1/market/deliveries/{pid}/{cycle - back * cycle_s}")
            rec = doc.get("delivery")
            if rec and int(rec["dur"]) >= cycle_s:
                return int(rec[what]) // 100 * 100
        return default
    return forecast


def run(client: ChainClient, sender: Sender, args: argparse.Namespace) -> int:
    """Step the agent every --period-s until --cycles cycles were ordered."""
    if args.side is not None and not 0 < args.price <= MK.PRICE_MAX:
        raise ValueError(f"--price must be 1 to {MK.PRICE_MAX} mpt/kWh for a trader")
    if args.period_s <= 0 or args.cycles < 0 or args.default_wh < 0:
        raise ValueError("--period-s must be above 0, --cycles and --default-wh at least 0")
    clock = (simclock.read(args.sim_clock).clock(time.time) if args.sim_clock is not None
             else time.time)
    mp = market_params(client)
    agent: Trader | GridOperator
    if args.operator:
        agent = GridOperator(sender)
    else:
        agent = Trader(sender, args.side, meter_forecast(
            client, sender.key.id_hex, args.side, mp["cycle_s"], args.default_wh),
            args.price, args.fee_max)
    while True:
        try:
            mp = market_params(client)  # the grid operator may have set a new version
            lines = agent.step(int(clock()), mp)
        except ChainRefused as e:  # this step's; the next one looks again
            lines = [f"refused: {e.reason}: {e.detail}"]
        for line in lines:
            print(line, flush=True)
        if args.cycles and isinstance(agent, Trader) and len(agent.ordered) >= args.cycles:
            return 0
        time.sleep(args.period_s)
