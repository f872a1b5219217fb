"""What this machine allows: the floor under each hop, measured in the run that reports the hop.

- `seqlock_floor`: a writer process stamps one board slot (the real `BoardWriter.write`,
  whose `ts_write_ns` is `now_ns()` taken with the slot's seq odd, just before the body
  is stored); a reader process on another core busy-polls that slot with the real
  `QuoteBoard.read` (seqlock retries included) and, for every write it has not seen
  yet, records `now_ns()` taken right after the read returned minus `ts_write_ns`:
  the cost of seeing a fresh quote from another process.
- `zmq_ipc_floor`: raw pyzmq PUSH -> PULL over an ipc:// endpoint between two
  processes, with PerpBot's socket options (`perpbot.bus`: one context with one I/O
  thread, LINGER 0, the opportunity channel's high-water mark, IMMEDIATE on the PUSH)
  and a message the size of an encoded opportunity. The sender packs `now_ns()` into
  the message and sends it at once (NOBLOCK, as the scanner does); the receiver,
  blocked in `recv()` (or busy-polling `recv(NOBLOCK)`), records `now_ns()` taken
  when recv returns minus that stamp. Messages are paced (default one per ms) so
  each finds the receiver idle, as PerpBot's opportunities do.
- `parse_floor`: `orjson.loads` of real Binance USDⓈ-M bookTicker frames (recorded
  traffic) plus taking s, b, a, B, A (as floats) and E, timed per call between two
  `now_ns()` (so one clock read is included; `params.clock_ns` says how much that is).

Every process started here is reaped, every shared-memory segment unlinked and every
ipc socket file removed, whatever happens.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import shutil
import struct
import tempfile
import time
import uuid
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from perpbot.clock import now_ns
from perpbot.shm import QuoteBoard
from perpbot.shm.layout import segment_names
from perpbot_bench.stats import Hist, summarize

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "data" / "recorded" / "BINANCE_FUTURES.ws.1.0"
#: the Binance USDⓈ-M docstring sample, used when the recording is not there
SAMPLE_FRAME = (b'{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":400900217,"E":1568014460893,'
                b'"T":1568014460891,"s":"BTCUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000",'
                b'"A":"40.66000000"}}')
#: seconds a child process gets to start and report ready
START_TIMEOUT_S = 60.0

# -- cores -------------------------------------------------------------------------------------


def cpu_pair(a: int | None, b: int | None) -> tuple[int | None, int | None, str | None]:
    """The two cores to pin two processes to, and a note when the machine cannot give two.

    On a machine (or affinity mask) with one core both go to that core, and the note says
    so. None means "do not pin" and is passed through. A core this process may not run on
    is an error.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        only = allowed[0]
        return (None if a is None else only, None if b is None else only,
                f"one core available: both processes pinned to core {only}")
    for c in (a, b):
        if c is not None and c not in allowed:
            raise ValueError(f"core {c} is not available here; allowed: {allowed}")
    return a, b, None


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _spawn() -> Any:
    return mp.get_context("spawn")


def unlink_shared(segment: Any) -> None:
    """Unlink a segment this process created and spawned children attached to.

    Spawned children share this process's resource tracker, which keeps one entry per
    name, and their attach drops that entry: put it back so that unlink's own untrack
    finds it (else the tracker complains on stderr).
    """
    resource_tracker.register(f"/{segment.name.lstrip('/')}", "shared_memory")
    segment.unlink()


def _reap(procs: list[Any], conns: list[Connection]) -> None:
    for c in conns:
        c.close()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
        p.close()


def _recv(conn: Connection, timeout_s: float, what: str) -> Any:
    if not conn.poll(timeout_s):
        raise RuntimeError(f"{what}: nothing within {timeout_s:.0f} s")
    return conn.recv()


def _run_id() -> str:
    return f"b{os.getpid()}{uuid.uuid4().hex[:6]}"


# -- the seqlock: a fresh write seen from another core -------------------------------------------

_VENUES = ("floor",)
_SYMBOLS = ("FLOOR-PERP",)


