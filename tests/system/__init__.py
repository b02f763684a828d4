"""Tests: whole stacks end to end (marker `system`)."""
