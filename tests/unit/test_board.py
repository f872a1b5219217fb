"""Seqlock board: single-process semantics and change detection."""

from __future__ import annotations

from kit import make_config, segments

from perpbot.shm.board import QuoteBoard
from perpbot.shm.layout import SEQ_STRUCT


def test_write_then_read_round_trips_with_stamps() -> None:
    cfg = make_config()
    with segments(cfg) as (board, _):
        assert board.read(0, 0) is None
        w = board.writer(1)
        ts_write = w.write(2, 100.0, 100.5, 1.5, 2.5, 123, 456)
        q = board.read(1, 2)
        assert q is not None
        assert (q.bid, q.ask, q.bid_size, q.ask_size) == (100.0, 100.5, 1.5, 2.5)
        assert (q.ts_exchange_ns, q.ts_recv_ns) == (123, 456)
        assert q.ts_write_ns == ts_write and q.seq == 2
        w.release()


def test_reader_refuses_a_slot_left_mid_write() -> None:
    cfg = make_config()
    with segments(cfg) as (board, _):
        w = board.writer(0)
        w.write(0, 1.0, 2.0, 1.0, 1.0, 1, 1)
        off = board.layout.slot_offset(0, 0)
        SEQ_STRUCT.pack_into(board.segment.buf, off, 3)  # odd: a writer died between its two seq stores
        assert board.read(0, 0) is None
        # a restarted writer closes the torn slot and continues monotonically
        w2 = board.writer(0)
        w2.write(0, 5.0, 6.0, 1.0, 1.0, 1, 1)
        q = board.read(0, 0)
        assert q is not None and q.bid == 5.0 and q.seq == 6
        w.release()
        w2.release()


def test_change_cursor_reports_only_changed_slots() -> None:
    cfg = make_config()
    with segments(cfg) as (board, _):
        cur = board.cursor()
        assert cur.poll() == []
        w0, w2 = board.writer(0), board.writer(2)
        w0.write(1, 1.0, 2.0, 1.0, 1.0, 1, 1)
        w0.write(1, 1.1, 2.0, 1.0, 1.0, 1, 1)
        w2.write(0, 1.0, 2.0, 1.0, 1.0, 1, 1)
        assert sorted(cur.poll()) == [(0, 1), (2, 0)]
        assert cur.poll() == []
        w0.release()
        w2.release()


def test_lapped_cursor_falls_back_to_rescanning_that_venue() -> None:
    cfg = make_config()
    with segments(cfg) as (board, _):
        cur = board.cursor()
        w = board.writer(3)
        for i in range(board.layout.ring_capacity + 5):
            w.write(i % 2, 1.0, 2.0, 1.0, 1.0, 1, 1)
        changes = cur.poll()
        assert cur.rescans == 1
        assert sorted(changes) == [(3, s) for s in range(len(cfg.symbols))]
        w.release()


def test_second_attach_sees_writes_of_first() -> None:
    cfg = make_config()
    with segments(cfg) as (board, _):
        other = QuoteBoard.attach(board.segment.name, cfg.venue_names, cfg.symbol_names)
        w = board.writer(0)
        w.write(0, 10.0, 11.0, 1.0, 1.0, 1, 1)
        q = other.read(0, 0)
        assert q is not None and q.ask == 11.0
        w.release()
        other.close()
