"""Change detection on a large board (8 venues x 500 symbols): per-venue ring vs full scan.

DESIGN.md asks that change detection not rescan the board per update and that
the mechanism be picked by benchmark. Both run on the same board with one slot
changed per pass: the ring reads 8 counters and one ring entry; the baseline
compares every slot's seq with a vectorised numpy scan.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from kit import unique_run_id

from perpbot.shm import QuoteBoard
from perpbot.shm.layout import SLOT_DTYPE, segment_names

VENUES = [f"v{i}" for i in range(8)]
SYMBOLS = [f"S{i}-PERP" for i in range(500)]


@pytest.fixture
def big_board() -> Iterator[QuoteBoard]:
    board = QuoteBoard.create(segment_names(unique_run_id())[0], VENUES, SYMBOLS)
    yield board
    board.close()
    board.segment.unlink()


def test_change_ring_poll_8x500(benchmark, big_board: QuoteBoard) -> None:
    w = big_board.writer(5)
    cur = big_board.cursor()
    k = [0]

    def one() -> list[tuple[int, int]]:
        k[0] = (k[0] + 7) % 500
        w.write(k[0], 1.0, 2.0, 1.0, 1.0, 1, 1)
        return cur.poll()

    assert len(one()) == 1
    benchmark(one)
    w.release()


def test_baseline_full_scan_8x500(benchmark, big_board: QuoteBoard) -> None:
    w = big_board.writer(5)
    lay = big_board.layout
    view = np.ndarray((lay.n_venues, lay.n_symbols), SLOT_DTYPE, buffer=big_board.segment.buf, offset=lay.slots)
    last = view["seq"].copy()
    k = [0]

    def one() -> list[tuple[int, int]]:
        k[0] = (k[0] + 7) % 500
        w.write(k[0], 1.0, 2.0, 1.0, 1.0, 1, 1)
        seq = view["seq"]
        changed = np.nonzero(seq != last)
        last[changed] = seq[changed]
        return list(zip(*(a.tolist() for a in changed)))

    assert len(one()) == 1
    benchmark(one)
    view = None  # release the export before the segment closes
    w.release()
