"""A writer process and a reader process hammer the same slots; no torn slot is ever seen."""

from __future__ import annotations

import multiprocessing as mp
import time

from kit import make_config, segments

from perpbot.shm.board import QuoteBoard

DURATION_S = 3.0


def _writer(name: str, venues: tuple[str, ...], symbols: tuple[str, ...], stop: object, n_out: object) -> None:
    board = QuoteBoard.attach(name, venues, symbols)
    w = board.writer(0)
    n = 0
    k = 1
    while not stop.is_set():  # type: ignore[attr-defined]
        for s in range(len(symbols)):
            # every field derives from k: a reader mixing two writes sees a mismatch
            w.write(s, float(k), k + 0.5, float(2 * k), float(3 * k), k, 4 * k)
            k += 1
            n += 1
    n_out.value = n  # type: ignore[attr-defined]
    w.release()
    board.close()


def _reader(name: str, venues: tuple[str, ...], symbols: tuple[str, ...], stop: object, out: object) -> None:
    board = QuoteBoard.attach(name, venues, symbols)
    reads = torn = changes = 0
    last = [0.0] * len(symbols)
    while not stop.is_set():  # type: ignore[attr-defined]
        for s in range(len(symbols)):
            q = board.read(0, s)
            if q is None:
                continue
            reads += 1
            k = q.bid
            if not (q.ask == k + 0.5 and q.bid_size == 2 * k and q.ask_size == 3 * k
                    and q.ts_exchange_ns == k and q.ts_recv_ns == 4 * k):
                torn += 1
            if k != last[s]:
                changes += 1
                last[s] = k
    out[:] = [reads, torn, changes]  # type: ignore[index]
    board.close()


def test_reader_never_observes_a_torn_slot() -> None:
    cfg = make_config()
    ctx = mp.get_context("spawn")
    with segments(cfg) as (board, _):
        stop = ctx.Event()
        n_written = ctx.Value("q", 0)
        result = ctx.Array("q", 3)
        args = (board.segment.name, cfg.venue_names, cfg.symbol_names, stop)
        wp = ctx.Process(target=_writer, args=(*args, n_written))
        rp = ctx.Process(target=_reader, args=(*args, result))
        wp.start()
        rp.start()
        try:
            time.sleep(DURATION_S)
        finally:
            stop.set()
            wp.join(30)
            rp.join(30)
        assert wp.exitcode == 0 and rp.exitcode == 0
        reads, torn, changes = result[:]
        assert n_written.value > 10_000 and reads > 10_000
        assert changes > 1000, "reader and writer barely overlapped; the test proved nothing"
        assert torn == 0
