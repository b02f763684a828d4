"""The HTTP APIs through their OpenAPI documents with schemathesis: the fog node's FogAPI and
the chain's AggregatorAPI, each served in-process on 127.0.0.1 from a temp data dir with a
little data in it (or any running service at --url). The one check that matters here is
`not_a_server_error`: nothing a client sends may produce a 500 (others can be asked for).

A token goes with every request as `Authorization: Bearer TOKEN` (--token): by default the
strongest one the served data dir holds (operator.token, else dispatch.token, else
auditor.token), so the endpoints behind it are fuzzed too."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from meterledger import wire as P
from meterledger.wire import chain as C
from tools.fuzz import seeds

SERVICES = ("fog", "chain")
TOKEN_FILES = ("operator.token", "dispatch.token", "auditor.token")
DEFAULT_CHECKS = "not_a_server_error"


def token_of(data_dir: Path) -> str | None:
    for name in TOKEN_FILES:
        p = data_dir / name
        if p.is_file():
            return p.read_text().strip()
    return None


@contextlib.contextmanager
def fog_service() -> Iterator[tuple[str, Path]]:
    """A fog node with two enrolled meters, readings and checkpoints, and its API."""
    from fog_node.api import FogAPI
    from fog_node.config import FogConfig
    from fog_node.node import FogNode

    d = Path(tempfile.mkdtemp(prefix="meterledger-fuzz-api-fog-"))
    (d / "fog.key").write_text(seeds.FOG.private_bytes().hex())
    now = seeds.T0 + 3600
    node = FogNode(FogConfig(data_dir=d), lambda: now)
    api = None
    try:
        for key in (seeds.METER, seeds.METER2):
            node.ingest.decide(key.public_key.raw, "active", "")
            prev = P.ZERO32
            for seq in (1, 2, 3):
                raw = P.sign1(key, P.reading(key.id, seq, seeds.T0 + 900 * (seq - 1), 900,
                                             100 * seq, 0, 0, prev))
                node.ingest.process([raw])
                node.checkpoints.seal(now)
                prev = P.digest(raw)
        api = FogAPI(node)
        port = api.start("127.0.0.1", 0)
        yield f"http://127.0.0.1:{port}", d
    finally:
        if api is not None:
            api.stop()
        node.close()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def chain_service() -> Iterator[tuple[str, Path]]:
    """An aggregator with a fog registered, an anchor and a rule set, and its API."""
    from aggregator.chain.service.api import AggregatorAPI
    from aggregator.chain.service.node import ensure_token, init_data_dir, open_ledger
    from aggregator.dispatch.suggestions import open_dispatcher

    d = Path(tempfile.mkdtemp(prefix="meterledger-fuzz-api-chain-"))
    clock = time.time
    key = init_data_dir(d, int(clock()))
    ledger = open_ledger(d, clock)
    dispatcher = open_dispatcher(ledger, key, d, clock)
    api = None
    try:
        fog = seeds.FOG
        for n, body in enumerate((C.register_body("fog", fog.public_key.raw, "fog-1"),
                                  C.rules_body("district-7", 1, seeds.RULES_TEXT)), 2):
            kind = C.REGISTER if n == 2 else C.RULES
            ledger.submit(P.sign1(key, C.tx(key.id, n, kind, body, int(clock()), key.id)))
        api = AggregatorAPI(ledger, clock, dispatcher, ensure_token(d))
        port = api.start("127.0.0.1", 0)
        yield f"http://127.0.0.1:{port}", d
    finally:
        if api is not None:
            api.stop()
        dispatcher.store.close()
        ledger.close()
        shutil.rmtree(d, ignore_errors=True)


def schemathesis(url: str, seconds: int, token: str | None, checks: str = DEFAULT_CHECKS,
                 max_examples: int | None = None, seed: int | None = None,
                 report: Path | None = None) -> int:
    """Run schemathesis against url's /openapi.json; its exit code (0: no failure)."""
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
           "--checks", checks, "--workers", "1", "--max-time", str(max(seconds, 1)),
           "--request-timeout", "30", "--suppress-health-check", "all", "--no-color"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if max_examples is not None:
        cmd += ["--max-examples", str(max_examples)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if report is not None:
        cmd += ["--report", "junit", "--report-junit-path", str(report)]
    return subprocess.run(cmd, check=False).returncode


def run(service: str, seconds: int, token: str | None = None, url: str | None = None,
        checks: str = DEFAULT_CHECKS, max_examples: int | None = None,
        seed: int | None = None) -> int:
    """Fuzz one API for about `seconds`: `url` if given, else `service` served here."""
    if url is not None:
        return schemathesis(url.rstrip("/"), seconds, token, checks, max_examples, seed)
    serve = fog_service if service == "fog" else chain_service
    with serve() as (base, data_dir):
        return schemathesis(base, seconds, token or token_of(data_dir), checks, max_examples,
                            seed)
