"""The market's clearing rules as pure integer functions (docs/PROTOCOL.md section 27): the
reputation (001 eq. 4), the matchable range (eq. 5), the match of a book with its
security check on the published network (s3.3), the final price and the competitive
equilibrium price (s3.2). No state and no clock: `app.market` feeds them the book.

Orders are `Quote`s; prices in mpt/kWh, quantities in Wh, reputations in ppm.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meterledger.wire.market import BUY, PPM, SELL

NEW_REPUTATION = PPM // 2  # 001 eq. 4 has no value for a participant without trades


@dataclass(frozen=True)
class Quote:
    """One participant's live order on one side of a cycle."""

    who: bytes
    side: str
    wh: int  # what is left of it
    price: int  # the bid's highest or the ask's lowest price
    fee_max: int  # the congestion fee per kWh it accepts on top of the price
    seq: int  # time priority: the chain's order of the orders
    reputation: int  # ppm
    green: int = 0  # 1: the energy with its green certificates (a green bid takes green asks)


@dataclass(frozen=True)
class Line:
    parent: str  # "" at the root
    capacity_w: int  # what it carries; over a cycle, capacity_w x cycle_s / 3600 Wh
    redispatch: int  # mpt/kWh: the congestion fee when it would carry more


@dataclass(frozen=True)
class Match:
    buyer: Quote
    seller: Quote
    wh: int
    fee: int  # the congestion fee, mpt/kWh: the sum over the congested lines of its path
    path: tuple[str, ...]


def reputation(good: int, done: int, bid: int, penalty: int = 0) -> int:
    """001 eq. 4 read as a mean of two ratios (SOURCES s2.4.1): R = 1/2 good/done +
    1/2 done/bid, in ppm, rounded down; 1/2 until a first trade; less the penalties of
    cycles left unmatched, never below 0."""
    if not 0 <= good <= done <= bid:
        raise ValueError(f"reputation counts out of order: good {good} done {done} bid {bid}")
    if done == 0:
        r = NEW_REPUTATION if bid == 0 else 0
    else:
        r = (PPM * good * bid + PPM * done * done) // (2 * done * bid)
    return max(0, r - penalty)


def matchable(n_opposite: int, rank: int, n_same: int) -> int:
    """001 eq. 5, lambda = round_half_up(N_opposite x (1 - p)), with p = (rank - 1) / n_same
    the participant's reputation-rank percentile (the best is 0): the best may be matched
    with the whole opposite list. At least 1, so the worst still reaches the best-priced
    counterparty (our decision: a range of 0 would exclude it for good)."""
    if not 1 <= rank <= n_same:
        raise ValueError(f"rank {rank} is not in 1..{n_same}")
    lam = (2 * n_opposite * (n_same - rank + 1) + n_same) // (2 * n_same)
    return max(1, lam) if n_opposite else 0


def ranked(quotes: Iterable[Quote]) -> dict[bytes, int]:
    """Each participant's rank (1 = best) among `quotes`: reputation descending, ties by time
    priority."""
    order = sorted(quotes, key=lambda q: (-q.reputation, q.seq))
    return {q.who: i for i, q in enumerate(order, 1)}


def price_sorted(quotes: Iterable[Quote]) -> list[Quote]:
    """Bids by price descending, asks ascending, ties by time priority (001 s4.1 step 3)."""
    return sorted(quotes, key=lambda q: (-q.price if q.side == BUY else q.price, q.seq))


def midpoint(bid: int, ask: int) -> int:
    """(bid + ask) / 2 rounded half up (it never exceeds the bid when ask <= bid)."""
    return (bid + ask + 1) // 2


def final_price(bid: int, ask: int, transmission: int, fee: int) -> int:
    """001 s3.3: P_F = P_T + (bid + ask) / 2, plus the congestion fee of the path."""
    return transmission + midpoint(bid, ask) + fee


