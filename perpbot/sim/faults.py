"""Scheduled faults of the demo market's venue servers (`demo.faults` in the config).

A schedule is a list of faults, each on one venue's server, starting `at_s`
seconds after the market starts serving and lasting `for_s`:

    drop     every client connection is closed (close code 1012, service restart), as an
             exchange restart does; clients may reconnect at once. Instantaneous.
    stall    connections stay open but the venue sends nothing: no quotes, no replies to
             requests or application pings, no greeting to a new connection. Requests are
             still processed (a subscription made during the stall holds). When it ends each
             client gets, per symbol whose frames were held back, a fresh snapshot where the
             protocol has one (else the latest frame), exactly as after a slow reader's
             conflation.
    garbage  after every quote frame of the venue (of `symbol`, or all) a malformed frame goes
             to the same subscribers, cycling through: the frame cut in half, the frame behind
             a stray `{` (invalid JSON), the frame with every number turned into the wrong type
             (a numeric string becomes an object, a number a string), the frame inside a JSON
             array (the wrong shape). For a binary (Paradex
             SBE) frame: cut in half, an unknown template id, a block length larger than the
             frame, and invalid JSON as a text frame. The normal quotes keep flowing.
    crossed  the venue's quotes (of `symbol`, or all) go out with bid and ask swapped (sizes
             too), so bid > ask, snapshots included; it starts and ends with the current
             quote sent again at once.
    stale    the venue sends the quote it showed last, frozen, again on every change the
             model makes (of `symbol`, or all): the protocol's snapshot of that quote with its
             old update id and old exchange timestamp where the protocol has snapshots, else
             the very bytes of the last frame. New subscribers get that frozen snapshot. When
             it ends the current quote goes out at once, one update id after the frozen one.
    refuse   a drop, then every new connection is refused at the handshake (HTTP 503, no
             upgrade) until it ends.

Faults of different kinds, venues or symbols may overlap; stale wins over
crossed on the same symbol. The market logs each at WARNING as it starts and
ends (`fault stall on okx started: demo.faults[2], for 3 s` / `fault stall on
okx ended: demo.faults[2]`; a drop logs both at once).

`active_at` and `transitions` are pure functions of the schedule; `run_schedule`
is the driver a market runs as a task, telling each venue's server
(`FaultTarget`) when a fault starts and ends.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from perpbot.clock import Clock, now_ns
from perpbot.config import (
    MARKET_FAULT_DURATION_KINDS,
    MARKET_FAULT_KINDS,
    MARKET_FAULT_SYMBOL_KINDS,
    Config,
)
from perpbot.sim.protocol import Frame

log = logging.getLogger("perpbot.sim")

_NS_PER_S = 1_000_000_000


class MarketFaultKind(str, enum.Enum):
    DROP = "drop"
    STALL = "stall"
    GARBAGE = "garbage"
    CROSSED = "crossed"
    STALE = "stale"
    REFUSE = "refuse"

    @property
    def lasts(self) -> bool:
        """True if it lasts `for_s` (every kind but a drop)."""
        return self.value in MARKET_FAULT_DURATION_KINDS

    @property
    def per_symbol(self) -> bool:
        """True if it may name one symbol."""
        return self.value in MARKET_FAULT_SYMBOL_KINDS


assert tuple(k.value for k in MarketFaultKind) == MARKET_FAULT_KINDS


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    """One entry of the schedule; `index` is its place in `demo.faults` (what the log names)."""

    index: int
    at_s: float
    venue: str
    kind: MarketFaultKind
    for_s: float = 0.0
    symbol: str | None = None

    @property
    def end_s(self) -> float:
        """When it ends (a drop: when it starts)."""
        return self.at_s + self.for_s if self.kind.lasts else self.at_s

    @property
    def label(self) -> str:
        return f"demo.faults[{self.index}]"

    def describe(self) -> str:
        """What the start line says after the label: the symbol and the duration."""
        parts = [self.label]
        if self.symbol is not None:
            parts.append(self.symbol)
        if self.kind.lasts:
            parts.append(f"for {self.for_s:g} s")
        return ", ".join(parts)


def schedule_from_config(cfg: Config) -> tuple[ScheduledFault, ...]:
    """The config's `demo.faults` (already validated) in start order, ties in config order."""
    faults = [ScheduledFault(i, f.at_s, f.venue, MarketFaultKind(f.kind), f.for_s, f.symbol)
              for i, f in enumerate(cfg.demo.faults)]
    return tuple(sorted(faults, key=lambda f: (f.at_s, f.index)))


