"""The `meterledger` console script as a user runs it: the installed script as a real
process (and `meterledger.cli.main` in-process, which must say the same), help at every
level, a reading signed and verified through it, `fog init` / `chain init` on real data dirs,
the one-line usage errors, Ctrl-C, the `python -m` aliases, and that `--help` stays light."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meterledger.cli import main
from tests import reference
from tests.kit.fogkit import wait

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "meterledger"
ENV = {**os.environ, "COLUMNS": "100"}  # argparse wraps help to the terminal width
GOLDEN = json.loads(reference.VECTORS.read_text())
FIRST = next(c for c in GOLDEN["valid"] if c["name"] == "reading_q_flags")

GROUPS = ("fog", "chain", "meter", "audit", "flash", "demo", "bus", "sdm", "vm")


def ml(*args: str, stdin: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a process."""
    return subprocess.run([str(SCRIPT), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=ENV)


def py_m(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The old entry point, `python -m module`, as a process."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=ENV)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def reading_json(case: dict[str, Any]) -> str:
    """A vector's reading as `tools.reading sign` reads it (README.md, Tools)."""
    f = case["fields"]
    doc = {"seq": f["2"], "t": f["3"], "dur": f["4"], "imp": f["5"], "exp": f["6"],
           "flags": f["7"], "prev": f["8"]["hex"]}
    if "9" in f:
        doc["q"] = f["9"]
    return json.dumps(doc)


def test_the_console_script_is_installed():
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK), \
        f"{SCRIPT} missing: pip install -e . --no-deps"


# -- help at every level ------------------------------------------------------------------------
HELP_CASES: list[tuple[list[str], str, list[str]]] = [
    # argv, the usage line's prog, what the help must name
    ([], "meterledger", list(GROUPS)),
    (["fog"], "meterledger fog", ["init", "run", "enroll", "revoke"]),
    (["chain"], "meterledger chain", ["init", "run", "register", "verify-chain", "rules",
                                      "suggestions", "approve", "dismiss"]),
    (["meter"], "meterledger meter", ["sim", "sign", "verify", "decode"]),
    (["audit"], "meterledger audit", ["bundle", "verify"]),
    (["flash"], "meterledger flash", ["--board", "--port", "--target", "--fog-data"]),
    (["demo"], "meterledger demo", ["--meters", "--intervals", "--out"]),
    (["bus"], "meterledger bus", ["--endpoints", "--baud", "--noise"]),
    (["sdm"], "meterledger sdm", ["--pty", "--port", "--profile"]),
    (["vm"], "meterledger vm", ["script", "--firmware", "--heap"]),
    (["market"], "meterledger market", ["apply", "order", "commit", "reveal", "sign", "settle",
                                        "book", "account", "agent"]),
    (["bill"], "meterledger bill", ["propose", "approve", "run", "tariff", "receipts",
                                    "redeem"]),
    (["trace"], "meterledger trace", ["show", "register", "status", "maintain", "firmware",
                                      "ticket", "approve", "execute", "alarm", "determine"]),
    (["dr"], "meterledger dr", ["offer", "accept", "pref", "event", "settle", "contracts",
                                "events", "reports"]),
    (["dr", "offer"], "meterledger dr offer", ["--customer", "--threshold", "--max-w",
                                               "--floor-w", "--window", "--rate"]),
    # one subcommand per group that has them
    (["fog", "run"], "meterledger fog run", ["--config", "--data-dir", "--http-port",
                                             "--rs485-port", "--mqtt-host"]),
    (["chain", "verify-chain"], "meterledger chain verify-chain", ["--data-dir", "--chain",
                                                                    "--pub"]),
    (["chain", "rules", "register"], "meterledger chain rules register", ["file", "--data-dir"]),
    (["meter", "sim"], "meterledger meter sim", ["--count", "--compress", "--mqtt-host"]),
    (["meter", "sign"], "meterledger meter sign", ["--key", "--micropython"]),
    (["meter", "verify"], "meterledger meter verify", ["--pub"]),
    (["audit", "verify"], "meterledger audit verify", ["file", "--trust"]),
]


@pytest.mark.parametrize("argv,prog,names", HELP_CASES,
                         ids=[" ".join(argv) or "top" for argv, _, _ in HELP_CASES])
def test_help_at_every_level(argv: list[str], prog: str, names: list[str],
                             capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch):
    r = ml(*argv, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith(f"usage: {prog} "), r.stdout[:200]
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", r.stdout), (name, r.stdout)
    # main() in-process says exactly the same (same width: COLUMNS as the subprocess's)
    monkeypatch.setenv("COLUMNS", ENV["COLUMNS"])
    assert in_process(capsys, *argv, "--help") == (0, r.stdout, "")


def test_top_help_lists_each_group_on_one_line():
    out = ml("-h").stdout
    for group in GROUPS:
        lines = [line for line in out.splitlines() if line.startswith(f"  {group} ")]
        assert len(lines) == 1 and len(lines[0].split(maxsplit=1)) == 2, (group, out)


def test_version():
    r = ml("--version")
    assert r.returncode == 0 and re.fullmatch(r"meterledger \d+\.\d+\.\d+\S*\n", r.stdout)


# -- what the commands do -----------------------------------------------------------------------
def test_meter_sign_then_verify_round_trips_a_reading_with_a_fresh_key():
    key = ec.generate_private_key(ec.SECP256R1())
    key_hex = key.private_numbers().private_value.to_bytes(32, "big").hex()
    pub_hex = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint).hex()
    reading = reading_json(FIRST)
    signed = ml("meter", "sign", "--key", key_hex, stdin=reading)
    assert signed.returncode == 0, signed.stderr
    message = signed.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]+", message)

    verified = ml("meter", "verify", "--pub", pub_hex, stdin=message)
    assert verified.returncode == 0, verified.stderr
    out = json.loads(verified.stdout)
    assert out["type_name"] == "reading"
    sent = json.loads(reading)
    for k in ("seq", "t", "dur", "imp", "exp"):
        assert out["fields"][k] == sent[k], k
    assert out["fields"]["q"] == sent["q"]

    # the same message decodes without a key; a different key rejects it (exit 1, the reason)
    decoded = ml("meter", "decode", stdin=message)
    assert decoded.returncode == 0 and json.loads(decoded.stdout)["digest"] == out["digest"]
    other = ml("meter", "verify", "--pub", FIRST["pub"], stdin=message)
    assert other.returncode == 1 and other.stderr.startswith("rejected: ")


