"""The `meterledger` console script: one command over every MeterLedger entry point.

    meterledger fog init|run|devices|enroll|revoke ...     python -m fog_node
    meterledger chain init|run|register|verify-chain|rules|suggestions|approve|dismiss|
                      testnet|up|status ...                python -m aggregator
    meterledger meter sim ...                              python -m hardware.virtual_meter
    meterledger meter sign|verify|decode ...               python -m tools.reading
    meterledger audit bundle|verify|certificate-bundle|certificate|trade-bundle|trade ...  python -m tools.audit
    meterledger notary init|run ...                        python -m aggregator.notary
    meterledger market apply|order|commit|reveal|book|...  python -m meterledger.market_cli
    meterledger bill propose|approve|run|tariff|receipts   python -m meterledger.bill_cli
    meterledger trace DEVICE|register|status|maintain|...  python -m tools.trace_cli
    meterledger dr offer|accept|pref|event|contracts|...   python -m meterledger.dr_cli
    meterledger flash ...                                  python -m tools.flash
    meterledger ota keygen|build|sign|inspect|push|status  python -m tools.ota
    meterledger demo ...                                   python -m tools.demo
    meterledger broker ...                                 python -m hardware.broker
    meterledger bus ...                                    python -m hardware.rs485_bus
    meterledger sdm ...                                    python -m hardware.sdm_emulator
    meterledger vm SCRIPT ...                              python -m hardware.mpvm

A command hands its arguments to the module's own `main(argv, prog=...)`: the flags, the
help and the output are the module's, and the `python -m` forms stay as aliases. A module is
imported, by its name in the table below, only when its command runs, so `meterledger --help`
loads no service, tool or device (nor paho or pyserial).

Exit status: the command's own; 2 with one line `error: <message>` on stderr for a usage error
(an unknown command, a bad flag) or a `MeterLedgerError` the command did not handle itself;
130, quietly, on Ctrl-C.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from meterledger.errors import MeterLedgerError
from meterledger.infra import logs  # the standard library only: `--help` stays light

PROG = "meterledger"
# option -> (the environment variable meterledger.infra.logs reads, its values)
_LOG_OPTIONS = {"--log-level": (logs.ENV_LEVEL, logs.LEVELS),
                "--log-format": (logs.ENV_FORMAT, logs.FORMATS)}
_HELP = ("-h", "--help")


class UsageError(MeterLedgerError):
    """The command line is not one the script or the command's parser accepts."""


@dataclass(frozen=True)
class Command:
    """A name on the command line: a leaf runs `module`'s `main`, a group picks a child."""

    name: str
    summary: str
    module: str = ""  # imported when the command runs (its `main(argv, prog=...)`)
    forward_name: bool = False  # the module's own subcommand: main gets [name, *args]
    children: tuple[Command, ...] = ()


COMMANDS: tuple[Command, ...] = (
    Command("fog", "the fog node: init, run, devices, enroll, revoke", "fog_node.__main__"),
    Command("chain", "the dispatch chain: init, run, register, verify-chain, rules, suggestions, "
                     "approve, dismiss; a consortium: testnet, up, status",
            "aggregator.__main__"),
    Command("notary", "a notary between the certificate and carbon chains: init, run",
            "aggregator.notary.__main__"),
    Command("market", "a participant of the P2P market and grid access: apply, order, "
                      "commit, reveal, sign, ...; reads: book, contracts, cycle, account",
            "meterledger.market_cli"),
    Command("bill", "tariffs and bills: propose, approve, run; reads: tariff, receipts",
            "meterledger.bill_cli"),
    Command("trace", "devices and operators: a device's timeline with proofs; register, "
                     "status, maintain, ticket, approve, execute, alarm, determine",
            "tools.trace_cli"),
    Command("dr", "home demand response: offer, accept, pref, event, settle; reads: "
                  "contracts, events, reports", "meterledger.dr_cli"),
    Command("meter", "virtual meters and signed readings: sim, sign, verify, decode", children=(
        Command("sim", "run virtual meters on the firmware app (hardware.virtual_meter)",
                "hardware.virtual_meter"),
        Command("sign", "sign reading.json (stdin) with a meter key; prints hex (tools.reading)",
                "tools.reading", forward_name=True),
        Command("verify", "verify a hex message (stdin) against a public key (tools.reading)",
                "tools.reading", forward_name=True),
        Command("decode", "decode a hex message (stdin) without a key (tools.reading)",
                "tools.reading", forward_name=True),
    )),
    Command("audit", "proof bundles of a reading (bundle, verify), a certificate "
                     "(certificate-bundle, certificate) and a trade (trade-bundle, trade)",
            "tools.audit"),
    Command("flash", "put the firmware on a board or into an image dir, and enroll it",
            "tools.flash"),
    Command("ota", "signed firmware updates: keygen, build, sign, inspect, push, status",
            "tools.ota"),
    Command("demo", "the end-to-end demo: meters -> MQTT -> fog -> chain -> proof bundle",
            "tools.demo"),
    Command("broker", "run mosquitto with a fog's listeners, certificate and access files",
            "hardware.broker"),
    Command("bus", "an emulated RS485 multidrop line over ptys", "hardware.rs485_bus"),
    Command("sdm", "an emulated SDM Modbus RTU meter on a pty or serial port",
            "hardware.sdm_emulator"),
    Command("vm", "run a script in the MicroPython VM with the firmware mounted",
            "hardware.mpvm"),
)


