"""Replay mode: a recording played through the same loopback servers as the demo market.

Every configured venue gets its server, speaking its protocol exactly as in
demo mode (routes, acks, errors); but no model runs. One venue serves the
recording (`replay_venue`): `replay.venue`, else the first venue in config
order whose feed speaks the recording (`recording_feeds`: the feed with the
recorded URL's host, or for a recording of the demo market the feed with the
longest demo path under which it was recorded). The other venues'
servers answer and stay silent.

What a client receives is the recorded frames themselves, byte for byte,
text or binary as recorded (control frames the venue sent, such as acks and
pongs, included: they are part of the session). Each recorded connection's
frames go to the clients whose topics meet that connection's topics, which
are found by asking the protocol itself: `route()` of the recorded URL (on
the demo path if the recorded path is not its route) plus the topics the
recorded subscribe frames add through `on_message()`. A recorded connection
whose topics cannot be told this way goes to every subscribed client.

Timing: the replay starts when the first client subscribes to a recorded
topic (so nothing is lost to a feed still connecting) and sends frame i at
`(t_i - t_0) / speed` after that, t_0 being the first received frame's time;
`as_fast_as_possible` sends each frame as soon as the clients take it.
A replay never drops or conflates a recorded frame: a client over its high
watermark holds the replay until it drains, and a late replay catches up
without sleeping. Clients that subscribe later join mid-stream. When the
recording ends the servers stay up, silent.

    market = await serve_replay(cfg)        # cfg.mode == "replay"
    await market.wait_finished()
    await market.close()
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from urllib.parse import urlsplit

from perpbot.clock import Clock, now_ns, wall_ns
from perpbot.config import Config
from perpbot.errors import ConfigError
from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import FeedSpec
from perpbot.record import RecordedConnection, read_recording
from perpbot.sim.protocol import Frame, Session, SimProtocol
from perpbot.sim.protocols import get_protocol
from perpbot.sim.server import MIN_SLEEP_S, Client, LoopbackMarket

log = logging.getLogger("perpbot.sim")

#: a recording with a feed's public host is that feed's, whatever its path
_HOST_MATCH = 1 << 20
#: a replay that need not sleep still yields to the loop this often, so requests are answered meanwhile
_YIELD_EVERY = 64


def _score(spec: FeedSpec, url: str) -> int:
    """How specifically a recording of `url` is this feed's: 0 not at all, higher more."""
    rec = urlsplit(url)
    if rec.hostname is not None and rec.hostname == urlsplit(spec.public_url).hostname:
        return _HOST_MATCH
    demo = urlsplit(spec.demo_path).path.rstrip("/")
    path = rec.path.rstrip("/")
    # per-market URLs (Extended) extend the demo path; "/ws" must not claim "/ws/v5/public"
    if path == demo or path.startswith(demo + "/"):
        return 1 + len(demo)
    return 0


def recording_feeds(url: str) -> frozenset[str]:
    """The feeds a recording of `url` speaks: those with the public URL's host, else the longest demo path.

    A recording of a real venue has its host; one of the demo market (made with
    `perpbot-record --url`) has the feed's demo path, or a path under it.
    """
    scores = {name: _score(spec, url) for name, spec in FEEDS.items()}
    best = max(scores.values(), default=0)
    return frozenset(name for name, score in scores.items() if best and score == best)


def feed_matches(spec: FeedSpec, url: str) -> bool:
    """True if a recording of `url` speaks this feed's protocol (see `recording_feeds`)."""
    return spec.name in recording_feeds(url)


def replay_venue(cfg: Config, url: str) -> str | None:
    """The venue that serves a recording of `url`: `replay.venue` if its feed speaks it, else the
    first venue in config order whose feed does; None if there is none."""
    feeds = recording_feeds(url)
    chosen = cfg.replay.venue if cfg.replay is not None else None
    candidates = [chosen] if chosen is not None else list(cfg.venues)
    for venue in candidates:
        if cfg.venues[venue].feed in feeds:
            return venue
    return None


def recorded_topics(proto: SimProtocol, conn: RecordedConnection) -> frozenset[str]:
    """The topics a recorded connection was subscribed to, as the protocol reads its URL and requests.

    `proto` should be an instance of its own: requests go through `on_message` (replies dropped).
    """
    parts = urlsplit(conn.url)
    query = f"?{parts.query}" if parts.query else ""
    named = proto.route(parts.path + query)
    if named is None:  # recorded on the venue's real path, which need not be the demo path
        named = proto.route(urlsplit(proto.demo_path).path + query)
    # every recorded topic counts, listed in the config or not: the filter is the client's topics
    session = Session(set(named or ()), known=lambda topic: True)
    for f in conn.sent:
        proto.on_message(f.payload, f.binary, session)
    return frozenset(session.topics)


