"""perpbot-record: record a venue's raw websocket frames, and the recording file format.

    perpbot-record --venue V --symbols BTC-PERP,ETH-PERP --out FILE [--config FILE] [--seconds S] [--url URL]

Connects exactly as the venue's feed does (its `FeedSpec`: connections,
subscribe frames, application ping, handshake headers; the config says which
feed the venue speaks and maps board symbols to venue symbols) and writes
every frame, raw. `--url` replaces the base URL (e.g. the demo market's);
`--seconds` stops after that long, else Ctrl-C or SIGTERM does. A recording
is one session: a dropped connection is not reconnected (exit code 1, the
frames so far are kept).

The format (that of `tests/data/recorded/`, from cryptofeed), one line each:

    URL <-> T              a connection opened at unix time T (seconds, float)
    URL <- T: FRAME        a frame the client sent on it
    T: FRAME               a frame the client received on it

Each connection is one section: its `URL <-> T` line, then its own frames in
order; a file holds one section per connection, in connection order. FRAME is
the text frame as is, except when that could be misread:

    T: b64:<base64>        a binary frame (standard base64 of its bytes)
    T: t64:<base64>        a text frame that starts with `b64:` or `t64:`, contains a
                           line break (anything `str.splitlines` splits on), or is not UTF-8

so a verbatim FRAME never starts with either prefix and every line stays one line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import picows

from perpbot.clock import wall_ns
from perpbot.config import load_config
from perpbot.errors import ConfigError, PerpBotError
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import FeedSpec

log = logging.getLogger("perpbot.record")

BINARY_PREFIX = "b64:"
ESCAPED_TEXT_PREFIX = "t64:"
_PREFIXES = (BINARY_PREFIX, ESCAPED_TEXT_PREFIX)
#: what `str.splitlines` treats as a line end: such text is escaped so every reader sees one line
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_OPENED = " <-> "
_SENT = " <- "


class RecordingError(PerpBotError, ValueError):
    """A file that is not a recording, or a line that cannot be read; names the line."""


# -- the format ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One frame of a recording."""

    t: float  # unix time, seconds
    payload: bytes
    binary: bool = False


@dataclass(slots=True)
class RecordedConnection:
    """One section of a recording: a connection, what the client sent on it and what it received."""

    url: str
    opened: float  # unix time, seconds
    sent: list[RecordedFrame] = field(default_factory=list)
    received: list[RecordedFrame] = field(default_factory=list)


def encode_frame(payload: bytes, binary: bool) -> str:
    """A frame as the FRAME part of a line (see the module docstring)."""
    if binary:
        return BINARY_PREFIX + base64.b64encode(payload).decode("ascii")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return ESCAPED_TEXT_PREFIX + base64.b64encode(payload).decode("ascii")
    if text.startswith(_PREFIXES) or _LINE_BREAK.search(text):
        return ESCAPED_TEXT_PREFIX + base64.b64encode(payload).decode("ascii")
    return text


def decode_frame(text: str) -> tuple[bytes, bool]:
    """The FRAME part of a line -> (payload, binary)."""
    if text.startswith(BINARY_PREFIX):
        return base64.b64decode(text[len(BINARY_PREFIX):], validate=True), True
    if text.startswith(ESCAPED_TEXT_PREFIX):
        return base64.b64decode(text[len(ESCAPED_TEXT_PREFIX):], validate=True), False
    return text.encode("utf-8"), False


def _t(t: float) -> str:
    return f"{t:.6f}"


def opened_line(url: str, t: float) -> str:
    """`URL <-> T`: a connection opened."""
    return f"{url}{_OPENED}{_t(t)}"


def sent_line(url: str, t: float, payload: bytes, binary: bool = False) -> str:
    """`URL <- T: FRAME`: a frame the client sent."""
    return f"{url}{_SENT}{_t(t)}: {encode_frame(payload, binary)}"