def _seqlock_reader(name: str, cpu: int | None, deadline_s: float, conn: Connection) -> None:
    _pin(cpu)
    board = QuoteBoard.attach(name, _VENUES, _SYMBOLS)
    read = board.read
    clock = now_ns
    hist = Hist()
    last = 0
    gc.disable()
    conn.send("ready")
    end = clock() + int(deadline_s * 1e9)
    while True:
        q = read(0, 0)
        t = clock()
        if q is None:
            if t > end:
                break
            continue
        if q.seq != last:
            last = q.seq
            if q.bid < 0:  # the writer's last word
                break
            hist.add(t - q.ts_write_ns)
        elif t > end:
            break
    gc.enable()
    conn.send((hist.counts, hist.max_ns))
    board.close()


def _seqlock_writer(name: str, cpu: int | None, duration_s: float, interval_us: float, conn: Connection) -> None:
    _pin(cpu)
    board = QuoteBoard.attach(name, _VENUES, _SYMBOLS)
    w = board.writer(0)
    clock = now_ns
    step = int(interval_us * 1000)
    n = 0
    t = clock()
    end = t + int(duration_s * 1e9)
    due = t
    while t < end:
        w.write(0, 1.0, 1.0, 1.0, 1.0, n, n)  # stamps ts_write_ns itself
        n += 1
        due += step
        t = clock()
        if due > t:
            time.sleep((due - t) / 1e9)
            t = clock()
    w.write(0, -1.0, -1.0, 0.0, 0.0, 0, 0)  # tells the reader to stop
    conn.send(n)
    w.release()
    board.close()


def seqlock_floor(duration_s: float, *, writer_cpu: int | None = 0, reader_cpu: int | None = 1,
                  interval_us: float = 200.0) -> dict[str, Any]:
    """Latency of a fresh seqlock write seen by a busy-polling reader on another core (summary).

    The writer writes every `interval_us` (it sleeps in between; its wake-up jitter is not
    measured: the stamp is taken inside the write). The summary has `params` added:
    cores, writes, interval, and a `note` on a one-core machine.
    """
    writer_cpu, reader_cpu, note = cpu_pair(writer_cpu, reader_cpu)
    ctx = _spawn()
    name = segment_names(_run_id())[0]
    board = QuoteBoard.create(name, _VENUES, _SYMBOLS)
    procs: list[Any] = []
    conns: list[Connection] = []
    try:
        r_ours, r_theirs = ctx.Pipe()
        w_ours, w_theirs = ctx.Pipe()
        conns += [r_ours, r_theirs, w_ours, w_theirs]
        reader = ctx.Process(target=_seqlock_reader, args=(name, reader_cpu, duration_s + START_TIMEOUT_S, r_theirs),
                             daemon=True, name="floor-seqlock-reader")
        procs.append(reader)
        reader.start()
        _recv(r_ours, START_TIMEOUT_S, "seqlock reader")
        writer = ctx.Process(target=_seqlock_writer, args=(name, writer_cpu, duration_s, interval_us, w_theirs),
                             daemon=True, name="floor-seqlock-writer")
        procs.append(writer)
        writer.start()
        writes = _recv(w_ours, START_TIMEOUT_S + duration_s, "seqlock writer")
        counts, max_ns = _recv(r_ours, START_TIMEOUT_S, "seqlock reader")
    finally:
        _reap(procs, conns)
        board.close()
        unlink_shared(board.segment)
    out = summarize(counts, max_ns=max_ns or None)
    params: dict[str, Any] = {"writer_cpu": writer_cpu, "reader_cpu": reader_cpu, "writes": writes,
                              "interval_us": interval_us, "duration_s": duration_s}
    if note:
        params["note"] = note
    out["params"] = params
    return out


# -- ZeroMQ over ipc between two processes ----------------------------------------------------

_HEAD = struct.Struct("<qq")  # send stamp, message index
_PROBE = -1
_STOP = -2


