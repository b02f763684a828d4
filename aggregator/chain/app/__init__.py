"""The chain's deterministic state machine: `state` (what the rules read, effects, the state
root), `validator` (the common checks) and `kinds` (one module per transaction kind)."""
