"""Prometheus text exposition (format 0.0.4) shared by the fog and the chain node."""

from __future__ import annotations


def escape_label(value: str) -> str:
    """A label value as the exposition format writes it inside double quotes."""
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")
