"""The market's clearing rules as pure functions (docs/PROTOCOL.md section 27): the paper's
Table 2 example, reputation (eq. 4), the matchable range (eq. 5), the CEP (s3.2), the final
price and the security check on a congested line (s3.3)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.chain.app import auction as AU
from meterledger.wire.market import BUY, SELL


def q(name: str, side: str, price: int, rep: int, wh: int = 1000, fee_max: int = 0,
      seq: int = 0) -> AU.Quote:
    return AU.Quote(name.encode().ljust(8, b"_"), side, wh, price, fee_max, seq, rep)


def who(m: AU.Match) -> tuple[str, str, int]:
    return (m.buyer.who.rstrip(b"_").decode(), m.seller.who.rstrip(b"_").decode(), m.wh)


# 001 Table 2, and the reputation order that gives Table 3's range sizes 3/2/1 (SOURCES
# s2.4.4: the paper's rank labels are permuted against its own eq. 5)
TABLE2_BIDS = [q("U1", BUY, 97, 600_000, seq=0), q("U2", BUY, 100, 900_000, seq=1),
               q("U3", BUY, 95, 300_000, seq=2)]
TABLE2_ASKS = [q("D1", SELL, 100, 300_000, seq=3), q("D2", SELL, 90, 900_000, seq=4),
               q("D3", SELL, 97, 600_000, seq=5)]


def clear(bids: list[AU.Quote], asks: list[AU.Quote],
          net: dict[str, AU.Line] | None = None, line_of: dict[bytes, str] | None = None,
          left: dict[str, int] | None = None) -> tuple[list[AU.Match], set[str]]:
    congested: set[str] = set()
    found = AU.match_book(bids, asks, None, line_of or {}, net or {}, left or {}, congested,
                          1_000)
    return found, congested


def test_table_2_clears_two_trades_and_leaves_u3_and_d1_unmatched() -> None:
    found, _ = clear(TABLE2_BIDS, TABLE2_ASKS)
    assert [who(m) for m in found] == [("U2", "D2", 1000), ("U1", "D3", 1000)]
    assert [AU.midpoint(m.buyer.price, m.seller.price) for m in found] == [95, 97]
    # P_F = P_T + (bid + ask) / 2 with P_T = C1 + C2 + C3 = 5 + 1 + 1
    assert [AU.final_price(m.buyer.price, m.seller.price, 7, m.fee) for m in found] == [102, 104]


def test_table_3_range_sizes_and_where_the_paper_cannot_be_reproduced() -> None:
    ranks = AU.ranked(TABLE2_BIDS)
    assert [AU.matchable(3, ranks[b.who], 3) for b in TABLE2_BIDS] == [2, 3, 1]  # U1 U2 U3
    asks = AU.price_sorted(TABLE2_ASKS)
    assert [a.who[:2] for a in asks] == [b"D2", b"D3", b"D1"]
    # the paper's D3 row lists U1 and U3, but U3's 95 is below D3's 97: the price-feasible
    # buyers of D3 are U2 and U1 (docs/PROTOCOL.md section 27)
    d3 = TABLE2_ASKS[2]
    assert [b.who[:2] for b in AU.price_sorted(TABLE2_BIDS) if b.price >= d3.price] == \
        [b"U2", b"U1"]
    # and the printed rank labels (U1 top 60%, U3 top 30%) give U1 a range of 1, not 2
    assert round(3 * (1 - 0.6)) == 1


def test_a_participant_is_matched_only_within_both_matchable_ranges() -> None:
    # U3 (worst buyer) may reach only the first ask; D1 (worst seller) only the first bid
    bids = [q("U1", BUY, 120, 900_000, seq=0), q("U3", BUY, 110, 100_000, seq=1)]
    asks = [q("D2", SELL, 90, 900_000, seq=2), q("D1", SELL, 95, 100_000, seq=3)]
    found, _ = clear(bids, asks)
    assert [who(m) for m in found] == [("U1", "D2", 1000)]  # U3-D1: out of both ranges


def test_reputation_is_the_mean_of_review_and_completion_rates() -> None:
    assert AU.reputation(0, 0, 0) == 500_000
    assert AU.reputation(8, 10, 20) == 650_000  # SOURCES s2.4.1's example
    assert AU.reputation(8, 10, 20, penalty=700_000) == 0
    assert AU.reputation(0, 0, 3) == 0
    with pytest.raises(ValueError):
        AU.reputation(3, 2, 5)


@given(st.integers(1, 200), st.integers(1, 200), st.data())
def test_matchable_range_is_eq_5_rounded_half_up(n_opp: int, n_same: int,
                                                 data: st.DataObject) -> None:
    rank = data.draw(st.integers(1, n_same))
    exact = Fraction(n_opp) * (1 - Fraction(rank - 1, n_same))
    want = max(1, int(exact + Fraction(1, 2)))
    assert AU.matchable(n_opp, rank, n_same) == want


def test_cep_weights_recent_trades_geometrically() -> None:
    assert AU.equilibrium_price([95, 97], 2000, 10) == 96  # 96.33: SOURCES s2.5
    assert AU.equilibrium_price([100, 200], 1000, 10) == 150
    assert AU.equilibrium_price([1, 100, 200], 1000, 2) == 150  # the last n only
    assert AU.equilibrium_price([], 1500, 10) is None


NET = {"root": AU.Line("", 10**9, 0), "f1": AU.Line("root", 10**9, 40),
       "f2": AU.Line("root", 4_000, 30)}


def test_a_congested_line_costs_its_fee_and_curtails_the_lowest_fee_payer_first() -> None:
    bids = [q("B1", BUY, 120, 500_000, wh=3000, fee_max=10, seq=0),
            q("B2", BUY, 110, 500_000, wh=3000, fee_max=50, seq=1)]
    asks = [q("S1", SELL, 90, 500_000, wh=6000, seq=2)]
    line_of = {b"B1______": "f1", b"B2______": "f1", b"S1______": "f2"}
    left = {"root": 10**9, "f1": 10**9, "f2": 4000}
    found, congested = clear(bids, asks, NET, line_of, left)
    assert congested == {"f2"}
    # f2 would carry 6,000 Wh of 4,000: its fee 30 is above B1's fee_max, so B1's match
    # fails and B2, who accepts it, gets its 3,000 Wh
    assert [(who(m), m.fee, m.path) for m in found] == [(("B2", "S1", 3000), 30, ("f1", "f2"))]
    assert left["f2"] == 1000


def test_curtailment_gives_the_highest_fee_payer_its_quantity_first() -> None:
    bids = [q("B1", BUY, 120, 500_000, wh=3000, fee_max=40, seq=0),
            q("B2", BUY, 110, 500_000, wh=3000, fee_max=90, seq=1)]
    asks = [q("S1", SELL, 90, 500_000, wh=6000, seq=2)]
    line_of = {b"B1______": "f1", b"B2______": "f1", b"S1______": "f2"}
    found, _ = clear(bids, asks, NET, line_of, {"root": 10**9, "f1": 10**9, "f2": 4000})
    assert [(who(m), m.fee) for m in found] == [(("B1", "S1", 1000), 30), (("B2", "S1", 3000), 30)]


def test_a_participant_on_both_sides_is_ranked_on_each_side_apart() -> None:
    # X bids and asks; it is the last of three sellers but there are only two bids: its
    # rank among the sellers never stands for its rank among the buyers
    bids = [q("X", BUY, 100, 900_000, seq=0), q("Y", BUY, 90, 100_000, seq=1)]
    asks = [q("A", SELL, 80, 800_000, seq=2), q("B", SELL, 85, 700_000, seq=3),
            q("X", SELL, 120, 100_000, seq=4)]
    found, _ = clear(bids, asks)  # (its ask's rank 3 as a bid's rank: out of 1..2, a crash)
    # Y (2nd of 2 bids: range 2) reaches B, but B (2nd of 3 asks: range 1) only X
    assert [who(m) for m in found] == [("X", "A", 1000)]
    congested: set[str] = set()
    assert AU.match_book(bids, asks, None, {}, {}, {}, congested, 0) == []  # no room left


def test_path_runs_up_to_the_common_line_only() -> None:
    assert AU.path(NET, "f1", "f2") == ("f1", "f2")
    assert AU.path(NET, "f1", "f1") == ()
    assert AU.path(NET, "f1", "nowhere") == ("f1", "root")


def test_a_green_bid_matches_only_green_asks() -> None:
    plain = AU.Quote(b"s" * 8, SELL, 1_000, 80, 0, 0, 500_000)
    green = AU.Quote(b"g" * 8, SELL, 1_000, 90, 0, 1, 500_000, green=1)
    bid = AU.Quote(b"b" * 8, BUY, 500, 100, 0, 2, 500_000, green=1)
    net = {"root": AU.Line("", 10**9, 0)}
    lines = {q.who: "root" for q in (plain, green, bid)}

    def book(asks: list[AU.Quote]) -> list[tuple[bytes, int]]:
        found = AU.match_book([bid], asks, None, lines, net, {"root": 10**9}, set(), 10)
        return [(m.seller.who, m.wh) for m in found]

    assert book([plain]) == []
    assert book([plain, green]) == [(b"g" * 8, 500)]
    # a plain bid takes the cheaper ask, green or not
    plain_bid = AU.Quote(b"b" * 8, BUY, 500, 100, 0, 2, 500_000)
    assert [m.seller.who for m in AU.match_book([plain_bid], [green, plain], None, lines, net,
                                                {"root": 10**9}, set(), 10)] == [b"s" * 8]
