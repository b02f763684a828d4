"""python -m tools.fuzz: run one fuzz target (or all, one after the other) for a set time or a
set number of runs; see tools/fuzz/__init__.py. Exit 0: no finding; 1: a finding (its input
is in the findings directory, printed); 2: a usage error."""

from __future__ import annotations

import argparse
import importlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from meterledger.infra.args import ArgumentParser
from tools.fuzz import APIS, MODULES, NAMES
from tools.fuzz.base import OPEN, Target, input_name

# instrumented for coverage under atheris: the code under test and the harnesses' own
INSTRUMENT = ["meterledger", "fog_node", "aggregator", "hardware", "tools.audit", "core"]
WORK = Path(tempfile.gettempdir()) / "meterledger-fuzz"


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m tools.fuzz", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=[*NAMES, "all"],
                    help="the target to fuzz (all: each in turn, in subprocesses)")
    ap.add_argument("--seconds", type=int, default=60,
                    help="how long to fuzz a target (default 60)")
    ap.add_argument("--runs", type=int,
                    help="stop after this many inputs instead (overrides --seconds)")
    ap.add_argument("--engine", choices=("auto", "atheris", "plain"), default="auto",
                    help="atheris (coverage-guided), plain (random mutation of the seeds, no "
                         "dependency) or auto: atheris when installed (default)")
    ap.add_argument("--corpus", type=Path,
                    help="directory of the growing corpus, kept between runs (default: a "
                         f"fresh one under {WORK})")
    ap.add_argument("--findings", type=Path,
                    help=f"where inputs that fail are written (default {WORK}/TARGET/findings)")
    ap.add_argument("--seed", type=int, help="the fuzzer's random seed")
    ap.add_argument("--stop-on-known", action="store_true",
                    help="stop at findings already handed over too (by default a run goes "
                         "past them, resetting a stateful target, to find new ones)")
    ap.add_argument("--replay", action="store_true",
                    help="only run the seeds and regression inputs through the target(s), "
                         "in plain Python; exit 1 if an input fails that is not open-*")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--url", help="api-*: fuzz a running service at this base URL instead "
                                  "of one served here")
    ap.add_argument("--token", help="api-*: the bearer token sent with every request "
                                    "(default: the served data dir's strongest token)")
    ap.add_argument("--checks", default="not_a_server_error",
                    help="api-*: schemathesis checks, comma-separated (default "
                         "not_a_server_error)")
    return ap


def _corpus(t: Target, corpus: Path) -> None:
    """The seeds and regression inputs as files of the corpus directory."""
    corpus.mkdir(parents=True, exist_ok=True)
    for data in [*t.seeds(), *(p.read_bytes() for p in t.regressions())]:
        (corpus / f"seed-{input_name(data)}").write_bytes(data)


def _wrapped(t: Target, stop_on_known: bool, known: list[int]) -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        try:
            t.one_input(data)
        except Exception as e:
            if stop_on_known or not t.is_known(e):
                raise
            known[0] += 1
            if t.reset is not None:
                t.reset()
    return one


def _atheris(name: str, args: argparse.Namespace, corpus: Path, findings: Path) -> int:
    from tools import fuzz

    atheris = importlib.import_module("atheris")

    with atheris.instrument_imports(include=INSTRUMENT):
        t = fuzz.target(name)
    _corpus(t, corpus)
    if t.setup is not None:
        t.setup()
    known = [0]
    one = _wrapped(t, args.stop_on_known, known)
    flags = [f"-max_len={t.max_len}", "-print_final_stats=1", "-rss_limit_mb=4096",
             f"-artifact_prefix={findings}/", "-timeout=60"]
    flags.append(f"-runs={args.runs}" if args.runs is not None
                 else f"-max_total_time={args.seconds}")
    if args.seed is not None:
        flags.append(f"-seed={args.seed}")
    atheris.Setup([sys.argv[0], *flags, str(corpus)], one)
    print(f"fuzz {name}: atheris, corpus {corpus}, findings {findings}", flush=True)
    atheris.Fuzz()  # exits the process when done
    return 0


def _mutate(rnd: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(1 + rnd.randrange(4)):
        op = rnd.randrange(5)
        pos = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] = rnd.randrange(256)
        elif op == 1:
            b[pos:pos] = rnd.randbytes(rnd.randrange(1, 9))
        elif op == 2 and b:
            del b[pos:pos + rnd.randrange(1, 9)]
        elif op == 3:
            other = rnd.choice(pool)
            b[pos:] = other[rnd.randrange(len(other) + 1):]
        else:
            b[pos:pos] = rnd.choice((b"\x00", b"\xff", b"\x7f", b"\x80", b"\x1b", b"\x9f"))
    return bytes(b)


