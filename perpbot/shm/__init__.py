"""Shared memory: the quote board and the status segment (layouts in `layout`)."""

from perpbot.shm.board import BoardWriter, ChangeCursor, Quote, QuoteBoard
from perpbot.shm.status import StatusBoard

__all__ = ["BoardWriter", "ChangeCursor", "Quote", "QuoteBoard", "StatusBoard"]
