"""The main dispatch chain: the Ledger seam, the state machine, storage, backends, replay and the service."""
