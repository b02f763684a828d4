"""Coverage-guided fuzzing of every parser and verifier (issue 13), kept in the repository.

    python -m tools.fuzz --list
    python -m tools.fuzz --target message --seconds 60      # atheris (the `fuzz` extra)
    python -m tools.fuzz --target all --seconds 60          # each target in turn: make fuzz
    python -m tools.fuzz --target api-chain --seconds 60    # schemathesis on the OpenAPI doc
    python -m tools.fuzz --replay                           # seeds and regressions, no fuzzer

One module per target family: `wire` (cbor, message, modbus), `chain` (chain-tx,
chain-blocks), `files` (audit, config, rules), `ingest` (signed hostile messages through a
fog on SQLite) and `api` (schemathesis on api-fog and api-chain). A target's one-input
function is plain Python over bytes (`base.Draw` makes structured choices from them), so it
runs under atheris, under the plain mutator here (`--engine plain`), and in
tests/fuzz, which replays the seeds and `regressions/<target>/` without atheris. Seeds come
from tests/vectors/golden.json and `seeds` (a valid message of every type, every
transaction kind, a valid proof bundle, a valid rule file).

Nothing here is imported by the package itself: the runner imports a target's module only
inside atheris' instrumentation, so the code under test is instrumented.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tools.fuzz.base import Target

# target name -> the module that defines it (each module's TARGETS)
MODULES: dict[str, str] = {
    "cbor": "tools.fuzz.wire", "message": "tools.fuzz.wire", "modbus": "tools.fuzz.wire",
    "chain-tx": "tools.fuzz.chain", "chain-blocks": "tools.fuzz.chain",
    "audit": "tools.fuzz.files", "config": "tools.fuzz.files", "rules": "tools.fuzz.files",
    "ingest": "tools.fuzz.ingest",
}
# the HTTP APIs (schemathesis, not a one-input function): target name -> service
APIS: dict[str, str] = {"api-fog": "fog", "api-chain": "chain"}
NAMES = (*MODULES, *APIS)


def target(name: str) -> Target:
    """The one-input target `name` (its module imported now)."""
    module = importlib.import_module(MODULES[name])
    for t in module.TARGETS:
        if t.name == name:
            found: Target = t
            return found
    raise KeyError(name)


def targets() -> list[Target]:
    return [target(n) for n in MODULES]
