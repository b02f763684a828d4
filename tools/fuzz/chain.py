"""Targets of the dispatch chain: transactions through the Validator (raw bytes, and validly
signed transactions of every kind with hostile bodies) and blocks through verify-chain's
replay (headers and transactions replaced, headers re-signed so the replay goes deep)."""

from __future__ import annotations

import functools
from typing import Any

from aggregator.chain.app.state import MemoryState
from aggregator.chain.app.validator import Validator
from aggregator.chain.ledger import INT64_MAX, Block, ChainError, Receipt
from aggregator.chain.verify import VerifyError, verify_blocks
from meterledger import wire as P
from meterledger.wire import chain as C
from tools.fuzz import seeds
from tools.fuzz.base import Draw, Finding, Target

INT64_MIN = -(2**63)
_SENDERS = (seeds.DISPATCH, seeds.FOG, seeds.METER)


def hostile(d: Draw, value: Any) -> Any:
    """`value` or a hostile replacement of it: an edge, another kind, a length extreme,
    bytes from the input, or (for a container) the same with one item replaced."""
    k = d.below(8)
    if k < 4:
        return d.choice(seeds.HOSTILE)
    if k == 4:
        return d.take(d.below(70))
    if k == 5:
        return d.take(d.below(70)).decode("utf-8", "replace")
    if k == 6 and isinstance(value, dict) and value:
        key = d.choice(sorted(value, key=repr))
        return {**value, key: hostile(d, value[key])}
    if k == 6 and isinstance(value, list) and value:
        i = d.below(len(value))
        return [*value[:i], hostile(d, value[i]), *value[i + 1:]]
    return value


def mutate(d: Draw, fields: dict[Any, Any], rounds: int = 3) -> dict[Any, Any]:
    """Up to `rounds` hostile edits of a payload or body: a value replaced, a key removed,
    an unknown key added."""
    f = dict(fields)
    for _ in range(d.below(rounds + 1)):
        op = d.below(5)
        keys = sorted(f, key=repr)
        if op < 3 and keys:
            key = d.choice(keys)
            f[key] = hostile(d, f[key])
        elif op == 3 and keys:
            del f[d.choice(keys)]
        else:
            f[d.choice((2, 7, 9, 20, 255, -1, "x"))] = d.choice(seeds.HOSTILE)
    return f


def hostile_tx(d: Draw, nonce: int = 2) -> bytes | None:
    """A transaction of any kind, validly signed by the dispatch key, the fog or an unknown
    key, with a hostile body (or envelope fields); None if CBOR cannot carry it."""
    key = d.choice(_SENDERS)
    bodies = seeds.tx_bodies()
    kind = d.choice((*C.KINDS, "x", ""))
    body = mutate(d, bodies.get(kind, {}))
    fields = C.tx(key.id, d.choice((nonce, nonce, 1, 0, INT64_MAX, 2**64 - 1)), kind, body,
                  seeds.T0, d.choice((seeds.CHAIN, seeds.CHAIN, seeds.METER.id)))
    if d.below(4) == 0:
        fields = mutate(d, fields, 1)
    try:
        return P.sign1(key, fields, check=False)
    except P.ProtocolError:
        return None


@functools.cache
def _base() -> tuple[Validator, MemoryState, list[Block]]:
    """A chain of three blocks (genesis; the fog registered; an anchor and a rule set), its
    validator and replayed state."""
    validator, state = Validator(seeds.CHAIN), MemoryState()
    blocks: list[Block] = []

    def seal(txs: list[bytes]) -> None:
        h = len(blocks)
        effects = [validator.check_genesis(txs[0])] if h == 0 else []
        for i, raw in enumerate(txs):
            if h:
                effects.append(validator.check(raw, state))
            state.apply(effects[-1], Receipt(effects[-1].digest, h, i))
        prev = P.digest(blocks[-1].header) if blocks else P.ZERO32
        header = P.sign1(seeds.DISPATCH, C.block_header(seeds.DISPATCH.id, h, prev,
                                                        C.tx_root(txs), len(txs), seeds.T0,
                                                        seeds.CHAIN))
        blocks.append(Block(h, P.digest(header), header, tuple(txs)))

    dk, fk = seeds.DISPATCH, seeds.FOG
    seal([P.sign1(dk, C.tx(dk.id, 1, C.REGISTER, C.register_body(
        "dispatch", dk.public_key.raw, "dispatch"), seeds.T0, seeds.CHAIN))])
    seal([P.sign1(dk, C.tx(dk.id, 2, C.REGISTER, C.register_body(
        "fog", fk.public_key.raw, "fog"), seeds.T0, seeds.CHAIN))])
    bodies = seeds.tx_bodies()
    seal([P.sign1(fk, C.tx(fk.id, 1, C.ANCHOR, bodies[C.ANCHOR], seeds.T0, seeds.CHAIN)),
          P.sign1(dk, C.tx(dk.id, 3, C.RULES, bodies[C.RULES], seeds.T0, seeds.CHAIN))])
    return validator, state, blocks


