"""The fog's RFC 9162 log on SQLite (`store`) and its signed checkpoints side-chain (`checkpoints`)."""
