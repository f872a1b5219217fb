"""Pins the shared-memory layouts: changing any of these must bump a layout version."""

from __future__ import annotations

import pytest
from kit import unique_run_id

from perpbot.errors import LayoutError
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import (
    BOARD_LAYOUT_VERSION,
    FEED_DTYPE,
    GLOBAL_DTYPE,
    HEADER_DTYPE,
    PROC_DTYPE,
    SLOT_BODY_OFFSET,
    SLOT_BODY_STRUCT,
    SLOT_DTYPE,
    STATUS_LAYOUT_VERSION,
    board_layout,
    segment_names,
)
from perpbot.shm.segment import find_stale_segments, remove_segment


def test_slot_is_one_cache_line_with_pinned_offsets() -> None:
    assert SLOT_DTYPE.itemsize == 64
    assert [SLOT_DTYPE.fields[n][1] for n in SLOT_DTYPE.names] == [0, 8, 16, 24, 32, 40, 48, 56]
    assert SLOT_DTYPE.names == ("seq", "bid", "ask", "bid_size", "ask_size", "ts_exchange_ns",
                                "ts_recv_ns", "ts_write_ns")
    # the struct codec used on the hot path covers exactly the body after seq
    assert SLOT_BODY_OFFSET == 8 and SLOT_BODY_STRUCT.size == 56


def test_record_sizes_and_versions() -> None:
    assert HEADER_DTYPE.itemsize == 64
    assert GLOBAL_DTYPE.itemsize == 64
    assert PROC_DTYPE.itemsize == 112
    assert FEED_DTYPE.itemsize == 80
    assert (BOARD_LAYOUT_VERSION, STATUS_LAYOUT_VERSION) == (1, 4)


def test_board_offsets_are_cache_aligned() -> None:
    lay = board_layout(8, 500)
    assert lay.slots % 64 == 0 and lay.counters % 64 == 0
    assert lay.slot_offset(1, 0) - lay.slot_offset(0, 0) == 500 * 64
    assert lay.size == lay.slots + 8 * 500 * 64


def test_attach_checks_header_against_config() -> None:
    rid = unique_run_id()
    bname, sname = segment_names(rid)
    b = QuoteBoard.create(bname, ["a", "b"], ["BTC-PERP", "ETH-PERP"])
    try:
        with pytest.raises(LayoutError, match="venue table"):
            QuoteBoard.attach(bname, ["a", "c"], ["BTC-PERP", "ETH-PERP"])
        with pytest.raises(LayoutError, match="2 venues x 2 symbols"):
            QuoteBoard.attach(bname, ["a", "b", "c"], ["BTC-PERP", "ETH-PERP"])
        with pytest.raises(LayoutError, match="bad magic"):
            StatusBoard.attach(bname, ["a", "b"], ["BTC-PERP", "ETH-PERP"])
        with pytest.raises(LayoutError, match="does not exist"):
            QuoteBoard.attach(sname, ["a", "b"], ["BTC-PERP", "ETH-PERP"])
        ok = QuoteBoard.attach(bname, ["a", "b"], ["BTC-PERP", "ETH-PERP"])
        ok.close()
    finally:
        b.close()
        b.segment.unlink()


def test_segment_of_a_dead_launcher_is_found_stale() -> None:
    rid = unique_run_id()
    bname, _ = segment_names(rid)
    b = QuoteBoard.create(bname, ["a", "b"], ["BTC-PERP"])
    try:
        assert bname not in find_stale_segments()  # we are alive
        off = HEADER_DTYPE.fields["owner_pid"][1]
        b.segment.buf[off:off + 4] = (2**31 - 2).to_bytes(4, "little")  # no such process
        assert bname in find_stale_segments()
        remove_segment(bname)
        assert bname not in find_stale_segments()
    finally:
        b.close()
        b.segment.unlink()  # already removed: must not raise