def active_at(schedule: Iterable[ScheduledFault], t_s: float) -> tuple[ScheduledFault, ...]:
    """The faults in force at `t_s` seconds after the start: at_s <= t < at_s + for_s.

    A drop is instantaneous and never in force; `transitions` reports it.
    """
    return tuple(f for f in schedule if f.kind.lasts and f.at_s <= t_s < f.end_s)


def boundaries(schedule: Iterable[ScheduledFault]) -> list[float]:
    """Every time something starts or ends, ascending, once each."""
    return sorted({t for f in schedule for t in (f.at_s, f.end_s)})


def transitions(schedule: Iterable[ScheduledFault], t_s: float) -> tuple[list[ScheduledFault],
                                                                          list[ScheduledFault]]:
    """(ending, starting) exactly at `t_s`, each in schedule order; a drop is in both.

    Applying the ends before the starts at every boundary in turn leaves the
    servers with `active_at(schedule, t)` in force.
    """
    faults = list(schedule)
    return [f for f in faults if f.end_s == t_s], [f for f in faults if f.at_s == t_s]


class FaultTarget(Protocol):
    """What the driver tells a venue's server."""

    def start_fault(self, fault: ScheduledFault) -> None: ...

    def end_fault(self, fault: ScheduledFault) -> None: ...


async def run_schedule(schedule: Iterable[ScheduledFault], targets: Mapping[str, FaultTarget], *,
                       start_ns: int, clock: Clock = now_ns,
                       sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
    """Start and end each fault on its venue's server at its time after `start_ns` (by `clock`).

    Returns once the last fault has ended. A boundary already past (a loaded
    machine) is applied at once, still in order.
    """
    faults = list(schedule)
    for t in boundaries(faults):
        wait_s = (start_ns + round(t * _NS_PER_S) - clock()) / _NS_PER_S
        if wait_s > 0:
            await sleep(wait_s)
        ending, starting = transitions(faults, t)
        for f in ending:
            if f.kind.lasts:
                targets[f.venue].end_fault(f)
                log.warning("fault %s on %s ended: %s", f.kind.value, f.venue, f.label)
        for f in starting:
            log.warning("fault %s on %s started: %s", f.kind.value, f.venue, f.describe())
            targets[f.venue].start_fault(f)
            if not f.kind.lasts:
                targets[f.venue].end_fault(f)
                log.warning("fault %s on %s ended: %s", f.kind.value, f.venue, f.label)


# -- malformed frames ---------------------------------------------------------------------------

#: how many kinds of garbage `garbage_frame` cycles through
GARBAGE_VARIANTS = 4
_SBE_HEADER = struct.Struct("<HHHH")
_UNKNOWN_TEMPLATE = 0x7A7A


def garbage_frame(frame: Frame, n: int) -> Frame:
    """Malformed frame number `n` (cycling through `GARBAGE_VARIANTS` kinds) made from a good one."""
    payload = frame.payload
    v = n % GARBAGE_VARIANTS
    if v == 0:
        return Frame(payload[: max(1, len(payload) // 2)], frame.binary)  # cut in half
    if frame.binary:
        if v == 1 and len(payload) >= _SBE_HEADER.size:
            block, _template, schema, version = _SBE_HEADER.unpack_from(payload)
            return Frame(_SBE_HEADER.pack(block, _UNKNOWN_TEMPLATE, schema, version)
                         + payload[_SBE_HEADER.size:], True)
        if v == 2 and len(payload) >= _SBE_HEADER.size:
            _block, template, schema, version = _SBE_HEADER.unpack_from(payload)
            return Frame(_SBE_HEADER.pack(0xFFFF, template, schema, version) + payload[_SBE_HEADER.size:], True)
        return Frame(b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":', False)
    if v == 1:
        return Frame(b"{" + payload, False)  # invalid JSON
    if v == 3:
        return Frame(b"[" + payload + b"]", False)  # valid JSON of the wrong shape
    wrong = _wrong_types(payload)
    return Frame(wrong if wrong is not None else b"{" + payload, False)


def _wrong_types(payload: bytes) -> bytes | None:
    """The JSON frame with every number the wrong type, keys and other strings kept; None if not JSON."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, (dict, list)):
        return None
    return orjson.dumps(_mangle(doc))


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _mangle(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _mangle(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mangle(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, (int, float)):
        return f"{node}?"
    if isinstance(node, str) and _numeric(node):
        return {"value": node}
    return node
