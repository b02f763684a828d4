"""``python -m hardware.mpvm script.py``: run a script in the MicroPython VM."""

import sys

from hardware.mpvm import main

sys.exit(main())
