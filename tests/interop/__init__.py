"""Tests: third-party implementations (pycose, pymodbus) against ours."""
