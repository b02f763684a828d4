"""Bills computed per second (issue 19's benchmark): 10,000 customers over a month of
15-minute intervals under a three-period time-of-use tariff with a demand and a fixed
charge (meterledger.wire.billing.compute_bill, what the utility runs and a customer reruns).

    python -m tools.bench_billing [--customers N] [--days D] [--seed S]

Printed, from one run: bills per second; the time per bill against the baseline of only
summing each interval's import once (the least any bill of these intervals does); and the
whole run against a day, the time a monthly billing run could take. The intervals are made
outside the timing; a timing is printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from meterledger.infra.args import ArgumentParser
from meterledger.wire import billing as BL

START = 1_798_761_600  # 2027-01-01 00:00 UTC
# night, day and evening peak (China's local time: UTC+8), a demand and a fixed charge
TARIFF = BL.Tariff.of(BL.tariff_body("residential", 1, START,
                                     [(0, 30_000), (480, 56_000), (1080, 85_000)],
                                     demand_rate=2_500_000, fixed=1_000_000, tz_min=480))


def month(rng: random.Random, days: int) -> list[BL.Usage]:
    """A household's intervals: 50-400 Wh each, one in a hundred estimated."""
    return [BL.Usage(START + 900 * (i + 1), 900, rng.randrange(50, 400),
                     int(rng.random() < 0.01)) for i in range(days * 96)]


def run(customers: int, days: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    billing = baseline = 0.0
    total = 0
    for _ in range(customers):
        usage = month(rng, days)
        t0 = time.perf_counter()
        wh = sum(u.imp for u in usage)
        t1 = time.perf_counter()
        bill = BL.compute_bill(TARIFF, usage)
        t2 = time.perf_counter()
        baseline += t1 - t0
        billing += t2 - t1
        total += bill.total if wh >= 0 else 0  # both results used: nothing optimised away
    return {"customers": customers, "intervals": customers * days * 96, "billing_s": billing,
            "baseline_s": baseline, "bills_per_s": customers / billing,
            "ratio": billing / baseline, "of_a_day": billing / 86_400, "cents": total}


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m tools.bench_billing", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=10_000,
                    help="customers billed (default 10000)")
    ap.add_argument("--days", type=int, default=30, help="days in the period (default 30)")
    ap.add_argument("--seed", type=int, default=1, help="the intervals' random seed")
    args = ap.parse_args(argv)
    if args.customers < 1 or not 1 <= args.days <= 92:
        ap.error("--customers must be at least 1 and --days 1 to 92")
    r = run(args.customers, args.days, args.seed)
    print(f"bills: {r['customers']:,} customers x {args.days} days of 15-minute intervals "
          f"({r['intervals']:,} intervals)")
    print(f"  computed in {r['billing_s']:.2f} s: {r['bills_per_s']:,.0f} bills/s, "
          f"{r['intervals'] / r['billing_s']:,.0f} intervals/s on one core")
    print(f"  {r['ratio']:.1f} x the baseline of summing each interval once "
          f"({r['baseline_s']:.2f} s)")
    print(f"  the whole run is {r['of_a_day']:.5f} of a day")
    return 0


if __name__ == "__main__":
    sys.exit(main())