class ReplayMarket(LoopbackMarket):
    """The loopback servers fed from a recording (see the module docstring)."""

    kind = "replay"

    def __init__(
        self,
        cfg: Config,
        recording: list[RecordedConnection] | None = None,
        *,
        clock: Clock = now_ns,
        wall_clock: Clock = wall_ns,
    ) -> None:
        rc = cfg.replay
        if rc is None:
            raise ConfigError("$.replay.file", "replay needs a recording to play: set $.replay.file")
        super().__init__(cfg, wall_clock=wall_clock)
        self._clock = clock
        conns = recording if recording is not None else read_recording(rc.file)
        venue = replay_venue(cfg, conns[0].url)
        if venue is None:
            raise ConfigError("$.replay.file", f"no configured venue speaks the recording of {conns[0].url}")
        self.venue = venue
        self._venue_server = self.venues[venue]
        feed = cfg.venues[venue].feed
        topics = [recorded_topics(get_protocol(feed)(self._venue_server.spec.demo_path), c) for c in conns]
        self.recorded_topics: tuple[frozenset[str], ...] = tuple(topics)
        # merged by time, but each connection's frames in file order even if its clock stepped back
        per_conn = [[(f.t, topics[k], Frame(f.payload, f.binary)) for f in c.received] for k, c in enumerate(conns)]
        self._frames = list(heapq.merge(*per_conn, key=lambda x: x[0]))
        self._speed: float | None = None if rc.as_fast_as_possible else rc.speed
        self._replayed = 0
        self._subscribed = asyncio.Event()
        self._finished = asyncio.Event()
        self._venue_server.on_topics_changed = self._topics_changed

    @property
    def frames_total(self) -> int:
        """Received frames in the recording (what a whole replay sends to one client)."""
        return len(self._frames)

    @property
    def frames_replayed(self) -> int:
        """Recorded frames sent so far (each counted once, however many clients got it)."""
        return self._replayed

    @property
    def finished(self) -> bool:
        """True once every recorded frame has been sent."""
        return self._finished.is_set()

    async def wait_finished(self) -> None:
        """Return once every recorded frame has been sent."""
        await self._finished.wait()

    def _source_counts(self) -> tuple[int, int, int, int]:
        return (self._replayed, 0, 0, 0)

    def _topics_changed(self, c: Client) -> None:
        if c.topics and any(not t or not c.topics.isdisjoint(t) for t in self.recorded_topics):
            self._subscribed.set()

    async def _run(self) -> None:
        await self._subscribed.wait()
        frames, clock, speed = self._frames, self._clock, self._speed
        log.info("replay of %d frames on %s starts (%s)", len(frames), self.venue,
                 "as fast as possible" if speed is None else f"x{speed:g}")
        t0 = frames[0][0] if frames else 0.0
        start_ns = clock()
        for i, (t, topics, frame) in enumerate(frames):
            wait_s = 0.0 if speed is None else (start_ns + (t - t0) / speed * 1e9 - clock()) / 1e9
            if wait_s >= MIN_SLEEP_S:  # closer frames share one pass (uvloop's timers are 1 ms)
                await asyncio.sleep(wait_s)
            elif i % _YIELD_EVERY == 0:  # as fast as possible, or catching up after a stall
                await asyncio.sleep(0)
            await self._send(topics, frame)
            self._replayed += 1
        self._finished.set()
        log.info("replay finished: %d frames in %.3f s", len(frames), (clock() - start_ns) / 1e9)

    async def _send(self, topics: frozenset[str], frame: Frame) -> None:
        for c in self._venue_server.clients:
            if not c.routed or not c.topics or (topics and c.topics.isdisjoint(topics)):
                continue
            while c.paused and c.connected:
                await c.wait_drained()
            c.send(frame)


async def serve_replay(
    cfg: Config,
    *,
    recording: list[RecordedConnection] | None = None,
    host: str | None = None,
    clock: Clock = now_ns,
    wall_clock: Clock = wall_ns,
) -> ReplayMarket:
    """Start a replay of `cfg.replay.file` (or of `recording`) in the running loop."""
    market = ReplayMarket(cfg, recording, clock=clock, wall_clock=wall_clock)
    await market.start(host)
    return market
