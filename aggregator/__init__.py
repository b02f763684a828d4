"""The dispatch center's service: the main dispatch chain (docs/PROTOCOL.md section 15).

ledger     the Ledger interface (the seam a multi-party BFT backend plugs into), the data it
           answers with, the error hierarchy, and the transaction rules (Validator)
store      block storage with the state derived from the blocks: SQLite and an in-memory twin
embedded   the embedded backend: one sealer (the dispatch key), group-sealed blocks
verify     replays a chain from genesis (verify-chain)
api        the HTTP JSON API; metrics: its Prometheus text
rules      rule files (TOML) and suggest(), the pure evaluation against anchored aggregates
suggestions  the suggestion store and the dispatcher's approvals (docs/PROTOCOL.md section 19)
node       the data dir (key, chain.db, lock, token); __main__: the CLI
"""
