"""The simulated clock that a fog node and virtual meters share: one option set, one file.

A simulation (the demo, a lab, a test) runs time `compress` times faster than real time, so
a 15-minute interval passes in a second at 900. Two processes agree on the simulated time
only if they agree on three numbers: the speed-up `compress`, the simulated time `start`,
and the real Unix time `epoch` at which the clock read `start`. Every command that runs on
simulated time takes the same three options, defined here once:

    --sim-compress K   speed-up factor (1: real time, the default; no simulation)
    --sim-start T      the simulated Unix time at --sim-epoch
                       (default: 2027-01-15 07:59 UTC, a minute before an interval ends)
    --sim-epoch E      the real Unix time at which the clock reads --sim-start
                       (default: when the fog node starts)
    --sim-clock PATH   or all three from a fog's sim-clock.json (or its data dir)

The fog node is the clock's owner: `meterledger fog run --sim-compress 900` fills in the
defaults, writes them to DATA_DIR/sim-clock.json and logs the options meters need; a virtual
meter given `--sim-clock DATA_DIR` then runs on exactly the fog's clock. A meter on another
clock than its fog's is refused (`future_t`) and both sides say so in their logs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from meterledger.errors import ConfigError
from meterledger.infra.clock import Clock, compressed

SIM_FILE = "sim-clock.json"
DEFAULT_SIM_START = 1_800_000_000 - 60  # 2027-01-15 07:59 UTC: a minute before a boundary
TIME_MAX = 2**32 - 1

HELP_COMPRESS = "simulation: clock speed-up factor (1: real time; 900: an interval a second)"
HELP_START = ("simulation: the simulated Unix time at the epoch (0: 2027-01-15 07:59 UTC, a "
              "minute before an interval ends)")
HELP_EPOCH = ("simulation: the real Unix time at which the clock reads the start (0: when "
              "this process starts)")
HELP_CLOCK = (f"simulation: run on a fog's simulated clock, from its {SIM_FILE} (or its data "
              "dir)")


@dataclass(frozen=True)
class SimClock:
    """A simulated clock: `start` at real time `epoch`, running `compress` times faster."""

    compress: float
    start: float
    epoch: float

    def clock(self, real: Clock = time.time) -> Clock:
        return compressed(real, self.start, self.epoch, self.compress)

    def options(self) -> str:
        """The command-line options that give another process this clock."""
        return (f"--sim-compress {self.compress:g} --sim-start {self.start:.0f} "
                f"--sim-epoch {self.epoch:.3f}")

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.start))
        return (f"simulated clock x{self.compress:g}: reads {when} at real time "
                f"{self.epoch:.3f}")

    def write(self, data_dir: Path) -> Path:
        path = data_dir / SIM_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        tmp.replace(path)
        return path


def completed(compress: float, start: float = 0.0, epoch: float = 0.0,
              now: float | None = None) -> SimClock | None:
    """The clock these settings give (0 start/epoch: the defaults), or None for real time."""
    if compress == 1.0:
        return None
    return SimClock(compress, start or DEFAULT_SIM_START,
                    epoch or (time.time() if now is None else now))


def read(path: Path) -> SimClock:
    """A fog's sim-clock.json (or the one in the data dir `path`)."""
    if path.is_dir():
        path = path / SIM_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no simulated clock there (the fog node writes it when it "
                          "runs with --sim-compress other than 1)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a simulated clock file ({e})") from None
    try:
        c = SimClock(float(doc["compress"]), float(doc["start"]), float(doc["epoch"]))
    except (TypeError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: not a simulated clock file (missing or bad {e})") from None
    check(c.compress, c.start, c.epoch, str(path))
    return c


def in_data_dir(data_dir: Path) -> SimClock | None:
    """The clock a fog last ran on in `data_dir`, if it was a simulated one (a file that
    cannot be read counts as none: the fog writes a new one when it runs simulated)."""
    path = data_dir / SIM_FILE
    if not path.is_file():
        return None
    try:
        return read(path)
    except ConfigError:
        return None


def check(compress: float, start: float, epoch: float, where: str = "") -> None:
    """The ranges every simulated clock keeps (the fog's config says the same)."""
    at = f"{where}: " if where else ""
    if not (math.isfinite(compress) and 0.001 <= compress <= 1_000_000):
        raise ConfigError(f"{at}sim compress {compress!r} is outside 0.001..1000000")
    for name, v in (("start", start), ("epoch", epoch)):
        if not (math.isfinite(v) and 0 <= v <= TIME_MAX):
            raise ConfigError(f"{at}sim {name} {v!r} is outside 0..{TIME_MAX}")


def add_arguments(parser: argparse.ArgumentParser, old_names: bool = False) -> None:
    """The shared --sim-* options (a fog's come from its config's settings, same help).
    `old_names` also accepts --compress/--start/--epoch, the virtual meter's first names."""
    g = parser.add_argument_group("simulated clock (meterledger/infra/simclock.py)")

    def alias(name: str) -> list[str]:
        return [f"--{name}"] if old_names else []

    g.add_argument("--sim-compress", *alias("compress"), dest="sim_compress", type=float,
                   default=None, metavar="K", help=HELP_COMPRESS + " (default: 1)")
    g.add_argument("--sim-start", *alias("start"), dest="sim_start", type=float, default=None,
                   metavar="T", help=HELP_START)
    g.add_argument("--sim-epoch", *alias("epoch"), dest="sim_epoch", type=float, default=None,
                   metavar="E", help=HELP_EPOCH)
    g.add_argument("--sim-clock", dest="sim_clock", type=Path, default=None, metavar="PATH",
                   help=HELP_CLOCK)


def from_arguments(args: argparse.Namespace) -> SimClock | None:
    """The clock the options name, None for real time; ConfigError for a contradiction."""
    given = [n for n in ("sim_compress", "sim_start", "sim_epoch")
             if getattr(args, n) is not None]
    if args.sim_clock is not None:
        if given:
            raise ConfigError("--sim-clock gives the whole clock: drop "
                              + ", ".join("--" + n.replace("_", "-") for n in given))
        return read(args.sim_clock)
    compress = 1.0 if args.sim_compress is None else args.sim_compress
    start = args.sim_start or 0.0
    epoch = args.sim_epoch or 0.0
    check(compress, start, epoch)
    if compress == 1.0:
        if given and args.sim_compress is None:
            raise ConfigError("--sim-start and --sim-epoch need --sim-compress")
        return None
    return completed(compress, start, epoch)
