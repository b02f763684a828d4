"""The command-line parser every MeterLedger command uses: argparse, except that a usage
error is one line on stderr, `error: PROG: what was wrong`, and exit status 2 (argparse's
own prints the whole usage first). A missing subcommand names the valid ones."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {' '.join(message.split())}{self._choices(message)}",
              file=sys.stderr)
        sys.exit(2)

    def _choices(self, message: str) -> str:
        """' (choose from a, b)' when `message` says this parser's subcommand is missing."""
        if not message.startswith("the following arguments are required"):
            return ""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and action.dest in message:
                return f" (choose from {', '.join(action.choices)})"
        return ""
