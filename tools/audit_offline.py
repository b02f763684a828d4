"""The offline checker's subcommand every bundle but a reading's shares (tools.audit's
`certificate` and `trade`): the bundle file, the trusted dispatch key(s), a text or JSON
verdict."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterledger import wire as P
from tools.audit import trusted_keys, verdict


def add_offline_parser(sub: Any, name: str, what: str, built_by: str, text: str) -> None:
    """The `NAME FILE --trust ... [--format]` subcommand that checks a `what` bundle
    (written by `built_by`) offline; `text` says what its text verdict is."""
    v = sub.add_parser(name, help=f"check a {what} bundle offline")
    v.add_argument("file", type=Path, help=f"the bundle (JSON) that `{built_by}` wrote")
    v.add_argument("--trust", action="append", required=True,
                   help="a trusted dispatch-chain public key (hex, 65 bytes); repeatable")
    v.add_argument("--format", choices=("text", "json"), default="text",
                   help=f"text: {text}; json: the verdict as an object for scripts "
                        "(default: text)")


def check_offline(args: argparse.Namespace, verify: Callable[[Any, list[P.PublicKey]], Any],
                  limit: int, checks: tuple[tuple[str, str], ...],
                  summary: Callable[[Any], str]) -> int:
    """Run an offline subcommand of `add_offline_parser`: 0 and the summary (or the verdict
    as JSON with the checks' names), 1 naming the failed check, 2 for bad input."""
    trusted = trusted_keys(args.trust)
    if trusted is None:
        return 2
    r = verdict(args.file, args.format, lambda doc: verify(doc, trusted), limit)
    if isinstance(r, int):
        return r
    if args.format == "json":
        print(json.dumps({"verified": True, **dataclasses.asdict(r),
                          "checks": [name for name, _ in checks]}))
    else:
        print(summary(r))
    return 0
