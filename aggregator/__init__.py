"""The dispatch center's service: the main dispatch chain (docs/PROTOCOL.md section 15) and the
applications on it.

chain/ledger.py        the Ledger seam: the interface applications and the service use, its
                       views and errors (a multi-party BFT backend plugs in behind it)
chain/app/             the deterministic state machine: state.py (what the rules read,
                       effects, the state root), validator.py (common checks), kinds/ (one
                       module per transaction kind)
chain/store/           block storage with the derived state: SQLite and its in-memory twin
chain/backends/        embedded.py: one sealer (the dispatch key), group-sealed blocks
chain/verify.py        replays a chain from genesis (verify-chain)
chain/service/         the process: node.py (data dir, key, lock, token), api.py (HTTP),
                       metrics.py, remote.py (a running node over HTTP)
dispatch/              the dispatch application over the Ledger seam: rules.py (TOML rule
                       base, suggest()), suggestions.py (store and approvals)
__main__.py            the CLI (`python -m aggregator`, `meterledger chain`)
"""

from meterledger.deps import require as _require

_require()  # one line, not a traceback, outside the venv