def test_meter_sign_is_tools_reading_sign():
    """The golden vector's key and reading give the golden message, as `python -m
    tools.reading sign` does."""
    r = ml("meter", "sign", "--key", FIRST["key"], stdin=reading_json(FIRST))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == FIRST["message"]


def test_fog_init_prints_what_python_m_fog_node_init_prints(tmp_path: Path):
    r = ml("fog", "init", "--data-dir", str(tmp_path / "fog"))
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"fog id ([0-9a-f]{16})\nfog pub ([0-9a-f]{130})\n", r.stdout)
    assert m, r.stdout
    assert (tmp_path / "fog" / "fog.pub").read_text().strip() == m.group(2)
    assert (tmp_path / "fog" / "fog.key").is_file()

    alias = py_m("fog_node", "init", "--data-dir", str(tmp_path / "fog-alias"))
    assert alias.returncode == 0, alias.stderr
    assert re.fullmatch(r"fog id [0-9a-f]{16}\nfog pub [0-9a-f]{130}\n", alias.stdout)

    # a second init refuses the same way through both (the module's own error, exit 1)
    again, again_alias = (ml("fog", "init", "--data-dir", str(tmp_path / "fog")),
                          py_m("fog_node", "init", "--data-dir", str(tmp_path / "fog")))
    assert (again.returncode, again.stdout, again.stderr) == \
        (again_alias.returncode, again_alias.stdout, again_alias.stderr)
    assert again.returncode == 2 and again.stderr.startswith("error: ")
    assert "exists already" in again.stderr and "Traceback" not in again.stderr


def test_fog_init_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rc, out, _ = in_process(capsys, "fog", "init", "--data-dir", str(tmp_path / "fog"))
    assert rc == 0
    pub = (tmp_path / "fog" / "fog.pub").read_text().strip()
    assert out.endswith(f"\nfog pub {pub}\n") and out.startswith("fog id ")


