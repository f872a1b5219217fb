"""The demo market's loopback websocket servers: one port per venue, all in one asyncio loop.

Each venue's server speaks its feed's protocol, a `SimProtocol` from
`perpbot.sim.protocols` made for the feed spec's `demo_path`. The server owns
sockets, subscription bookkeeping and flow control; the protocol owns every
byte on the wire:

- on connect: `route(path)` names the URL's topics (None: a wrong path, accepted
  and answered but never sent data, like a real venue's wrong routed path),
  then the `greeting()` frames go out, then a `snapshot()` per URL topic;
- every client frame, text or binary, goes to `on_message`; its replies go
  back first, then a `snapshot()` for each newly subscribed topic, all in the
  same callback, so both precede any data for the topic;
- a quote change is encoded once by `quote()` and the same bytes go to every
  subscriber, text or binary as the returned `Frame` says.

A client whose socket buffer is over its high watermark (`pause_writing`) is
conflated to the latest frame per symbol until it drains, so it never holds
the others up. A symbol whose frames were dropped that way is resent as a
fresh snapshot when the protocol has one (a lost delta would corrupt the
client's book), else as the latest frame.

`DemoMarket` drives the servers from the `MarketModel`: one task sleeps until
the model's next event, advances it to the monotonic clock and publishes each
changed quote. Exchange timestamps are wall-clock epoch ms, the only wall time
used. `perpbot.sim.replay.ReplayMarket` drives the same servers from a
recording instead.

A second task carries out the config's `demo.faults` schedule on the servers
(`perpbot.sim.faults` says what each kind does): a server closes its
connections (`drop`), holds every frame back (`stall`, the same hold as a slow
reader's conflation), refuses handshakes (`refuse`), or alters what `publish`
sends (`garbage`, `crossed`, `stale`).

    market = await serve_market(cfg)        # binds every venue on cfg.demo.host, port 0
    market.urls["binanceusdm"]              # ws://127.0.0.1:40123/public/stream
    ...
    await market.close()
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Self

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from perpbot.clock import Clock, now_ns, wall_ns
from perpbot.config import Config
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import FeedSpec
from perpbot.shm.layout import MarketCounter
from perpbot.sim.faults import MarketFaultKind, ScheduledFault, garbage_frame, run_schedule, schedule_from_config
from perpbot.sim.market import MarketModel, SimQuote, decimals
from perpbot.sim.protocol import Frame, Instrument, Session, SimProtocol
from perpbot.sim.protocols import get_protocol

log = logging.getLogger("perpbot.sim")

_NS_PER_MS = 1_000_000
#: uvloop's timers have 1 ms resolution and round a shorter wait to zero, which spins the loop
#: (measured: ~5000 passes/s instead of ~350); events closer than this share one pass
MIN_SLEEP_S = 0.001
#: protocols build frames with f-strings: anything else in a symbol could break the text
_SAFE_SYMBOL = re.compile(r"^[A-Za-z0-9_.:/-]+$")


@dataclass(frozen=True, slots=True)
class MarketStatistics:
    """A snapshot of a loopback market's counters (replay: quote_updates are frames replayed)."""

    frames_sent: int
    frames_conflated: int
    clients: int
    connections: int
    control_frames: int
    quote_updates: int
    dislocations_started: int
    jumps: int
    lags: int


class _Counters:
    __slots__ = ("clients", "connections", "control_frames", "frames_conflated", "frames_sent")

    def __init__(self) -> None:
        self.frames_sent = 0
        self.frames_conflated = 0
        self.clients = 0
        self.connections = 0
        self.control_frames = 0


# -- one connection ---------------------------------------------------------------------------


