"""tools.bench_consortium's report: the tables comparing the two backends' Results
(throughput and commit latency, interval close to committed, CPU per anchor and cores kept
busy, a proof bundle's anchor section) with consortium / embedded ratios, and what bounds them.
"""

from __future__ import annotations

import math
import os

from tools.bench_consortium_load import Result, q


def _ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "-"
    r = a / b
    return f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x" if r < 10 else f"{r:.0f}x"


# long: four tables and the bounds note, each a few prints in one place to read them together
def report(e: dict[str, Result], c: dict[str, Result], sizes: list[int],
           commit_ms: int, flush_ms: int) -> None:
    """Print the comparison: consortium (`c`) against embedded (`e`), per fog count."""
    print()
    print("anchors committed per second, commit latency (submit -> 200, ms) and anchors per "
          "block; ratios consortium/embedded")
    print(f"{'fogs':>5} {'anchors':>7} | {'emb tx/s':>8} {'p50':>5} {'p95':>5} {'/blk':>5} | "
          f"{'con tx/s':>8} {'p50':>5} {'p95':>5} {'/blk':>5} | {'tx/s':>6} {'p50':>6} "
          f"{'p95':>6}")
    for key in ["alone", *map(str, sizes)]:
        x, y = e[key], c[key]
        ep50, ep95 = q(x.latency_ms, 0.5), q(x.latency_ms, 0.95)
        cp50, cp95 = q(y.latency_ms, 0.5), q(y.latency_ms, 0.95)
        label = "1" if key == "alone" else key
        print(f"{label:>5} {y.anchors:>7} | {x.tps:>8.1f} {ep50:>5.0f} {ep95:>5.0f} "
              f"{x.anchors / max(x.blocks, 1):>5.1f} | {y.tps:>8.1f} {cp50:>5.0f} {cp95:>5.0f} "
              f"{y.anchors / max(y.blocks, 1):>5.1f} | {_ratio(y.tps, x.tps):>6} "
              f"{_ratio(cp50, ep50):>6} {_ratio(cp95, ep95):>6}")
    print()
    print("interval close -> anchored aggregate committed (fog 0: aggregate, checkpoint, "
          "anchor, submit), ms; consortium/embedded")
    print(f"{'with':>12} {'closes':>7} | {'emb p50':>8} {'p95':>6} | {'con p50':>8} {'p95':>6} | "
          f"{'p50':>7} {'p95':>7}")
    for key in ["alone", *map(str, sizes)]:
        x, y = e[key], c[key]
        ep50, ep95 = q(x.close_ms, 0.5), q(x.close_ms, 0.95)
        cp50, cp95 = q(y.close_ms, 0.5), q(y.close_ms, 0.95)
        label = "alone" if key == "alone" else f"{int(key) - 1} others"
        print(f"{label:>12} {len(y.close_ms):>7} | {ep50:>8.0f} {ep95:>6.0f} | "
              f"{cp50:>8.0f} {cp95:>6.0f} | {_ratio(cp50, ep50):>7} {_ratio(cp95, ep95):>7}")
    print()
    print(f"CPU per committed anchor, ms (busy: CPU s / wall s, of {os.cpu_count()} cores)")
    print(f"{'fogs':>5} | {'emb aggregator':>14} {'client':>6} {'busy':>5} | {'con apps':>8} "
          f"{'cometbft':>8} {'client':>6} {'busy':>5}")
    for key in ["alone", *map(str, sizes)]:
        x, y = e[key], c[key]
        label = "1" if key == "alone" else key

        def per(r: Result, role: str) -> float:
            return r.cpu.get(role, math.nan) * 1000 / max(r.anchors, 1)

        def busy(r: Result) -> float:
            return sum(r.cpu.values()) / r.wall_s if r.wall_s else math.nan

        print(f"{label:>5} | {per(x, 'aggregator'):>14.1f} {per(x, 'client'):>6.1f} "
              f"{busy(x):>5.2f} | {per(y, 'apps'):>8.1f} {per(y, 'cometbft'):>8.1f} "
              f"{per(y, 'client'):>6.1f} {busy(y):>5.2f}")
    print()
    es = [s for r in e.values() for s in r.section_bytes]
    cs = [s for r in c.values() for s in r.section_bytes]
    ep = [s for r in e.values() for s in r.proof_bytes]
    cp = [s for r in c.values() for s in r.proof_bytes]
    tx = q(es, 0.5) - q(ep, 0.5)
    print("proof bundle's anchor section, JSON bytes (median of the anchors sampled; the "
          f"anchor transaction is ~{tx:.0f} of them in both)")
    print(f"{'':>22} {'embedded':>9} {'consortium':>11} {'con/emb':>8}")
    print(f"{'with the transaction':>22} {q(es, 0.5):>9.0f} {q(cs, 0.5):>11.0f} "
          f"{_ratio(q(cs, 0.5), q(es, 0.5)):>8}")
    print(f"{'commit proof alone':>22} {q(ep, 0.5):>9.0f} {q(cp, 0.5):>11.0f} "
          f"{_ratio(q(cp, 0.5), q(ep, 0.5)):>8}")
    print(f"  (embedded: header + sealer signature + tx path, {min(ep)}-{max(ep)} B; "
          f"consortium: CometBFT signed header with 4 precommits + tx proof, "
          f"{min(cp)}-{max(cp)} B)")
    print()
    print("bounds (consortium): every block waits timeout_commit "
          f"({commit_ms} ms, --commit-ms) after the previous commit, then a proposal, "
          "prevotes and precommits, each a p2p hop that CometBFT sends at its "
          f"flush_throttle_timeout ({flush_ms} ms, --flush-ms); the proposer's and every "
          "validator's ABCI app "
          "(one Python process, one request at a time) checks each anchor's signatures and "
          "consistency proof at CheckTx, at PrepareProposal/ProcessProposal and at "
          "FinalizeBlock; each waiting submit holds an HTTP handler thread; the four "
          f"validators, their CometBFT nodes and this client share {os.cpu_count()} cores. "
          "The embedded backend seals the next block as soon as the previous one is written "
          "(group commit, one fsync).")
