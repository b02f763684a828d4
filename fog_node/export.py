"""`fog export`: the verified readings of one meter (or all) from a fog's data dir, decoded, as
CSV or JSON (docs/DATA.md, issue 14).

    meterledger fog export --data-dir fog-data --dev 0123456789abcdef --format csv \\
        [--from 2027-01-01] [--to 2027-02-01] [--tz Europe/Berlin] [-o readings.csv]

One row per interval: each logged reading (its seq, interval start and end in UTC and in the
chosen time zone, its registers, the interval's energy, flags and q by name), and each
interval the fog estimated (type-10 estimates in the cooked data, not superseded) marked
`estimated`, with the estimate's share of the register difference as its energy. A reading
whose own interval is the last of an estimate (the first reading after a gap) carries that
estimate's share and the mark.

It reads the stores through read-only connections, beside a running fog and without its
lock (fog_node.reads): the cooked index first, then the registry and the log, the reverse
of the order the node commits them in, so every estimate it sees has its readings in view.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fog_node.cooking import vee
from fog_node.reads import Reads, Snapshot, read_only
from meterledger import errors
from meterledger import wire as P
from meterledger.infra.args import ArgumentParser
from meterledger.wire.names import Q_NAMES

HELP = "export a meter's verified readings (or all meters') as CSV or JSON"
# q entries as exported: the wire's integer scaled to a unit (docs/DATA.md)
Q_COLUMNS: dict[int, tuple[str, float]] = {1: ("v_min_v", 0.1), 2: ("v_max_v", 0.1),
                                           3: ("p_imp_max_w", 1), 4: ("p_exp_max_w", 1),
                                           5: ("temp_c", 0.1)}
assert Q_COLUMNS.keys() == Q_NAMES.keys()
COLUMNS = ("dev", "seq", "start_utc", "end_utc", "start_local", "end_local", "start_unix",
           "end_unix", "dur_s", "import_wh", "export_wh", "import_interval_wh",
           "export_interval_wh", "estimated", "estimate_method", "flags",
           *(name for name, _ in Q_COLUMNS.values()), "log_index")


class ExportError(errors.MeterLedgerError, ValueError):
    """A user error of `fog export`: the CLI prints it as one line, exit 2."""


# -- decoding (shared with fog_node.republish) ---------------------------------------------
def utc_text(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def local_text(t: int, zone: tzinfo) -> str:
    return datetime.fromtimestamp(t, zone).isoformat()


def q_values(q: dict[int, int] | None) -> dict[str, float | int | None]:
    """A reading's q by name, scaled to V, W and degC; None where the meter gave none."""
    q = q or {}
    out: dict[str, float | int | None] = {}
    for key, (name, scale) in Q_COLUMNS.items():
        v = q.get(key)
        out[name] = None if v is None else (v if scale == 1 else round(v * scale, 1))
    return out


def measured_energy(previous: P.Fields | None, reading: P.Fields) -> tuple[int, int] | None:
    """The reading's own interval energy (import, export Wh): its registers less those of the
    reading just before it (seq - 1) when that one ends exactly one interval earlier and no
    register was reset; None otherwise (a gap: an estimate splits it, see the module)."""
    if previous is None or previous[2] != reading[2] - 1 or reading[3] <= previous[3]:
        return None
    if vee.gap_ends(previous, reading) != [reading[3]]:
        return None
    return vee.interval_energy(previous, reading)


@dataclass
class Row:
    """One exported interval: a reading, an estimated interval, or a reading whose interval
    was estimated."""

    dev: bytes
    start: int
    end: int
    seq: int | None = None
    imp: int | None = None
    exp: int | None = None
    d_imp: int | None = None
    d_exp: int | None = None
    estimated: bool = False
    method: str = ""
    flags: list[str] = field(default_factory=list)
    q: dict[str, float | int | None] = field(default_factory=lambda: q_values(None))
    leaf: int | None = None

    def record(self, zone: tzinfo) -> dict[str, Any]:
        """The row as JSON values, keyed by COLUMNS."""
        return {"dev": self.dev.hex(), "seq": self.seq, "start_utc": utc_text(self.start),
                "end_utc": utc_text(self.end), "start_local": local_text(self.start, zone),
                "end_local": local_text(self.end, zone), "start_unix": self.start,
                "end_unix": self.end, "dur_s": self.end - self.start, "import_wh": self.imp,
                "export_wh": self.exp, "import_interval_wh": self.d_imp,
                "export_interval_wh": self.d_exp, "estimated": self.estimated,
                "estimate_method": self.method or None, "flags": self.flags, **self.q,
                "log_index": self.leaf}


