"""`meterledger fog export` (fog_node/export.py, docs/DATA.md): the readings a firmware meter
made, logged by a real fog node (SQLite files), exported as CSV and JSON beside the running
node (its lock held), with interval energy, UTC and local times across a DST change, flags and
q by name, and the intervals the fog estimated marked; then a late reading supersedes an
estimate and the export follows. User errors are one line and exit 2."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core import cose
from fog_node.config import FogConfig
from fog_node.export import COLUMNS
from fog_node.node import FogNode, init_data_dir, lock_data_dir
from meterledger import wire as P
from meterledger.cli import main as meterledger
from tests.kit.meterkit import ScriptedSource, new_meter, run

# Berlin leaves winter time at 2027-03-28T01:00Z (02:00 +01:00 becomes 03:00 +02:00)
DST = 1_806_195_600
TD = DST - 3 * 900
IVL = 900


@dataclass
class Rig:
    data: Path
    node: FogNode
    readings: dict[int, P.Fields]  # seq -> what the meter signed
    raws: dict[int, bytes]
    dev: str
    other: str
    now: int

    def send(self, *seqs: int) -> None:
        outcomes, _ = self.node.ingest.process([self.raws[s] for s in seqs])
        assert all(o.status == "logged" for o in outcomes), outcomes

    def cook(self) -> None:
        self.now += 5
        self.node.cooker.tick(self.now)


def meter_readings(rate: int, start: int, end: int) -> tuple[Any, dict[int, P.Fields],
                                                           dict[int, bytes]]:
    m = new_meter(source=ScriptedSource(rate))
    m.boot(start, True)
    fields = {f[2]: f for f in run(m, start, end)}
    return m, fields, {s: m.spool.get(s) for s in fields}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    data = tmp_path / "fog"
    init_data_dir(data)
    clock = {"now": TD + 10 * IVL}
    node = FogNode(FogConfig(data_dir=data, skew_s=10**7), lambda: clock["now"])
    m, fields, raws = meter_readings(2, TD - 100, TD + 7 * IVL + 1)
    assert sorted(fields) == list(range(1, 9))
    o, _, oraws = meter_readings(1, TD - 50, TD + IVL + 1)
    for k in (m.key, o.key):
        node.ingest.decide(bytes(k.pub), "active", "test")
    r = Rig(data, node, fields, raws, m.id.hex(), o.id.hex(), clock["now"])
    r.send(1, 2, 3, 6, 7, 8)  # 4 and 5 are late: the fog estimates their intervals
    node.ingest.process(list(oraws.values()))
    r.cook()
    held = lock_data_dir(data)  # as a running fog holds it: export never takes it
    assert held is not None
    yield r
    held.close()
    node.close()


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = meterledger(["fog", "export", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(capsys: pytest.CaptureFixture[str], rig: Rig, *args: str) -> list[dict[str, Any]]:
    code, out, err = export(capsys, "--data-dir", str(rig.data), "--format", "json", *args)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["columns"] == list(COLUMNS)
    return list(doc["intervals"])


def test_json_export_is_the_meters_readings_with_energy_and_estimates(capsys, rig: Rig):
    out = rows(capsys, rig, "--dev", rig.dev)
    f = rig.readings
    assert [r["end_unix"] for r in out] == [f[s][3] for s in range(1, 9)]
    assert [r["seq"] for r in out] == [1, 2, 3, None, None, 6, 7, 8]
    for r in out:
        assert r["dev"] == rig.dev and r["dur_s"] == IVL and r["start_unix"] == r["end_unix"] - IVL
        if r["seq"] is None:  # an interval without its reading: the estimate's share
            assert r["estimated"] and r["estimate_method"] == "linear"
            assert r["import_wh"] is None and r["flags"] == [] and r["v_min_v"] is None
            continue
        s = f[r["seq"]]
        assert (r["import_wh"], r["export_wh"]) == (s[5], s[6])
        assert r["flags"] == P.flag_names(s[7])
        q = s[9]
        assert (r["v_min_v"], r["v_max_v"], r["p_imp_max_w"], r["p_exp_max_w"], r["temp_c"]) \
            == (q[1] / 10, q[2] / 10, q[3], q[4], q[5] / 10)
        assert P.digest(rig.node.log.entry(r["log_index"])) == cose.digest(rig.raws[r["seq"]])
    measured = {r["seq"]: r["import_interval_wh"] for r in out if r["seq"] and not r["estimated"]}
    assert measured == {1: None, 2: f[2][5] - f[1][5], 3: f[3][5] - f[2][5],
                        7: f[7][5] - f[6][5], 8: f[8][5] - f[7][5]}
    assert all(v == 2 * IVL for s, v in measured.items() if s != 1)  # 2 Wh/s
    gap = out[3:6]  # seq 4's and 5's intervals, and seq 6's own: one estimate splits them
    assert all(r["estimated"] for r in gap) and gap[2]["seq"] == 6
    assert sum(r["import_interval_wh"] for r in gap) == f[6][5] - f[3][5]
    assert sum(r["export_interval_wh"] for r in gap) == f[6][6] - f[3][6]
    assert gap[0]["log_index"] == gap[1]["log_index"]  # the type-10 entry
    assert P.parse(rig.node.log.entry(gap[0]["log_index"])).type == P.ESTIMATE


def test_times_in_utc_and_the_chosen_zone_across_a_dst_change(capsys, rig: Rig):
    out = rows(capsys, rig, "--dev", rig.dev[:6], "--tz", "Europe/Berlin")
    by_end = {r["end_unix"]: r for r in out}
    r = by_end[DST]
    assert (r["start_utc"], r["end_utc"]) == ("2027-03-28T00:45:00Z", "2027-03-28T01:00:00Z")
    assert (r["start_local"], r["end_local"]) == ("2027-03-28T01:45:00+01:00",
                                                  "2027-03-28T03:00:00+02:00")
    assert by_end[DST + IVL]["end_local"] == "2027-03-28T03:15:00+02:00"
    assert rows(capsys, rig, "--dev", rig.dev)[0]["end_local"] == out[0]["end_utc"].replace(
        "Z", "+00:00")  # the default zone is UTC
    # --from/--to: local ISO times in --tz, offsets, dates and Unix seconds alike
    picked = rows(capsys, rig, "--dev", rig.dev, "--tz", "Europe/Berlin",
                  "--from", "2027-03-28T01:45", "--to", str(DST + 2 * IVL))
    assert [r["end_unix"] for r in picked] == [DST, DST + IVL, DST + 2 * IVL]
    assert rows(capsys, rig, "--dev", rig.dev, "--from", "2027-03-28T01:00:00+00:00",
                "--to", "2027-03-28T01:30:00Z")[0]["start_unix"] == DST
    assert rows(capsys, rig, "--dev", rig.dev, "--from", "2027-03-29") == []


def test_csv_is_the_json_as_text(capsys, rig: Rig, tmp_path: Path):
    records = rows(capsys, rig, "--dev", "all", "--tz", "Europe/Berlin")
    code, out, err = export(capsys, "--data-dir", str(rig.data), "--dev", "all",
                            "--tz", "Europe/Berlin", "-o", str(tmp_path / "x.csv"))
    assert (code, out, err) == (0, "", "")
    text = (tmp_path / "x.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == len(records) and {r["dev"] for r in table} == {rig.dev, rig.other}

    def as_text(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return "|".join(v) if isinstance(v, list) else str(v)

    for row, rec in zip(table, records, strict=True):
        assert row == {k: as_text(rec[k]) for k in COLUMNS}
    assert any("|" in r["flags"] or r["flags"] for r in table)  # first readings: flags named


def test_a_late_reading_supersedes_the_estimate_in_the_export(capsys, rig: Rig):
    rig.send(4)
    rig.cook()
    out = rows(capsys, rig, "--dev", rig.dev)
    f = rig.readings
    assert [r["seq"] for r in out] == [1, 2, 3, 4, None, 6, 7, 8]
    assert out[3]["import_interval_wh"] == f[4][5] - f[3][5] and not out[3]["estimated"]
    assert out[4]["estimated"] and out[5]["estimated"]
    assert out[4]["import_interval_wh"] + out[5]["import_interval_wh"] == f[6][5] - f[4][5]
    rig.send(5)
    rig.cook()
    out = rows(capsys, rig, "--dev", rig.dev)
    assert [r["seq"] for r in out] == list(range(1, 9))
    assert not any(r["estimated"] for r in out)


@pytest.mark.parametrize("args,words", [
    (["--dev", "00000000deadbeef"], "--dev 00000000deadbeef: is no meter this fog has enrolled"),
    (["--dev", "xyz"], "a meter id is 16 hex characters"),
    (["--dev", "all", "--from", "yesterday"], "--from 'yesterday': not an ISO date"),
    (["--dev", "all", "--to", "2027-13-01"], "--to '2027-13-01': not an ISO date"),
    (["--dev", "all", "--tz", "Mars/Olympus"], "--tz 'Mars/Olympus': no such time zone"),
    (["--dev", "all", "--from", "2027-02-01", "--to", "2027-01-01"], "--to is before --from"),
    (["--dev", "all", "--format", "xml"], "invalid choice: 'xml'"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, rig: Rig, args: list[str], words: str):
    code, out, err = export(capsys, "--data-dir", str(rig.data), *args)
    assert code == 2 and out == "" and err.startswith("error: ") and words in err, err
    assert err.count("\n") == 1


def test_no_data_dir_says_run_init_first(capsys, tmp_path: Path):
    code, out, err = export(capsys, "--data-dir", str(tmp_path / "nowhere"), "--dev", "all")
    assert code == 2 and err == (f"error: no fog data in {tmp_path / 'nowhere'}: run "
                                 "`meterledger fog init` first\n")
    assert not (tmp_path / "nowhere").exists()
    init_data_dir(tmp_path / "fresh")  # a key, but the node never ran: nothing is created
    code, out, err = export(capsys, "--data-dir", str(tmp_path / "fresh"), "--dev", "all")
    assert code == 2 and out == "" and "has not run yet" in err
    assert not (tmp_path / "fresh" / "log.db").exists()


def test_every_flag_has_help_with_its_default(capsys):
    assert meterledger(["fog", "export", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--data-dir", "--dev", "--from", "--to", "--format", "--tz", "--output"):
        assert flag in text
    for default in ("(default: fog-data)", "(default: csv)", "(default: UTC)",
                    "(default: standard output)", "(default: the first)", "(required; no"):
        assert default in text, default
