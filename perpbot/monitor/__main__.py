import sys

from perpbot.monitor import main

sys.exit(main())
