#!/usr/bin/env python3
"""How much slower is the first parse after idle than a warm one, on this machine?

    .venv/bin/python bench/cold_parse.py [--seconds 8]

Starts the demo market in a child process, connects one picows client, and in
the frame callback parses each received frame three times in a row, timing
each. The first parse runs on whatever the caches held after the process sat
idle between frames; the second and third run warm. Prints medians and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
from pathlib import Path

import picows
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kit import make_config

from perpbot.clock import now_ns
from perpbot.feeds.binanceusdm import parse


async def serve(seconds: float) -> None:
    from perpbot.sim import serve_market

    async with await serve_market(make_config()) as market:
        print(market.urls["binanceusdm"], flush=True)
        await asyncio.sleep(seconds + 5)


async def client(url: str, seconds: float) -> None:
    timings: list[tuple[int, int, int]] = []

    class Listener(picows.WSListener):
        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            transport.send(picows.WSMsgType.TEXT, b'{"method":"SUBSCRIBE","params":["btcusdt@bookTicker",'
                                                  b'"ethusdt@bookTicker","solusdt@bookTicker"],"id":1}')

        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            payload = frame.get_payload_as_bytes()
            t0 = now_ns()
            parse(payload)
            t1 = now_ns()
            parse(payload)
            t2 = now_ns()
            parse(payload)
            t3 = now_ns()
            timings.append((t1 - t0, t2 - t1, t3 - t2))

    transport, _ = await picows.ws_connect(Listener, url)
    await asyncio.sleep(seconds)
    transport.disconnect()
    timings = timings[1:]  # the subscribe ack
    for i, label in enumerate(("first parse (after idle)", "second parse", "third parse")):
        xs = sorted(t[i] for t in timings)
        print(f"{label:<26} median {statistics.median(xs) / 1000:7.2f} us   "
              f"p99 {xs[int(len(xs) * 0.99)] / 1000:7.2f} us   ({len(xs)} frames)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        uvloop.run(serve(args.seconds))
        return 0
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--seconds", str(args.seconds)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        uvloop.run(client(url, args.seconds))
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
