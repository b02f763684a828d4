"""`meterledger trace` and the chain's device timeline read (docs/PROTOCOL.md section 29) on
a real aggregator over HTTP: an operator registers, installs and maintains a meter, requests
a ticket the utility approves and the operator executes, a fog records an alarm and a fault,
the utility determines the fault by the chain's rule; the timeline prints one line per record
with its transaction, block and a proof that verifies against the sealer's key (and fails
against another); GET /v1/devices/{dev}/timeline pages; usage errors are one line, exit 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meterledger import wire as P
from meterledger.cli import main as ml_main
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.wire import chain as C
from meterledger.wire import trace as DV
from tests.fog_node.test_anchor import Clock
from tests.kit.chainkit import T0, running_chain
from tools.trace_cli import main as trace_main

ALICE, UTILITY = P.SigningKey.from_int(0xA11CE), P.SigningKey.from_int(0x0717)
FOG = P.SigningKey.from_int(0xF06)
DEV = "0102030405060708"
DAY = 86_400


def _key_file(tmp: Path, name: str, key: P.SigningKey) -> str:
    path = tmp / f"{name}.key"
    path.write_text(key.private_bytes().hex() + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("trace")
    with running_chain(tmp, Clock(T0)) as chain:
        chain.register("operator", ALICE, name="Alice Zhang")
        chain.register("utility", UTILITY, name="Grid Co")
        chain.register("fog", FOG, name="fog-north")
        keys = {name: _key_file(tmp, name, key) for name, key in (
            ("alice", ALICE), ("utility", UTILITY), ("fog", FOG))}
        yield {"chain": chain, "keys": keys}


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = trace_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def send(capsys: pytest.CaptureFixture[str], world: dict[str, Any], key: str,
         *argv: str) -> dict[str, Any]:
    """A transaction subcommand with --json; its receipt."""
    code, out, err = cli(capsys, *argv, "--chain", world["chain"].url, "--key-file",
                         world["keys"][key], "--json")
    assert code == 0, err
    receipt: dict[str, Any] = json.loads(out)
    return receipt


# long: the whole story of a meter, step by step, each step a CLI call
def test_a_meters_story_through_the_cli_and_its_proven_timeline(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    chain = world["chain"]
    url = chain.url
    send(capsys, world, "alice", "register", DEV, "--kind", "meter", "--manufacturer",
         "ACME", "--model", "M-1", "--serial", "S-0001", "--made", str(T0 - 60 * DAY),
         "--commissioned", str(T0 - 30 * DAY), "--maintain-s", str(365 * DAY))
    send(capsys, world, "alice", "status", DEV, "--status", "installed", "--site", "pole 17",
         "--feeder", "north", "--fog", FOG.id.hex())
    send(capsys, world, "alice", "status", DEV, "--status", "connected")
    send(capsys, world, "fog", "firmware", DEV, "--fw", "1.4.2", "--hw", "rev-b", "--seen",
         str(T0))
    send(capsys, world, "alice", "maintain", DEV, "--what", "inspection", "--result", "ok")
    ticket = send(capsys, world, "alice", "ticket", DEV, "--op", "switch_off", "--reason",
                  "replace the breaker", "--start", str(T0 - 60), "--end", str(T0 + 3600))
    assert ticket["kind"] == DV.DV_TICKET
    send(capsys, world, "utility", "approve", ticket["digest"], "--note", "go ahead")
    send(capsys, world, "alice", "execute", ticket["digest"], "--detail", "done at 10:12")
    # again: the chain refuses it, one line, exit 1
    code, _, err = cli(capsys, "execute", ticket["digest"], "--chain", url, "--key",
                       world["keys"]["alice"])
    assert code == 1 and "ticket_executed" in err and err.count("\n") == 1, err
    send(capsys, world, "fog", "alarm", DEV, "--op", "unknown", "--observed", str(T0 - 100),
         "--detail", "cover opened")
    status, doc = chain.post(chain.sign(FOG, C.FAULT, C.fault_body(
        "meter", "no readings", T0, "isolated")))
    assert status == 200, doc
    fault = doc["digest"]
    # without --cause the CLI sends the rule's: the alarm 100 s before the fault
    code, out, err = cli(capsys, "determine", DEV, "--fault", fault, "--chain", url, "--key",
                         world["keys"]["utility"])
    assert code == 0 and "cause: user_misoperation" in out, err
    code, out, err = cli(capsys, DEV, "--chain", url)
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith(f"device {DEV}: meter ACME M-1 serial S-0001, connected at "
                               "pole 17; 10 records")
    records = lines[1:-1]
    kinds = [line.split()[2] for line in records]
    assert kinds == [DV.DV_REGISTER, DV.DV_STATUS, DV.DV_STATUS, DV.DV_FIRMWARE,
                     DV.DV_MAINTAIN, DV.DV_TICKET, DV.DV_APPROVE, DV.DV_EXECUTE, DV.DV_ALARM,
                     DV.DV_DETERMINE]
    head = chain.ledger.head().height
    for line in records:
        assert line.endswith("proof ok") or line.endswith("proof ok; rule ok"), line
        block = int(line.split(" block ")[1].split()[0])
        digest = line.split(" tx ")[1].split()[0]
        assert 0 < block <= head and len(digest) == 64
        assert chain.get(f"/v1/tx/{digest}")[1]["height"] == block
    assert "by Alice Zhang, operator" in records[0] and "by Grid Co, utility" in records[6]
    assert "user_misoperation" in records[-1] and records[-1].endswith("rule ok")
    assert lines[-1].startswith(f"10 of 10 proofs verified against {chain.key.id_hex}")
    # the same as JSON, through the console script's entry point
    code = ml_main(["trace", "show", DEV, "--chain", url, "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["verified"] is True and doc["pinned"] is False
    assert [e["proof"]["ok"] for e in doc["timeline"]] == [True] * 10
    assert doc["timeline"][-1]["rule"] == {"ok": True, "says": None}
    # pinned to another key, no block verifies: exit 1, each line says why
    other = P.SigningKey.from_int(0x0DD).public_key.raw.hex()
    code, out, _ = cli(capsys, DEV, "--chain", url, "--trust", other)
    assert code == 1 and out.count("FAILED (block_signature: block sealed by") == 10
    code, out, _ = cli(capsys, DEV, "--chain", url, "--trust",
                       chain.key.public_key.raw.hex())
    assert code == 0 and "(the chain's own sealer" not in out


def test_the_timeline_read_pages_and_refuses_what_is_wrong(
        world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    chain = world["chain"]
    dev = "0a0b0c0d0e0f1011"
    send(capsys, world, "alice", "register", dev, "--kind", "breaker", "--manufacturer", "B",
         "--model", "B1", "--serial", "1", "--made", str(T0 - DAY), "--commissioned", str(T0))
    for status in ("installed", "connected", "disconnected"):
        extra = ["--site", "substation 3"] if status == "installed" else []
        send(capsys, world, "alice", "status", dev, "--status", status, *extra)
    client = ChainClient(chain.url)
    page = client.device_timeline(dev, limit=3)
    assert [e["n"] for e in page["timeline"]] == [1, 2, 3] and page["next"] == "3"
    assert page["device"]["status"] == "disconnected" and page["dev"] == dev
    assert page["timeline"][1]["body"] == {"dev": dev, "status": "installed",
                                           "site": "substation 3", "note": ""}
    rest = client.device_timeline(dev, after=3, limit=3)
    assert [e["n"] for e in rest["timeline"]] == [4] and rest["next"] is None
    assert rest["timeline"][0]["by"] == ALICE.id.hex()
    assert chain.get("/v1/devices/ffffffffffffffff/timeline")[0] == 404
    for bad in ("/v1/devices/xyz/timeline", f"/v1/devices/{dev}/timeline?limit=0",
                f"/v1/devices/{dev}/timeline?after=-1"):
        status, doc = chain.get(bad)
        assert (status, doc["error"]) == (400, "bad_request"), bad
    with pytest.raises(ChainClientError, match="404"):
        client.device_timeline("ffffffffffffffff")


def test_usage_errors_are_one_line_and_exit_2(world: dict[str, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    url = world["chain"].url
    for argv, says in ((["zz", "--chain", url], "a device id is 16 hex characters"),
                       (["ticket", DEV, "--op", "dance", "--reason", "r", "--start", "1",
                         "--end", "2", "--chain", url, "--key", "k"], "invalid choice"),
                       (["approve", "00", "--chain", url, "--key", "k"],
                        "a transaction digest is 64 hex characters")):
        with pytest.raises(SystemExit) as e:
            trace_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and says in err, err
    # a value the chain's wire rules refuse is the user's: exit 2 before anything is sent
    code, _, err = cli(capsys, "ticket", DEV, "--op", "inspect", "--reason", "r", "--start",
                       str(T0), "--end", str(T0 + 30 * DAY), "--chain", url, "--key",
                       world["keys"]["alice"])
    assert code == 2 and "within 7 days" in err and err.count("\n") == 1, err
    # a device the chain does not know: the chain says so, exit 1
    code, _, err = cli(capsys, "ffffffffffffffff", "--chain", url)
    assert code == 1 and "no device ffffffffffffffff" in err and err.count("\n") == 1, err
