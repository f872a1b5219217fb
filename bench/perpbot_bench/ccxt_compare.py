"""ccxt.pro's own websocket client, the feed a user would otherwise pick, on the same firehose as PerpBot's.

The firehose is `perpbot_bench.throughput`'s loopback server in stamped mode:
Binance USDⓈ-M combined-stream bookTicker frames, BTCUSDT and ETHUSDT
alternating, sent as fast as the client reads. Two fields carry the
measurement through ccxt untouched (ccxt keeps the venue's dict as the
ticker's `info`):

- `u` (the update id, which ccxt does not interpret) = `SEND_STAMP_BASE +
  now_ns()` taken when the server handed the frame's blob (64 frames) to its
  socket: the send stamp;
- `E` / `T` (event / transaction time, ms) = `T0_MS + i`, i the frame's place
  in the stream (which loops every `STREAM` frames): how far ccxt has read.

The client, in its own process (uvloop, as the feed process runs), is
`binanceusdm.watch_bids_asks` with its websocket URL pointed at the loopback
server and markets preset from ccxt's own recorded markets (nothing calls a
venue), followed by what PerpBot's generic ccxt feed does after each wake-up:
sweep ccxt's cache for fresh updates (`fresh_updates`) and convert each to a
BBO (`ticker_to_bbo`). Per fresh update the "user" stamp is `now_ns()` right
after that conversion; send -> user latency is that minus the send stamp. At
saturation this includes the time frames wait in socket buffers and in
ccxt's own, which is what a user of ccxt.pro at that rate would see.

Measured from the first update on: `seconds / 4` of warm-up, then a window of
`seconds / 2` between two wake-ups.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
from contextlib import ExitStack
from multiprocessing.connection import Connection
from typing import Any

from perpbot.clock import now_ns
from perpbot_bench.floors import START_TIMEOUT_S, cpu_pair
from perpbot_bench.stats import Hist
from perpbot_bench.throughput import (
    ROOT,
    SEND_STAMP_BASE,
    STREAM,
    T0_MS,
    Firehose,
    feed_throughput,
    firehose,
    machine_line,
    stop_process,
)

MARKETS = ROOT / "tests" / "data" / "ccxt" / "binanceusdm-markets.json"
#: the firehose's Binance symbols as ccxt unified symbols
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT")


async def _watch(port: int, seconds: float, sent: Any) -> dict[str, Any]:
    from perpbot.feeds.ccxt_generic import (
        drop_ws_clients,
        fresh_updates,
        load_markets_file,
        make_exchange,
        market_units,
        ticker_to_bbo,
    )

    ex = make_exchange("binanceusdm", markets=load_markets_file(MARKETS), ws_url=f"ws://127.0.0.1:{port}/public/ws")
    symbols = list(SYMBOLS)
    units = {s: market_units(ex.markets[s]) for s in symbols}
    seen: dict[str, object] = dict.fromkeys(symbols)
    hist = Hist()
    clock = now_ns
    start_ns = end_ns = 0  # the window's bounds, set at the first update
    t_start = t_end = 0
    progress = 0  # frames ccxt has read, counted from its first update (the stream loops)
    last_i = -1
    p_start = s_start = 0
    wakeups = updates = 0
    try:
        while True:
            returned = await asyncio.wait_for(ex.watch_bids_asks(symbols), START_TIMEOUT_S)
            t_wake = clock()
            fresh = fresh_updates(returned, getattr(ex, "bidsasks", None), seen)
            counted = t_start != 0
            ahead = 0
            for sym, t in fresh:
                q = ticker_to_bbo(sym, t, units[sym])
                t_user = clock()
                assert q is not None
                info = t["info"]
                i = int(info["E"]) - T0_MS
                if last_i < 0:
                    last_i = i
                # a fresh update is never older than what was read before it, so it is ahead by less
                # than half a loop; the other symbol's latest in the same wake-up may be just behind
                d = (i - last_i) % STREAM
                if d < STREAM // 2:
                    ahead = max(ahead, d)
                if counted:
                    hist.add(t_user - (int(info["u"]) - SEND_STAMP_BASE))
                    updates += 1
            progress += ahead
            last_i = (last_i + ahead) % STREAM
            if not start_ns:
                start_ns = t_wake + int(seconds * 0.25e9)
                end_ns = t_wake + int(seconds * 0.75e9)
            if counted:
                wakeups += 1
                if t_wake >= end_ns:
                    t_end = t_wake
                    break
            elif t_wake >= start_ns:
                t_start, p_start, s_start = t_wake, progress, int(sent[0])
        p_end, s_end = progress, int(sent[0])
    finally:
        # the firehose never answers a close frame: do not wait for it long
        try:
            await drop_ws_clients(ex, timeout_s=0.2)
        except Exception:
            pass
        try:
            await asyncio.wait_for(ex.close(), 2.0)
        except Exception:
            pass
    import ccxt

    dt = (t_end - t_start) / 1e9
    return {
        "client": "ccxt.pro binanceusdm.watch_bids_asks", "ccxt_version": str(ccxt.__version__),
        "frames_per_s": (p_end - p_start) / dt, "server_frames_per_s": (s_end - s_start) / dt,
        "updates_per_s": updates / dt, "wakeups_per_s": wakeups / dt,
        "frames_per_wakeup": (p_end - p_start) / wakeups if wakeups else None,
        "window_s": round(dt, 3), "latency": hist.summary(),
    }


def _client(port: int, seconds: float, sent: Any, cpu: int | None, conn: Connection) -> None:
    import os

    import uvloop

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        conn.send(uvloop.run(_watch(port, seconds, sent)))
    except BaseException as e:
        conn.send({"error": repr(e)})
        raise


def ccxt_pro_feed(seconds: float, *, feed_cpu: int | None = 1, server_cpu: int | None = 0,
                  hose: Firehose | None = None) -> dict[str, Any]:
    """ccxt.pro on the Binance firehose, in its own process (see the module docstring).

    Returns {"frames_per_s" (frames ccxt read, from the stream position of what it hands
    over), "server_frames_per_s" (frames the server handed to its socket: the same rate
    seen from the other end, within the socket buffers), "updates_per_s" (fresh updates
    that reached user code), "wakeups_per_s" (returns of watch_bids_asks),
    "frames_per_wakeup", "latency" (send -> user summary), "window_s", "cpus", ...}.
    `hose`: a running stamped Binance `firehose` to use instead of starting one.
    """
    server_cpu, feed_cpu, note = cpu_pair(server_cpu, feed_cpu)
    ctx = mp.get_context("spawn")
    with ExitStack() as stack:
        if hose is None:
            hose = stack.enter_context(firehose("binanceusdm", stamp=True, cpu=server_cpu))
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_client, args=(hose.port, seconds, hose.sent, feed_cpu, theirs), daemon=True,
                           name="ccxt-pro-client")
        proc.start()
        theirs.close()
        try:
            if not ours.poll(START_TIMEOUT_S + seconds):
                raise RuntimeError(f"the ccxt.pro client reported nothing within {START_TIMEOUT_S + seconds:.0f} s")
            out: dict[str, Any] = ours.recv()
        finally:
            stop_process(proc, ours)
    if "error" in out:
        raise RuntimeError(f"the ccxt.pro client failed: {out['error']}")
    out["cpus"] = {"server": server_cpu, "client": feed_cpu}
    if note:
        out["note"] = note
    return out


def compare_feeds(seconds: float, *, feed_cpu: int | None = 1, server_cpu: int | None = 0) -> dict[str, Any]:
    """ccxt.pro and PerpBot's real feed process, one after the other, on the same stamped firehose server.

    {"ccxt": ccxt_pro_feed(...), "perpbot": feed_throughput("binanceusdm", ..., stamp=True),
     "ratio": perpbot frames/s over ccxt frames/s}
    """
    server_cpu, feed_cpu, _ = cpu_pair(server_cpu, feed_cpu)
    with firehose("binanceusdm", stamp=True, cpu=server_cpu) as hose:
        ccxt = ccxt_pro_feed(seconds, feed_cpu=feed_cpu, server_cpu=server_cpu, hose=hose)
        perpbot = feed_throughput("binanceusdm", seconds, feed_cpu=feed_cpu, server_cpu=server_cpu, stamp=True,
                                  hose=hose)
    ratio = perpbot["frames_per_s"] / ccxt["frames_per_s"] if ccxt["frames_per_s"] else None
    return {"ccxt": ccxt, "perpbot": perpbot, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="ccxt.pro vs PerpBot's feed process on one Binance firehose")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args(argv)
    r = compare_feeds(args.seconds)
    c, f = r["ccxt"], r["perpbot"]
    lat = c["latency"]
    print(machine_line())
    print(f"ccxt.pro {c['ccxt_version']}: {c['frames_per_s']:,.0f} frames/s read "
          f"(server sent {c['server_frames_per_s']:,.0f}/s), {c['updates_per_s']:,.0f} updates/s and "
          f"{c['wakeups_per_s']:,.1f} wake-ups/s in user code; send->user p50 {lat['p50_us']:,} us, "
          f"p99 {lat['p99_us']:,} us")
    print(f"perpbot feed process: {f['frames_per_s']:,.0f} frames/s read, parsed and written")
    print(f"ratio: {r['ratio']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
