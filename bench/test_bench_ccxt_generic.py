"""The generic ccxt.pro feed against the native picows + orjson path, on the same loopback stream.

    .venv/bin/pytest bench/test_bench_ccxt_generic.py -s          # both scenarios, printed
    .venv/bin/python bench/test_bench_ccxt_generic.py [--frames N] [--rate-hz R] [--burst N]

A server process (its own core when the machine has two) speaks Binance
USDⓈ-M combined-stream bookTicker on any path, so that ccxt can use its own
routed path (`/public/ws/0`) and picows the demo market's (`/public/stream`).
Once a client subscribes it sends frames alternating BTCUSDT and ETHUSDT whose
update id `u` is the send time (`time.monotonic_ns`: CLOCK_MONOTONIC,
comparable across processes on one host) and whose exchange time `E` counts
the frame number on top of a fixed epoch.

Clients, each against a fresh server, under uvloop as the feed process runs:

- native: `perpbot.feeds.binanceusdm.parse` in picows' frame callback, which
  is what the native feed process does before its board write;
- ccxt: ccxt.pro `binanceusdm.watch_bids_asks` with preset markets, then the
  conflation sweep and conversion of `perpbot.feeds.ccxt_generic`.

"user" is the moment the quote is a converted BBO, ready for the board.
Scenarios: `paced` (R frames/s: send -> user latency) and `burst` (N frames
back to back: how many updates reach the user and at what rate; ccxt
conflates what arrives while its consumer is busy, so it may deliver fewer
updates than were sent, always ending with the latest). Nothing is asserted
about timing; the numbers are printed with the machine they ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import picows
import pytest
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the server runs as a script

from perpbot.clock import now_ns  # noqa: E402
from perpbot.feeds.binanceusdm import parse  # noqa: E402
from perpbot.feeds.ccxt_generic import (  # noqa: E402
    fresh_updates,
    load_markets_file,
    make_exchange,
    market_units,
    ticker_to_bbo,
)

MARKETS = ROOT / "tests" / "data" / "ccxt" / "binanceusdm-markets.json"
EPOCH_MS = 1_790_000_000_000  # `E` = EPOCH_MS + frame number
SYMBOLS = (("BTCUSDT", "btcusdt", 60000.0, "BTC/USDT:USDT"), ("ETHUSDT", "ethusdt", 3000.0, "ETH/USDT:USDT"))

pytestmark = pytest.mark.bench


# -- the server (its own process) -------------------------------------------------------------


def frame(i: int) -> bytes:
    sym, stream, px, _ = SYMBOLS[i % 2]
    bid = px + (i % 97) * 0.1  # moves every frame, never crossed
    return (
        f'{{"stream":"{stream}@bookTicker","data":{{"e":"bookTicker","u":{time.monotonic_ns()},"s":"{sym}",'
        f'"b":"{bid:.1f}","B":"1.500","a":"{bid + 0.1:.1f}","A":"2.500","T":{EPOCH_MS + i},"E":{EPOCH_MS + i}}}}}'
    ).encode()


async def serve(mode: str, frames: int, rate_hz: float) -> None:
    done = asyncio.Event()

    class Streamer(picows.WSListener):
        def __init__(self) -> None:
            self.transport: picows.WSTransport | None = None
            self.started = False
            self.writable = asyncio.Event()
            self.writable.set()

        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            self.transport = transport

        def pause_writing(self) -> None:
            self.writable.clear()

        def resume_writing(self) -> None:
            self.writable.set()

        def on_ws_frame(self, transport: picows.WSTransport, f: picows.WSFrame) -> None:
            if f.msg_type is picows.WSMsgType.CLOSE:
                transport.disconnect()
                return
            if f.msg_type is not picows.WSMsgType.TEXT:
                return
            msg = orjson.loads(f.get_payload_as_bytes())
            transport.send(picows.WSMsgType.TEXT, orjson.dumps({"result": None, "id": msg.get("id")}))
            if not self.started:
                self.started = True
                asyncio.get_running_loop().create_task(self.stream())

        def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
            done.set()

        async def stream(self) -> None:
            tr = self.transport
            assert tr is not None
            await asyncio.sleep(0.2)  # the client is subscribed and idle
            if mode == "paced":
                period_ns = int(1e9 / rate_hz)
                start = time.monotonic_ns()
                for i in range(frames):
                    delay = (start + i * period_ns - time.monotonic_ns()) / 1e9
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tr.send(picows.WSMsgType.TEXT, frame(i))
            else:
                for i in range(frames):
                    if not self.writable.is_set():
                        await self.writable.wait()
                    tr.send(picows.WSMsgType.TEXT, frame(i))
                    if i % 64 == 63:
                        await asyncio.sleep(0)

    server = await picows.ws_create_server(lambda _req: Streamer(), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await done.wait()
    server.close()


# -- the clients ------------------------------------------------------------------------------


@dataclass
class Result:
    client: str
    mode: str
    sent: int
    delivered: int  # updates that reached the user (ccxt may conflate)
    latencies_ns: list[int]
    #: (frame number, user stamp) of the first and last update delivered
    first: tuple[int, int]
    last: tuple[int, int]

    def row(self) -> str:
        lat = sorted(self.latencies_ns)

        def us(q: float) -> str:
            return f"{lat[min(len(lat) - 1, int(q * len(lat)))] / 1000:.1f}" if lat else "-"

        elapsed_s = (self.last[1] - self.first[1]) / 1e9
        # frames the user side got through per second, whether delivered one by one or conflated
        fps = (self.last[0] - self.first[0]) / elapsed_s if elapsed_s > 0 else float("nan")
        ups = (self.delivered - 1) / elapsed_s if elapsed_s > 0 else float("nan")
        return (f"{self.client:<7}{self.mode:<7}{self.sent:>8}{self.delivered:>10}{fps:>11.0f}{ups:>11.0f}"
                f"{us(0.5):>11}{us(0.9):>11}{us(0.99):>11}{us(1.0):>11}")


HEADER = (f"{'client':<7}{'mode':<7}{'sent':>8}{'delivered':>10}{'frames/s':>11}{'updates/s':>11}"
          f"{'p50 us':>11}{'p90':>11}{'p99':>11}{'max':>11}")

#: (latencies, delivered, (first frame, its user stamp), (last frame, its user stamp))
ClientResult = tuple[list[int], int, tuple[int, int], tuple[int, int]]


async def native_client(port: int, frames: int) -> ClientResult:
    last_seq = frames - 1
    finished = asyncio.Event()
    lat: list[int] = []
    first_last = [(0, 0), (0, 0)]

    class L(picows.WSListener):
        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            params = [f"{s[1]}@bookTicker" for s in SYMBOLS]
            transport.send(picows.WSMsgType.TEXT, orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": 1}))

        def on_ws_frame(self, transport: picows.WSTransport, f: picows.WSFrame) -> None:
            if f.msg_type is not picows.WSMsgType.TEXT:
                return
            payload = f.get_payload_as_bytes()
            quotes = parse(payload)
            t_user = now_ns()
            if not quotes:
                return  # the subscribe ack
            d = orjson.loads(payload)["data"]  # the send stamp, read after the user stamp was taken
            lat.append(t_user - d["u"])
            seq = quotes[0].ts_exchange_ns // 1_000_000 - EPOCH_MS
            if not first_last[0][1]:
                first_last[0] = (seq, t_user)
            first_last[1] = (seq, t_user)
            if seq == last_seq:
                finished.set()

    tr, _ = await picows.ws_connect(L, f"ws://127.0.0.1:{port}/public/stream")
    await asyncio.wait_for(finished.wait(), 120)
    tr.send_close()
    tr.disconnect()
    return lat, len(lat), first_last[0], first_last[1]


async def ccxt_client(port: int, frames: int) -> ClientResult:
    ex = make_exchange("binanceusdm", markets=load_markets_file(MARKETS), ws_url=f"ws://127.0.0.1:{port}/public/ws")
    symbols = [s[3] for s in SYMBOLS]
    units = {s: market_units(ex.markets[s]) for s in symbols}
    seen: dict[str, object] = dict.fromkeys(symbols)
    lat: list[int] = []
    first = last = (0, 0)
    last_seq = frames - 1
    try:
        while True:
            returned = await ex.watch_bids_asks(symbols)
            done = False
            for sym, t in fresh_updates(returned, ex.bidsasks, seen):
                q = ticker_to_bbo(sym, t, units[sym])
                t_user = now_ns()
                assert q is not None
                lat.append(t_user - t["info"]["u"])
                seq = q.ts_exchange_ns // 1_000_000 - EPOCH_MS
                if not first[1]:
                    first = (seq, t_user)
                last = (seq, t_user)
                done = done or seq == last_seq
            if done:
                break
    finally:
        await ex.close()
    return lat, len(lat), first, last


def run(client: str, mode: str, frames: int, rate_hz: float = 1000.0) -> Result:
    """One client against a fresh server process."""
    server = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--frames", str(frames),
                               "--rate-hz", str(rate_hz)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        fn = native_client if client == "native" else ccxt_client
        lat, delivered, first, last = uvloop.run(fn(port, frames))
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return Result(client, mode, frames, delivered, lat, first, last)


def report(results: list[Result]) -> str:
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return "\n".join([f"machine: {machine}; loop: uvloop; send->user latency in us", HEADER,
                      *(r.row() for r in results)])


def test_paced_send_to_user_latency() -> None:
    results = [run(c, "paced", 2000, 1000.0) for c in ("native", "ccxt")]
    print("\n" + report(results))
    for r in results:
        assert r.delivered > 0 and len(r.latencies_ns) == r.delivered


def test_burst_updates_delivered() -> None:
    results = [run(c, "burst", 50_000) for c in ("native", "ccxt")]
    print("\n" + report(results))
    native, ccxt = results
    assert native.delivered == native.sent  # picows hands over every frame
    assert 0 < ccxt.delivered <= ccxt.sent  # ccxt may conflate, never invent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--serve", choices=("paced", "burst"), help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=2000, help="frames in the paced run")
    p.add_argument("--rate-hz", type=float, default=1000.0, help="paced send rate, frames per second")
    p.add_argument("--burst", type=int, default=50_000, help="frames in the burst run")
    args = p.parse_args(argv)
    if args.serve:
        uvloop.run(serve(args.serve, args.frames, args.rate_hz))
        return 0
    results = [run(c, "paced", args.frames, args.rate_hz) for c in ("native", "ccxt")]
    results += [run(c, "burst", args.burst) for c in ("native", "ccxt")]
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
