"""How far each venue's clock is from ours.

Signed requests carry our wall-clock timestamp, and venues refuse one outside
their receive window (about 5 s). The offset to a venue is measured the NTP
way: send at local `send`, the venue answers with its time `server`, the
answer arrives at local `recv`; assuming the request and the answer took
equally long,

    offset = server - (send + recv) / 2        (the venue's clock minus ours)
    error  <= (recv - send) / 2                 (half the round trip)

so the sample with the shortest round trip is the most exact. `ClockOffset`
keeps the last samples and uses the best of them; `measure` takes a few;
`ClockSync` measures every venue, hands the offset to each venue that can use
it (`set_clock_offset_ms`) and warns when one is too far off. It has no task of
its own: the exec process calls `sync_all` at start and when `due`.

All times here are epoch milliseconds of the local wall clock (`time.time`),
the clock signed requests are stamped with.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from perpbot import clock as _clock

#: samples a ClockOffset keeps by default
DEFAULT_MAX_SAMPLES = 8


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One exchange of clocks: local send and receive times around the venue's answer, epoch ms."""

    send_ms: float
    server_ms: float
    recv_ms: float

    @property
    def rtt_ms(self) -> float:
        return self.recv_ms - self.send_ms

    @property
    def offset_ms(self) -> float:
        """The venue's clock minus ours."""
        return self.server_ms - (self.send_ms + self.recv_ms) / 2

    @property
    def error_ms(self) -> float:
        """The most the offset can be wrong by (half the round trip)."""
        return self.rtt_ms / 2


