"""Tests: the dispatch chain and its applications."""