def equilibrium_price(prices: Sequence[int], beta_milli: int, n: int) -> int | None:
    """001 s3.2: E_p over the last n prices with geometric weights w_(i+1) = beta w_i
    normalised to 1 (beta = beta_milli / 1000, > 1 favours recent trades); rounded half up;
    None without trades. Exact: the weights are the integers beta_milli^i 1000^(k-1-i)."""
    window = list(prices[-n:])
    k = len(window)
    if k == 0:
        return None
    weights = [beta_milli ** i * 1000 ** (k - 1 - i) for i in range(k)]
    num = sum(p * w for p, w in zip(window, weights, strict=True))
    den = sum(weights)
    return int((2 * num + den) // (2 * den))


def path(network: Mapping[str, Line], a: str, b: str) -> tuple[str, ...]:
    """The lines between two connection points of a radial network: up from each to their
    lowest common line (the common line itself carries nothing between them). Lines not in
    the network carry nothing (a participant connected to an unpublished line)."""
    def up(x: str) -> list[str]:
        out: list[str] = []
        while x in network and x not in out:
            out.append(x)
            x = network[x].parent
        return out
    ua, ub = up(a), up(b)
    common = set(ua) & set(ub)
    return tuple(sorted(x for x in (*ua, *ub) if x not in common))


def match_book(bids: Sequence[Quote], asks: Sequence[Quote], takers: Iterable[bytes] | None,
               line_of: Mapping[bytes, str], network: Mapping[str, Line],
               left: dict[str, int], congested: set[str], room: int) -> list[Match]:
    """Match a book: each taker's order (every bid of a call auction, the incoming order of a
    continuous market) against the opposite side in price priority, only within both
    parties' matchable ranges (positions in the price-sorted lists, eq. 5; a participant's
    rank is on each side apart) and only where ask <= bid (and a green bid only with a
    green ask); at most `room` matches (what the
    cycle may still hold); then the security check (`secure`). `left` (Wh each line may
    still carry this cycle) and `congested` are updated in place."""
    bids, asks = price_sorted(bids), price_sorted(asks)
    rank = {BUY: ranked(bids), SELL: ranked(asks)}

    def tag(q: Quote) -> bytes:
        return q.who + q.side.encode()

    lam = {tag(q): matchable(len(asks if q.side == BUY else bids), rank[q.side][q.who],
                             len(bids if q.side == BUY else asks))
           for q in (*bids, *asks)}
    pos = {tag(q): i for lst in (bids, asks) for i, q in enumerate(lst)}
    rest = {tag(q): q.wh for q in (*bids, *asks)}
    wanted = None if takers is None else set(takers)
    found: list[Match] = []
    for taker in (bids if wanted is None else (*bids, *asks)):
        if wanted is not None and taker.who not in wanted:
            continue
        others = asks if taker.side == BUY else bids
        tk = tag(taker)
        for other in others[:lam[tk]]:
            ok = tag(other)
            if rest[tk] == 0 or len(found) >= room:
                break
            b, s = (taker, other) if taker.side == BUY else (other, taker)
            if rest[ok] == 0 or pos[tk] >= lam[ok] or s.price > b.price or b.who == s.who \
                    or b.green > s.green:
                continue
            q = min(rest[tk], rest[ok])
            rest[tk] -= q
            rest[ok] -= q
            found.append(Match(b, s, q, 0, path(network, line_of.get(b.who, ""),
                                                line_of.get(s.who, ""))))
    return secure(found, network, left, congested)


def secure(found: Sequence[Match], network: Mapping[str, Line], left: dict[str, int],
           congested: set[str]) -> list[Match]:
    """The security check (001 s3.3): a line whose matched flow would exceed what it may
    still carry is congested and its redispatch cost is the fee of every match over it; a
    match whose fee is above the buyer's fee_max fails; then the congested lines'
    capacity goes to the matches in order of the fee the buyer accepts, highest first
    (it is curtailed least), then match order; a match curtailed to nothing fails."""
    flow: dict[str, int] = {}
    for m in found:
        for x in m.path:
            flow[x] = flow.get(x, 0) + m.wh
    congested.update(x for x, f in flow.items() if f > left[x])
    order = sorted(range(len(found)), key=lambda i: (-found[i].buyer.fee_max, i))
    kept: dict[int, Match] = {}
    for i in order:
        m = found[i]
        fee = sum(network[x].redispatch for x in m.path if x in congested)
        if fee > m.buyer.fee_max:
            continue
        q = min([m.wh, *(left[x] for x in m.path)])
        if q == 0:
            continue
        for x in m.path:
            left[x] -= q
        kept[i] = Match(m.buyer, m.seller, q, fee, m.path)
    return [kept[i] for i in sorted(kept)]
