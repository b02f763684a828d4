"""Cooked data from the log: VEE (`vee`), feeders, estimates and aggregates (`feeders`, `cooker`)."""
