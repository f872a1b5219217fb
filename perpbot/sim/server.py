"""The demo market's loopback websocket servers: one port per venue, all in one asyncio loop.

Each venue's server speaks its `feed` protocol: the path is the feed spec's
`demo_path`, the frames come from `perpbot.sim.encoders`, and a small
`ProtocolHandler` turns the client's URL and control frames into the set of
topics it receives. A connection on any other path is accepted and answered
but never gets data, like a real venue's wrong routed path.

One task drives the `MarketModel`: it sleeps until the model's next event,
advances it to the monotonic clock, encodes each changed quote once and sends
the same bytes to every subscriber. Exchange timestamps are wall-clock epoch
ms, the only wall time used. A client whose socket buffer is over its high
watermark (`pause_writing`) is conflated to the latest frame per symbol until
it drains, so it never holds the others up.

    market = await serve_market(cfg)        # binds every venue on cfg.demo.host, port 0
    market.urls["okx"]                      # ws://127.0.0.1:40123/public/stream
    ...
    await market.close()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self
from urllib.parse import parse_qs

import orjson
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from perpbot.clock import Clock, now_ns, wall_ns
from perpbot.config import Config
from perpbot.feeds.registry import get_feed
from perpbot.feeds.spec import FeedSpec
from perpbot.shm.layout import MarketCounter
from perpbot.sim.encoders import (
    Encoder,
    Instrument,
    binanceusdm_error,
    binanceusdm_result,
    get_encoder,
)
from perpbot.sim.market import MarketModel, SimQuote

log = logging.getLogger("perpbot.sim")

_NS_PER_MS = 1_000_000
#: uvloop's timers have 1 ms resolution and round a shorter wait to zero, which spins the loop
#: (measured: ~5000 passes/s instead of ~350); events closer than this share one pass
_MIN_SLEEP_S = 0.001




@dataclass(frozen=True, slots=True)
class MarketStatistics:
    """A snapshot of the demo market's counters."""

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


# -- protocol handlers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolHandler:
    """How one protocol's clients choose what they receive."""

    #: (request path with query, the spec's demo_path) -> topics named in the URL,
    #: or None when the path is not the protocol's route (connection stays silent)
    url_topics: Callable[[str, str], list[str] | None]
    #: (text frame from the client, its topic set, mutated in place) -> reply or None
    on_text: Callable[[bytes, set[str]], bytes | None]


def _binance_stream(name: str) -> str:
    # Binance matches the symbol part case-insensitively; the channel is exact
    sym, at, channel = name.partition("@")
    return f"{sym.lower()}{at}{channel}"


def binanceusdm_url_topics(path: str, demo_path: str) -> list[str] | None:
    """`/public/stream?streams=btcusdt@bookTicker/ethusdt@bookTicker` -> the two stream names."""
    route, _, query = path.partition("?")
    if route.rstrip("/") != demo_path.rstrip("/"):
        return None
    streams = parse_qs(query).get("streams", [])
    return [_binance_stream(s) for value in streams for s in value.split("/") if s]


def binanceusdm_on_text(payload: bytes, topics: set[str]) -> bytes | None:
    """Answer one Binance request frame: SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS."""
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        return binanceusdm_error(3, f"Invalid JSON: {e}")
    if type(msg) is not dict:
        return binanceusdm_error(2, "Invalid request: expected an object")
    rid = msg.get("id")
    if rid is not None and (type(rid) is not int or rid < 0):
        return binanceusdm_error(2, "Invalid request: request ID must be an unsigned integer")
    method = msg.get("method")
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        params = msg.get("params")
        if type(params) is not list or not all(type(p) is str for p in params):
            return binanceusdm_error(
                2, "Invalid request: params must be a list of stream names", rid
            )
        names = [_binance_stream(p) for p in params]
        if method == "SUBSCRIBE":
            topics.update(names)
        else:
            topics.difference_update(names)
        return binanceusdm_result(rid)
    if method == "LIST_SUBSCRIPTIONS":
        return binanceusdm_result(rid, sorted(topics))
    return binanceusdm_error(
        2,
        f"Invalid request: unknown variant {method!r}, expected one of "
        "SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS",
        rid,
    )