def received_line(t: float, payload: bytes, binary: bool = False) -> str:
    """`T: FRAME`: a frame the client received."""
    return f"{_t(t)}: {encode_frame(payload, binary)}"


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_recording(lines: Iterable[str]) -> list[RecordedConnection]:
    """Lines of a recording (without their line ends) -> its connections, in file order."""
    conns: list[RecordedConnection] = []
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        head, sep, rest = line.partition(": ")
        t = _float(head) if sep else None
        try:
            if t is not None:
                if not conns:
                    raise RecordingError(f"line {n}: a received frame before any `URL <-> T` line")
                conns[-1].received.append(RecordedFrame(t, *decode_frame(rest)))
            elif sep and _SENT in head:
                url, _, ts = head.rpartition(_SENT)
                ts_sent = _float(ts)
                if ts_sent is None:
                    raise RecordingError(f"line {n}: bad time {ts!r} in a sent frame")
                if not conns or conns[-1].url != url:
                    raise RecordingError(f"line {n}: a sent frame for {url} outside its connection's section")
                conns[-1].sent.append(RecordedFrame(ts_sent, *decode_frame(rest)))
            elif _OPENED in line:
                url, _, ts = line.rpartition(_OPENED)
                ts_open = _float(ts)
                if ts_open is None or not url:
                    raise RecordingError(f"line {n}: expected `URL <-> T`, got {line[:80]!r}")
                conns.append(RecordedConnection(url, ts_open))
            else:
                raise RecordingError(f"line {n}: not a recording line: {line[:80]!r}")
        except (ValueError, UnicodeEncodeError) as e:  # bad base64 too
            if isinstance(e, RecordingError):
                raise
            raise RecordingError(f"line {n}: bad frame encoding ({e})") from None
    if not conns:
        raise RecordingError("empty: no `URL <-> T` line")
    return conns


def read_recording(path: str | os.PathLike[str]) -> list[RecordedConnection]:
    """Read a recording file (OSError if unreadable, RecordingError if not a recording)."""
    with open(path, encoding="utf-8", newline="") as f:
        # only "\n" ends a line: a verbatim frame may hold other characters splitlines would split on
        return parse_recording(line.removesuffix("\n") for line in f)


def recording_url(path: str | os.PathLike[str]) -> str:
    """The URL of a recording's first connection, reading only its first line."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        first = f.readline(65536).removesuffix("\n")
    url, sep, ts = first.rpartition(_OPENED)
    if not sep or not url or _float(ts) is None:
        raise RecordingError(f"the first line must be `URL <-> T`, got {first[:80]!r}")
    return url


# -- the recorder -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordStatistics:
    """What one recording session wrote."""

    connections: int
    frames_received: int
    frames_sent: int
    #: connections that closed (or never opened) before the end
    dropped: int
    seconds: float


class _Connection(picows.WSListener):
    """One recorded connection: spools its section's lines to its own part file."""

    def __init__(self, url: str, symbols: list[str], spec: FeedSpec, spool: TextIO) -> None:
        super().__init__()
        self.url = url
        self.symbols = symbols
        self.spec = spec
        self.spool = spool
        self.transport: picows.WSTransport | None = None
        self.received = 0
        self.sent = 0
        self.closing = False  # set when the recorder itself ends the session
        self.closed = asyncio.Event()

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        self.spool.write(opened_line(self.url, wall_ns() / 1e9) + "\n")
        for frame in self.spec.subscribe(self.symbols):
            self.send(frame)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        mt = frame.msg_type
        if mt == picows.WSMsgType.TEXT or mt == picows.WSMsgType.BINARY:
            t = wall_ns() / 1e9
            self.spool.write(received_line(t, frame.get_payload_as_bytes(), mt == picows.WSMsgType.BINARY))
            self.spool.write("\n")
            self.received += 1
        elif mt == picows.WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        if not self.closing:
            log.warning("%s closed by the venue after %d frames; not reconnected", self.url, self.received)
        self.closed.set()

    def send(self, frame: bytes) -> None:
        tr = self.transport
        if tr is None or tr.is_disconnected:
            return
        tr.send(picows.WSMsgType.TEXT, frame)
        self.spool.write(sent_line(self.url, wall_ns() / 1e9, frame) + "\n")
        self.sent += 1

    async def ping(self) -> None:
        rule = self.spec.ping
        assert rule is not None
        while not self.closed.is_set():
            await asyncio.sleep(rule.interval_s)
            self.send(rule.payload())