def main(argv: list[str] | None = None) -> int:
    """Run `meterledger ARGV`; the exit status (the console script exits with it)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return _dispatch(PROG, COMMANDS, args, top=True)
    except MeterLedgerError as e:  # UsageError included
        print(f"error: {_one_line(str(e)) or type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `meterledger ... | head -1` closed the pipe: not an error
        # stdout's buffer cannot be flushed any more; point it at /dev/null so the
        # interpreter's own flush at exit does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SystemExit as e:  # --help, or a command that exits rather than returns
        return _status(e.code)


def _dispatch(prog: str, commands: Sequence[Command], args: list[str], top: bool = False) -> int:
    names = ", ".join(c.name for c in commands)
    if not args:
        raise UsageError(f"{prog}: missing command (choose from {names}; see {prog} --help)")
    first, rest = args[0], args[1:]
    if first in _HELP:
        print(_help(prog, commands, top))
        return 0
    if top and first.split("=", 1)[0] in _LOG_OPTIONS:  # for every command below
        return _dispatch(prog, commands, _log_option(prog, args), top=True)
    if top and first == "--version":
        from importlib.metadata import version

        print(f"{PROG} {version('meterledger')}")
        return 0
    command = next((c for c in commands if c.name == first), None)
    if command is None:
        what = "option" if first.startswith("-") else "command"
        raise UsageError(f"{prog}: unknown {what} {first!r} (choose from {names})")
    if command.children:
        return _dispatch(f"{prog} {command.name}", command.children, rest)
    if command.forward_name:  # the module names this subcommand itself
        return _run(command.module, prog, [command.name, *rest])
    return _run(command.module, f"{prog} {command.name}", rest)


def _log_option(prog: str, args: list[str]) -> list[str]:
    """Take a leading --log-level/--log-format (the same for every command: passed on in
    the environment that meterledger.infra.logs reads); the rest of the command line."""
    name, _, value = args[0].partition("=")
    rest = args[1:]
    if not value:
        if not rest:
            raise UsageError(f"{prog}: {name} needs a value")
        value, rest = rest[0], rest[1:]
    choices = _LOG_OPTIONS[name]
    if value not in choices[1]:
        raise UsageError(f"{prog}: {name} {value!r}: choose from {', '.join(choices[1])}")
    os.environ[choices[0]] = value
    return rest


def _run(module_name: str, prog: str, argv: list[str]) -> int:
    # imported by name when the command runs, so that nothing else loads. Note that
    # import-linter's graph does not see these imports: written as `import` statements,
    # meterledger.cli -> tools.reading -> hardware.firmware would break the contract
    # "only hardware/ and tools/ drive the firmware" (whose source is all of `meterledger`).
    # their parsers (meterledger.infra.args) report a usage error as one line and exit 2
    logs.setup()  # from the environment; a command with --log-level sets it again
    module = importlib.import_module(module_name)
    return _status(module.main(argv, prog=prog))


def _help(prog: str, commands: Sequence[Command], top: bool) -> str:
    width = max(len(c.name) for c in commands) + 2
    top_opts = " [--version] [--log-level LEVEL] [--log-format text|json]" if top else ""
    lines = [f"usage: {prog} [-h]{top_opts} COMMAND [ARGS ...]", ""]
    if top:
        lines += ["MeterLedger: signed smart-meter readings, fog nodes with a Merkle side-chain",
                  "and a dispatch chain. One command over every tool; the `python -m` forms",
                  "remain as aliases.", ""]
    lines.append("commands:")
    lines += [f"  {c.name:<{width}}{c.summary}" for c in commands]
    lines += ["", f"`{prog} COMMAND --help` shows that command's own help."]
    if top:
        lines += textwrap.wrap("The same commands as `python -m MODULE` (README.md, Tools): "
                               + ", ".join(f"{c.name}={_alias(c)}" for c in commands) + ".",
                               79)
    return "\n".join(lines)


def _alias(command: Command) -> str:
    """The module(s) a command runs, as `python -m` names them."""
    modules = [command.module] if command.module else [c.module for c in command.children]
    return "+".join(dict.fromkeys(m.removesuffix(".__main__") for m in modules))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _status(code: object) -> int:
    """sys.exit's convention: None is 0, an int is itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
