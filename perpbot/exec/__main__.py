"""`python -m perpbot.exec` is `python -m perpbot.exec.process`."""

import sys

from perpbot.exec.process import main

sys.exit(main())
