"""Tests: the MicroPython firmware, on CPython and in the real MicroPython VM."""
