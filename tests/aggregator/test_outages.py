"""Closed outage records on the chain (docs/PROTOCOL.md sections 18 and 28): a fog's `fault`
of kind "outage" with meters, start and end is stored per meter under bl.outage, refused
when it ends after the chain's time or breaks the wire rules, read by meter and time range
(the app function, the HTTP route, ChainClient.billing_outages), and replayed alike by
verify-chain. A plain fault stays recorded only.

Real parts: the embedded chain on the SQLite store and its in-memory twin (tests/kit/
appchain.py), and a running aggregator on loopback for the HTTP reads (tests/kit/chainkit.py).
The chain's rule time is the previous block's time, so a transaction sent at a later clock
moves it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.chain.app import green as G
from aggregator.chain.app import outages as O
from aggregator.chain.ledger import ChainError
from aggregator.chain.store import BlockStore
from aggregator.chain.verify import check_derived, store_blocks, verify_blocks
from meterledger import wire as P
from meterledger.clients.chain import ChainClient, ChainClientError
from meterledger.wire import chain as C
from tests.kit.appchain import AppChain, open_store
from tests.kit.chainkit import T0, running_chain
from tests.wire.test_outage_records import BAD_RECORDS

OPERATOR = P.SigningKey.from_int(0x0A7)
M1, M2, M3 = b"\x11" * 8, b"\x22" * 8, b"\x33" * 8
IVL = 900


def closed(meters: list[bytes], start: int, end: int, t: int | None = None,
           kind: str = "outage") -> dict[int, Any]:
    return C.fault_body(kind, "feeder all restored", end if t is None else t, "none", [],
                        meters=meters, start=start, end=end)


class Outages(AppChain):
    def __init__(self, store: BlockStore, tmp_path: Path) -> None:
        self.now = T0 + 60
        super().__init__(store, tmp_path, OPERATOR, lambda: float(self.now))

    def at(self, now: int) -> None:
        """A block at `now`: the chain's time for the next transaction."""
        self.now = now
        self.register("holder", P.SigningKey.generate())

    def report(self, body: dict[int, Any]) -> bytes:
        self.send(self.fog.key, C.FAULT, body)
        p = self.ledger.participant(self.fog.key.id)
        assert p is not None
        raw = P.sign1(self.fog.key, C.tx(self.fog.key.id, p.nonce, C.FAULT, body, T0,
                                         OPERATOR.id))
        return P.digest(raw)

    def stored(self) -> list[tuple[bytes, dict[str, Any]]]:
        return [(k, dict(v)) for k, v in G.Staged(self.store).scan(O.T_OUTAGE, b"")]


@pytest.fixture(params=["memory", "sqlite"])
def oc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outages]:
    o = Outages(open_store(request.param, tmp_path), tmp_path)
    yield o
    o.close()


def test_a_closed_outage_is_stored_under_each_meter_and_read_by_overlap(oc: Outages) -> None:
    oc.at(T0 + 4 * IVL)
    first = oc.report(closed([M1, M2], T0, T0 + 2 * IVL))
    second = oc.report(closed([M1], T0 + 3 * IVL, T0 + 4 * IVL))
    fog = oc.fog.key.id
    assert oc.stored() == [
        (O.outage_key(M1, T0, first), {"fog": fog, "tx": first, "start": T0,
                                       "end": T0 + 2 * IVL}),
        (O.outage_key(M1, T0 + 3 * IVL, second), {"fog": fog, "tx": second,
                                                  "start": T0 + 3 * IVL,
                                                  "end": T0 + 4 * IVL}),
        (O.outage_key(M2, T0, first), {"fog": fog, "tx": first, "start": T0,
                                       "end": T0 + 2 * IVL})]
    st = G.Staged(oc.store)

    def starts(meter: bytes, lo: int, hi: int) -> list[int]:
        return [r["start"] for r in O.outages(st, meter, lo, hi)]

    assert starts(M1, 0, 2**32) == [T0, T0 + 3 * IVL]
    assert starts(M1, T0 + 2 * IVL, T0 + 3 * IVL) == []  # [lo, hi): ends at lo, starts at hi
    assert starts(M1, T0 + 2 * IVL - 1, T0 + 3 * IVL + 1) == [T0, T0 + 3 * IVL]
    assert starts(M1, T0 + IVL, T0 + IVL + 1) == [T0]  # inside the first
    assert starts(M2, T0 + 3 * IVL, 2**32) == [] and starts(M3, 0, 2**32) == []
    replay = verify_blocks(store_blocks(oc.store))
    check_derived(oc.store, replay)


