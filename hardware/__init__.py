"""Host-side hardware tooling: the MicroPython VM harness and hardware-in-the-loop helpers."""
