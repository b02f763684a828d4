"""Targets of the files people hand to the tools: proof bundles (tools/audit.py's loading and
verification), service configs (meterledger.infra.config.load of FogConfig and
AggregatorConfig) and dispatch rule files (the grammar, the chain's rules kind, and what a
valid rule set proposes)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from aggregator.chain.app.kinds import rules as rules_kind
from aggregator.chain.ledger import ChainError
from aggregator.chain.service.node import AggregatorConfig
from aggregator.dispatch.rules import RulesError, parse_rules, suggest
from fog_node.config import FogConfig
from meterledger import wire as P
from meterledger.errors import ConfigError
from meterledger.infra import config as cfg
from meterledger.wire import chain as C
from tools import audit
from tools.fuzz import seeds
from tools.fuzz.base import Draw, Finding, Target
from tools.fuzz.chain import hostile

TRUSTED = [seeds.DISPATCH.public_key]


def json_hostile(d: Draw, value: Any) -> Any:
    """A JSON value replacing `value`: a hostile one, hex of bytes or a signed message."""
    k = d.below(6)
    if k == 0:
        return d.choice(seeds.messages()).hex()
    if k == 1:
        return d.take(d.below(70)).hex()
    if k == 2:
        return d.choice((None, 1.5, math.inf, -0.0, 2**63, -1, "", "zz", [], {}, [[]] * 3))
    v = hostile(d, value)
    return v.hex() if isinstance(v, bytes) else _jsonable(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def audit_bundle(data: bytes) -> None:
    """A bundle file (raw bytes), or the valid bundle with hostile fields: loading and
    verification raise only BundleError (BundleFormatError for malformed input)."""
    d = Draw(data)
    if d.bool():
        doc = audit.load_bundle(d.rest())
    else:
        doc = copy.deepcopy(_bundle())
        for _ in range(1 + d.below(3)):
            where = doc if d.bool() else doc[d.choice(("enrollment", "anchor"))]
            if not isinstance(where, dict) or not where:
                break
            key = d.choice(sorted(where))
            where[key] = json_hostile(d, where[key])
    try:
        audit.verify_bundle(doc, TRUSTED)
    except audit.BundleError:
        pass


def _audit_file(data: bytes) -> None:
    try:
        audit_bundle(data)
    except audit.BundleFormatError:
        pass


@functools.cache
def _bundle() -> dict[str, Any]:
    return seeds.bundle()


def _audit_seeds() -> list[bytes]:
    return [b"\x01" + json.dumps(_bundle()).encode(), b"\x00" * 8, b"\x01[" * 3000,
            b"\x01" + b'{"version": 1}']


# --- configs ---------------------------------------------------------------------------------
_TMP = Path(tempfile.gettempdir())
# "1-999999999" as rs485_addresses: parse_addresses lists every number of the range (open;
# from 2^63 on it is an OverflowError instead, which a run sees)
_RANGE = re.compile(rb"-\s*\+?([0-9_]+)")


def _huge_range(data: bytes) -> bool:
    for m in _RANGE.finditer(data):
        digits = m.group(1).replace(b"_", b"").lstrip(b"0")
        if 7 <= len(digits) <= 19 and int(digits) < 2**63:
            return True
    return False



def _kinds_ok(f: dataclasses.Field[Any], given: Any) -> bool:
    """Whether a TOML value of its kind may set the setting `f` (the setting's own parser
    decides for settings that have one)."""
    if f.metadata.get("meterledger.parse") is not None:
        return True
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if name in ("str", "Path"):
        return isinstance(given, str)
    if name == "bool":
        return isinstance(given, bool)
    if name == "int":
        return (isinstance(given, int) and not isinstance(given, bool)) or (
            isinstance(given, float) and given.is_integer())
    if name == "float":
        return isinstance(given, int | float) and not isinstance(given, bool)
    return True


def config(data: bytes) -> None:
    """A config file of any bytes through load() for the fog and the chain node: only
    ConfigError, and a value of the wrong kind is never taken."""
    if _huge_range(data):  # the open rs485 range finding takes gigabytes: go past
        return
    path = _TMP / f"meterledger-fuzz-config-{os.getpid()}.toml"
    path.write_bytes(data)
    try:
        for cls, table in ((FogConfig, "fog"), (AggregatorConfig, "aggregator")):
            try:
                loaded = cfg.load(cls, path, table, {})
            except ConfigError:
                continue
            doc = tomllib.loads(path.read_text())  # as load() read it (newlines too)
            doc = doc.get(table, doc)
            for f in dataclasses.fields(cls):
                if f.name in doc and not _kinds_ok(f, doc[f.name]):
                    raise Finding(f"{table}: {f.name} = {doc[f.name]!r} was taken as "
                                  f"{getattr(loaded, f.name)!r}")
    finally:
        path.unlink(missing_ok=True)


def _config_seeds() -> list[bytes]:
    return [b'[fog]\ndata_dir = "d"\nmqtt_port = 1883\nfeeders = []\n',
            b'[aggregator]\nhost = "127.0.0.1"\nhttp_port = 8090\n',
            b'data_dir = "x"\nrs485_addresses = "1,2,5-9"\nseal_period_s = 5.0\n',
            b'[fog]\nfeeders = [{name = "a", meters = ["0011223344556677"]}]\n']


# --- rule files ------------------------------------------------------------------------------
def toml(v: Any) -> str:
    """A TOML value (bytes as hex strings)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, bytes):
        v = v.hex()
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml(x)}" for k, x in v.items()) + " }"
    return '""'


