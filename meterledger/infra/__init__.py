"""Plumbing the services share: SQLite, data directories, configuration, HTTP, metrics, clocks."""
