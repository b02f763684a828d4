"""Firmware benchmarks, measured in one run (`make bench`).

In the real MicroPython VM (WebAssembly port under Node) and, for comparison, under
CPython with the very same firmware code:
  - time and heap for one sign, one verify, and one reading build (interval close: source,
    engine, CBOR, sign, spool append, state saves on the in-memory filesystem);
  - heap: the live set between operations and the bytes one operation allocates (see
    _HEAP for why the VM cannot give a true in-operation peak);
  - bytes on the wire of one signed reading against the same reading as plain JSON and as
    JSON carrying a hex ECDSA signature (the shape of signed-meter formats such as OCMF).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from hardware.firmware import module

D = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
T0 = 1_800_000_000

_SETUP = """
import gc, time
from core import cose, keys, messages as M
from core.compat import unhexlify
D = %d
T0 = %d
MSG = unhexlify(%r)
OPS = {}
_state = {}

def prepare(name):
    # each operation sets up only what it needs, so its heap figure is its own
    k = keys.SigningKey(D)
    if name == "sign":
        fields = M.reading(k.id, 1234, T0, 900, 123456, 789, 0, b"\\x5a" * 32,
                           {1: 2290, 2: 2410, 3: 5100, 4: 0, 5: 215})
        OPS[name] = lambda: cose.sign1(k, fields)
    elif name == "verify":
        vk = keys.VerifyingKey(k.pub)
        OPS[name] = lambda: cose.verify(MSG, vk)
    else:
        from core.fs import MemFS
        from core.meter import Meter
        from core.sources import Synthetic
        meter = Meter(MemFS(), Synthetic(seed=2), lambda n: D.to_bytes(32, "big"), b"\\x01" * 8)
        meter.boot(T0 - 1, True)
        _state["next"] = T0

        def op_reading():
            now = _state["next"]
            _state["next"] = now + 900
            assert meter.tick(now, now) is not None
        OPS[name] = op_reading
"""

_MEASURE = """
import json
res = {}
for name, n in %s:
    prepare(name)
    fn = OPS[name]
    fn()  # warm up: builds the generator table once, as a meter does at boot
    t0 = time.ticks_ms()  # this port's clocks tick in whole ms: time n operations
    for _ in range(n):
        fn()
    res[name] = [time.ticks_diff(time.ticks_ms(), t0) / n]
print(json.dumps(res))
"""


# This VM's GC reclaims memory only between runPython calls (inside one it cannot scan the
# WebAssembly stack), and its heap option is not a cap. So heap is measured across calls:
# the live set after a collection between operations, and the bytes one operation
# allocates (nothing is reclaimed inside a call, so that is an upper bound of its peak).
# gc.disable() is not used: it is pointless here, and in this port it also delays the
# next call's reclaim by one call.
_HEAP = """
prepare(%r)
OPS[%r]()
#--- next call ---#
gc.collect()
live = gc.mem_alloc()
#--- next call ---#
a0 = gc.mem_alloc()
OPS[%r]()
alloc = gc.mem_alloc() - a0
#--- next call ---#
gc.collect()
print(live, alloc, gc.mem_alloc() - live)
"""


def _setup() -> str:
    return _SETUP % (D, T0, _reference_message().hex())


def _reference_message() -> bytes:
    cose, keys, messages = module("core.cose"), module("core.keys"), module("core.messages")
    k = keys.SigningKey(D)
    fields = messages.reading(k.id, 1234, T0, 900, 123456, 789, 0, b"\x5a" * 32,
                              {1: 2290, 2: 2410, 3: 5100, 4: 0, 5: 215})
    msg: bytes = cose.sign1(k, fields)
    return msg


def cpython_times(n: int) -> dict[str, float]:
    ns: dict[str, Any] = {}
    exec(_setup().replace("import gc, time", "import gc, time\ntime.ticks_ms = None"), ns)
    out = {}
    for name in ("sign", "verify", "reading"):
        ns["prepare"](name)
        fn = ns["OPS"][name]
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = (time.perf_counter() - t0) / n * 1000
    return out


def vm_measure(n: int) -> dict[str, list[float]]:
    from hardware.mpvm import run_micropython

    plan = [("sign", n), ("verify", n), ("reading", n)]
    out = run_micropython(_setup() + _MEASURE % (plan,), heap=64 * 1024 * 1024)
    result: dict[str, list[float]] = json.loads(out.strip().splitlines()[-1])
    return result


def vm_heap(op: str) -> tuple[int, int, int]:
    """(live bytes between operations, bytes one operation allocates, live growth)."""
    from hardware.mpvm import run_micropython

    out = run_micropython(_setup() + _HEAP % (op, op, op))
    live, alloc, growth = (int(x) for x in out.split()[-3:])
    return live, alloc, growth


def wire_sizes() -> dict[str, int]:
    signed = _reference_message()
    doc = {"dev": signed[9:17].hex(), "seq": 1234, "t": T0, "dur": 900, "imp": 123456, "exp": 789,
           "flags": 0, "prev": ("5a" * 32), "q": {"v_min": 2290, "v_max": 2410,
                                                  "p_imp_max": 5100, "p_exp_max": 0, "temp": 215}}
    plain = json.dumps(doc, separators=(",", ":")).encode()
    with_sig = json.dumps({**doc, "sig": signed[-64:].hex()}, separators=(",", ":")).encode()
    return {"cose": len(signed), "json": len(plain), "json_sig": len(with_sig)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10, help="repetitions per operation")
    args = ap.parse_args(argv)

    cp = cpython_times(args.n)
    vm = vm_measure(args.n)
    print("Firmware core, one operation (same code in both interpreters)")
    print(f"{'operation':<10} {'MicroPython VM':>15} {'CPython':>10} {'VM/CPython':>11} "
          f"{'live heap':>10} {'allocated/op':>13} {'leaked':>7}")
    for name in ("sign", "verify", "reading"):
        ms = vm[name][0]
        live, alloc, growth = vm_heap(name)
        print(f"{name:<10} {ms:>12.1f} ms {cp[name]:>7.2f} ms {ms / cp[name]:>10.1f}x "
              f"{live / 1024:>6.1f} KiB {alloc / 1024:>9.1f} KiB {growth:>5} B")
    print("live heap: after a collection between operations (interpreter, code, keys, the 16-point")
    print("generator table; for 'reading' also the meter and its in-memory flash). allocated/op:")
    print("bytes one operation allocates with no collection inside it, an upper bound of its")
    print("peak; on a board the GC reclaims it as it goes. leaked: live growth per operation")
    print("(for 'reading', the spooled message and state held in the in-memory flash).")
    w = wire_sizes()
    print()
    print("Bytes per signed reading (with q values)")
    print(f"  COSE_Sign1 + deterministic CBOR  {w['cose']:>4} B  (signed)")
    print(f"  plain JSON                       {w['json']:>4} B  (unsigned)  "
          f"COSE/JSON = {w['cose'] / w['json']:.2f}")
    print(f"  JSON + hex ECDSA signature       {w['json_sig']:>4} B  (signed)    "
          f"COSE/JSON+sig = {w['cose'] / w['json_sig']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