def test_chain_init_prints_what_python_m_aggregator_init_prints(tmp_path: Path):
    r = ml("chain", "init", "--data-dir", str(tmp_path / "agg"))
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"chain ([0-9a-f]+)\ndispatch pub ([0-9a-f]{130})\n", r.stdout)
    assert m, r.stdout
    assert (tmp_path / "agg" / "dispatch.pub").read_text().strip() == m.group(2)

    alias = py_m("aggregator", "init", "--data-dir", str(tmp_path / "agg-alias"))
    assert alias.returncode == 0, alias.stderr
    assert re.fullmatch(r"chain [0-9a-f]+\ndispatch pub [0-9a-f]{130}\n", alias.stdout)

    # the chain it made verifies, through the script
    v = ml("chain", "verify-chain", "--data-dir", str(tmp_path / "agg"))
    assert v.returncode == 0, v.stdout + v.stderr

    again, again_alias = (ml("chain", "init", "--data-dir", str(tmp_path / "agg")),
                          py_m("aggregator", "init", "--data-dir", str(tmp_path / "agg")))
    assert again.returncode == again_alias.returncode == 2
    assert again.stdout == again_alias.stdout == ""
    assert again.stderr.splitlines()[-1] == again_alias.stderr.splitlines()[-1]
    assert "exists already" in again.stderr and "Traceback" not in again.stderr


# -- the aliases --------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["fog_node", "aggregator", "tools.reading", "tools.audit",
                                    "tools.flash", "tools.demo", "hardware.virtual_meter",
                                    "hardware.rs485_bus", "hardware.sdm_emulator",
                                    "hardware.mpvm"])
def test_python_m_aliases_still_work(module: str):
    r = py_m(module, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python -m {module} "), r.stdout[:200]


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,names", [
    (["nope"], ["fog", "chain", "meter", "vm"]),
    ([], ["fog", "chain", "meter", "vm"]),
    (["--nope"], ["fog", "chain"]),
    (["meter", "nope"], ["sim", "sign", "verify", "decode"]),
    (["meter"], ["sim", "sign", "verify", "decode"]),
    (["fog", "nope"], ["init", "run", "enroll", "revoke"]),
    (["fog"], ["init", "run", "enroll", "revoke"]),
    (["chain", "nope"], ["init", "verify-chain", "approve"]),
    (["chain", "rules"], ["register"]),
    (["audit", "nope"], ["bundle", "verify"]),
    (["fog", "run", "--http-port", "x"], ["--http-port"]),
    (["meter", "sign"], ["--key"]),
    (["fog", "revoke", "--pub", "00"], ["--reason"]),  # the module's own ap.error
])
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], names: list[str],
                                              capsys: pytest.CaptureFixture[str]):
    r = ml(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: meterledger"), r.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert in_process(capsys, *argv) == (2, "", r.stderr)


def test_ctrl_c_exits_130_quietly():
    """`meter decode` blocks reading stdin; SIGINT there is Ctrl-C: exit 130, nothing printed."""
    proc = subprocess.Popen([str(SCRIPT), "meter", "decode"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # blocked in the read of stdin: Python's SIGINT handler is in place by then
        wait(lambda: "pipe_read" in Path(f"/proc/{proc.pid}/wchan").read_text(), timeout=60,
             what="the script to block on stdin")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (130, "", "")


# -- lazy imports -------------------------------------------------------------------------------
def test_help_imports_no_service_transport_tool_or_device():
    """Run the installed script's own code for `--help` and look at what it loaded."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = ('paho', 'serial', 'fog_node', 'aggregator', 'tools', 'hardware', 'cbor2',\n"
        "         'cryptography')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print('LOADED', loaded, 'CLI', 'meterledger.cli' in sys.modules, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "usage: meterledger" in r.stdout
    assert r.stderr.strip() == "LOADED [] CLI True", r.stderr


@pytest.mark.parametrize("group", ["fog", "chain"])
def test_every_run_flag_says_what_it_is(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    # the services' run flags come from their config definitions (meterledger.infra.config),
    # so each one has its help line, and its default where it has one
    try:
        code = main([group, "run", "--help"])
    except SystemExit as done:
        code = done.code  # type: ignore[assignment]
    assert code == 0
    text = capsys.readouterr().out
    flags = re.findall(r"^  (--[a-z0-9-]+)(?: [A-Z_]+)?\s*(.*)$", text, flags=re.M)
    assert len(flags) >= (30 if group == "fog" else 4)
    silent = [flag for flag, rest in flags if not rest.strip() and flag != "--help"]
    # argparse puts a long help on the next line; such flags are followed by indented text
    silent = [f for f in silent if not re.search(rf"^  {f}.*\n {{10,}}\S", text, flags=re.M)]
    assert silent == []
    if group == "fog":
        assert "(default: 1883)" in text and "--rs485-addresses LIST" in text
