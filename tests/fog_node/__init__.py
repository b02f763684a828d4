"""Tests: the fog node, part by part."""