class Client(WSListener):
    """One connection's session (topics), flow-control state and conflation buffer."""

    def __init__(self, venue: VenueServer, session: Session, routed: bool) -> None:
        super().__init__()
        self.venue = venue
        self.session = session
        #: False on a wrong path: requests are answered but no data is ever sent
        self.routed = routed
        self.transport: WSTransport | None = None
        self.paused = False
        #: data frames are held back (conflated): the socket is paused or the venue stalled
        self.held = venue.stalled
        self.pending: dict[int, Frame] = {}  # symbol index -> latest data frame while held
        self.conflated: set[int] = set()  # symbols with a frame dropped while paused
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def topics(self) -> set[str]:
        """The topics this connection is subscribed to (the protocol keeps them in the session)."""
        return self.session.topics

    @property
    def connected(self) -> bool:
        """True while the connection is open."""
        return self.transport is not None and not self.transport.is_disconnected

    async def wait_drained(self) -> None:
        """Return once the socket buffer is below its high watermark (or the connection is gone)."""
        await self._drained.wait()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.venue._connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY:
            self.venue._on_message(self, frame.get_payload_as_bytes(), mt == WSMsgType.BINARY)
        elif mt == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.venue._disconnected(self)
        self._drained.set()  # nobody may wait on a dead connection

    def pause_writing(self) -> None:
        self.paused = True
        self.held = True
        self._drained.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self.held = self.venue.stalled
        if not self.held:
            self.flush()
        if not self.paused:
            self._drained.set()

    def flush(self) -> None:
        """Send what was held back: per symbol its latest frame, or a fresh snapshot if one was dropped."""
        pending, self.pending = self.pending, {}
        conflated, self.conflated = self.conflated, set()
        for si, frame in pending.items():
            snap = self.venue.snapshot_frame(si) if si in conflated else None
            # deliver, not send: flushing may pass the high watermark again
            self.deliver(si, snap if snap is not None else frame)

    def deliver(self, symbol_idx: int, frame: Frame) -> None:
        """Send a data frame now, or keep it as the symbol's latest while held."""
        if self.held:
            if symbol_idx in self.pending:
                if self.paused:
                    self.venue.counters.frames_conflated += 1
                self.conflated.add(symbol_idx)
            self.pending[symbol_idx] = frame
            return
        self.send(frame)

    def send(self, frame: Frame) -> None:
        """Send one frame at once (text or binary as the frame says), never conflated.

        A stalled venue sends nothing: the frame is dropped.
        """
        if self.held and self.venue.stalled:
            return
        tr = self.transport
        if tr is not None and not tr.is_disconnected:
            tr.send(WSMsgType.BINARY if frame.binary else WSMsgType.TEXT, frame.payload)
            self.venue.counters.frames_sent += 1


# -- one venue ------------------------------------------------------------------------------