def _zmq_receiver(endpoint: str, blocked: bool, cpu: int | None, conn: Connection) -> None:
    import zmq

    from perpbot import bus

    zctx = zmq.Context()  # one I/O thread, as every PerpBot process has
    s = bus.socket(zctx, zmq.PULL, bus.OPPORTUNITY_HWM)
    s.setsockopt(zmq.RCVTIMEO, int(START_TIMEOUT_S * 1000))
    s.bind(endpoint)
    _pin(cpu)  # after the context: its I/O thread keeps the affinity it was created with
    hist = Hist()
    clock = now_ns
    unpack = _HEAD.unpack_from
    told = False
    gc.disable()
    conn.send("ready")
    try:
        while True:
            if blocked:
                msg = s.recv()
            else:
                end = clock() + int(START_TIMEOUT_S * 1e9)
                while True:
                    try:
                        msg = s.recv(zmq.NOBLOCK)
                        break
                    except zmq.Again:
                        if clock() > end:
                            raise
            t = clock()
            stamp, i = unpack(msg)
            if i >= 0:
                hist.add(t - stamp)
            elif i == _STOP:
                break
            elif not told:
                told = True
                conn.send("connected")
    except zmq.Again:
        pass  # the sender went away; report what was seen
    finally:
        gc.enable()
        conn.send((hist.counts, hist.max_ns))
        s.close()
        zctx.term()


def _zmq_sender(endpoint: str, n: int, interval_us: float, cpu: int | None, conn: Connection) -> None:
    import zmq

    from perpbot import bus
    from perpbot.messages import OPPORTUNITY_STRUCT

    zctx = zmq.Context()
    s = bus.socket(zctx, zmq.PUSH, bus.OPPORTUNITY_HWM)
    s.setsockopt(zmq.IMMEDIATE, 1)
    s.connect(endpoint)
    _pin(cpu)
    clock = now_ns
    pack = _HEAD.pack_into
    msg = bytearray(max(OPPORTUNITY_STRUCT.size, _HEAD.size))
    step = int(interval_us * 1000)
    dropped = 0
    # probes until the receiver has one: with IMMEDIATE nothing queues before the connection is up
    end = time.monotonic() + START_TIMEOUT_S
    while not conn.poll(step / 1e9):
        pack(msg, 0, clock(), _PROBE)
        try:
            s.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            pass
        if time.monotonic() > end:
            break
    conn.recv()
    gc.disable()
    due = clock()
    for i in range(n):
        due += step
        t = clock()
        if due > t:
            time.sleep((due - t) / 1e9)
        pack(msg, 0, clock(), i)
        try:
            s.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            dropped += 1
    gc.enable()
    pack(msg, 0, clock(), _STOP)
    s.send(msg)  # blocking: the last word must arrive
    conn.send(dropped)
    conn.poll(START_TIMEOUT_S)  # linger is 0: close only once the receiver has everything
    s.close()
    zctx.term()


