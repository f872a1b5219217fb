"""`python -m perpbot.sim --run-dir DIR --slot N`: the same as `python -m perpbot.sim.process`."""

import sys

from perpbot.sim.process import main

sys.exit(main())
