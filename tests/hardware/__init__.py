"""Tests: emulators, the flash tool and the hardware-in-the-loop door."""
