#!/usr/bin/env python3
"""Frames per second one real feed process sustains: socket read -> parse -> board write.

    .venv/bin/python bench/feed_throughput.py [--venue binanceusdm ...] [--seconds 8]

For each venue protocol a loopback "firehose" server (one process) sends a
pre-encoded stream of that venue's own quote frames (from its simulator
protocol, valid sequence numbers included) as fast as the socket takes them;
the real feed process (`python -m perpbot.feeds.process`) reads them into a
real shared-memory board. The rate is measured from the feed's own quote
counter in the status segment over the middle of the run. Server and feed
each get a core when the machine has two.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import picows
import uvloop
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "conformance"))

from kit import segments, unique_run_id
from test_venues import VENUE_SYMBOLS, instruments, scripted_quotes, venue_config

from perpbot.feeds.registry import FEEDS
from perpbot.runctx import CONFIG_COPY, write_run_file
from perpbot.sim.protocols import get_protocol

STREAM = 200_000  # distinct frames per run, sent in a loop (sequence ids keep increasing)


def firehose_frames(venue: str) -> list[tuple[bytes, bool]]:
    cfg = venue_config(venue)
    proto = get_protocol(venue)(FEEDS[venue].demo_path)
    insts = list(instruments(cfg, proto).items())
    quotes = {b: scripted_quotes(cfg, b, 64) for b, _ in insts}
    out: list[tuple[bytes, bool]] = []
    for board, inst in insts:
        snap = proto.snapshot(inst, quotes[board][0], 1, 1_790_000_000_000)
        if snap is not None:
            out.append((snap.payload, snap.binary))
    update_ids = dict.fromkeys(quotes, 1)  # per symbol, as venues number their updates
    for i in range(STREAM):
        board, inst = insts[i % len(insts)]
        update_ids[board] += 1
        f = proto.quote(inst, quotes[board][(i // len(insts)) % 64], update_ids[board], 1_790_000_000_000 + i)
        out.append((f.payload, f.binary))
    return out


def ws_frame(payload: bytes, binary: bool) -> bytes:
    """One unmasked server-to-client websocket frame (RFC 6455), FIN set."""
    op = 0x82 if binary else 0x81
    n = len(payload)
    if n < 126:
        return bytes((op, n)) + payload
    if n < 65536:
        return bytes((op, 126)) + n.to_bytes(2, "big") + payload
    return bytes((op, 127)) + n.to_bytes(8, "big") + payload


def serve(venue: str, port_file: Path, seconds: float) -> None:
    frames = firehose_frames(venue)
    # pre-framed wire bytes in large blobs: the server spends almost nothing per frame,
    # so what is measured is the feed, not the firehose
    head = b"".join(ws_frame(p, b) for p, b in frames[: len(frames) - STREAM])
    blobs = []
    body = frames[len(frames) - STREAM:]
    for i in range(0, len(body), 2000):
        blobs.append(b"".join(ws_frame(p, b) for p, b in body[i:i + 2000]))

    class Hose(picows.WSListener):
        def __init__(self) -> None:
            self.paused = False
            self.raw: asyncio.Transport | None = None
            self.i = 0

        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            self.raw = transport.underlying_transport
            self.raw.write(head)
            asyncio.get_running_loop().call_soon(self.pump)

        def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
            self.raw = None

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            asyncio.get_running_loop().call_soon(self.pump)

        def pump(self) -> None:
            while self.raw is not None and not self.paused and not self.raw.is_closing():
                k = self.i % len(blobs)
                if k == 0 and self.i:
                    # the stream starts over: fresh snapshots, as a venue re-snapshots, keep sequences whole
                    self.raw.write(head)
                self.raw.write(blobs[k])
                self.i += 1

    async def main() -> None:
        server = await picows.ws_create_server(lambda r: Hose(), "127.0.0.1", 0)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.sleep(seconds + 10)

    uvloop.run(main())


def measure(venue: str, seconds: float) -> float:
    cfg = venue_config(venue)
    run_dir = Path(tempfile.mkdtemp(prefix="pbt"))
    run_id = unique_run_id()
    port_file = run_dir / "port"
    hose = subprocess.Popen([sys.executable, __file__, "--serve", venue, "--port-file", str(port_file),
                             "--seconds", str(seconds)])
    feed = None
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        spec = FEEDS[venue]
        url = f"ws://127.0.0.1:{port_file.read_text()}{spec.demo_path}"
        raw = msgspec.to_builtins(cfg)
        raw["feed"]["silent_reconnect_ms"] = 60_000
        (run_dir / CONFIG_COPY).write_text(yaml.safe_dump(raw, sort_keys=False))
        write_run_file(run_dir, run_id, run_dir, {"under_test": url, "other": url})
        with segments(cfg, run_id) as (_board, status):
            feed = subprocess.Popen([sys.executable, "-m", "perpbot.feeds.process", "--run-dir", str(run_dir),
                                     "--slot", "1", "--venue", "under_test"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
                os.sched_setaffinity(hose.pid, {0})
                os.sched_setaffinity(feed.pid, {1})
            rec = status.feeds[0]
            time.sleep(seconds * 0.25)  # warm-up
            q0, t0 = int(rec["quotes"]), time.monotonic()
            time.sleep(seconds * 0.5)
            q1, t1 = int(rec["quotes"]), time.monotonic()
            errors = int(rec["parse_errors"]) + int(rec["resyncs"])
            feed.send_signal(signal.SIGTERM)
            feed.wait(30)
        if errors:
            print(f"  ({venue}: {errors} parse errors or resyncs during the run)")
        return (q1 - q0) / (t1 - t0)
    finally:
        for p in (feed, hose):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venue", action="append", choices=sorted(FEEDS))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port_file, args.seconds)
        return 0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; firehose pinned to core 0, feed to core 1")
    for venue in args.venue or [v for v in sorted(FEEDS) if v in VENUE_SYMBOLS]:
        rate = measure(venue, args.seconds)
        print(f"{venue:<14}{rate:>12,.0f} quotes/s into the board")
    return 0


if __name__ == "__main__":
    sys.exit(main())