def reading_row(f: P.Fields, leaf: int, previous: P.Fields | None) -> Row:
    energy = measured_energy(previous, f)
    return Row(f[1], f[3] - f[4], f[3], f[2], f[5], f[6],
               energy[0] if energy else None, energy[1] if energy else None,
               flags=P.flag_names(f[7]), q=q_values(f.get(9)), leaf=leaf)


def meter_rows(readings: list[tuple[P.Fields, int]], estimates: list[tuple[P.Fields, int]],
               ) -> list[Row]:
    """The rows of one meter: its readings (fields, log index) in seq order, and its live
    type-10 estimates (fields, log index), merged (see the module)."""
    by_seq = {f[2]: (f, leaf) for f, leaf in readings}
    rows: dict[tuple[int, int, int], Row] = {}
    previous: P.Fields | None = None
    for f, leaf in readings:
        rows[(f[2], 1, f[3])] = reading_row(f, leaf, previous)
        previous = f
    for e, leaf in estimates:
        to_seq, method = e[8], e[4]
        after = by_seq.get(to_seq)
        for iv in vee.estimate_intervals(e):
            d = (None, None) if method == vee.METHOD_NONE else (iv.imp_wh, iv.exp_wh)
            if after is not None and iv.end == after[0][3]:  # the reading's own interval
                row = rows[(to_seq, 1, iv.end)]
                row.estimated, row.method, (row.d_imp, row.d_exp) = True, method, d
                continue
            rows[(to_seq, 0, iv.end)] = Row(e[1], iv.start, iv.end, d_imp=d[0], d_exp=d[1],
                                            estimated=True, method=method, leaf=leaf)
    return [rows[k] for k in sorted(rows)]


# -- the stores -------------------------------------------------------------------------------
def no_data(data_dir: Path) -> ExportError:
    return ExportError(f"no fog data in {data_dir}: run `meterledger fog init` first")


@dataclass
class Store:
    """One consistent read of a fog's data dir (see the module)."""

    cooked: sqlite3.Connection | None
    snap: Snapshot

    def devices(self) -> list[bytes]:
        return sorted(d.dev for d in self.snap.registry.devices())

    def readings(self, dev: bytes) -> Iterator[tuple[P.Fields, int]]:
        log = self.snap.log
        for (leaf,) in self.snap.registry.db.execute(
                "SELECT leaf FROM readings WHERE dev = ? ORDER BY seq", (dev,)).fetchall():
            if leaf < log.size:
                yield P.parse(log.entry(leaf), schema=False).fields, leaf

    def estimates(self, dev: bytes) -> list[tuple[P.Fields, int]]:
        if self.cooked is None:
            return []
        rows = self.cooked.execute("SELECT msg, leaf FROM estimates WHERE dev = ? AND "
                                   "superseded = 0 ORDER BY from_seq, start", (dev,)).fetchall()
        return [(P.parse(msg, schema=False).fields, leaf) for msg, leaf in rows]


@contextmanager
def open_store(data_dir: Path) -> Iterator[Store]:
    """Read-only access to a fog's stores; ExportError when there are none."""
    if not (data_dir / "fog.key").is_file():
        raise no_data(data_dir)
    if not all((data_dir / n).is_file() for n in ("log.db", "registry.db", "checkpoints.db")):
        raise ExportError(f"the fog in {data_dir} has not run yet: no readings to export")
    cooked_path = data_dir / "cooked.db"
    cooked = read_only(cooked_path) if cooked_path.is_file() else None
    try:
        if cooked is not None:
            cooked.execute("BEGIN")  # first: what it indexes is committed in the others
            cooked.execute("SELECT COUNT(*) FROM meta").fetchone()
        reads = Reads(data_dir)
        with closing(reads), reads.snapshot() as snap:
            yield Store(cooked, snap)
    except sqlite3.Error as e:
        raise ExportError(f"cannot read the fog's data in {data_dir}: {e}") from None
    finally:
        if cooked is not None:
            cooked.close()