async def record(
    spec: FeedSpec,
    base_url: str,
    symbols: Sequence[str],
    out: str | os.PathLike[str],
    *,
    seconds: float | None = None,
    stop: asyncio.Event | None = None,
    handshake_timeout_s: float = 10.0,
) -> RecordStatistics:
    """Record the feed's connections for `symbols` (venue symbols) into `out`.

    Runs until `seconds` have passed, `stop` is set, or every connection has
    closed. Each connection spools to `<out>.<k>.part` as frames arrive; the
    sections are joined into `out` at the end, which is written whole or not
    at all. Raises OSError when a connection cannot be opened.
    """
    out_path = Path(out)
    plan = spec.connections(base_url, list(symbols))
    parts = [out_path.with_name(f"{out_path.name}.{k}.part") for k in range(len(plan))]
    spools = [open(p, "w", encoding="utf-8", newline="\n") for p in parts]
    conns = [_Connection(url, syms, spec, spool) for (url, syms), spool in zip(plan, spools, strict=True)]
    tasks: list[asyncio.Task[None]] = []
    t0 = time.monotonic()
    done = False
    try:
        for c in conns:
            try:
                await picows.ws_connect(_factory(c), c.url, extra_headers=dict(spec.extra_headers) or None,
                                        websocket_handshake_timeout=handshake_timeout_s)
            except picows.WSError as e:
                raise OSError(f"cannot connect to {c.url}: {e}") from e
            if spec.ping is not None:
                tasks.append(asyncio.create_task(c.ping()))
        tasks.append(asyncio.create_task(_all_closed(conns)))
        if stop is not None:
            tasks.append(asyncio.create_task(_wait(stop)))
        await asyncio.wait(tasks[-2:] if stop is not None else tasks[-1:], timeout=seconds,
                           return_when=asyncio.FIRST_COMPLETED)
        done = True
    finally:
        for task in tasks:
            task.cancel()
        dropped = sum(1 for c in conns if c.closed.is_set())
        for c in conns:
            c.closing = True
        for c in conns:
            if c.transport is not None and not c.transport.is_disconnected:
                c.transport.send_close(picows.WSCloseCode.OK)
                c.transport.disconnect()
        for c in conns:
            if c.transport is not None:
                await c.transport.wait_disconnected()
        for spool in spools:
            spool.close()
        if not done:
            for p in parts:
                p.unlink(missing_ok=True)
    _join(parts, out_path)
    return RecordStatistics(
        len(conns), sum(c.received for c in conns), sum(c.sent for c in conns), dropped,
        time.monotonic() - t0,
    )


def _factory(c: _Connection) -> Callable[[], picows.WSListener]:
    return lambda: c


async def _all_closed(conns: list[_Connection]) -> None:
    for c in conns:
        await c.closed.wait()


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


def _join(parts: list[Path], out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as dst:
        for p in parts:
            dst.write(p.read_bytes())
    os.replace(tmp, out)
    for p in parts:
        p.unlink()


# -- the command ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point of `perpbot-record`."""
    p = argparse.ArgumentParser(prog="perpbot-record", description=__doc__.splitlines()[0])
    p.add_argument("--venue", required=True, help="a venue of the config (its feed decides the protocol)")
    p.add_argument("--symbols", required=True, help="board symbols, comma-separated, e.g. BTC-PERP,ETH-PERP")
    p.add_argument("--out", required=True, type=Path, help="the recording file to write")
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="YAML config (default: config.yaml)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--url", default=None, help="connect here instead of the venue's URL (e.g. the demo market)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s record %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"perpbot-record: {e}", file=sys.stderr)
        return 2
    vc = cfg.venues.get(args.venue)
    if vc is None:
        print(f"perpbot-record: unknown venue {args.venue!r}; configured: {', '.join(cfg.venues)}", file=sys.stderr)
        return 2
    board = [s.strip() for s in args.symbols.split(",") if s.strip()]
    unknown = [s for s in board if s not in vc.symbols]
    if not board or unknown:
        print(f"perpbot-record: {args.venue} does not list {', '.join(unknown) or 'any symbol given'}; "
              f"allowed: {', '.join(vc.symbols)}", file=sys.stderr)
        return 2
    if args.seconds is not None and args.seconds <= 0:
        print("perpbot-record: --seconds must be a positive number", file=sys.stderr)
        return 2
    spec = get_feed(vc.feed)
    url = args.url or vc.url or spec.public_url
    symbols = [vc.symbols[s] for s in board]

    async def amain() -> RecordStatistics:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await record(spec, url, symbols, args.out, seconds=args.seconds, stop=stop)

    import uvloop

    try:
        st = uvloop.run(amain())
    except OSError as e:
        print(f"perpbot-record: {e}", file=sys.stderr)
        return 1
    print(f"recorded {st.frames_received} frames received and {st.frames_sent} sent on "
          f"{st.connections} connection(s) in {st.seconds:.1f} s to {args.out}", flush=True)
    if st.dropped:
        print(f"perpbot-record: {st.dropped} connection(s) closed before the end", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
