"""Tests: the shared library's infra, the console script, the tools and the layout."""
