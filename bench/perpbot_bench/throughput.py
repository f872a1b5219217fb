"""Frames per second one real feed process sustains: socket read -> parse -> board write.

A loopback "firehose" server (its own process) sends a pre-encoded stream of
a venue's own quote frames (from its simulator protocol, valid sequence
numbers included) as fast as the socket takes them; the real feed process
(`python -m perpbot.feeds.process`) reads them into a real shared-memory
board. The rate is read from the feed's own counters in the status segment
(flushed on its heartbeat) over the middle half of the run: warm-up first,
then a window that starts and ends on a counter flush, so the counts and the
clock agree.

The server writes the frames in pre-framed blobs, so it spends almost nothing
per frame and what is measured is the feed, not the firehose. With
`stamp=True` (Binance only) every frame's update id `u` carries the moment
its blob was handed to the server's socket, as `SEND_STAMP_BASE + now_ns()`
(always 19 digits, so the stamp is patched into the pre-encoded bytes in
place), and blobs are small (64 frames) so that stamp is close to the frame's
send time; `perpbot_bench.ccxt_compare` reads it back on the client side.

    python -m perpbot_bench.throughput [--venue binanceusdm ...] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import yaml

from perpbot.clock import now_ns
from perpbot.feeds.registry import FEEDS
from perpbot.runctx import CONFIG_COPY, write_run_file
from perpbot.sim.protocols import get_protocol
from perpbot_bench.floors import cpu_pair

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT / "tests", ROOT / "tests" / "conformance"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from kit import segments, unique_run_id  # noqa: E402
from test_venues import VENUE_SYMBOLS, instruments, scripted_quotes, venue_config  # noqa: E402

#: distinct frames per run, sent in a loop (sequence ids keep increasing within a loop)
STREAM = 200_000
#: exchange time (ms) of the stream's first frame; frame i of the loop has `T` = `E` = T0_MS + i
T0_MS = 1_790_000_000_000
#: `u` = SEND_STAMP_BASE + send time (ns) in stamped streams: always 19 digits
SEND_STAMP_BASE = 10**18
_STAMP_PLACEHOLDER = SEND_STAMP_BASE
_STAMP_DIGITS = len(str(SEND_STAMP_BASE))
#: frames per socket write: large when only the rate matters, small when each write is a send stamp
BLOB_FRAMES = 2000
STAMPED_BLOB_FRAMES = 64
#: seconds allowed for a process to start, connect and see its first frame
START_TIMEOUT_S = 60.0


def firehose_frames(venue: str, *, stamp: bool = False, stream: int = STREAM) -> list[tuple[bytes, bool]]:
    """(payload, binary) for the stream: the snapshots (if the venue sends any), then `stream` quotes.

    Quote i cycles over the venue's symbols with per-symbol update ids, exchange time T0_MS + i.
    With `stamp`, every update id is the 19-digit placeholder the server overwrites with its send stamp.
    """
    if stamp and venue != "binanceusdm":
        raise ValueError(f"send stamps are only defined for binanceusdm frames (its `u`), not {venue!r}")
    cfg = venue_config(venue)
    proto = get_protocol(venue)(FEEDS[venue].demo_path)
    insts = list(instruments(cfg, proto).items())
    quotes = {b: scripted_quotes(cfg, b, 64) for b, _ in insts}
    out: list[tuple[bytes, bool]] = []
    for board, inst in insts:
        snap = proto.snapshot(inst, quotes[board][0], 1, T0_MS)
        if snap is not None:
            out.append((snap.payload, snap.binary))
    update_ids = dict.fromkeys(quotes, 1)  # per symbol, as venues number their updates
    for i in range(stream):
        board, inst = insts[i % len(insts)]
        update_ids[board] += 1
        uid = _STAMP_PLACEHOLDER if stamp else update_ids[board]
        f = proto.quote(inst, quotes[board][(i // len(insts)) % 64], uid, T0_MS + i)
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


def _blobs(frames: list[tuple[bytes, bool]], n_body: int, per_blob: int,
           stamp: bool) -> tuple[bytes, list[tuple[bytearray, list[int], int]]]:
    """(head, [(blob, stamp offsets in it, frames in it)]): the wire bytes, pre-framed."""
    head = b"".join(ws_frame(p, b) for p, b in frames[: len(frames) - n_body])
    body = frames[len(frames) - n_body:]
    key = b'"u":'
    out = []
    for i in range(0, len(body), per_blob):
        blob = bytearray()
        offsets = []
        for p, b in body[i:i + per_blob]:
            wire = ws_frame(p, b)
            if stamp:
                offsets.append(len(blob) + wire.index(key) + len(key))
            blob += wire
        out.append((blob, offsets, len(body[i:i + per_blob])))
    return head, out


def _serve(venue: str, stamp: bool, stream: int, cpu: int | None, conn: Connection, sent: Any) -> None:
    """The firehose process: serve every connection the stream, in a loop, as fast as it reads.

    `sent[0]` counts the frames handed to the socket (a write the transport took without
    pausing); the port goes back on `conn`, and anything arriving on `conn` stops the server.
    """
    import picows
    import uvloop

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    frames = firehose_frames(venue, stamp=stamp, stream=stream)
    head, blobs = _blobs(frames, stream, STAMPED_BLOB_FRAMES if stamp else BLOB_FRAMES, stamp)
    n_head = len(frames) - stream
    frozen = [bytes(b) for b, _, _ in blobs]
    width = _STAMP_DIGITS

    class Hose(picows.WSListener):
        def __init__(self) -> None:
            self.paused = False
            self.raw: asyncio.Transport | None = None
            self.i = 0

        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            self.raw = transport.underlying_transport
            self.raw.write(head)
            sent[0] += n_head
            asyncio.get_running_loop().call_soon(self.pump)

        def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
            self.raw = None

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            asyncio.get_running_loop().call_soon(self.pump)

        def pump(self) -> None:
            raw = self.raw
            while raw is not None and not self.paused and not raw.is_closing():
                k = self.i % len(blobs)
                if k == 0 and self.i:
                    # the stream starts over: fresh snapshots, as a venue re-snapshots, keep sequences whole
                    raw.write(head)
                    sent[0] += n_head
                blob, offsets, n = blobs[k]
                if stamp:
                    s = b"%d" % (SEND_STAMP_BASE + now_ns())
                    for off in offsets:
                        blob[off:off + width] = s
                    raw.write(bytes(blob))  # a copy: the transport may keep what it cannot send yet
                else:
                    raw.write(frozen[k])
                sent[0] += n
                self.i += 1
                raw = self.raw

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), stop.set)
        server = await picows.ws_create_server(lambda r: Hose(), "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        await stop.wait()
        server.close()

    uvloop.run(main())


@dataclass
class Firehose:
    port: int
    #: shared counter: frames the server has handed to its socket so far
    sent: Any

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@contextmanager
def firehose(venue: str, *, stamp: bool = False, cpu: int | None = None, stream: int = STREAM) -> Iterator[Firehose]:
    """A firehose server process for the duration of the block; stopped (killed if need be) after."""
    ctx = mp.get_context("spawn")
    sent = ctx.RawArray("q", 1)
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(venue, stamp, stream, cpu, theirs, sent), daemon=True,
                       name=f"firehose-{venue}")
    proc.start()
    theirs.close()
    try:
        if not ours.poll(START_TIMEOUT_S):
            raise RuntimeError(f"the {venue} firehose did not start within {START_TIMEOUT_S:.0f} s")
        yield Firehose(int(ours.recv()), sent)
    finally:
        stop_process(proc, ours)


def stop_process(proc: Any, conn: Connection | None = None, timeout_s: float = 5.0) -> None:
    """Ask a multiprocessing child to stop (a message on `conn`), then terminate, then kill; always reaped."""
    if conn is not None:
        try:
            conn.send("stop")
        except (OSError, ValueError):
            pass
    proc.join(timeout_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if conn is not None:
        conn.close()
    proc.close()


def _wait_flush(rec: Any, key: str, deadline_s: float = 2.0) -> tuple[int, float]:
    """(counter, time) at the next heartbeat flush of `rec[key]` (the moment it changes)."""
    v0 = int(rec[key])
    end = time.monotonic() + deadline_s
    while True:
        v = int(rec[key])
        t = time.monotonic()
        if v != v0 or t > end:
            return v, t
        time.sleep(0.0005)


def feed_throughput(venue: str, seconds: float, *, feed_cpu: int | None = 1, server_cpu: int | None = 0,
                    stamp: bool = False, hose: Firehose | None = None) -> dict[str, Any]:
    """Frames and quotes per second the real feed process takes from a firehose of `venue`'s frames.

    After the feed's first quote, `seconds / 4` of warm-up, then a window of `seconds / 2`
    between two flushes of its status counters. Feed and server are pinned to their cores
    (both to the only one on a one-core machine; None leaves a process unpinned). `hose`:
    a running `firehose(venue, ...)` to use instead of starting one (then `stamp` and
    `server_cpu` are whatever it was started with).
    Returns {"venue", "frames_per_s" (frames read, each parsed and written before the next is
    read), "quotes_per_s" (quotes written to the board), "server_frames_per_s" (handed to
    the server's socket), "window_s", "frames", "quotes", "errors" (parse errors and
    resyncs), "cpus", "stamped"}.
    """
    server_cpu, feed_cpu, note = cpu_pair(server_cpu, feed_cpu)
    cfg = venue_config(venue)
    run_dir = Path(tempfile.mkdtemp(prefix="pbt"))
    run_id = unique_run_id()
    feed: subprocess.Popen[bytes] | None = None
    try:
        with ExitStack() as stack:
            if hose is None:
                hose = stack.enter_context(firehose(venue, stamp=stamp, cpu=server_cpu))
            url = hose.url(FEEDS[venue].demo_path)
            raw = msgspec.to_builtins(cfg)
            raw["feed"]["silent_reconnect_ms"] = 60_000
            (run_dir / CONFIG_COPY).write_text(yaml.safe_dump(raw, sort_keys=False))
            write_run_file(run_dir, run_id, run_dir, {"under_test": url, "other": url})
            with segments(cfg, run_id) as (_board, status):
                feed = subprocess.Popen([sys.executable, "-m", "perpbot.feeds.process", "--run-dir", str(run_dir),
                                         "--slot", "1", "--venue", "under_test"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if feed_cpu is not None:
                    os.sched_setaffinity(feed.pid, {feed_cpu})
                rec = status.feeds[0]
                end = time.monotonic() + START_TIMEOUT_S
                while int(rec["quotes"]) == 0:
                    if feed.poll() is not None:
                        raise RuntimeError(f"the {venue} feed process exited with {feed.returncode} before quoting")
                    if time.monotonic() > end:
                        raise RuntimeError(f"the {venue} feed wrote no quote within {START_TIMEOUT_S:.0f} s")
                    time.sleep(0.005)
                time.sleep(seconds * 0.25)  # warm-up
                q0, t0 = _wait_flush(rec, "quotes")
                f0, s0 = int(rec["frames"]), int(hose.sent[0])
                time.sleep(seconds * 0.5)
                q1, t1 = _wait_flush(rec, "quotes")
                f1, s1 = int(rec["frames"]), int(hose.sent[0])
                errors = int(rec["parse_errors"]) + int(rec["resyncs"])
                feed.send_signal(signal.SIGTERM)
                feed.wait(30)
    finally:
        if feed is not None and feed.poll() is None:
            feed.kill()
            feed.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
    dt = t1 - t0
    out: dict[str, Any] = {
        "venue": venue, "frames_per_s": (f1 - f0) / dt, "quotes_per_s": (q1 - q0) / dt,
        "server_frames_per_s": (s1 - s0) / dt, "window_s": round(dt, 3), "frames": f1 - f0, "quotes": q1 - q0,
        "errors": errors, "cpus": {"server": server_cpu, "feed": feed_cpu}, "stamped": stamp,
    }
    if note:
        out["note"] = note
    return out


def machine_line() -> str:
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Frames per second one real feed process sustains "
                                            "(socket read -> parse -> board write)")
    p.add_argument("--venue", action="append", choices=sorted(FEEDS))
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args(argv)
    server_cpu, feed_cpu, note = cpu_pair(0, 1)
    print(f"{machine_line()}; firehose pinned to core {server_cpu}, feed to core {feed_cpu}"
          + (f" ({note})" if note else ""))
    for venue in args.venue or [v for v in sorted(FEEDS) if v in VENUE_SYMBOLS]:
        r = feed_throughput(venue, args.seconds, feed_cpu=feed_cpu, server_cpu=server_cpu)
        if r["errors"]:
            print(f"  ({venue}: {r['errors']} parse errors or resyncs during the run)")
        print(f"{venue:<14}{r['quotes_per_s']:>12,.0f} quotes/s into the board")
    return 0


if __name__ == "__main__":
    sys.exit(main())