class VenueServer:
    """One simulated venue: a websocket server speaking its feed's protocol for its symbols."""

    def __init__(self, venue: str, cfg: Config, counters: _Counters, *, wall_clock: Clock = wall_ns) -> None:
        vc = cfg.venues[venue]
        self.venue = venue
        self.spec: FeedSpec = get_feed(vc.feed)
        self.proto: SimProtocol = get_protocol(vc.feed)(self.spec.demo_path)
        self.counters = counters
        self._wall = wall_clock
        n = len(cfg.symbol_names)
        self._instruments: list[Instrument | None] = [None] * n
        self._topic_symbol: dict[str, int] = {}
        for si, board_sym in enumerate(cfg.symbol_names):
            venue_sym = vc.symbols.get(board_sym)
            if venue_sym is None:
                continue
            if not _SAFE_SYMBOL.match(venue_sym):
                raise ValueError(f"venue symbol {venue_sym!r} has characters the demo market cannot send")
            sc = cfg.symbols[board_sym]
            inst = Instrument(
                venue_sym, self.proto.topic(venue_sym), decimals(sc.tick_size), decimals(sc.lot_size),
                vc.contract_sizes.get(board_sym, 1.0),
            )
            self._instruments[si] = inst
            self._topic_symbol[inst.topic] = si
        self._subs: list[set[Client]] = [set() for _ in range(n)]
        self._update_ids = [0] * n
        #: the last quote published per symbol: what a snapshot shows (None: no snapshot yet)
        self._last: list[SimQuote | None] = [None] * n
        self._clients: set[Client] = set()
        self._server: asyncio.AbstractServer | None = None
        #: called after a routed client's topics changed (the replay starts on the first one)
        self.on_topics_changed: Callable[[Client], None] | None = None
        self.url = ""
        # -- scheduled faults (perpbot.sim.faults)
        self._symbol_index = {s: i for i, s in enumerate(cfg.symbol_names)}
        self._faults: list[ScheduledFault] = []
        #: nothing is sent while True (set by a stall)
        self.stalled = False
        #: handshakes are refused while True (set by a refuse)
        self.refusing = False
        #: handshakes refused so far
        self.refused = 0
        #: True while a garbage, crossed or stale fault alters what `publish` sends
        self._altered = False
        self._garbage = [False] * n
        self._crossed = [False] * n
        self._stale = [False] * n
        self._garbage_sent = 0
        #: per symbol: the frame sent last and its exchange timestamp (what a stale fault repeats)
        self._last_frame: list[Frame | None] = [None] * n
        self._last_ts = [0] * n
        self._stale_frame: list[Frame | None] = [None] * n
        #: per symbol: the model's latest quote while `_altered` (`_last` is what went out)
        self._real: list[SimQuote | None] = [None] * n

    @property
    def clients(self) -> tuple[Client, ...]:
        """Connected clients (for tests, diagnostics and the replay)."""
        return tuple(self._clients)

    @property
    def instruments(self) -> tuple[Instrument | None, ...]:
        """Per board symbol index, the venue's instrument (None where the venue does not list it)."""
        return tuple(self._instruments)

    def known(self, topic: str) -> bool:
        """True if the topic names one of this venue's configured symbols."""
        return topic in self._topic_symbol

    async def start(self, host: str, port: int = 0) -> str:
        """Bind and listen; return the URL a feed connects to."""
        server = await ws_create_server(
            self._accept, host, port, logger_name=f"sim.{self.venue}", websocket_handshake_timeout=5
        )
        self._server = server
        sock_host, sock_port = server.sockets[0].getsockname()[:2]
        shown = f"[{sock_host}]" if ":" in sock_host else sock_host
        self.url = f"ws://{shown}:{sock_port}{self.spec.demo_path}"
        return self.url

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for c in tuple(self._clients):
            if c.transport is not None and not c.transport.is_disconnected:
                c.transport.send_close(WSCloseCode.GOING_AWAY)
                c.transport.disconnect()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def seed(self, symbol_idx: int, q: SimQuote) -> None:
        """Set the quote a snapshot shows before the first change is published."""
        self._last[symbol_idx] = q

    def publish(self, symbol_idx: int, q: SimQuote, ts_ms: int) -> None:
        """Send one quote change to the symbol's subscribers (encoded once for all)."""
        if self._altered:
            self._publish_altered(symbol_idx, q, ts_ms)
            return
        uid = self._update_ids[symbol_idx] + 1
        self._update_ids[symbol_idx] = uid
        self._last[symbol_idx] = q
        inst = self._instruments[symbol_idx]
        assert inst is not None
        # encoded even with no subscriber: a delta protocol's state must see every change
        frame = self.proto.quote(inst, q, uid, ts_ms)
        self._last_frame[symbol_idx] = frame
        self._last_ts[symbol_idx] = ts_ms
        subs = self._subs[symbol_idx]
        if subs:
            for c in tuple(subs):
                c.deliver(symbol_idx, frame)

    def snapshot_frame(self, symbol_idx: int) -> Frame | None:
        """The protocol's snapshot of the symbol's last quote, or None (no snapshots, or no quote yet)."""
        q = self._last[symbol_idx]
        inst = self._instruments[symbol_idx]
        if q is None or inst is None:
            return None
        # a stale quote keeps its old exchange timestamp
        ts_ms = self._last_ts[symbol_idx] if self._stale[symbol_idx] else self._wall() // _NS_PER_MS
        return self.proto.snapshot(inst, q, self._update_ids[symbol_idx], ts_ms)

    # -- scheduled faults (driven by perpbot.sim.faults.run_schedule) ----------------------

    @property
    def faults(self) -> tuple[ScheduledFault, ...]:
        """The faults in force on this venue, in the order they started."""
        return tuple(self._faults)

    def start_fault(self, fault: ScheduledFault) -> None:
        """Put a fault in force (a drop or a refuse closes every connection at once)."""
        if fault.kind in (MarketFaultKind.DROP, MarketFaultKind.REFUSE):
            self.drop_connections()
        if fault.kind is not MarketFaultKind.DROP:
            self._faults.append(fault)
            self._apply_faults()

    def end_fault(self, fault: ScheduledFault) -> None:
        """End a fault started by `start_fault` (a drop has nothing left to end)."""
        if fault in self._faults:
            self._faults.remove(fault)
            self._apply_faults()

    def drop_connections(self) -> None:
        """Close every client connection as a restarting exchange does (1012, service restart)."""
        for c in tuple(self._clients):
            tr = c.transport
            if tr is not None and not tr.is_disconnected:
                tr.send_close(WSCloseCode.SERVICE_RESTART, b"service restart")
                tr.disconnect()

    def _flags(self, kind: MarketFaultKind) -> list[bool]:
        """Per board symbol: is a fault of `kind` in force on it."""
        out = [False] * len(self._instruments)
        for f in self._faults:
            if f.kind is kind:
                if f.symbol is None:
                    for si, inst in enumerate(self._instruments):
                        out[si] = inst is not None
                else:
                    out[self._symbol_index[f.symbol]] = True
        return out

    def _apply_faults(self) -> None:
        """Bring the server in line with the faults now in force."""
        kinds = {f.kind for f in self._faults}
        stalled = MarketFaultKind.STALL in kinds
        self.refusing = MarketFaultKind.REFUSE in kinds
        if stalled != self.stalled:
            self.stalled = stalled
            for c in tuple(self._clients):
                c.held = stalled or c.paused
                if not c.held:
                    c.flush()
        if not self._altered:
            self._real = list(self._last)  # nothing altered the quotes yet: what went out is real
        was_crossed, was_stale = self._crossed, self._stale
        self._garbage = self._flags(MarketFaultKind.GARBAGE)
        self._crossed = self._flags(MarketFaultKind.CROSSED)
        self._stale = self._flags(MarketFaultKind.STALE)
        self._altered = any(self._garbage) or any(self._crossed) or any(self._stale)
        now_ms = self._wall() // _NS_PER_MS
        for si, inst in enumerate(self._instruments):
            if inst is None:
                continue
            if self._stale[si]:
                if not was_stale[si]:
                    self._freeze(si, inst, now_ms)
            elif was_stale[si] or self._crossed[si] != was_crossed[si]:
                real = self._real[si]
                if real is not None:
                    self.publish(si, real, now_ms)  # the change shows at once, not at the next tick

    def _freeze(self, si: int, inst: Instrument, now_ms: int) -> None:
        """Start repeating the symbol's last quote: its snapshot as it was, else its last frame."""
        q = self._last[si]
        if q is None:
            return
        if self._last_frame[si] is None:  # nothing sent yet: the seeded quote is the old one
            self._send_frame(si, q, now_ms)
        snap = self.proto.snapshot(inst, q, self._update_ids[si], self._last_ts[si])
        self._stale_frame[si] = snap if snap is not None else self._last_frame[si]

    def _send_frame(self, si: int, q: SimQuote, ts_ms: int) -> Frame:
        """Encode and deliver one quote as `publish` does with no fault in force."""
        uid = self._update_ids[si] + 1
        self._update_ids[si] = uid
        self._last[si] = q
        inst = self._instruments[si]
        assert inst is not None
        frame = self.proto.quote(inst, q, uid, ts_ms)
        self._last_frame[si] = frame
        self._last_ts[si] = ts_ms
        for c in tuple(self._subs[si]):
            c.deliver(si, frame)
        return frame

    def _publish_altered(self, si: int, q: SimQuote, ts_ms: int) -> None:
        """`publish` while a garbage, crossed or stale fault is in force on this venue."""
        self._real[si] = q
        subs = self._subs[si]
        frame: Frame | None
        if self._stale[si]:
            frame = self._stale_frame[si]
            if frame is not None:
                for c in tuple(subs):
                    c.deliver(si, frame)
        else:
            if self._crossed[si]:
                q = SimQuote(q.ask, q.bid, q.ask_size, q.bid_size)
            frame = self._send_frame(si, q, ts_ms)
        if self._garbage[si] and frame is not None and subs:
            bad = garbage_frame(frame, self._garbage_sent)
            self._garbage_sent += 1
            for c in tuple(subs):
                if not c.held:
                    c.send(bad)

    # -- called by Client ----------------------------------------------------------

    def _accept(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        if self.refusing:
            self.refused += 1
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(HTTPStatus.SERVICE_UNAVAILABLE, b"503 Service Unavailable"),
                None)
        path = request.path.decode("utf-8", errors="replace")
        topics = self.proto.route(path)
        session = Session(set(topics or ()), known=self.known)
        return Client(self, session, routed=topics is not None)

    def _connected(self, c: Client) -> None:
        self._clients.add(c)
        self.counters.clients += 1
        self.counters.connections += 1
        for f in self.proto.greeting():
            c.send(f)
        self._index(c, set())

    def _disconnected(self, c: Client) -> None:
        if c not in self._clients:
            return
        self._clients.discard(c)
        self.counters.clients -= 1
        for subs in self._subs:
            subs.discard(c)

    def _on_message(self, c: Client, payload: bytes, binary: bool) -> None:
        self.counters.control_frames += 1
        before = set(c.topics)
        for f in self.proto.on_message(payload, binary, c.session):
            c.send(f)
        self._index(c, before)

    def _index(self, c: Client, before: set[str]) -> None:
        if not c.routed or c.topics == before:
            return
        for t in before - c.topics:
            si = self._topic_symbol.get(t)
            if si is not None:
                self._subs[si].discard(c)
                c.pending.pop(si, None)
                c.conflated.discard(si)
        for t in c.topics - before:
            si = self._topic_symbol.get(t)
            if si is not None:
                self._subs[si].add(c)
                snap = self.snapshot_frame(si)
                if snap is not None:
                    c.deliver(si, snap)
        if self.on_topics_changed is not None:
            self.on_topics_changed(c)


