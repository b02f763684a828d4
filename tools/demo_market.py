"""The P2P market demo (`make demo-market`; docs/PROTOCOL.md section 27): a community of
prosumers with PV and consumers trading on the chain for several 15-minute cycles, with one
congested feeder, every trade settled from the fog's statements of the meters.

    python -m tools.demo_market [--prosumers 4] [--consumers 4] [--cycles 3] [--out DIR]

The real parts: a broker (mosquitto with TLS and the fog's ACL, or the embedded amqtt in lab
mode), a fog node (`market_meters`: every community meter, its owner consented), the
embedded chain (`python -m aggregator run` on the fog's simulated clock, so its block times
are the meters' time), and virtual meters on the firmware: the prosumers' a PV plant's
registers, the consumers' a household's. Time runs `--compress` times faster (60: a cycle in
15 s).

On the chain the regulator enables grid access, the grid operator (the chain's dispatch key)
the market (continuous) and its network: a root and two feeders; the prosumers of the west
feeder sell to consumers on the east one over `f-west`, which carries 2 kW (500 Wh a cycle)
and so congests. Every participant is enrolled; the prosumers apply for access (granted)
and one diesel genset at 220 kV is refused with its reasons. Then agents
(meterledger.clients.market_agent) trade: each prosumer asks for its PV forecast, each
consumer bids for its household's, the grid operator signs every contract, closes each cycle
at its gate and settles it from the statements. The demo prints each cycle's contracts, CEP
and congestion, the settlements and the accounts, then fetches the proof bundle of the last
cycle's first delivered trade (`trade.json`) and verifies it offline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aggregator.chain.service.node import load_key
from hardware.broker import Mosquitto, any_broker, free_port
from hardware.virtual_meter import VirtualClock, VirtualMeter, make_meter
from meterledger import wire as P
from meterledger.clients.chain import ChainClient, Sender
from meterledger.clients.market_agent import GridOperator, Trader, market_params
from meterledger.infra.simclock import SimClock
from meterledger.wire import certificates as GC
from meterledger.wire import chain as C
from meterledger.wire import market as MK
from tools.demo import (
    Child,
    DemoError,
    auditor_token,
    enroll_meters,
    fog_broker,
    meter_config,
    register_fog,
    run_module,
)
from tools.demo_green import PlantSource, provision

START = 1_800_000_000 - 2 * 3600 - 30  # 2027-01-15 05:59:30 UTC: the PV rises during the demo
GATE_S, SETTLE_S = 300, 1_800
NETWORK = [("root", "", 10**9, 0), ("f-east", "root", 10**9, 25), ("f-west", "root", 2_000, 40)]
DEMAND_WH = 1_000  # a consumer's forecast until its meter has a settled cycle
ASK, BID, FEE_MAX = 380, 460, 60  # mpt/kWh


def pv_forecast(source: PlantSource) -> Any:
    """A prosumer's forecast: its PV model at the cycle's middle over 15 minutes, less 10%
    (an agent does not sell what it may not have), in 100 Wh."""
    def forecast(cycle: int) -> int:
        wh = source.power(cycle + 450) * 900 / 3600 * 0.9
        return int(wh // 100 * 100)
    return forecast


def demand_forecast(client: ChainClient, pid: str, default: int) -> Any:
    """A consumer's forecast: what its meter imported in the last settled cycle (the
    chain's delivery record), else `default`."""
    def forecast(cycle: int) -> int:
        doc = client.get(f"/v1/market/deliveries/{pid}/{cycle - 2 * 900}")
        imp = int(doc["delivery"]["imp"]) if doc.get("delivery") else 0
        return max(imp // 100 * 100, default)
    return forecast


class Community:
    """The community's meters, keys and agents."""

    def __init__(self, out: Path, prosumers: int, consumers: int, fog_hex: str,
                 fog_pub: str) -> None:
        self.out = out
        self.names = [f"prosumer-{i}" for i in range(prosumers)] + \
            [f"consumer-{i}" for i in range(consumers)]
        self.flash = {n: out / "meters" / n for n in self.names}
        self.meter_ids = {n: provision(d, fog_hex, fog_pub) for n, d in self.flash.items()}
        self.keys = {n: P.SigningKey.generate() for n in self.names}
        self.regulator = P.SigningKey.generate()
        self.diesel = P.SigningKey.generate()
        self.sources = {n: PlantSource("pv", i) for i, n in enumerate(self.names)
                        if n.startswith("prosumer")}
        half = prosumers // 2
        self.line = {n: ("f-west" if n.startswith("prosumer") and i >= half else "f-east")
                     for i, n in enumerate(self.names)}

    def meters(self, clock: VirtualClock, config: dict[str, Any]) -> list[VirtualMeter]:
        return [make_meter(i, self.flash[n], clock, config, source=self.sources.get(n))
                for i, n in enumerate(self.names)]

    def setup(self, client: ChainClient, grid: Sender, fog_id: bytes, now: int) -> None:
        """Participants registered, the applications enabled, the network published, every
        member enrolled; the prosumers and a diesel genset apply for access."""
        for role, k in (("regulator", self.regulator), ("market", self.diesel),
                        *(("market", self.keys[n]) for n in self.names)):
            grid.send(C.REGISTER, C.register_body(role, k.public_key.raw, role), now)
        reg = Sender(client, self.regulator, grid.chain_id)
        reg.send(GC.PARAMS, GC.params_body("access", 1, {}), now)
        grid.send(GC.PARAMS, GC.params_body("market", 1, {
            "mode": MK.CONTINUOUS, "gate_s": GATE_S, "settle_s": SETTLE_S}), now)
        grid.send(MK.MK_NETWORK, MK.network_body(1, NETWORK), now)
        for n in self.names:
            grid.send(MK.MK_ENROLL, MK.enroll_body(self.keys[n].id, fog_id,
                                                   bytes.fromhex(self.meter_ids[n]),
                                                   self.line[n]), now)
        grid.send(MK.MK_ENROLL, MK.enroll_body(self.diesel.id, fog_id, b"\xd1" * 8, "f-east"),
                  now)
        for n in self.sources:
            Sender(client, self.keys[n], grid.chain_id).send(MK.MK_ACCESS, MK.access_body(
                "pv", "clean", 9_000, ASK, 2, 400), now)
        Sender(client, self.diesel, grid.chain_id).send(MK.MK_ACCESS, MK.access_body(
            "coal", "fossil", 500_000, ASK, 1, 220_000), now)
        for n in self.sources:
            print(f"access      {n}: {_decision(client, self.keys[n])}")
        print(f"access      diesel-genset (220 kV): {_decision(client, self.diesel)}")

    def agents(self, client: ChainClient, chain_id: bytes) -> list[Trader]:
        out = []
        for n in self.names:
            s = Sender(client, self.keys[n], chain_id)
            if n in self.sources:
                out.append(Trader(s, MK.SELL, pv_forecast(self.sources[n]), ASK))
            else:
                out.append(Trader(s, MK.BUY, demand_forecast(client, self.keys[n].id_hex,
                                                             DEMAND_WH), BID, FEE_MAX))
        return out


def _decision(client: ChainClient, key: P.SigningKey) -> str:
    d = client.get(f"/v1/market/access/{key.id_hex}")["decision"]
    return (f"granted until {d['until']}" if d["granted"]
            else "refused: " + ", ".join(d["reasons"]))


# long: the demo's steps in the order a user sees them printed
def demo(out: Path, prosumers: int, consumers: int, cycles: int, compress: float,
         timeout_s: float, verbose: bool = False) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    children: list[Child] = []
    meters: list[VirtualMeter] = []
    fog_dir, chain_dir = out / "fog", out / "chain"
    fog_out = run_module(["fog_node", "init", "--data-dir", str(fog_dir)])
    fog_hex = fog_out.split("fog id ")[1][:16]
    fog_pub = fog_out.split("fog pub ")[1][:130]
    broker, security = fog_broker(any_broker(out / "broker"), out, fog_dir, fog_hex)
    epoch = time.time() + 2.0
    clock_file = SimClock(compress, START, epoch).write(out)
    try:
        broker.start()
        run_module(["aggregator", "init", "--data-dir", str(chain_dir)])
        auditor_token(chain_dir, None)
        chain_child = Child("aggregator", ["aggregator", "run", "--data-dir", str(chain_dir),
                                           "--http-port", "0", "--sim-clock", str(clock_file)],
                            out / "aggregator.log")
        children.append(chain_child)
        url = chain_child.wait_for(r"listening on (http://\S+)").group(1)
        register_fog(chain_dir, url, fog_pub)
        community = Community(out, prosumers, consumers, fog_hex, fog_pub)
        http_port = free_port()
        (out / "fog.toml").write_text("\n".join([
            "[fog]", f'data_dir = "{fog_dir}"', *(f"{k} = {v}" for k, v in security.items()),
            f"market_meters = {json.dumps(sorted(community.meter_ids.values()))}",
            f"http_port = {http_port}", f'chain_url = "{url}"', "seal_period_s = 5.0",
            "interval_s = 900", "grace_s = 120", "skew_s = 900", "anchor_period_s = 60",
            "chain_poll_s = 0.5", f"sim_compress = {compress}", f"sim_start = {START}",
            f"sim_epoch = {epoch}", ""]))
        fog = Child("fog node", ["fog_node", "run", "--config", str(out / "fog.toml")],
                    out / "fog.log")
        children.append(fog)
        fog.wait_for(r"running: mqtt")
        clock = VirtualClock(START, compress, time.time, t0=epoch)
        secure = isinstance(broker, Mosquitto)
        meters = community.meters(clock, meter_config(fog_dir, fog_hex, fog_pub, broker.port,
                                                      secure))
        enroll_meters(out, fog_dir, meters, secure)
        client = ChainClient(url)
        chain_id = bytes.fromhex(client.head()["chain"])
        grid = Sender(client, load_key(chain_dir), chain_id)
        community.setup(client, grid, bytes.fromhex(fog_hex), int(clock.now()))
        print(f"market      {prosumers} prosumers (PV) and {consumers} consumers on {url}, "
              f"time x{compress:.0f}; f-west carries 2 kW")
        settled = _trade(client, community, grid, meters, clock, cycles, timeout_s, verbose)
        _report(client, community, settled)
        _audit(out, url, f"http://127.0.0.1:{http_port}", client, settled[-1])
    finally:
        on_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for vm in meters:
                vm.app.transport.close()
            codes = {c.name: c.stop() for c in reversed(children)}
            broker.stop()
        finally:
            signal.signal(signal.SIGINT, on_int)
    unclean = {k: v for k, v in codes.items() if v != 0}
    if unclean:
        raise DemoError(f"not stopped cleanly: {unclean}")
    print("stopped cleanly")
    return 0


def _trade(client: ChainClient, community: Community, grid: Sender,
           meters: list[VirtualMeter], clock: VirtualClock, cycles: int,
           timeout_s: float, verbose: bool) -> list[int]:
    """Step the meters and the agents until `cycles` cycles with contracts are settled."""
    traders = community.agents(client, grid.chain_id)
    operator = GridOperator(grid)
    mp = market_params(client)
    settled: list[int] = []
    deadline = time.monotonic() + timeout_s
    next_step = 0.0
    while len(settled) < cycles:
        if time.monotonic() > deadline:
            raise DemoError(f"{len(settled)} of {cycles} cycles settled within "
                            f"{timeout_s:.0f} s; see {community.out}/*.log")
        for vm in meters:
            vm.app.step()
        if time.monotonic() >= next_step:
            next_step = time.monotonic() + 0.25
            now = int(clock.now())
            for agent in traders:
                for line in agent.step(now, mp):
                    if verbose:
                        print(f"  {line}")
            for line in operator.step(now, mp):
                if verbose or not line.startswith("grid operator signs"):
                    print(f"  {line}")
                if line.endswith(" settled"):
                    cycle = int(line.split()[1])
                    if client.get(f"/v1/market/cycles/{cycle}")["contracts"]:
                        settled.append(cycle)
        time.sleep(0.01)
    return settled


def _report(client: ChainClient, community: Community, settled: list[int]) -> None:
    who = {k.id_hex: n for n, k in community.keys.items()}
    print()
    print(f"{'cycle':>10} {'contracts':>9} {'Wh':>7} {'delivered':>9} {'CEP':>5} "
          f"{'congested':>10}")
    for cycle in settled:
        rec = client.get(f"/v1/market/cycles/{cycle}")
        cs = client.get(f"/v1/market/cycles/{cycle}/contracts")["contracts"]
        fees = sorted({c["fee"] for c in cs if c["fee"]})
        print(f"{cycle:>10} {len(cs):>9} {sum(c['wh'] for c in cs):>7} "
              f"{sum(c.get('delivered', 0) for c in cs):>9} {rec.get('cep', '-'):>5} "
              f"{'fee ' + '/'.join(map(str, fees)) if fees else '-':>10}")
    print()
    for n, k in community.keys.items():
        a = client.get(f"/v1/market/accounts/{k.id_hex}")
        print(f"{n:<12} balance {a['balance'] / 1e6:10.3f} points, reputation "
              f"{a['reputation']['ppm'] / 1e6:.3f}")
    last = client.get(f"/v1/market/cycles/{settled[-1]}/contracts")["contracts"]
    if last:
        c = last[0]
        print(f"contract    {settled[-1]}/0: {who.get(c['buyer'], c['buyer'])} bought "
              f"{c['wh']} Wh of {who.get(c['seller'], c['seller'])} at P_F {c['pf']} mpt/kWh "
              f"(P_T {c['pt']} + midpoint {c['mid']} + congestion {c['fee']}); "
              f"delivered {c.get('delivered')} Wh")


def _audit(out: Path, url: str, fog_url: str, client: ChainClient, cycle: int) -> None:
    """The proof bundle of the cycle's first delivered contract, fetched and verified offline
    from the orders to the settlement, back to the seller's meter readings."""
    cs = client.get(f"/v1/market/cycles/{cycle}/contracts")["contracts"]
    n = next((c["n"] for c in cs if c.get("delivered")), None)
    if n is None:
        print(f"trade       cycle {cycle} delivered nothing: no trade bundle")
        return
    path = out / "trade.json"
    run_module(["tools.audit", "trade-bundle", "--fog", fog_url, "--chain", url, "--cycle",
                str(cycle), "--contract", str(n), "-o", str(path), "--token-file",
                str(out / "fog" / "auditor.token")])
    pub = (out / "chain" / "dispatch.pub").read_text().strip()
    said = run_module(["tools.audit", "trade", str(path), "--trust", pub]).splitlines()
    print(f"trade       {path} ({path.stat().st_size:,} bytes), `python -m tools.audit trade` "
          f"(exit 0):")
    for line in said:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo_market",
                                 description="A P2P energy community trading on the chain.")
    ap.add_argument("--prosumers", type=int, default=4, help="prosumers with PV (default 4)")
    ap.add_argument("--consumers", type=int, default=4, help="consumers (default 4)")
    ap.add_argument("--cycles", type=int, default=3,
                    help="cycles with contracts to settle before the report (default 3)")
    ap.add_argument("--compress", type=float, default=60.0,
                    help="simulated time speed-up (default 60: a 15-minute cycle in 15 s)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds to wait for the cycles before giving up (default 600)")
    ap.add_argument("--out", type=Path, default=Path("demo-out/market"),
                    help="output directory, emptied first (default demo-out/market)")
    ap.add_argument("--verbose", action="store_true",
                    help="print every agent's order, signature and review")
    args = ap.parse_args(argv)
    if args.prosumers < 2 or args.consumers < 1 or args.cycles < 1:
        ap.error("the community needs at least 2 prosumers, 1 consumer and 1 cycle")
    try:
        return demo(args.out, args.prosumers, args.consumers, args.cycles, args.compress,
                    args.timeout, args.verbose)
    except (DemoError, KeyboardInterrupt) as e:
        print(f"demo-market: {e or 'interrupted'}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
