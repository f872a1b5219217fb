#!/usr/bin/env python3
"""Frames per second one real feed process sustains: socket read -> parse -> board write.

    .venv/bin/python bench/feed_throughput.py [--venue binanceusdm ...] [--seconds 8]

For each venue protocol a loopback "firehose" server (one process) sends a
pre-encoded stream of that venue's own quote frames as fast as the socket
takes them; the real feed process reads them into a real shared-memory board.
The harness is `perpbot_bench.throughput` (`feed_throughput()`); this script
is its command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # perpbot_bench, installed or not

from perpbot_bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