# -- a whole market -------------------------------------------------------------------------


class LoopbackMarket:
    """Every configured venue's server plus the one task that feeds them (`_run`)."""

    #: what the market is called in logs and task names
    kind = "loopback"

    def __init__(self, cfg: Config, *, wall_clock: Clock = wall_ns) -> None:
        self.cfg = cfg
        self._wall = wall_clock
        self._counters = _Counters()
        self.venues: dict[str, VenueServer] = {
            v: VenueServer(v, cfg, self._counters, wall_clock=wall_clock) for v in cfg.venue_names
        }
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        #: the scheduled faults the market carries out (the demo market's `demo.faults`)
        self.fault_schedule: tuple[ScheduledFault, ...] = ()
        self._fault_task: asyncio.Task[None] | None = None

    @property
    def urls(self) -> dict[str, str]:
        """Venue -> websocket URL (the feed spec's demo_path on this venue's port)."""
        return {v: s.url for v, s in self.venues.items()}

    async def start(self, host: str | None = None) -> dict[str, str]:
        """Bind every venue on `host` (default `cfg.demo.host`), port 0, and start the feeding task."""
        bind = host if host is not None else self.cfg.demo.host
        try:
            for vs in self.venues.values():
                await vs.start(bind)
        except BaseException:
            await self.close()
            raise
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"{self.kind}-market")
        self._task.add_done_callback(self._task_done)
        if self.fault_schedule:
            # at_s counts from here: every venue is serving
            self._fault_task = loop.create_task(
                run_schedule(self.fault_schedule, self.venues, start_ns=now_ns()), name=f"{self.kind}-faults")
            self._fault_task.add_done_callback(self._faults_done)
        return self.urls

    async def close(self) -> None:
        """Stop the feeding task, close every connection and server. Safe to call twice."""
        for task in (self._fault_task, self._task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._fault_task = self._task = None
        for vs in self.venues.values():
            await vs.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def error(self) -> BaseException | None:
        """Why the feeding task died, if it did (the market then sends nothing)."""
        return self._error

    def statistics(self) -> MarketStatistics:
        """The server counters plus what the data source counts."""
        c = self._counters
        return MarketStatistics(
            c.frames_sent, c.frames_conflated, c.clients, c.connections, c.control_frames,
            *self._source_counts(),
        )

    def counters(self) -> list[int]:
        """The statistics as the status record's counters, in `MarketCounter` order."""
        s = self.statistics()
        out = [0] * len(MarketCounter)
        out[MarketCounter.FRAMES_SENT] = s.frames_sent
        out[MarketCounter.CLIENTS] = s.clients
        out[MarketCounter.DISLOCATIONS] = s.dislocations_started
        out[MarketCounter.QUOTE_UPDATES] = s.quote_updates
        out[MarketCounter.FRAMES_CONFLATED] = s.frames_conflated
        out[MarketCounter.CONTROL_FRAMES] = s.control_frames
        out[MarketCounter.CONNECTIONS] = s.connections
        out[MarketCounter.JUMPS] = s.jumps
        return out

    def _source_counts(self) -> tuple[int, int, int, int]:
        """(quote updates, dislocations started, jumps, lags) of the data source."""
        return (0, 0, 0, 0)

    async def _run(self) -> None:
        raise NotImplementedError

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._error = exc
            log.error("%s market stopped feeding", self.kind, exc_info=exc)

    def _faults_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._error = exc
            log.error("%s market's fault schedule failed", self.kind, exc_info=exc)


class DemoMarket(LoopbackMarket):
    """The servers fed by the seeded `MarketModel`."""

    kind = "demo"

    def __init__(self, cfg: Config, *, clock: Clock = now_ns, wall_clock: Clock = wall_ns) -> None:
        super().__init__(cfg, wall_clock=wall_clock)
        self._clock = clock
        self.fault_schedule = schedule_from_config(cfg)
        self.model = MarketModel(cfg, start_ns=clock())
        self._by_index = [self.venues[v] for v in self.model.venues]
        for vi, vs in enumerate(self._by_index):
            for si, inst in enumerate(vs.instruments):
                if inst is not None:
                    vs.seed(si, self.model.quote_at(vi, si))

    def _source_counts(self) -> tuple[int, int, int, int]:
        m = self.model.statistics()
        return (m.quote_changes, m.dislocations_started, m.jumps, m.lags)

    async def _run(self) -> None:
        model, clock, wall, venues = self.model, self._clock, self._wall, self._by_index
        while True:
            changed = model.advance(clock())
            if changed:
                ts_ms = wall() // _NS_PER_MS
                for vi, si in changed:
                    venues[vi].publish(si, model.quote_at(vi, si), ts_ms)
            wait_s = (model.next_event_ns() - clock()) / 1e9
            await asyncio.sleep(max(wait_s, MIN_SLEEP_S))


async def serve_market(
    cfg: Config, *, host: str | None = None, clock: Clock = now_ns, wall_clock: Clock = wall_ns
) -> DemoMarket:
    """Start the demo market in the running loop.

    Stop it with `await market.close()`, or use it as `async with await serve_market(cfg) as m:`.
    """
    market = DemoMarket(cfg, clock=clock, wall_clock=wall_clock)
    await market.start(host)
    return market