def _accept(validator: Validator, state: MemoryState, raw: bytes, at: Receipt) -> None:
    try:
        effect = validator.check(raw, state)
    except ChainError:
        return
    bad = [v for v in effect.stored_ints() if not INT64_MIN <= v <= INT64_MAX]
    if bad:
        raise Finding(f"accepted a transaction whose state needs integers {bad} (SQLite: "
                      "64-bit)")
    state.apply(effect, at)


def chain_tx(data: bytes) -> None:
    """A transaction (raw, hostile and signed, or a rule set from the input's text) checked
    against the chain's state: only ChainError, and an accepted one applies."""
    validator, base, _ = _base()
    state = MemoryState(base)
    d = Draw(data)
    mode = d.below(3)
    if mode == 0:
        raw: bytes | None = d.rest()
    elif mode == 1:
        raw = hostile_tx(d, 4)
    else:
        text = d.rest().decode("utf-8", "replace")
        try:
            raw = P.sign1(seeds.DISPATCH, C.tx(seeds.DISPATCH.id, 4, C.RULES, C.rules_body(
                "r", 1, text), seeds.T0, seeds.CHAIN), check=False)
        except P.ProtocolError:  # beyond what CBOR carries
            return
    if raw is not None:
        _accept(validator, state, raw, Receipt(P.digest(raw), 3, 0))


def _resealed(blocks: list[Block], h: int, txs: list[bytes], d: Draw) -> Block:
    f = C.block_header(seeds.DISPATCH.id, h, P.digest(blocks[h - 1].header) if h else P.ZERO32,
                       C.tx_root(txs), len(txs), seeds.T0, seeds.CHAIN)
    if d.below(3) == 0:
        f = mutate(d, f, 1)
    try:
        header = P.sign1(seeds.DISPATCH, f, check=False)
    except P.ProtocolError:
        header = blocks[h].header
    return Block(h, P.digest(header), header, tuple(txs))


def chain_blocks(data: bytes) -> None:
    """The three-block chain with hostile blocks, transactions or headers (re-signed by the
    sealer), replayed as verify-chain does: only VerifyError."""
    _, _, base = _base()
    blocks = list(base)
    d = Draw(data)
    for _ in range(1 + d.below(3)):
        h = d.below(len(blocks) + 1)
        op = d.below(5)
        if h == len(blocks):  # a block after the last: hostile transactions
            blocks.append(Block(h, b"", b"", ()))
            txs: list[bytes] = []
            for i in range(1 + d.below(3)):
                raw = hostile_tx(d, 4 + i)
                txs.append(raw if raw is not None else d.take(40))
            blocks[h] = _resealed(blocks, h, txs, d)
        elif op == 0:
            blocks[h] = Block(h, blocks[h].hash, d.take(d.below(300)), blocks[h].txs)
        elif op == 1:
            txs = list(blocks[h].txs)
            raw = hostile_tx(d, 4)
            txs[d.below(len(txs))] = raw if raw is not None else d.take(60)
            blocks[h] = _resealed(blocks, h, txs, d)
        elif op == 2:
            blocks[h] = _resealed(blocks, h, list(blocks[h].txs), d)
        elif op == 3:
            blocks[h] = Block(d.choice((h, h + 1, 0, 2**63)), blocks[h].hash, blocks[h].header,
                              blocks[h].txs)
        else:
            del blocks[h]
            if not blocks:
                break
    for trusted in (seeds.DISPATCH.public_key, None):
        try:
            verify_blocks(blocks, trusted)
        except VerifyError:
            pass


def _block_seeds() -> list[bytes]:
    return [bytes(8), bytes((3, 1, 0, 1)) + bytes(40), bytes((0, 2, 4)) + bytes(30)]


TARGETS = [
    Target("chain-tx", "chain transactions through the Validator: raw, hostile and signed, "
           "rule sets", chain_tx,
           lambda: [b"\x00" + m for m in seeds.messages()] + [b"\x01" * 40, b"\x02" +
                                                               seeds.RULES_TEXT.encode()]),
    Target("chain-blocks", "blocks through verify-chain's replay, hostile and re-signed",
           chain_blocks, _block_seeds),
]
