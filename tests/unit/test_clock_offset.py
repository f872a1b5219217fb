"""Clock offsets: NTP arithmetic, best-sample choice, measuring a venue, syncing many."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from perpbot.exec.clock_offset import ClockOffset, ClockSync, measure


def test_symmetric_sample() -> None:
    c = ClockOffset()
    c.add(send_ms=1000.0, server_ms=1550.0, recv_ms=1100.0)
    assert c.offset_ms == 500.0  # 1550 - 1050
    assert c.rtt_ms == 100.0
    assert c.error_ms == 50.0
    assert c.venue_now_ms(2000.0) == 2500.0


def test_no_sample_means_no_offset() -> None:
    c = ClockOffset()
    assert c.best is None
    assert c.offset_ms == 0.0
    assert c.rtt_ms is None
    assert c.venue_now_ms(1234.0) == 1234.0


def test_asymmetric_round_trips_pick_the_fastest_sample() -> None:
    # the venue is exactly 200 ms ahead; the outbound leg is slow in the first two samples,
    # which biases their offsets, while the short round trip is nearly exact
    c = ClockOffset()
    c.add(0.0, 0.0 + 90 + 200, 100.0)  # out 90 ms, back 10 ms: offset 240 (+40 bias), rtt 100
    c.add(1000.0, 1000 + 5 + 200, 1060.0)  # out 5, back 55: offset 175 (-25), rtt 60
    c.add(2000.0, 2000 + 6 + 200, 2010.0)  # out 6, back 4: offset 201, rtt 10
    c.add(3000.0, 3000 + 300 + 200, 3400.0)  # rtt 400: offset 300
    assert c.rtt_ms == 10.0
    assert c.offset_ms == 201.0
    assert abs(c.offset_ms - 200) <= c.error_ms  # type: ignore[operator]


def test_only_the_last_samples_count() -> None:
    c = ClockOffset(max_samples=3)
    c.add(0.0, 500.0, 2.0)  # the best ever, then pushed out by three newer ones
    for t in (100.0, 200.0, 300.0):
        c.add(t, t + 30 + 700, t + 60)
    assert len(c.samples) == 3
    assert c.rtt_ms == 60.0
    assert c.offset_ms == 700.0


def test_equal_round_trips_prefer_the_newest() -> None:
    c = ClockOffset()
    c.add(0.0, 110.0, 20.0)
    c.add(100.0, 230.0, 120.0)
    assert c.offset_ms == 120.0


def test_bad_samples_are_refused() -> None:
    c = ClockOffset()
    with pytest.raises(ValueError, match="before"):
        c.add(100.0, 50.0, 99.0)
    with pytest.raises(ValueError, match="finite"):
        c.add(float("nan"), 50.0, 99.0)
    assert c.best is None


class SkewedVenue:
    """A test venue whose clock runs `skew_ms` ahead of a fake wall clock; each call takes a while."""

    def __init__(self, name: str, skew_ms: float, wall: FakeWall, delays_ms: Iterator[tuple[float, float]],
                 fail: BaseException | None = None) -> None:
        self.name = name
        self.skew_ms = skew_ms
        self.wall = wall
        self.delays = delays_ms
        self.fail = fail
        self.calls = 0
        self.applied: list[int] = []

    async def server_time_ms(self) -> int:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        out, back = next(self.delays)
        self.wall.ms += out
        now = self.wall.ms + self.skew_ms
        self.wall.ms += back
        return round(now)

    def set_clock_offset_ms(self, offset_ms: int) -> None:
        self.applied.append(offset_ms)


class FakeWall:
    def __init__(self, ms: float = 1_700_000_000_000.0) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000.0


def _delays(*pairs: tuple[float, float]) -> Iterator[tuple[float, float]]:
    return iter(pairs)


def test_measure_finds_a_known_skew() -> None:
    wall = FakeWall()
    venue = SkewedVenue("v", -1234.0, wall, _delays((40, 5), (3, 3), (20, 80), (10, 30), (50, 50)))
    c = asyncio.run(measure(venue, n=5, wall=wall))
    assert venue.calls == 5
    assert len(c.samples) == 5
    assert c.rtt_ms == pytest.approx(6.0)
    assert c.offset_ms == pytest.approx(-1234.0)
    # every sample's offset is within its own error bound of the truth
    for s in c.samples:
        assert abs(s.offset_ms + 1234.0) <= s.error_ms + 0.5  # + rounding of the server's integer ms


def test_measure_skips_a_failed_request_and_raises_when_all_fail() -> None:
    class Flaky(SkewedVenue):
        async def server_time_ms(self) -> int:
            if self.calls == 0:
                self.calls += 1
                raise TimeoutError("slow")
            return await super().server_time_ms()

    wall = FakeWall()
    flaky = Flaky("f", 300.0, wall, _delays((2, 2), (2, 2)))
    c = asyncio.run(measure(flaky, n=3, wall=wall))
    assert len(c.samples) == 2
    assert c.offset_ms == pytest.approx(300.0)

    dead = SkewedVenue("d", 0.0, wall, _delays(), fail=ConnectionError("down"))
    with pytest.raises(ConnectionError, match="down"):
        asyncio.run(measure(dead, n=3, wall=wall))
    assert dead.calls == 3


class NoSetter:
    """A venue that cannot take an offset (like the paper venue)."""

    name = "plain"

    async def server_time_ms(self) -> int:
        return 42


def test_clock_sync_applies_offsets_and_survives_a_failing_venue(caplog: pytest.LogCaptureFixture) -> None:
    wall = FakeWall()
    good = SkewedVenue("good", 250.0, wall, _delays(*[(1, 1)] * 20))
    bad = SkewedVenue("bad", 0.0, wall, _delays(), fail=ConnectionError("refused"))
    plain = NoSetter()
    sync = ClockSync([good, bad, plain], interval_s=30, max_offset_ms=1000,
                     log=logging.getLogger("test.clock"), samples=3, wall=wall, clock=lambda: 0)
    assert sync.offsets() == {"good": None, "bad": None, "plain": None}
    with caplog.at_level(logging.WARNING, logger="test.clock"):
        offsets = asyncio.run(sync.sync_all())
    assert offsets["good"] == pytest.approx(250.0)
    assert offsets["bad"] is None
    assert offsets["plain"] is not None  # measured, just nothing to hand it to
    assert good.applied == [250]
    assert "bad" in caplog.text and "refused" in caplog.text
    assert sync.status()["bad"]["error"] == "ConnectionError('refused')"
    assert sync.status()["good"]["error"] == ""


def test_a_failing_venue_keeps_its_last_offset() -> None:
    wall = FakeWall()
    venue = SkewedVenue("v", -80.0, wall, _delays(*[(2, 2)] * 3))
    sync = ClockSync({"v": venue}, interval_s=30, max_offset_ms=1000, samples=3, wall=wall, clock=lambda: 0)
    asyncio.run(sync.sync_all())
    venue.fail = OSError("gone")
    asyncio.run(sync.sync_all())
    assert sync.offsets() == {"v": pytest.approx(-80.0)}
    assert venue.applied == [-80]  # not re-applied from a failed measurement
    assert "gone" in sync.status()["v"]["error"]


def test_a_large_offset_is_a_warning_naming_venue_and_offset(caplog: pytest.LogCaptureFixture) -> None:
    wall = FakeWall()
    near = SkewedVenue("near", 999.0, wall, _delays(*[(1, 1)] * 3))
    far = SkewedVenue("far", -2500.0, wall, _delays(*[(1, 1)] * 3))
    sync = ClockSync([near, far], interval_s=30, max_offset_ms=1000, log=logging.getLogger("test.clock2"),
                     samples=3, wall=wall, clock=lambda: 0)
    with caplog.at_level(logging.WARNING, logger="test.clock2"):
        asyncio.run(sync.sync_all())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "far" in warnings[0] and "-2500 ms" in warnings[0]
    assert far.applied == [-2500]  # applied anyway: a stamp nearer the venue's clock is still better


def test_due_follows_the_interval() -> None:
    now = [5_000_000_000]
    wall = FakeWall()
    venue = SkewedVenue("v", 0.0, wall, _delays(*[(1, 1)] * 10))
    sync = ClockSync([venue], interval_s=2.0, max_offset_ms=1000, samples=2, wall=wall, clock=lambda: now[0])
    assert sync.due(now[0])
    asyncio.run(sync.sync_all())
    assert not sync.due(now[0])
    assert not sync.due(now[0] + 2_000_000_000 - 1)
    assert sync.due(now[0] + 2_000_000_000)
