"""The P2P market on the chain (docs/PROTOCOL.md section 27), measured in one run.

    python -m tools.bench_market [--participants 1000] [--http-participants 200]
                                 [--no-consortium]

1. Orders matched per second, against the ceiling of verifying their signatures on one
   core. A community of `participants` (half sellers admitted to the grid, half buyers, all
   enrolled, one network line) trades one continuous-market cycle: every participant places
   one order (asks 300-399 mpt/kWh, bids 350-449, 1 kWh each; signed before the clock
   starts), matched as it is committed. In-process: a real embedded ledger on SQLite, the
   orders submitted one after the other. Over HTTP (`--http-participants`): the embedded
   backend (`python -m aggregator run`) and the four-validator consortium (CometBFT) of
   tools.bench_consortium, eight participants' threads submitting at once (each its own
   orders in nonce order), POST /v1/tx answering once the order is in a block. The
   ceiling: parsing and verifying the same orders' signatures, one after the other.
2. Clearing and settlement time per cycle, against the cycle's 900 s: the in-process chain
   clears a sealed call of `participants` (each commits and reveals one order; mk_clear
   matches the book) and settles a continuous cycle of `participants` / 2 contracts (all
   three-signed, the sellers' export stated by a fog in anchors; one mk_settle).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aggregator.chain.app import market as M
from aggregator.chain.backends.embedded import EmbeddedLedger, create_genesis
from aggregator.chain.store import SQLiteBlockStore
from meterledger import wire as P
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tools.bench_certificates import IVL, OPERATOR, BenchFog
from tools.bench_consortium import consortium, embedded
from tools.bench_consortium_load import Backend, Client

CYCLE_BUDGET_S = 900
WH = 1_000
SALT = b"\x5a" * 32


class Community:
    """Keys and pre-signed transactions of a market community on chain `chain` (whose
    dispatch key `grid` is the grid operator), trading cycle `cycle`."""

    def __init__(self, n: int, grid: P.SigningKey, grid_nonce: int, fog: P.SigningKey,
                 meters: list[bytes], cycle: int, t: int) -> None:
        self.grid, self.chain, self.cycle, self.t = grid, grid.id, cycle, t
        self.regulator = P.SigningKey.from_int(0x7E6)
        self.fog = fog
        self.sellers = [P.SigningKey.from_int(0x10_0000 + i) for i in range(n // 2)]
        self.buyers = [P.SigningKey.from_int(0x20_0000 + i) for i in range(n - n // 2)]
        self.meters = meters  # the sellers' (stated by the fog); the buyers' are made up
        self.nonce = grid_nonce
        rng = random.Random(7)
        self.asks = [rng.randrange(300, 400) for _ in self.sellers]
        self.bids = [rng.randrange(350, 450) for _ in self.buyers]

    def tx(self, key: P.SigningKey, nonce: int, kind: str, body: dict[int, Any]) -> bytes:
        return P.sign1(key, C.tx(key.id, nonce, kind, body, self.t, self.chain), check=False)

    def by_grid(self, kind: str, body: dict[int, Any]) -> bytes:
        self.nonce += 1
        return self.tx(self.grid, self.nonce, kind, body)

    def setup(self, mode: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """The grid operator's transactions (registrations, market params, the network,
        enrolments), the regulator's params, the sellers' access requests."""
        grid = [self.by_grid(C.REGISTER, C.register_body(role, k.public_key.raw, role))
                for role, k in (("regulator", self.regulator), ("fog", self.fog),
                                *(("market", k) for k in (*self.sellers, *self.buyers)))]
        grid.append(self.by_grid(GC.PARAMS, GC.params_body("market", 1, {
            "mode": mode, "gate_s": 300, "horizon_s": 7 * 86_400, "settle_s": 0})))
        grid.append(self.by_grid(MK.MK_NETWORK, MK.network_body(1, [("root", "", 10**9, 0)])))
        buyer_meters = [(0xB0_0000 + i).to_bytes(8, "big") for i in range(len(self.buyers))]
        for k, m in zip((*self.sellers, *self.buyers), (*self.meters, *buyer_meters),
                        strict=True):
            grid.append(self.by_grid(MK.MK_ENROLL, MK.enroll_body(k.id, self.fog.id, m, "root")))
        reg = [self.tx(self.regulator, 1, GC.PARAMS, GC.params_body("access", 1, {}))]
        access = [self.tx(k, 1, MK.MK_ACCESS, {1: "pv", 2: "clean", 3: 5_000, 4: 400, 5: 2,
                                                6: 400}) for k in self.sellers]
        return grid, reg, access

    def orders(self) -> list[bytes]:
        """One order each, buyers and sellers interleaved (sellers' nonce 2: after access)."""
        out = []
        for i in range(max(len(self.sellers), len(self.buyers))):
            if i < len(self.sellers):
                out.append(self.tx(self.sellers[i], 2, MK.MK_ORDER, MK.order_body(
                    self.cycle, MK.SELL, WH, self.asks[i])))
            if i < len(self.buyers):
                out.append(self.tx(self.buyers[i], 1, MK.MK_ORDER, MK.order_body(
                    self.cycle, MK.BUY, WH, self.bids[i])))
        return out

    def sealed(self) -> tuple[list[bytes], list[bytes]]:
        """Commitments and reveals of the same orders."""
        commits, reveals = [], []
        quotes = [(k, MK.SELL, p, 2) for k, p in zip(self.sellers, self.asks, strict=True)] + \
            [(k, MK.BUY, p, 1) for k, p in zip(self.buyers, self.bids, strict=True)]
        for k, side, price, nonce in quotes:
            d = MK.commit_digest(k.id, self.cycle, side, WH, price, 0, SALT)
            commits.append(self.tx(k, nonce, MK.MK_COMMIT, MK.commit_body(self.cycle, d)))
            reveals.append(self.tx(k, nonce + 1, MK.MK_REVEAL, MK.reveal_body(
                self.cycle, side, WH, price, 0, SALT)))
        return commits, reveals


def verify_ceiling(txs: list[bytes], keys: dict[bytes, P.PublicKey]) -> float:
    """Transactions whose signature one core parses and verifies per second."""
    start = time.perf_counter()
    for raw in txs:
        m = P.parse(raw)
        P.verify_message(m, keys[m.kid])
    return len(txs) / (time.perf_counter() - start)


class InProcess:
    """A real embedded ledger on SQLite whose clock the bench sets."""

    def __init__(self, path: Path, n: int, mode: int, cycle: int) -> None:
        self.now = cycle - 3_600
        self.ticks = 0
        self.store = SQLiteBlockStore(path)
        create_genesis(self.store, OPERATOR, self.now)
        self.ledger = EmbeddedLedger(self.store, OPERATOR, lambda: float(self.now))
        self.fog = BenchFog(0, n // 2)
        self.c = Community(n, OPERATOR, 1, self.fog.key, self.fog.meters, cycle, self.now)
        grid, reg, access = self.c.setup(mode)
        self.submit_all([*grid, *reg, *access])

    def submit_all(self, txs: list[bytes]) -> float:
        start = time.perf_counter()
        for raw in txs:
            self.ledger.submit(raw)
        return time.perf_counter() - start

    def at(self, t: int) -> None:
        """A block at t (the notaries' parameters again): the next transactions' time."""
        self.now = t
        self.ticks += 1
        self.ledger.submit(self.c.by_grid(GC.PARAMS, GC.params_body("notaries", self.ticks, {})))

    def cycle(self) -> dict[str, Any]:
        return dict(self.store.record(M.T_CYCLE, M.u64(self.c.cycle)) or {"contracts": 0})

    def close(self) -> None:
        self.ledger.close()
        self.store.close()


def in_process(root: Path, n: int, cycle: int) -> dict[str, float]:
    """Continuous orders matched, then the cycle cleared, signed, stated and settled; and a
    sealed call of the same community cleared."""
    out: dict[str, float] = {}
    chain = InProcess(root / "continuous.db", n, MK.CONTINUOUS, cycle)
    try:
        orders = chain.c.orders()
        out["orders"] = len(orders)
        out["orders_per_s"] = len(orders) / chain.submit_all(orders)
        keys = {k.id: k.public_key for k in (*chain.c.sellers, *chain.c.buyers)}
        out["verify_per_s"] = verify_ceiling(orders, keys)
        out["contracts"] = chain.cycle()["contracts"]
        signs = []
        nonce = {k.id: (2 if k in chain.c.buyers else 3) for k in (*chain.c.sellers,
                                                                   *chain.c.buyers)}
        parties = {k.id: k for k in (*chain.c.sellers, *chain.c.buyers)}
        for i in range(int(out["contracts"])):
            c = chain.store.record(M.T_CONTRACT, M.u64(cycle) + i.to_bytes(4, "big"))
            terms = MK.contract_terms(cycle, i, c)
            for pid in (c["buyer"], c["seller"]):
                signs.append(chain.c.tx(parties[pid], nonce[pid], MK.MK_SIGN,
                                        MK.sign_body(cycle, i, terms)))
                nonce[pid] += 1
            signs.append(chain.c.by_grid(MK.MK_SIGN, MK.sign_body(cycle, i, terms)))
        chain.submit_all(signs)
        chain.at(cycle - 300)
        chain.submit_all([chain.c.by_grid(MK.MK_CLEAR, MK.cycle_body(cycle))])
        chain.fog.readings(cycle)
        chain.fog.close(cycle + IVL, WH)
        chain.submit_all(chain.fog.done().with_statements)
        chain.at(cycle + IVL)
        out["settle_s"] = chain.submit_all([chain.c.by_grid(MK.MK_SETTLE, MK.cycle_body(cycle))])
        out["settled"] = chain.cycle()["state"] == M.SETTLED
    finally:
        chain.close()
    sealed = InProcess(root / "sealed.db", n, MK.SEALED, cycle)
    try:
        commits, reveals = sealed.c.sealed()
        sealed.submit_all(commits)
        sealed.at(cycle - 300)
        sealed.submit_all(reveals)
        sealed.at(cycle - 300 + 120)
        out["clear_s"] = sealed.submit_all([sealed.c.by_grid(MK.MK_CLEAR, MK.cycle_body(cycle))])
        out["sealed_contracts"] = sealed.cycle()["contracts"]
    finally:
        sealed.close()
    return out


def over_http(backend: Backend, n: int) -> dict[str, float]:
    """The orders of a community of n over the backend's API, eight threads at once."""
    now = int(time.time())
    cycle = now - now % IVL + 2 * IVL  # its gate at least 10 minutes away
    fog = P.SigningKey.from_int(0xF0_0001)
    meters = [(0xA1_0000 + i).to_bytes(8, "big") for i in range(n // 2)]
    c = Community(n, backend.key, backend.nonce, fog, meters, cycle, now)
    grid, reg, access = c.setup(MK.CONTINUOUS)
    backend.register(grid)
    _post(backend.urls, [[raw] for raw in reg])
    _post(backend.urls, [[raw] for raw in access])
    orders = c.orders()
    lanes = [orders[i::8] for i in range(8)]
    latencies = _post(backend.urls, lanes)
    status, doc = Client(backend.urls[0]).request("GET", f"/v1/market/cycles/{cycle}")
    return {"orders": len(orders), "orders_per_s": len(orders) / latencies[-1],
            "median_ms": 1000 * statistics.median(latencies[:-1]),
            "contracts": doc.get("contracts", -1) if status == 200 else -1}


def _post(urls: list[str], lanes: list[list[bytes]]) -> list[float]:
    """Each lane's transactions in order from its own thread (lane i to urls[i % len]);
    every answer's latency, and last the wall time of it all."""
    def lane(i: int) -> list[float]:
        client, out = Client(urls[i % len(urls)]), []
        try:
            for raw in lanes[i]:
                t = time.perf_counter()
                status, doc = client.request("POST", "/v1/tx", raw)
                if status != 200:
                    raise SystemExit(f"a market transaction was refused: {status} {doc}")
                out.append(time.perf_counter() - t)
        finally:
            client.close()
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, len(lanes))) as pool:
        lat = [x for got in pool.map(lane, range(len(lanes))) for x in got]
    return [*lat, time.perf_counter() - start]


def report(local: dict[str, float], http: dict[str, dict[str, float]]) -> None:
    print(f"in-process embedded (SQLite), {int(local['orders'])} orders, "
          f"{int(local['contracts'])} contracts:")
    print(f"  orders matched       {local['orders_per_s']:9.0f} /s")
    print(f"  signature ceiling    {local['verify_per_s']:9.0f} /s (one core)")
    print(f"  ratio                {local['orders_per_s'] / local['verify_per_s']:9.3f}")
    print(f"  sealed call cleared  {local['clear_s']:9.3f} s for {int(local['orders'])} "
          f"participants ({int(local['sealed_contracts'])} contracts): "
          f"{local['clear_s'] / CYCLE_BUDGET_S:.5f} of a {CYCLE_BUDGET_S} s cycle")
    print(f"  cycle settled        {local['settle_s']:9.3f} s for {int(local['contracts'])} "
          f"contracts: {local['settle_s'] / CYCLE_BUDGET_S:.5f} of a cycle")
    for name, r in http.items():
        print(f"over HTTP, {name}: {int(r['orders'])} orders, {int(r['contracts'])} contracts, "
              f"{r['orders_per_s']:.0f} orders/s (median answer {r['median_ms']:.0f} ms), "
              f"{r['orders_per_s'] / local['verify_per_s']:.4f} of the signature ceiling")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_market",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--participants", type=int, default=1000,
                    help="participants of the in-process community (default 1000)")
    ap.add_argument("--http-participants", type=int, default=200,
                    help="participants trading over HTTP on each backend (default 200)")
    ap.add_argument("--no-consortium", action="store_true",
                    help="skip the consortium (CometBFT) backend")
    args = ap.parse_args(argv)
    if args.participants < 2 or args.http_participants < 2:
        ap.error("a community needs at least 2 participants")
    cycle = 1_800_000_000 - 1_800_000_000 % IVL + 4 * IVL
    with tempfile.TemporaryDirectory(prefix="ml-market-") as tmp:
        root = Path(tmp)
        local = in_process(root, args.participants, cycle)
        http: dict[str, dict[str, float]] = {}
        with embedded(root) as b:
            http["embedded"] = over_http(b, args.http_participants)
        if not args.no_consortium:
            with consortium(root, 200, 10) as b:
                http["consortium"] = over_http(b, args.http_participants)
    report(local, http)
    return 0 if local["settled"] else 1


if __name__ == "__main__":
    sys.exit(main())
