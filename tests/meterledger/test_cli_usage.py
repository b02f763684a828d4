"""Every command and subcommand of `meterledger`, found by walking the command table and the
parsers each module builds: every flag has help text, and a usage error (an unknown flag, a
bad value, a missing data dir) is one line `error: ...` and exit 2, never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterledger import wire as P
from meterledger.cli import COMMANDS, Command, main


def _leaves(commands: tuple[Command, ...], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for c in commands:
        if c.children:
            yield from _leaves(c.children, (*path, c.name))
        else:
            yield (*path, c.name)


class _Parsers:
    """Records every ArgumentParser a command builds while it answers --help."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[argparse.ArgumentParser] = []
        original = argparse.ArgumentParser.__init__
        made = self.made

        def record(parser: argparse.ArgumentParser, *a: object, **k: object) -> None:
            original(parser, *a, **k)  # type: ignore[arg-type]
            made.append(parser)

        monkeypatch.setattr(argparse.ArgumentParser, "__init__", record)


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main([*argv, "--help"])
    except SystemExit as done:
        code = done.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code in (0, None), (argv, err)
    return out


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[list[str]]:
    """The command lines of `parser`'s leaves: its subcommands, recursively."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path
    for a in subs:
        for name, child in a.choices.items():
            yield from _walk(child, [*path, name])


def _all_commands(monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    found: list[list[str]] = []
    for leaf in _leaves(COMMANDS):
        rec = _Parsers(monkeypatch)
        _help(list(leaf), capsys)
        monkeypatch.undo()
        found += list(_walk(rec.made[0], list(leaf)))
    return found


def test_every_flag_of_every_command_has_help(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    commands = _all_commands(monkeypatch, capsys)
    assert ["fog", "devices"] in commands and ["chain", "rules", "register"] in commands
    silent: list[str] = []
    for argv in commands:
        rec = _Parsers(monkeypatch)
        _help(argv, capsys)
        for p in rec.made:
            for a in p._actions:
                if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                    continue
                if not a.help or a.help == argparse.SUPPRESS:
                    silent.append(f"{' '.join(argv)} {'/'.join(a.option_strings) or a.dest}")
        monkeypatch.undo()
    assert silent == [], "flags without help: " + ", ".join(silent)
    assert len(commands) >= 25


def test_an_unknown_flag_is_one_line_and_exit_2_for_every_command(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in _all_commands(monkeypatch, capsys):
        code = main([*argv, "--no-such-flag"])
        out, err = capsys.readouterr()
        assert code == 2, (argv, out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        # a command missing a required argument says that first
        assert "--no-such-flag" in lines[0] or "required" in lines[0], lines[0]


@pytest.mark.parametrize("argv,says", [
    (["fog", "run", "--data-dir", "{tmp}/none"], "run `meterledger fog init"),
    (["fog", "devices", "--data-dir", "{tmp}/none"], "run `meterledger fog init"),
    (["fog", "enroll", "--data-dir", "{tmp}/none", "--pub", "{pub}"],
     "run `meterledger fog init"),
    (["fog", "enroll", "--pub", "zz"], "not a SEC1 P-256 public key"),
    (["fog", "enroll", "--pub", "04" + "00" * 64], "not a SEC1 P-256 public key"),
    (["fog", "run", "--sim-compress", "0"], "--sim-compress"),
    (["meter", "sim", "--sim-clock", "{tmp}/none"], "no simulated clock there"),
    (["meter", "sim", "--sim-clock", "{tmp}", "--sim-compress", "9"], "drop --sim-compress"),
    (["meter", "sim", "--fog-data", "{tmp}/none"], "run `meterledger fog init"),
    (["broker", "--fog-data", "{tmp}/none"], "run `meterledger fog init"),
    (["chain", "suggestions", "--chain", "127.0.0.1:1"], "127.0.0.1:1"),
])
def test_user_errors_say_what_to_do_in_one_line(argv: list[str], says: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pub = P.SigningKey.generate().public_key.raw.hex()
    code = main([a.replace("{tmp}", str(tmp_path)).replace("{pub}", pub) for a in argv])
    out, err = capsys.readouterr()
    assert code in (1, 2), (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error"), err
    assert says in lines[0], lines[0]
