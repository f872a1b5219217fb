"""The one clock every process uses for its latency stamps.

`time.monotonic_ns` and `time.perf_counter_ns` both read CLOCK_MONOTONIC on
Linux, so stamps taken in different processes on one host are comparable.
Exchange timestamps are epoch time and are kept apart (`ts_exchange_ns`).
"""

import time
from collections.abc import Callable

Clock = Callable[[], int]

now_ns: Clock = time.monotonic_ns
wall_ns: Clock = time.time_ns
