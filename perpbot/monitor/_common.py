"""Constants shared by the monitor's modules."""

from __future__ import annotations

from perpbot.shm.layout import TradeRingState
from perpbot.summary import DEGRADED_AFTER_NS

#: a heartbeat older than this marks a live process DEGRADED on screen (as in `perpbot-ctl status`)
DEGRADED_AFTER_MS = DEGRADED_AFTER_NS / 1e6
#: rows kept for the opportunity and trade lists
N_SHOW = 8
#: columns of the text latency histogram
HIST_COLUMNS = 16
TRADE_OPEN, TRADE_CLOSED = TradeRingState.OPEN, TradeRingState.CLOSED
_MS = 1_000_000