#: feed name -> how its clients subscribe (keys match `perpbot.sim.encoders.ENCODERS`)
HANDLERS: dict[str, ProtocolHandler] = {
    "binanceusdm": ProtocolHandler(binanceusdm_url_topics, binanceusdm_on_text),
}


# -- one venue ------------------------------------------------------------------------------


class _Client(WSListener):
    """One connection's subscriptions and flow-control state."""

    def __init__(self, venue: VenueServer, topics: set[str], routed: bool) -> None:
        super().__init__()
        self.venue = venue
        self.topics = topics
        #: False on a wrong path: requests are answered but no data is ever sent
        self.routed = routed
        self.transport: WSTransport | None = None
        self.paused = False
        self.pending: dict[int, bytes] = {}  # symbol index -> latest frame while paused

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.venue._connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        mt = frame.msg_type
        if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY:
            self.venue._control(self, frame.get_payload_as_bytes())
        elif mt == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.venue._disconnected(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        pending, self.pending = self.pending, {}
        for frame in pending.values():
            self.send(frame)

    def deliver(self, symbol_idx: int, frame: bytes) -> None:
        if self.paused:
            if symbol_idx in self.pending:
                self.venue.counters.frames_conflated += 1
            self.pending[symbol_idx] = frame
            return
        self.send(frame)

    def send(self, frame: bytes) -> None:
        tr = self.transport
        if tr is not None and not tr.is_disconnected:
            tr.send(WSMsgType.TEXT, frame)
            self.venue.counters.frames_sent += 1


class VenueServer:
    """One simulated venue: a websocket server speaking its feed's protocol for its symbols."""

    def __init__(self, venue: str, cfg: Config, model: MarketModel, counters: _Counters) -> None:
        vc = cfg.venues[venue]
        self.venue = venue
        self.spec: FeedSpec = get_feed(vc.feed)
        self.encoder: Encoder = get_encoder(vc.feed)
        self.handler: ProtocolHandler = HANDLERS[vc.feed]
        self.counters = counters
        n = len(cfg.symbol_names)
        self._instruments: list[Instrument | None] = [None] * n
        self._topic_symbol: dict[str, int] = {}
        for si, board_sym in enumerate(cfg.symbol_names):
            venue_sym = vc.symbols.get(board_sym)
            if venue_sym is None:
                continue
            inst = self.encoder.instrument(
                venue_sym, model.price_decimals(board_sym), model.size_decimals(board_sym)
            )
            self._instruments[si] = inst
            self._topic_symbol[inst.topic] = si
        self._subs: list[set[_Client]] = [set() for _ in range(n)]
        self._update_ids = [0] * n
        self._clients: set[_Client] = set()
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    @property
    def clients(self) -> tuple[_Client, ...]:
        """Connected clients (for tests and diagnostics)."""
        return tuple(self._clients)

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

    def publish(self, symbol_idx: int, q: SimQuote, ts_ms: int) -> None:
        """Send one quote change to the symbol's subscribers (encoded once for all)."""
        uid = self._update_ids[symbol_idx] + 1
        self._update_ids[symbol_idx] = uid
        subs = self._subs[symbol_idx]
        if not subs:
            return
        inst = self._instruments[symbol_idx]
        assert inst is not None
        frame = self.encoder.quote(inst, q, uid, ts_ms)
        for c in tuple(subs):
            c.deliver(symbol_idx, frame)

    # -- called by _Client ----------------------------------------------------------

    def _accept(self, request: WSUpgradeRequest) -> WSListener:
        path = request.path.decode("utf-8", errors="replace")
        topics = self.handler.url_topics(path, self.spec.demo_path)
        return _Client(self, set(topics or ()), routed=topics is not None)

    def _connected(self, c: _Client) -> None:
        self._clients.add(c)
        self.counters.clients += 1
        self.counters.connections += 1
        self._index(c, set())

    def _disconnected(self, c: _Client) -> None:
        if c not in self._clients:
            return
        self._clients.discard(c)
        self.counters.clients -= 1
        for subs in self._subs:
            subs.discard(c)

    def _control(self, c: _Client, payload: bytes) -> None:
        self.counters.control_frames += 1
        before = set(c.topics)
        reply = self.handler.on_text(payload, c.topics)
        self._index(c, before)
        # the ack goes out before any data for the new topics: both happen in this callback
        if reply is not None and c.transport is not None and not c.transport.is_disconnected:
            c.transport.send(WSMsgType.TEXT, reply)

    def _index(self, c: _Client, before: set[str]) -> None:
        if not c.routed:
            return
        for t in before - c.topics:
            si = self._topic_symbol.get(t)
            if si is not None:
                self._subs[si].discard(c)
                c.pending.pop(si, None)
        for t in c.topics - before:
            si = self._topic_symbol.get(t)
            if si is not None:
                self._subs[si].add(c)


# -- the whole market -------------------------------------------------------------------------


class DemoMarket:
    """Every configured venue's server plus the task that moves prices."""

    def __init__(self, cfg: Config, *, clock: Clock = now_ns, wall_clock: Clock = wall_ns) -> None:
        self.cfg = cfg
        self._clock = clock
        self._wall = wall_clock
        self.model = MarketModel(cfg, start_ns=clock())
        self._counters = _Counters()
        self.venues: dict[str, VenueServer] = {
            v: VenueServer(v, cfg, self.model, self._counters) for v in cfg.venue_names
        }
        self._by_index = [self.venues[v] for v in self.model.venues]
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @property
    def urls(self) -> dict[str, str]:
        """Venue -> websocket URL (the feed spec's demo_path on this venue's port)."""
        return {v: s.url for v, s in self.venues.items()}

    async def start(self, host: str | None = None) -> dict[str, str]:
        """Bind every venue on `host` (default `cfg.demo.host`), port 0, and start ticking."""
        bind = host if host is not None else self.cfg.demo.host
        try:
            for vs in self.venues.values():
                await vs.start(bind)
        except BaseException:
            await self.close()
            raise
        self._task = asyncio.get_running_loop().create_task(self._run(), name="demo-market")
        self._task.add_done_callback(self._task_done)
        return self.urls

    async def close(self) -> None:
        """Stop ticking, close every connection and server. Safe to call twice."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for vs in self.venues.values():
            await vs.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def error(self) -> BaseException | None:
        """Why the ticking task died, if it did (the market then sends nothing)."""
        return self._error

    def statistics(self) -> MarketStatistics:
        c = self._counters
        m = self.model.statistics()
        return MarketStatistics(
            c.frames_sent, c.frames_conflated, c.clients, c.connections, c.control_frames,
            m.quote_changes, m.dislocations_started, m.jumps, m.lags,
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

    async def _run(self) -> None:
        model, clock, wall, venues = self.model, self._clock, self._wall, self._by_index
        while True:
            changed = model.advance(clock())
            if changed:
                ts_ms = wall() // _NS_PER_MS
                for vi, si in changed:
                    venues[vi].publish(si, model.quote_at(vi, si), ts_ms)
            wait_s = (model.next_event_ns() - clock()) / 1e9
            await asyncio.sleep(max(wait_s, _MIN_SLEEP_S))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._error = exc
            log.error("demo market stopped ticking", exc_info=exc)


async def serve_market(
    cfg: Config, *, host: str | None = None, clock: Clock = now_ns, wall_clock: Clock = wall_ns
) -> DemoMarket:
    """Start the demo market in the running loop.

    Stop it with `await market.close()`, or use it as `async with await serve_market(cfg) as m:`.
    """
    market = DemoMarket(cfg, clock=clock, wall_clock=wall_clock)
    await market.start(host)
    return market
