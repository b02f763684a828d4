"""`meterledger trace DEVICE`: a device's timeline from the chain (docs/PROTOCOL.md section
29), every record proven: its transaction is fetched (GET /v1/tx/{digest}), checked to be
the record (digest, kind, sender), signed by its sender's registered key, and included in a
block whose header a trusted key sealed (tools.audit's `verify_header` and
`verify_in_block`, the checks of a reading's proof bundle), or, on a consortium, committed
by its validators (tools.audit_consortium, with --validators). A determination's cause is
also recomputed from the records before it (`meterledger.wire.trace.determine`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meterledger import wire as P
from meterledger.clients.chain import ChainClient
from meterledger.wire import trace as DV
from tools import audit
from tools import audit_consortium as consortium

PAGE = 500  # timeline records per request: the API's most


@dataclass(frozen=True)
class Proof:
    """A record's transaction on the chain: where, and whether its proof held (`detail`:
    who sealed or committed it, or the check that failed and why)."""

    height: int
    index: int
    ok: bool
    detail: str


@dataclass(frozen=True)
class Trust:
    """What a proof is checked against: sealer keys (embedded) or a genesis (consortium);
    `pinned` when the user gave them (else the chain's own head named its sealer)."""

    keys: list[P.PublicKey]
    genesis: consortium.Genesis | None
    pinned: bool


def timeline(client: ChainClient, dev: bytes) -> dict[str, Any]:
    """The device's whole timeline, every page of it."""
    doc = client.device_timeline(dev.hex(), limit=PAGE)
    records = list(doc["timeline"])
    while doc.get("next") is not None:
        doc = client.device_timeline(dev.hex(), after=int(doc["next"]), limit=PAGE)
        records += doc["timeline"]
    return {**doc, "timeline": records, "next": None}


def _fail(check: str, ok: bool, detail: str) -> None:
    if not ok:
        raise audit.BundleError(check, detail)


def _record(ev: dict[str, Any], raw: bytes, keys: dict[str, P.PublicKey]) -> P.Fields:
    """The transaction is the record's and signed by its sender's registered key."""
    try:
        m = P.parse(raw, schema=False)
    except P.ProtocolError as e:
        raise audit.BundleError("record", f"{e.reason}: {e}") from None
    _fail("record", m.digest.hex() == ev["tx"], f"the chain answered transaction "
                                                f"{m.digest.hex()} for {ev['tx']}")
    f = m.fields
    _fail("record", f.get(3) == ev["kind"] and m.kid.hex() == ev["by"],
          f"the transaction is a {f.get(3)!r} of {m.kid.hex()}, the record a {ev['kind']} "
          f"of {ev['by']}")
    key = keys.get(ev["by"])
    _fail("signature", key is not None, f"{ev['by']} is no participant of the chain")
    assert key is not None
    try:
        P.verify(raw, key)
    except P.ProtocolError as e:
        raise audit.BundleError("signature", f"{e.reason}: {e}") from None
    return f


def prove(client: ChainClient, ev: dict[str, Any], keys: dict[str, P.PublicKey],
          trust: Trust) -> Proof:
    """Fetch a record's transaction and check it: the record, its signature, its block."""
    tx = client.tx(ev["tx"])
    height, index = int(tx["height"]), int(tx["index"])
    try:
        raw = bytes.fromhex(tx["tx"])
        f = _record(ev, raw, keys)
        if "finality" in tx:  # a consortium's block: its validators' commit
            if trust.genesis is None:
                return Proof(height, index, False, "unchecked: a consortium block (give "
                                                   "--validators GENESIS.json)")
            v = {"anchor.block_height": height, "anchor.transaction": raw,
                 "anchor.tx_index": index, "anchor.signed_header": tx["finality"][
                     "signed_header"], "anchor.tx_proof": tx["finality"]["tx_proof"]}
            c = consortium.verify_anchor(v, f[6], trust.genesis, audit.BundleError)
            return Proof(height, index, True, f"committed by {c.signers}")
        header = bytes.fromhex(tx["header"])
        v = {"block_header": header, "block_height": height, "tx_index": index,
             "sealer_signature": P.parse(header, schema=False).signature,
             "tx_path": [bytes.fromhex(p) for p in tx["path"]]}
        hf, sealer = audit.verify_header(v, "", trust.keys)
        audit.verify_in_block(v, "", raw, f[6], hf)
        return Proof(height, index, True, f"sealed by {sealer}")
    except audit.BundleError as e:
        return Proof(height, index, False, f"{e.check}: {e.detail}")
    except (ValueError, KeyError, TypeError, P.ProtocolError) as e:  # a malformed answer
        return Proof(height, index, False, f"format: {e!r}")


def rule_of(device: dict[str, Any], records: list[dict[str, Any]],
            fault_t: int) -> DV.Evidence:
    """The chain's fault rule over a device's records as the API gives them (JSON)."""
    maint = [DV.Maintenance(int(e["at"]), e["body"]["result"], bytes.fromhex(e["tx"]))
             for e in records if e["kind"] == DV.DV_MAINTAIN]
    alarms = [DV.Alarm(int(e["body"]["observed"]), bytes.fromhex(e["tx"]), int(e["at"]))
              for e in records if e["kind"] == DV.DV_ALARM]
    return DV.determine(fault_t, int(device["commissioned"]), int(device["warranty_s"]),
                        int(device["maintain_s"]), bytes.fromhex(device["tx"]), maint, alarms)


def recompute(device: dict[str, Any], before: list[dict[str, Any]],
              ev: dict[str, Any]) -> str | None:
    """A determination's cause recomputed offline from the records before it; None when it
    is the recorded one (and the same evidence), else what the rule says."""
    got = rule_of(device, before, int(ev["fault_t"]))
    if got.cause == ev["body"]["cause"] and got.evidence.hex() == ev["evidence"]:
        return None
    return f"{got.cause} (evidence {got.evidence.hex()})"


def utc(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def short(digest: str) -> str:
    """A digest's first 16 hex characters, enough to tell records apart on a line."""
    return digest[:16]


def _what(kind: str, b: dict[str, Any]) -> str:
    """A record's body in a few words."""
    summaries: dict[str, Callable[[], str]] = {
        DV.DV_REGISTER: lambda: f"{b['kind']} {b['manufacturer']} {b['model']} serial "
                                f"{b['serial']}, commissioned {utc(b['commissioned'])}",
        DV.DV_STATUS: lambda: b["status"] + (f" at {b['site']}" if "site" in b else "")
        + (f" feeder {b['feeder']}" if "feeder" in b else "")
        + (f" fog {b['fog']}" if "fog" in b else ""),
        DV.DV_MAINTAIN: lambda: f"{b['what']}: {b['result']}"
        + (f" (ticket {short(b['ticket'])})" if "ticket" in b else ""),
        DV.DV_FIRMWARE: lambda: f"firmware {b['fw']!r} hardware {b['hw']!r} seen "
                                f"{utc(b['seen'])}",
        DV.DV_TICKET: lambda: f"asks {b['op']} {utc(b['start'])}..{utc(b['end'])}: "
                              f"{b['reason']}",
        DV.DV_APPROVE: lambda: ("granted" if b["granted"] else "rejected")
        + f" ticket {short(b['ticket'])}",
        DV.DV_EXECUTE: lambda: f"{b['result']} ticket {short(b['ticket'])}",
        DV.DV_ALARM: lambda: f"{b['op']} without a ticket, seen {utc(b['observed'])}",
        DV.DV_DETERMINE: lambda: f"fault {short(b['fault'])}: {b['cause']}",
    }
    what = summaries.get(kind)
    return what() if what is not None else ""


def line(ev: dict[str, Any], names: dict[str, str], proof: Proof,
         rule: str | None) -> str:
    """One record in one line: number, time, kind, what, who, transaction, block, proof."""
    who = names.get(ev["by"], "?")
    check = "ok" if proof.ok else f"FAILED ({proof.detail})"
    if ev["kind"] == DV.DV_DETERMINE:
        check += "; rule ok" if rule is None else f"; rule says {rule}"
    return (f"#{ev['n']} {utc(int(ev['at']))} {ev['kind']} {_what(ev['kind'], ev['body'])} "
            f"by {who} ({ev['by']}) tx {ev['tx']} block {proof.height} proof {check}")


def header(doc: dict[str, Any]) -> str:
    d = doc["device"]
    where = f" at {d['site']}" if "site" in d else ""
    return (f"device {doc['dev']}: {d['kind']} {d['manufacturer']} {d['model']} serial "
            f"{d['serial']}, {d['status']}{where}; {len(doc['timeline'])} records")


def check_all(client: ChainClient, doc: dict[str, Any], trust: Trust,
              keys: dict[str, P.PublicKey]) -> list[tuple[Proof, str | None]]:
    """Every record's proof and, for a determination, the rule recomputed."""
    out: list[tuple[Proof, str | None]] = []
    for i, ev in enumerate(doc["timeline"]):
        rule = None
        if ev["kind"] == DV.DV_DETERMINE:
            rule = recompute(doc["device"], doc["timeline"][:i], ev)
        out.append((prove(client, ev, keys, trust), rule))
    return out