def zmq_ipc_floor(n: int, *, blocked: bool = True, interval_us: float = 1000.0, sender_cpu: int | None = None,
                  receiver_cpu: int | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """One-way latency of a raw pyzmq PUSH/PULL ipc hop between two processes (summary).

    `n` messages, one every `interval_us`. `run_dir` is where the ipc socket file goes (a
    fresh temporary directory, removed after, when None); the file is removed either way.
    Cores are left to the OS unless given (PerpBot's exec is not pinned by default). The
    summary has `params` added (mode, messages sent, dropped, interval).
    """
    if n <= 0:
        raise ValueError("n must be positive")
    own_dir = run_dir is None
    d = Path(tempfile.mkdtemp(prefix="pbf")) if run_dir is None else Path(run_dir)
    path = d / f"floor-{uuid.uuid4().hex[:8]}.ipc"
    endpoint = f"ipc://{path}"
    ctx = _spawn()
    procs: list[Any] = []
    conns: list[Connection] = []
    try:
        r_ours, r_theirs = ctx.Pipe()
        s_ours, s_theirs = ctx.Pipe()
        conns += [r_ours, r_theirs, s_ours, s_theirs]
        recv_p = ctx.Process(target=_zmq_receiver, args=(endpoint, blocked, receiver_cpu, r_theirs),
                             daemon=True, name="floor-zmq-receiver")
        procs.append(recv_p)
        recv_p.start()
        _recv(r_ours, START_TIMEOUT_S, "zmq receiver")
        send_p = ctx.Process(target=_zmq_sender, args=(endpoint, n, interval_us, sender_cpu, s_theirs),
                             daemon=True, name="floor-zmq-sender")
        procs.append(send_p)
        send_p.start()
        first = _recv(r_ours, START_TIMEOUT_S, "zmq receiver")
        if first != "connected":  # it gave up waiting and sent its (empty) result
            raise RuntimeError("the zmq sender never reached the receiver")
        s_ours.send("go")
        dropped = _recv(s_ours, START_TIMEOUT_S + n * interval_us / 1e6, "zmq sender")
        counts, max_ns = _recv(r_ours, START_TIMEOUT_S, "zmq receiver")
        s_ours.send("bye")
    finally:
        _reap(procs, conns)
        path.unlink(missing_ok=True)
        if own_dir:
            shutil.rmtree(d, ignore_errors=True)
    out = summarize(counts, max_ns=max_ns or None)
    out["params"] = {"receiver": "blocked recv" if blocked else "busy-poll recv(NOBLOCK)", "sent": n,
                     "dropped": dropped, "interval_us": interval_us, "sender_cpu": sender_cpu,
                     "receiver_cpu": receiver_cpu}
    return out


# -- parsing one Binance bookTicker frame -------------------------------------------------------


def book_ticker_frames(limit: int = 1000) -> list[bytes]:
    """Real Binance USDⓈ-M combined-stream bookTicker frames from the recorded traffic (or the sample)."""
    out: list[bytes] = []
    if RECORDING.exists():
        with RECORDING.open("rb") as f:
            for line in f:
                _, sep, frame = line.partition(b": ")
                if sep and b'@bookTicker"' in frame[:60]:
                    out.append(frame.rstrip(b"\r\n"))
                    if len(out) >= limit:
                        break
    return out or [SAMPLE_FRAME]


def _clock_cost_ns(rounds: int = 20_000) -> int:
    clock = now_ns
    gaps = []
    for _ in range(rounds):
        t0 = clock()
        t1 = clock()
        gaps.append(t1 - t0)
    gaps.sort()
    return gaps[len(gaps) // 2]


def parse_floor(n: int, *, how: str = "orjson") -> dict[str, Any]:
    """Cost of one parse of a real bookTicker frame, per call (summary).

    `how="orjson"` (the floor): `orjson.loads` + s, b, a, B, A (floats), E.
    `how="perpbot"`: PerpBot's own `perpbot.feeds.binanceusdm.parse`, for the ratio.
    Frames cycle over up to 1000 recorded ones. The summary has `params` added.
    """
    import orjson

    from perpbot.feeds.binanceusdm import parse

    frames = book_ticker_frames()
    loads = orjson.loads
    clock = now_ns
    hist = Hist()
    k = len(frames)

    def floor(f: bytes) -> tuple[str, float, float, float, float, int]:
        d = loads(f)["data"]
        return d["s"], float(d["b"]), float(d["a"]), float(d["B"]), float(d["A"]), d["E"]

    if how == "orjson":
        fn: Any = floor
    elif how == "perpbot":
        fn = parse
    else:
        raise ValueError(f"how must be 'orjson' or 'perpbot', not {how!r}")
    for f in frames:  # warm up, and check every frame parses
        fn(f)
    add = hist.add
    for i in range(n):
        f = frames[i % k]
        t0 = clock()
        fn(f)
        t1 = clock()
        add(t1 - t0)
    out = hist.summary()
    out["params"] = {"how": how, "frames": k, "calls": n, "clock_ns": _clock_cost_ns(),
                     "source": RECORDING.name if frames[0] is not SAMPLE_FRAME else "sample"}
    return out


def main() -> int:
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    for label, s in (("seqlock cross-core, 2 s", seqlock_floor(2.0)),
                     ("zmq ipc blocked recv, 2000 x 1 ms", zmq_ipc_floor(2000)),
                     ("zmq ipc busy-poll recv, 2000 x 1 ms", zmq_ipc_floor(2000, blocked=False)),
                     ("orjson parse + fields, 200k", parse_floor(200_000)),
                     ("perpbot binanceusdm.parse, 200k", parse_floor(200_000, how="perpbot"))):
        print(f"{label:<40} count {s['count']:>7}  p50 {s['p50_us']:>8} us  p99 {s['p99_us']:>8} us  "
              f"max {s['max_us']:>9} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
