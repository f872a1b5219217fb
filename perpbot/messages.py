"""The opportunity message (scanner -> exec), packed with `struct`: one definition.

It carries the triggering quote's three stamps plus the scanner's detect stamp
(DESIGN.md, latency accounting) so exec can drop stale signals and measure hops.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

OPPORTUNITY_STRUCT = struct.Struct("<QHBBdddddqqqq")


class Opportunity(NamedTuple):
    opp_id: int
    symbol: int
    buy_venue: int
    sell_venue: int
    buy_price: float  # best ask on the buy venue
    sell_price: float  # best bid on the sell venue
    buy_size: float  # size at that ask, base units
    sell_size: float  # size at that bid, base units
    edge_bps: float  # net of both taker fees
    ts_exchange_ns: int
    ts_recv_ns: int
    ts_write_ns: int
    ts_detect_ns: int


def encode_opportunity(o: Opportunity) -> bytes:
    return OPPORTUNITY_STRUCT.pack(*o)


def decode_opportunity(b: bytes) -> Opportunity:
    """Raises ValueError on a message of the wrong size."""
    if len(b) != OPPORTUNITY_STRUCT.size:
        raise ValueError(f"opportunity message is {len(b)} bytes, expected {OPPORTUNITY_STRUCT.size}")
    return Opportunity(*OPPORTUNITY_STRUCT.unpack(b))