def _plain(name: str, args: argparse.Namespace, findings: Path) -> int:
    from tools import fuzz

    t = fuzz.target(name)
    if t.setup is not None:
        t.setup()
    rnd = random.Random(args.seed)
    pool = [*t.seeds(), *(p.read_bytes() for p in t.regressions())] or [b""]
    known = [0]
    one = _wrapped(t, args.stop_on_known, known)
    start, runs = time.monotonic(), 0
    print(f"fuzz {name}: plain mutator, findings {findings}", flush=True)
    while (runs < args.runs) if args.runs is not None else \
            (time.monotonic() - start < args.seconds):
        data = pool[runs] if runs < len(pool) else _mutate(rnd, rnd.choice(pool), pool)
        data = data[:t.max_len]
        try:
            one(data)
        except Exception:
            findings.mkdir(parents=True, exist_ok=True)
            out = findings / f"crash-{input_name(data)}"
            out.write_bytes(data)
            traceback.print_exc()
            print(f"fuzz {name}: FINDING after {runs} runs, input {out}", flush=True)
            return 1
        runs += 1
        if len(pool) < 5000 and rnd.randrange(50) == 0:
            pool.append(data)
    took = time.monotonic() - start
    print(f"fuzz {name}: {runs} runs in {took:.0f} s ({runs / max(took, 1e-9):.0f} exec/s), "
          f"no finding ({known[0]} known ones passed)", flush=True)
    return 0


def replay(names: list[str]) -> int:
    """Seeds and regression inputs through each target, in plain Python."""
    from tools import fuzz

    bad = 0
    for name in names:
        t = fuzz.target(name)
        if t.setup is not None:
            t.setup()
        inputs = [(f"seed {i}", d) for i, d in enumerate(t.seeds())]
        inputs += [(p.name, p.read_bytes()) for p in t.regressions()]
        for label, data in inputs:
            if t.reset is not None and not label.startswith("seed"):
                t.reset()
            try:
                t.one_input(data)
                failed = None
            except Exception as e:
                failed = f"{type(e).__name__}: {e}"
            if failed and not label.startswith(OPEN):
                bad += 1
                print(f"{name}: {label}: {failed}")
            elif label.startswith(OPEN) and not failed:
                bad += 1
                print(f"{name}: {label}: passes now: drop its {OPEN} prefix")
        print(f"{name}: {len(inputs)} inputs replayed")
    return 1 if bad else 0


def _all(args: argparse.Namespace) -> int:
    failed = []
    for name in NAMES:
        cmd = [sys.executable, "-m", "tools.fuzz", "--target", name, "--engine", args.engine]
        cmd += ["--runs", str(args.runs)] if args.runs is not None else \
            ["--seconds", str(args.seconds)]
        if args.stop_on_known:
            cmd.append("--stop-on-known")
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    print(f"fuzz: {len(NAMES) - len(failed)} targets without finding"
          + (f"; findings in {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.list:
        from tools import fuzz

        for name in MODULES:
            print(f"{name:14} {fuzz.target(name).help}")
        for name, service in APIS.items():
            print(f"{name:14} schemathesis on the {service} API's OpenAPI document")
        return 0
    if args.replay:
        return replay([args.target] if args.target not in (None, "all") else list(MODULES))
    if args.target is None:
        ap.error("--target is needed (or --list, --replay)")
    if args.seconds < 1 or (args.runs is not None and args.runs < 1):
        ap.error("--seconds and --runs must be at least 1")
    if args.target == "all":
        return _all(args)
    if args.target in APIS:
        from tools.fuzz import api

        seconds = args.seconds if args.runs is None else 3600
        return api.run(APIS[args.target], seconds, args.token, args.url, args.checks,
                       args.runs, args.seed)
    work = WORK / args.target
    findings = args.findings or work / "findings"
    findings.mkdir(parents=True, exist_ok=True)
    engine = args.engine
    if engine == "auto":
        try:
            importlib.import_module("atheris")
            engine = "atheris"
        except ImportError:
            engine = "plain"
    if engine == "plain":
        return _plain(args.target, args, findings)
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="corpus-", dir=_mkdir(work)))
    try:
        return _atheris(args.target, args, corpus, findings)
    finally:
        if args.corpus is None:
            shutil.rmtree(corpus, ignore_errors=True)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


if __name__ == "__main__":
    sys.exit(main())