class ClockOffset:
    """The offset to one venue's clock: the lowest-round-trip sample of the last `max_samples`.

    Before the first sample the offset is 0 (the venue is assumed to agree with us).
    """

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self._samples: deque[ClockSample] = deque(maxlen=max_samples)
        self._best: ClockSample | None = None

    def add(self, send_ms: float, server_ms: float, recv_ms: float) -> ClockSample:
        """Record one sample; a receive before the send (the local clock stepped back) is refused."""
        for name, value in (("send_ms", send_ms), ("server_ms", server_ms), ("recv_ms", recv_ms)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if recv_ms < send_ms:
            raise ValueError(f"recv_ms {recv_ms} is before send_ms {send_ms}")
        sample = ClockSample(send_ms, server_ms, recv_ms)
        self._samples.append(sample)
        # ties go to the newer sample: as exact, and closer to now if either clock drifts
        self._best = min(reversed(self._samples), key=lambda s: s.rtt_ms)
        return sample

    @property
    def best(self) -> ClockSample | None:
        return self._best

    @property
    def samples(self) -> tuple[ClockSample, ...]:
        return tuple(self._samples)

    @property
    def offset_ms(self) -> float:
        """The venue's clock minus ours (0.0 before any sample)."""
        return self._best.offset_ms if self._best is not None else 0.0

    @property
    def rtt_ms(self) -> float | None:
        """The round trip of the sample the offset comes from; None before any sample."""
        return self._best.rtt_ms if self._best is not None else None

    @property
    def error_ms(self) -> float | None:
        """The most the offset can be wrong by; None before any sample."""
        return self._best.error_ms if self._best is not None else None

    def venue_now_ms(self, local_ms: float) -> float:
        """The venue's clock at local epoch time `local_ms`."""
        return local_ms + self.offset_ms

    def __repr__(self) -> str:
        if self._best is None:
            return "ClockOffset(no samples)"
        return f"ClockOffset({self.offset_ms:+.1f} ms +/- {self._best.error_ms:.1f} ms)"


class ServerClock(Protocol):
    """What `measure` needs of a venue; every `perpbot.exec.venues.base.Venue` has it."""

    async def server_time_ms(self) -> int: ...


async def measure(venue: ServerClock, n: int = 5, wall: Callable[[], float] = time.time,
                  *, max_samples: int | None = None) -> ClockOffset:
    """Ask `venue.server_time_ms()` `n` times, one after the other, and keep the best sample.

    `wall` is the local clock in epoch seconds. A failing request is skipped;
    when all `n` fail, the last error is raised.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    offset = ClockOffset(max_samples or n)
    error: BaseException | None = None
    for _ in range(n):
        send_ms = wall() * 1000.0
        try:
            server_ms = await venue.server_time_ms()
        except Exception as e:
            error = e
            continue
        offset.add(send_ms, float(server_ms), wall() * 1000.0)
    if offset.best is None:
        assert error is not None
        raise error
    return offset


class ClockSync:
    """Measures every venue's clock offset, passes it on and reports it.

    `venues` is a mapping of venue name to venue, or venues with a `name`.
    A venue that fails keeps its last offset (and is logged). Each measured
    offset, rounded to whole ms, goes to `venue.set_clock_offset_ms(int)` where
    the venue has that method; the ccxt venue stamps its signed requests with
    it. An offset beyond `max_offset_ms` is logged as a warning.
    """

    def __init__(self, venues: Mapping[str, Any] | Iterable[Any], interval_s: float = 60.0,
                 max_offset_ms: float = 1000.0, log: logging.Logger | None = None, *, samples: int = 5,
                 wall: Callable[[], float] = time.time, clock: _clock.Clock = _clock.now_ns) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if max_offset_ms <= 0:
            raise ValueError(f"max_offset_ms must be > 0, got {max_offset_ms}")
        self._venues: dict[str, Any] = {}
        if isinstance(venues, Mapping):
            self._venues.update(venues)
        else:
            for venue in cast(Iterable[Any], venues):
                self._venues[venue.name] = venue
        self.interval_s = interval_s
        self.max_offset_ms = max_offset_ms
        self._log = log or logging.getLogger("perpbot.exec")
        self._samples = samples
        self._wall = wall
        self._clock = clock
        self._offsets: dict[str, ClockOffset | None] = dict.fromkeys(self._venues)
        self._errors: dict[str, str] = {}
        self._last_sync_ns: int | None = None

    def due(self, now_ns: int) -> bool:
        """True before the first sync and once `interval_s` has passed since the last one started."""
        return self._last_sync_ns is None or now_ns - self._last_sync_ns >= self.interval_s * 1e9

    async def sync_all(self) -> dict[str, float | None]:
        """Measure every venue (one after the other, so they do not share the event loop's delays),
        apply and check the offsets; returns `offsets()`."""
        self._last_sync_ns = self._clock()
        for name, venue in self._venues.items():
            try:
                measured = await measure(venue, self._samples, self._wall)
            except Exception as e:
                self._errors[name] = repr(e)
                last = self._offsets[name]
                self._log.warning("clock offset of %s: measuring failed (%r); keeping %s", name, e,
                                  "no offset" if last is None else f"{last.offset_ms:+.0f} ms")
                continue
            self._errors.pop(name, None)
            self._offsets[name] = measured
            self._apply(name, venue, measured)
        return self.offsets()

    def _apply(self, name: str, venue: Any, measured: ClockOffset) -> None:
        offset = measured.offset_ms
        if abs(offset) > self.max_offset_ms:
            self._log.warning("clock offset of %s is %+.0f ms (+/- %.0f ms), beyond %.0f ms: signed "
                              "requests may be refused", name, offset, measured.error_ms or 0.0,
                              self.max_offset_ms)
        setter = getattr(venue, "set_clock_offset_ms", None)
        if callable(setter):
            try:
                setter(round(offset))
            except Exception as e:
                self._log.warning("clock offset of %s: set_clock_offset_ms failed: %r", name, e)

    def offsets(self) -> dict[str, float | None]:
        """The venue's clock minus ours per venue, ms; None for a venue never measured."""
        return {name: (o.offset_ms if o is not None else None) for name, o in self._offsets.items()}

    def status(self) -> dict[str, dict[str, Any]]:
        """Per venue: offset, round trip and error bound (ms, None if never measured), last error."""
        out: dict[str, dict[str, Any]] = {}
        for name, o in self._offsets.items():
            out[name] = {"offset_ms": o.offset_ms if o is not None else None,
                         "rtt_ms": o.rtt_ms if o is not None else None,
                         "error_ms": o.error_ms if o is not None else None,
                         "error": self._errors.get(name, "")}
        return out

    def clock(self, name: str) -> ClockOffset | None:
        """A venue's last measured offset, None if never measured."""
        return self._offsets[name]