def pick_devices(store: Store, dev: str) -> list[bytes]:
    """`all`, or the meter named by its id (16 hex) or an unambiguous prefix of it."""
    known = store.devices()
    if dev == "all":
        return known
    text = dev.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,16}", text):
        raise ExportError(f"--dev {dev!r}: a meter id is 16 hex characters (or 'all')")
    found = [d for d in known if d.hex().startswith(text)]
    if len(found) != 1:
        what = "matches several meters" if found else "is no meter this fog has enrolled"
        raise ExportError(f"--dev {dev}: {what} ({len(known)} enrolled; see "
                          "`meterledger fog devices`)")
    return found


def export_rows(data_dir: Path, dev: str, t_from: int | None = None,
                t_to: int | None = None) -> list[Row]:
    """Every row of the meter(s), intervals within [t_from, t_to] (None: unbounded)."""
    out: list[Row] = []
    with open_store(data_dir) as store:
        for d in pick_devices(store, dev):
            for row in meter_rows(list(store.readings(d)), store.estimates(d)):
                if (t_from is None or row.start >= t_from) and (t_to is None or row.end <= t_to):
                    out.append(row)
    return out


# -- formats ----------------------------------------------------------------------------------
def to_csv(rows: Iterable[Row], zone: tzinfo) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for row in rows:
        r = row.record(zone)
        r["flags"] = "|".join(r["flags"])
        r["estimated"] = "true" if r["estimated"] else "false"
        w.writerow("" if r[c] is None else r[c] for c in COLUMNS)
    return buf.getvalue()


def to_json(rows: Iterable[Row], zone: tzinfo, tz: str, t_from: int | None,
            t_to: int | None) -> str:
    doc = {"tz": tz, "from": t_from, "to": t_to, "columns": list(COLUMNS),
           "intervals": [row.record(zone) for row in rows]}
    return json.dumps(doc, indent=1) + "\n"


# -- the command line -------------------------------------------------------------------------
def zone_of(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ExportError(f"--tz {name!r}: no such time zone in the tz database (names like "
                          "Europe/Berlin or UTC)") from None


def parse_time(text: str, zone: tzinfo, flag: str) -> int:
    """Unix seconds, or an ISO 8601 date or date-time (without an offset: in `zone`)."""
    s = text.strip()
    if re.fullmatch(r"-?[0-9]+", s):
        return int(s)
    try:
        when = datetime.fromisoformat(s)
    except ValueError:
        raise ExportError(f"{flag} {text!r}: not an ISO date or time (2027-01-31, "
                          "2027-01-31T06:00, 2027-01-31T06:00+01:00) nor Unix seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone)
    return int(when.timestamp())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=Path("fog-data"),
                   help="the fog's data directory, read only, also beside a running fog "
                        "(default: fog-data)")
    p.add_argument("--dev", required=True, metavar="ID",
                   help="the meter: its id (16 hex, or an unambiguous prefix), or 'all' "
                        "(required; no default)")
    p.add_argument("--from", dest="t_from", metavar="T",
                   help="intervals starting at or after T: an ISO date or time (without an "
                        "offset: in --tz) or Unix seconds (default: the first)")
    p.add_argument("--to", dest="t_to", metavar="T",
                   help="intervals ending at or before T, as --from (default: the last)")
    p.add_argument("--format", choices=("csv", "json"), default="csv",
                   help="csv (a header line, one row per interval) or json (default: csv)")
    p.add_argument("--tz", default="UTC", metavar="ZONE",
                   help="time zone of the local time columns and of --from/--to without an "
                        "offset, a tz database name such as Europe/Berlin (default: UTC)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write to FILE (default: standard output)")


def run(args: argparse.Namespace) -> int:
    """The parsed command: 0, or 2 with one line `error: ...` for a user error."""
    try:
        zone = zone_of(args.tz)
        t_from = None if args.t_from is None else parse_time(args.t_from, zone, "--from")
        t_to = None if args.t_to is None else parse_time(args.t_to, zone, "--to")
        if t_from is not None and t_to is not None and t_to < t_from:
            raise ExportError("--to is before --from")
        rows = export_rows(args.data_dir, args.dev, t_from, t_to)
        text = to_csv(rows, zone) if args.format == "csv" else \
            to_json(rows, zone, args.tz, t_from, t_to)
        if args.output is None:
            sys.stdout.write(text)
        else:
            try:
                args.output.write_text(text)
            except OSError as e:
                raise ExportError(f"-o {args.output}: {e.strerror or e}") from None
    except errors.MeterLedgerError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m fog_node.export") -> int:
    ap = ArgumentParser(prog=prog, description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
