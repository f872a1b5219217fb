"""Which venue implementation serves which mode, and the factory the process uses."""

from __future__ import annotations

from collections.abc import Callable

from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.errors import ConfigError
from perpbot.exec.venues.base import Venue
from perpbot.exec.venues.paper import PaperVenue
from perpbot.shm.board import QuoteBoard

#: modes whose orders go to the paper venue (DESIGN.md, modes)
PAPER_MODES = ("demo", "replay", "paper")


def make_venues(cfg: Config, board: QuoteBoard, *, clock: Callable[[], int] = now_ns) -> list[Venue]:
    """One venue object per configured venue, in board order (list index = board venue index)."""
    if cfg.mode not in PAPER_MODES:
        raise ConfigError("$.mode", f"mode {cfg.mode!r} has no trading venue in this build; "
                          f"allowed: {', '.join(PAPER_MODES)}")
    return [PaperVenue(name, i, cfg, board, clock=clock) for i, name in enumerate(cfg.venue_names)]
