"""HTTP clients of the fog and chain APIs: what the audit tool, the fog's chain link and the dashboard use."""
