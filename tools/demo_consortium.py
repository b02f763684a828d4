"""The demo's chain as a consortium (`make demo-consortium`, `python -m tools.demo
--consortium`): four CometBFT validators on loopback, one per party of network.PARTIES, each
running the aggregator as its application and serving the same HTTP API.

The network is written as `meterledger chain testnet` writes it, into --out/net, or into a
short folder under /tmp (/tmp/ml-net-*) when that path is too long for the validators' Unix
sockets (removed once stopped, the validators' logs copied to --out/net-logs); it is started as `meterledger chain up` starts it (every application, then every
CometBFT node) and stopped the same way: CometBFT first, so no block is left half-applied,
then the applications. The dispatch center's validator holds the dispatch key, which signs
the fog's registration; the fog links to another validator's API (any one would do: each
answers a transaction once the network has committed it). The bundle is verified against
the network's genesis.json, copied to --out/genesis.json for anyone to re-check with.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from aggregator.chain.backends.cometbft import network, supervise
from meterledger import errors
from meterledger.infra import datadir
from tools import audit, audit_consortium
from tools.demo import DemoError, auditor_token, register_fog, run_module

LINK = "regulator-prov"  # the validator whose API the fog's chain link uses
READY_S = 90.0  # a loaded machine takes a while to start four validators


def network_dir(out: Path) -> tuple[Path, bool]:
    """Where the network goes: out/net when every validator's socket path fits, else a new
    folder under /tmp; and whether that is a temporary folder (removed once stopped)."""
    if network.socket_fits(out / "net"):
        return out / "net", False
    return Path(tempfile.mkdtemp(prefix="ml-net-")) / "n", True


def agreed_status(net: network.Network, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """supervise.status once every validator is up at one height and app hash (the fog goes
    on anchoring meanwhile, so a snapshot may catch one a block behind), or the last rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = supervise.status(net)
        if all(r["up"] for r in rows) and \
                len({(r["height"], r["app_hash"]) for r in rows}) == 1:
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def committers(bundle: dict[str, Any], genesis: Path) -> tuple[str, list[str]]:
    """Who proposed the anchor's block and who signed its commit, by validator name."""
    names = {v["address"].upper(): v.get("name") or v["address"]
             for v in json.loads(genesis.read_text())["validators"]}
    signed = bundle["anchor"]["signed_header"]
    proposer = names.get(signed["header"]["proposer_address"].upper(), "?")
    return proposer, [names.get(s["validator_address"].upper(), s["validator_address"])
                      for s in signed["commit"]["signatures"] if s["block_id_flag"] == 2]


class Consortium:
    """The demo's ChainStack (tools/demo.py) on a four-validator CometBFT network."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.root, self.temporary = network_dir(out)
        self.net: network.Network | None = None
        self.running: list[supervise.Running] = []
        self.url = self.token = self.dispatch_pub = ""
        self.dispatch_dir = self.root

    def start(self, token: str | None) -> None:
        try:
            net = self.net = network.create(self.root, network.free_base_port())
        except errors.MeterLedgerError as e:  # NetworkError, EngineMissing (no `make setup`)
            raise DemoError(f"cannot write the network: {e}") from None
        shutil.copy(net.root / network.GENESIS, self.out / "genesis.json")
        dispatch, link = net.validators[0], net.validator(LINK)
        self.dispatch_dir = dispatch.app_dir(net.root)
        self.dispatch_pub = (self.dispatch_dir / "dispatch.pub").read_text().strip()
        tokens = link.app_dir(net.root) / "auditor.token"
        self.token = auditor_token(tokens.parent, token) if token is not None else \
            datadir.ensure_secret(tokens, "auditor token")  # what the app would make
        try:  # what started is stopped again if a validator does not
            self.running = supervise.start(net)
        except errors.MeterLedgerError as e:
            raise DemoError(str(e)) from None
        self._wait_ready(net)
        self.url = link.api_url
        print(f"consortium  {net.chain_name}: {len(net.validators)} validators "
              f"({', '.join(v.name for v in net.validators)}) in {net.root}")
        print(f"            the fog's chain link: {link.name}'s API {self.url}; the dispatch "
              f"key (on {dispatch.name}) registers it")

    def _wait_ready(self, net: network.Network) -> None:
        deadline = time.monotonic() + READY_S
        for r in self.running:
            v = r.validator
            while not (supervise.answers(v.api_url + "/healthz")
                       and supervise.status(net)[net.validators.index(v)]["up"]):
                for what, p in (("application", r.app), ("CometBFT", r.comet)):
                    if p is not None and p.poll() is not None:
                        raise DemoError(f"validator {v.name}'s {what} exited ({p.returncode}); "
                                        f"see {net.root / v.name}/")
                if time.monotonic() > deadline:
                    raise DemoError(f"validator {v.name} did not come up within {READY_S:.0f} "
                                    f"s; see {net.root / v.name}/")
                time.sleep(0.2)

    def register(self, fog_pub: str) -> None:
        assert self.net is not None
        register_fog(self.dispatch_dir, self.net.validators[0].api_url, fog_pub)

    def rules(self, file: Path) -> None:
        assert self.net is not None
        out = run_module(["aggregator", "rules", "register", str(file), "--data-dir",
                    str(self.dispatch_dir), "--chain", self.net.validators[0].api_url])
        print(f"rules       {file} registered: {out.strip().splitlines()[-1]}")

    def report(self) -> None:
        assert self.net is not None
        print(supervise.format_status(agreed_status(self.net)))
        print()

    def verify(self, bundle: Path) -> tuple[audit.Verified, list[str]]:
        genesis = self.out / "genesis.json"
        doc = json.loads(bundle.read_text())
        r = audit.verify_bundle(doc, [], audit_consortium.load_genesis(genesis))
        proposer, signers = committers(doc, genesis)
        return r, [f"block       {r.block_height} (the anchor's) proposed by {proposer}, its "
                   f"commit signed by {', '.join(signers)}"]

    def recheck(self) -> str:
        return f"--validators {self.out}/genesis.json"

    def hints(self) -> list[str]:
        assert self.net is not None
        return [f"curl {self.url}/v1/head",
                f"curl {self.net.validators[-1].api_url}/v1/head   # any validator answers",
                f".venv/bin/meterledger chain status --dir {self.net.root}",
                f"logs: {self.out}/fog.log, {self.out}/broker/, {self.net.root}/NAME/app.log "
                f"and cometbft.log; the network {self.net.root}"]

    def stop(self) -> dict[str, int]:
        """CometBFT first, then the applications (supervise.stop); their exit codes. A
        network in a temporary folder leaves its logs in out/net-logs/."""
        supervise.stop(self.running)
        codes: dict[str, int] = {}
        for r in self.running:
            codes[f"{r.validator.name} application"] = r.app.returncode
            if r.comet is not None:
                codes[f"{r.validator.name} CometBFT"] = r.comet.returncode
        if self.temporary:
            for v in self.net.validators if self.net is not None else ():
                logs = self.out / "net-logs" / v.name
                logs.mkdir(parents=True, exist_ok=True)
                for log in ("app.log", "cometbft.log"):
                    if (self.root / v.name / log).is_file():
                        shutil.copy(self.root / v.name / log, logs / log)
            shutil.rmtree(self.root.parent, ignore_errors=True)
        return codes
