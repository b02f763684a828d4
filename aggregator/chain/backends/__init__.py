"""Chain backends behind the Ledger seam: `embedded` (one sealer); a BFT engine plugs in beside it."""
