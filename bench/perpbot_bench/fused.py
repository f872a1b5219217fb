"""The floor for the path: the whole of it fused inline in the websocket frame callback.

    result = run(cfg, urls, duration_s=10)                        # in this process
    result = run_in_subprocess("config.yaml", urls, 10, cpu=1)    # in a fresh, pinned process
    python -m perpbot_bench.fused --config FILE --urls-json JSON --duration S --out FILE [--cpu N]

One uvloop process, the same feed connections, parsers, scanner check, exec
core, risk gate and paper venues as the baseline (`perpbot_bench.baseline`),
but no bus and no task between them: for each quote of a frame, inside the
callback, synchronously:

    parse -> board write (the paper venues' price source) -> latest-quote table
    -> the scanner's check for that symbol (`EdgeCheck`) -> `ExecCore.decide`
    (re-read, edge, `choose_size`, `RiskGate.check`) -> `ExecCore.dispatch`

Handing the legs to the paper venue: `PaperVenue.place_order` is a
coroutine and the venue has no public synchronous core (its `_receive` is
private, and calling it would skip the venue's latency model, fault draws
and matching of resting orders). So `dispatch` stamps `ts_dispatch` and
starts both `place_order` coroutines with `asyncio.gather`, exactly as
PerpBot's engine (`Engine._send`) and the baseline do; they run on the next
loop pass, and their fills are booked by a done callback. The three designs'
`tick_to_order` thus end at the same point, and no await ever sits on the
fused path.

Stamps: ts_recv (callback entered), ts_detect (the check found an
opportunity), ts_decide (the gate approved both legs), ts_dispatch (just
before the legs are handed over). Hops: tick_to_signal, exec_to_decide
(ts_decide - ts_detect: the exec work, there being no hop to exec),
decide_to_dispatch, tick_to_order. There is no publish, so no
feed_recv_to_write, board_write_to_detect or detect_to_exec.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from perpbot.config import Config
from perpbot.feeds.spec import BBO
from perpbot.shm.board import Quote
from perpbot_bench.baseline import (
    EdgeCheck,
    FeedConnection,
    FeedFactory,
    Session,
    VenueLink,
    design_main,
    run_module_in_subprocess,
    run_session,
)


class FusedFeed(FeedConnection):
    """A feed connection whose frame callback runs the whole path."""

    def __init__(self, session: Session, link: VenueLink, url: str, symbols: list[str], check: EdgeCheck) -> None:
        super().__init__(session, link, url, symbols)
        self._quotes = session.quotes
        self._evaluate = check.evaluate
        self._core = session.core
        self._rec = session.rec
        self._clock = session.clock

    def on_quotes(self, parsed: list[BBO], t_recv: int) -> None:
        vi = self.venue_idx
        quotes = self._quotes
        for q in parsed:
            m = self._sym_get(q[0])
            if m is None:
                self.unknown_symbols += 1
                continue
            s = m[0]
            # the paper venues fill at the board's prices: written before any order can meet it
            self._write(s, q[1], q[2], q[3], q[4], q[5], t_recv)
            quotes[s][vi] = Quote(0, q[1], q[2], q[3], q[4], q[5], t_recv, 0)
            e = self._evaluate(s, t_recv)
            if e is None:
                continue
            ts_detect = self._clock()
            core = self._core
            d = core.decide(s, e.buy_venue, e.sell_venue, t_recv, ts_detect, ts_detect)
            if d is not None:
                core.dispatch(d).add_done_callback(core.finish_callback(d))
            rec = self._rec
            rec.opportunities += 1
            rec.tick_to_signal.add(ts_detect - t_recv)


def setup_fused(session: Session) -> FeedFactory:
    """One scanner check shared by every connection (it keeps the repeat filter); the feeds' factory."""
    check = EdgeCheck(session.cfg, session.quotes, session.connected)

    def factory(s: Session, link: VenueLink, url: str, symbols: list[str]) -> FeedConnection:
        return FusedFeed(s, link, url, symbols, check)

    return factory


def run(cfg: Config, urls: Mapping[str, str], duration_s: float) -> dict[str, Any]:
    """Run the fused path in this process for `duration_s` against the market at `urls`; its result."""
    import uvloop

    return uvloop.run(run_session(cfg, urls, duration_s, "fused", setup_fused))


def run_in_subprocess(cfg_path: str | os.PathLike[str], urls: Mapping[str, str], duration_s: float, *,
                      cpu: int | None = None) -> dict[str, Any]:
    """The fused path in a fresh process (pinned to core `cpu` if given), so this process is not measured."""
    return run_module_in_subprocess("perpbot_bench.fused", cfg_path, urls, duration_s, cpu=cpu)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m perpbot_bench.fused`."""
    return design_main("fused", run, argv)


if __name__ == "__main__":
    sys.exit(main())
