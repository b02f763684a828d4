"""Market agents over the chain's HTTP API (docs/PROTOCOL.md section 27): a participant that
bids or asks each cycle from its meter's forecast, and the grid operator's duties (sign
every contract as its security check, close each cycle after its gate, settle it after its
delivery). `meterledger market agent` runs one; the market demo a community of them.

An agent acts only on what the chain says (its block time is the clock, its records the
state), so a restarted agent carries on where the chain is: it never holds state a restart
would lose. Each `step` does what is due and returns one line per action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meterledger.clients.chain import ChainClient, ChainRefused, Sender
from meterledger.wire import market as MK

Forecast = Callable[[int], int]  # a cycle's start -> the Wh the meter will export / import
CYCLES_KEPT = 8  # cycles an agent follows after ordering (signing, reviewing, settling)


def next_cycle(now: int, mp: dict[str, int]) -> int:
    """The first cycle whose gate is still ahead of the chain time `now`."""
    c = (now + mp["gate_s"]) // mp["cycle_s"] * mp["cycle_s"] + mp["cycle_s"]
    return c if c - mp["gate_s"] > now else c + mp["cycle_s"]


def market_params(client: ChainClient) -> dict[str, int]:
    params = client.params().get("market")
    if params is None:
        raise ChainRefused("application_disabled", "the chain has no market parameters")
    return {k: int(v) for k, v in params["effective"].items()}


def contracts(client: ChainClient, cycle: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        q = f"?after={after}" if after is not None else ""
        page = client.get(f"/v1/market/cycles/{cycle}/contracts{q}")
        out += page["contracts"]
        after = page.get("next")
        if after is None:
            return out


def _try(sender: Sender, kind: str, body: dict[int, Any], now: int, done: str) -> str:
    """Send; `done` when the chain took it, else what it said (another agent may have closed
    the cycle first, or the local clock runs ahead of the chain's)."""
    try:
        sender.send(kind, body, now)
    except ChainRefused as e:
        return f"{kind} {body} refused: {e.reason}"
    return done


@dataclass
class Trader:
    """A participant trading its meter's forecast: a seller asks `price` for what its PV
    will export, a buyer bids up to `price` (above the last cycle's floor) for what its
    household will import; it signs its contracts and reviews each delivered one."""

    sender: Sender
    side: str
    forecast: Forecast
    price: int
    fee_max: int = 0
    ordered: dict[int, int] = field(default_factory=dict)  # cycle -> Wh ordered
    reviewed: set[tuple[int, int]] = field(default_factory=set)

    @property
    def me(self) -> str:
        return self.sender.key.id_hex

    def step(self, now: int, mp: dict[str, int]) -> list[str]:
        said = self._order(now, mp)
        for cycle in sorted(self.ordered)[-CYCLES_KEPT:]:
            said += self._follow(cycle, now)
        return said

    def _order(self, now: int, mp: dict[str, int]) -> list[str]:
        cycle = next_cycle(now, mp)
        if cycle in self.ordered:
            return []
        wh = self.forecast(cycle)
        price = self.price
        if self.side == MK.BUY:
            floor = self.sender.client.get("/v1/market/floor").get("floor")
            if floor is not None and int(floor) >= price:
                self.ordered[cycle] = 0
                return [f"{self.me} sits out cycle {cycle}: the bid floor {floor} is at or "
                        f"above its limit {price}"]
        self.ordered[cycle] = wh
        if wh <= 0:
            return []
        try:
            self.sender.send(MK.MK_ORDER, MK.order_body(cycle, self.side, wh, price,
                                                        self.fee_max), now)
        except ChainRefused as e:
            return [f"{self.me} {self.side} {wh} Wh at {price} for cycle {cycle} refused: "
                    f"{e.reason}"]
        return [f"{self.me} {self.side}s {wh} Wh at {price} mpt/kWh for cycle {cycle}"]

    def _follow(self, cycle: int, now: int) -> list[str]:
        said = []
        for c in contracts(self.sender.client, cycle):
            mine = self.me in (c["buyer"], c["seller"])
            if not mine:
                continue
            bit = 1 if c["buyer"] == self.me else 2
            if c["state"] == "matched" and not int(c["signed"]) & bit and now < cycle:
                n = int(c["n"])
                said.append(_try(self.sender, MK.MK_SIGN, MK.sign_body(
                    cycle, n, MK.contract_terms(cycle, n, c)), now,
                    f"{self.me} signs contract {cycle}/{n}"))
            key = (cycle, int(c["n"]))
            if c["state"] == "settled" and int(c.get("delivered", 0)) and \
                    key not in self.reviewed:
                self.reviewed.add(key)
                good = int(c["delivered"]) == int(c["wh"])
                try:
                    self.sender.send(MK.MK_REVIEW, MK.review_body(cycle, key[1], good), now)
                except ChainRefused:
                    continue  # reviewed before a restart: the chain keeps one per party
                said.append(f"{self.me} reviews {cycle}/{c['n']}: {'good' if good else 'short'}")
        return said


@dataclass
class GridOperator:
    """The grid operator's duties: its signature on every matched contract (the security
    check passed when it was matched), each cycle closed after its gate and settled once
    delivered (the statements in, or settle_s after the delivery interval)."""

    sender: Sender
    cycles: set[int] = field(default_factory=set)

    def step(self, now: int, mp: dict[str, int]) -> list[str]:
        self.cycles.add(next_cycle(now, mp))
        said: list[str] = []
        for cycle in sorted(self.cycles):
            said += self._duties(cycle, now, mp)
        return said

    def _duties(self, cycle: int, now: int, mp: dict[str, int]) -> list[str]:
        rec = self.sender.client.get(f"/v1/market/cycles/{cycle}")
        said = []
        if now < cycle:
            for c in contracts(self.sender.client, cycle):
                if c["state"] == "matched" and not int(c["signed"]) & 4:
                    said.append(_try(self.sender, MK.MK_SIGN, MK.sign_body(
                        cycle, int(c["n"]), MK.contract_terms(cycle, int(c["n"]), c)), now, f"grid operator signs contract {cycle}/"
                                                  f"{c['n']}"))
        ready = rec["gate"] + (mp["reveal_s"] if rec["mode"] == "sealed" else 0)
        if rec["state"] == "open" and now >= ready:
            line = _try(self.sender, MK.MK_CLEAR, MK.cycle_body(cycle), now, "")
            rec = self.sender.client.get(f"/v1/market/cycles/{cycle}")
            said.append(line or f"cycle {cycle} closed: {rec['contracts']} contracts, CEP "
                                f"{rec.get('cep', '-')}")
        if rec["state"] == "closed" and now >= rec["delivery_end"]:
            try:
                self.sender.send(MK.MK_SETTLE, MK.cycle_body(cycle), now)
            except ChainRefused as e:
                if e.reason != "delivery_pending":
                    raise
                return said  # the statements are on their way
            said.append(f"cycle {cycle} settled")
        if rec["state"] == "settled" or (rec["state"] == "closed" and
                                         now >= rec["delivery_end"] + mp["settle_s"] + 1):
            self.cycles.discard(cycle)
        return said