RULE: dict[str, Any] = {"id": "peak", "feeder": "*", "metric": "import_kw", "above": 40.0,
                        "for_intervals": 2, "op": "limit", "args": {"max_w": 1500},
                        "devs": ["0011223344556677"], "valid_s": 1800, "why": "evening peak"}


def rule_text(d: Draw) -> str:
    """A rule file: the template's keys with hostile values, keys dropped or added."""
    top: dict[str, Any] = {"name": "district-7", "version": 1}
    rules = [dict(RULE) for _ in range(1 + d.below(2))]
    for _ in range(d.below(4)):
        target = d.choice([top, *rules])
        key = d.choice([*sorted(target), "extra", "fog", "below"])
        if d.below(5) == 0:
            target.pop(key, None)
        else:
            target[key] = hostile(d, target.get(key))
    lines = [f"{json.dumps(k)} = {toml(v)}" for k, v in top.items()]
    for r in rules:
        lines.append("[[rule]]")
        lines += [f"{json.dumps(k)} = {toml(v)}" for k, v in r.items()]
    return "\n".join(lines) + "\n"


_AGGS = [seeds.aggregate("feeder-a", seeds.IVL + 900 * i, 60 * 250) for i in range(3)]


def rules(data: bytes) -> None:
    """A rule file (the input's text, or the template with hostile values): parse_rules and
    the chain's rules kind agree and raise only RulesError / ChainError rules_invalid; what
    a valid rule set proposes is an instruction the chain's body rules accept."""
    d = Draw(data)
    text = rule_text(d) if d.bool() else d.rest().decode("utf-8", "replace")
    try:
        rs = parse_rules(text, "fuzz.toml")
    except RulesError:
        rs = None
    try:
        rules_kind.validate(C.rules_body("r", 1, text))
        chain_ok = True
    except ChainError as e:
        if e.reason != rules_kind.INVALID:
            raise Finding(f"the chain refuses a rule set as {e.reason}") from None
        chain_ok = False
    if chain_ok != (rs is not None):
        raise Finding(f"the chain {'takes' if chain_ok else 'refuses'} what the parser does not")
    if rs is None:
        return
    for s in suggest([rs], {(seeds.FOG.id, "feeder-a"): _AGGS}, seeds.T0):
        body = s.instruction_body(seeds.T0 + 10)
        try:
            P.parse(P.sign1(seeds.DISPATCH, C.tx(seeds.DISPATCH.id, 5, C.INSTRUCTION, body,
                                                 seeds.T0, seeds.CHAIN)))
        except P.ProtocolError as e:
            raise Finding(f"a valid rule set proposes an instruction the chain refuses: "
                          f"{e.reason}: {e}") from None


TARGETS = [
    Target("audit", "proof bundles: tools/audit.py's load_bundle and verify_bundle",
           _audit_file, _audit_seeds, max_len=16384),
    Target("config", "TOML configs through meterledger.infra.config.load (fog, chain node)",
           config, _config_seeds,
           known=(("UnicodeDecodeError", "codec can't decode"),
                  ("RecursionError", "maximum recursion depth"),
                  ("AttributeError", "has no attribute 'items'"),
                  ("ValueError", "Exceeds the limit"), ("Finding", "was taken as"),
                  ("OverflowError", "too large to convert"))),
    Target("rules", "dispatch rule files: the grammar, the chain's rules kind, suggestions",
           rules, lambda: [b"\x00" + seeds.RULES_TEXT.encode(), b"\x01" * 30]),
]
