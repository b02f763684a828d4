"""The billing demo (tools/demo_billing.py, `make demo-billing`) on ten households: every
bill verifies offline and recomputes to the cent, the feeder that lost supply is
compensated from the fog's outage record, the demand-response event is carried out by the
fog and paid in points, two customers' redemptions are on their bills, and the outage is
traced to the transformer's poor maintenance with every record proven."""

from __future__ import annotations

from pathlib import Path

from tools import demo_billing as D


def test_the_billing_demo_bills_verifies_compensates_and_traces(tmp_path: Path) -> None:
    r = D.run(tmp_path, 10)
    assert len(r.verdicts) == 10
    assert all(v["exit"] == 0 and v["verified"] for v in r.verdicts), r.verdicts
    by_account = {b["account"]: b for b in r.bills.values()}
    for v in r.verdicts:  # each bundle's rerun is the bill's total, to the cent
        assert v["total"] == by_account[v["account"]]["total"]
    f1 = {n: b for n, b in r.bills.items() if n < "home-05"}
    assert len(f1) == 5
    for b in f1.values():
        [credit] = b["compensation"]
        assert credit["fault"] == r.outage["fault"] and credit["days"] == D.HISTORY_DAYS
        assert credit["wh"] > 0 and ["compensation", credit["wh"], 200_000,
                                     -credit["cents"]] in b["lines"]
    assert (r.outage["start"], r.outage["end"]) == D.OUTAGE
    # the DR members of f2 (home-05..09: six wanted, five there; the last opted out)
    assert sorted(x["meter"] for x in r.dr_reports) == sorted(
        b["meter"] for n, b in r.bills.items() if "home-05" <= n <= "home-08")
    assert all(int(x["paid"]) > 0 for x in r.dr_reports), r.dr_reports
    redeemed = [n for n, b in r.bills.items() if b["points"]]
    assert redeemed == ["home-05", "home-06"]
    assert all(["points", 50 * D.POINT, 1_000, -50] in r.bills[n]["lines"] for n in redeemed)
    assert r.trace_exit == 0
