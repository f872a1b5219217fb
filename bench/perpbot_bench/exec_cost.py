"""What exec's decision costs when it is the only thing running: no queue, no wake-up.

The real `Engine` with real paper venues, a real journal (SQLite, WAL) and a
real board and status segment, driven in process: each opportunity is handed
to `on_opportunity` the moment it is made, so the engine's own stamps
(received -> decided -> dispatched) measure the work alone. The trade is then
flattened (not measured) so positions never reach a limit.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from perpbot.clock import now_ns
from perpbot.config import Config
from perpbot.exec.engine import Engine
from perpbot.exec.journal import Journal
from perpbot.exec.venues.paper import PaperVenue
from perpbot.messages import Opportunity
from perpbot.shm import QuoteBoard, StatusBoard
from perpbot.shm.layout import FeedState, Hop, segment_names
from perpbot_bench.stats import summarize
from perpbot_bench.workload import Workload, write_config


def exec_cost(n: int = 500, *, workload: Workload | None = None) -> dict[str, Any]:
    """Summaries of exec_to_decide and decide_to_dispatch over `n` decisions, and their p50 sum."""
    tmp = Path(tempfile.mkdtemp(prefix="pbbexec"))
    try:
        cfg = write_config(workload or Workload(venues=2, symbols=1), tmp / "c.yaml",
                           run_root=tmp, data_dir=tmp / "data")
        return asyncio.run(_measure(cfg, tmp, n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _measure(cfg: Config, tmp: Path, n: int) -> dict[str, Any]:
    bname, sname = segment_names(f"pbbexec{now_ns() % 10**9}")
    board = QuoteBoard.create(bname, cfg.venue_names, cfg.symbol_names)
    status = StatusBoard.create(sname, cfg.venue_names, cfg.symbol_names)
    journal = Journal(tmp / "journal.sqlite", run_id="bench")
    venues = [PaperVenue(v, i, cfg, board) for i, v in enumerate(cfg.venue_names)]
    writers = [board.writer(i) for i in range(len(venues))]
    try:
        for i, v in enumerate(venues):
            await v.connect()
            status.set_feed_state(i, FeedState.CONNECTED)
        engine = Engine(cfg, board, status, journal, venues, run_id="bench")
        await engine.start()
        for k in range(n):
            t = now_ns()
            # the cheap venue's ask and the dear venue's bid, 50 bps apart: 40 bps after fees
            writers[0].write(0, 59999.9, 60000.0, 1.0, 1.0, 1, t)
            writers[1].write(0, 60300.0, 60300.1, 1.0, 1.0, 1, t)
            opp = Opportunity(k, 0, 0, 1, 60000.0, 60300.0, 1.0, 1.0, 40.0, 1, t, t, t)
            await engine.on_opportunity(opp, now_ns())
            await engine.flatten()
        await engine.capital_settled()
        decide = summarize(engine.hists[Hop.EXEC_TO_DECIDE].counts)
        dispatch = summarize(engine.hists[Hop.DECIDE_TO_DISPATCH].counts)
        return {"exec_to_decide": decide, "decide_to_dispatch": dispatch,
                "decision_p50_us": round((decide["p50_us"] or 0) + (dispatch["p50_us"] or 0), 3)}
    finally:
        journal.close()
        for w in writers:
            w.release()
        for v in venues:
            await v.close()
        for seg in (board, status):
            seg.close()
            seg.segment.unlink()
