"""Build the dashboard's scripts at set-up time: `python -m meterledger.ui.build`.

esbuild (from the npm registry, installed by `npm ci`) bundles each page's entry module in
`src/` with what it imports (uPlot for the plots, @noble/curves and @noble/hashes for the
audit page's signatures) into one minified file per page in the git-ignored
`static/build/`, and uPlot's style sheet is copied beside them. The pages then need
nothing from the network at run time: a fog on a Pi has no internet.

Any failure exits non-zero with the reason on one line: set-up (and so CI) must fail, never
serve a dashboard without its scripts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from meterledger.infra.args import ArgumentParser

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(__file__).resolve().parent / "src"
BUILD = Path(__file__).resolve().parent / "static" / "build"
# one bundle per page (each holds what it imports of lib/)
ENTRIES = ("fog.js", "chain.js", "audit.js")


class BuildError(Exception):
    pass


def build(root: Path = ROOT, out: Path = BUILD) -> list[Path]:
    """Bundle every entry into `out`; the files written."""
    esbuild = root / "node_modules" / ".bin" / "esbuild"
    css = root / "node_modules" / "uplot" / "dist" / "uPlot.min.css"
    if not esbuild.exists() or not css.is_file():
        raise BuildError(f"{esbuild} or uPlot is missing: run `npm ci` (make setup) first")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = subprocess.run([str(esbuild), *(str(SRC / e) for e in ENTRIES), "--bundle",
                        "--format=esm", "--minify", "--target=es2020", "--log-level=error",
                        f"--outdir={tmp}"], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [line.strip() for line in r.stderr.splitlines() if line.strip()]
        first = next((line for line in lines if "ERROR" in line), lines[0] if lines else "")
        raise BuildError(f"esbuild failed: {first.replace('✘ [ERROR] ', '') or '(no output)'}")
    shutil.copyfile(css, tmp / "uPlot.min.css")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the pages see the whole new build or the old one, never half
    return sorted(out.iterdir())


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m meterledger.ui.build",
                       description="Bundle the dashboard's scripts with esbuild into "
                                   "meterledger/ui/static/build.")
    p.add_argument("--out", type=Path, default=BUILD,
                   help="the folder the bundles are written to (default: %(default)s)")
    args: argparse.Namespace = p.parse_args(argv)
    try:
        files = build(out=args.out)
    except (BuildError, OSError) as e:
        print(f"dashboard build: {e}", file=sys.stderr)
        return 1
    print(f"dashboard: {len(files)} files in {args.out} "
          f"({sum(f.stat().st_size for f in files) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