def test_a_plain_fault_is_recorded_only(oc: Outages) -> None:
    oc.report(C.fault_body("outage", "feeder all, interval T: 4 of 6", T0, "none", [3, 4]))
    oc.report(C.fault_body("tamper", "1 meter(s)", T0, "none"))
    assert oc.stored() == []


def test_an_outage_ending_after_the_chain_time_is_refused(oc: Outages) -> None:
    oc.at(T0 + 2 * IVL)
    body = closed([M1], T0, T0 + 2 * IVL + 1, t=T0 + 3 * IVL)
    assert oc.refused(oc.fog.key, C.FAULT, body) == "outage_future"
    oc.at(T0 + 2 * IVL + 1)  # the chain's time reaches its end: accepted
    oc.report(body)
    assert [k[:8] for k, _ in oc.stored()] == [M1]


@pytest.mark.parametrize("body,fragment", [(b, f) for _, b, f in BAD_RECORDS],
                         ids=[i for i, _, _ in BAD_RECORDS])
def test_the_wire_rules_of_a_closed_outage_are_the_chains(oc: Outages, body: dict[int, Any],
                                                          fragment: str) -> None:
    oc.at(T0 + 10 * IVL)  # none is refused for its time
    with pytest.raises(ChainError) as e:
        oc.send(oc.fog.key, C.FAULT, body, check=False)
    assert e.value.reason == "bad_fields" and fragment in str(e.value), str(e.value)
    assert oc.stored() == []


def test_the_api_reads_a_meters_outages_and_refuses_bad_input(tmp_path: Path) -> None:
    clock = [float(T0)]
    with running_chain(tmp_path, lambda: clock[0]) as chain:
        fog = chain.register("fog")
        clock[0] = T0 + 4 * IVL
        chain.register("holder")  # a block at the new time
        digests = []
        for meters, start, end in (([M1, M2], T0, T0 + IVL), ([M1], T0 + 2 * IVL,
                                                               T0 + 3 * IVL)):
            raw = chain.sign(fog, C.FAULT, closed(meters, start, end))
            status, doc = chain.post(raw)
            assert status == 200, doc
            digests.append(P.digest(raw).hex())
        status, doc = chain.get(f"/v1/billing/outages/{M1.hex()}?from={T0 + IVL - 1}&to="
                                f"{T0 + 3 * IVL}")
        assert status == 200, doc
        assert doc == {"meter": M1.hex(), "truncated": False, "outages": [
            {"fault": digests[0], "fog": fog.id.hex(), "start": T0, "end": T0 + IVL},
            {"fault": digests[1], "fog": fog.id.hex(), "start": T0 + 2 * IVL,
             "end": T0 + 3 * IVL}]}
        client = ChainClient(chain.url)
        assert client.billing_outages(M1.hex(), T0 + IVL, T0 + 2 * IVL)["outages"] == []
        assert [o["fault"] for o in client.billing_outages(M2.hex())["outages"]] == \
            [digests[0]]
        assert client.billing_outages(M3.hex(), 0, 2**32 - 1) == {
            "meter": M3.hex(), "outages": [], "truncated": False}
        for query, fragment in (("?from=5&to=5", "from (5) must be before to (5)"),
                                ("?from=x", "from must be an integer"),
                                (f"?to={2**32}", "to must be an integer from 0 to"),
                                ("?from=-1", "from must be an integer")):
            status, doc = chain.get(f"/v1/billing/outages/{M1.hex()}{query}")
            assert status == 400 and fragment in doc["detail"], (query, doc)
        status, doc = chain.get("/v1/billing/outages/not-a-meter")
        assert status == 400 and "meter must be a meter id, 16 hex" in doc["detail"], doc
        with pytest.raises(ChainClientError, match="HTTP 400"):
            client.billing_outages(M1.hex(), 9, 3)
