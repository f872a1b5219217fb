"""The Extended feed (depth-1 order book parser, URL-per-market spec) and its demo-market protocol."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest
from fuzz import json_paths
from kit import DATA, make_config

from perpbot.feeds.extended import SPEC, ExtendedParser, connections, make_parser, subscribe
from perpbot.feeds.spec import BBO, ParseError, Parser, ParserContext, ResyncRequired
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.protocol import Instrument, Session
from perpbot.sim.protocols.extended import PROTOCOL, ExtendedProtocol

FRAMES: dict[str, str] = json.loads((DATA / "venues" / "extended" / "frames.json").read_text())
MS = 1_000_000
T0 = 1_786_541_241_000


def frame(kind: str, seq: Any, b: Any = (), a: Any = (), m: Any = "BTC-USD", ts: Any = T0) -> bytes:
    """A stream frame; `b`/`a` are (price, q) pairs or level dicts."""
    def side(levels: Any) -> Any:
        if not isinstance(levels, (list, tuple)):
            return levels
        return [lv if isinstance(lv, dict) else {"p": lv[0], "q": lv[1]} for lv in levels]
    return orjson.dumps({"ts": ts, "type": kind, "data": {"m": m, "b": side(b), "a": side(a)}, "seq": seq})


def snap(seq: int, bid: str = "100.0", bsz: str = "1", ask: str = "100.5", asz: str = "2", **kw: Any) -> bytes:
    return frame("SNAPSHOT", seq, [(bid, bsz)], [(ask, asz)], **kw)


def delta(seq: int, b: Any = (), a: Any = (), **kw: Any) -> bytes:
    return frame("DELTA", seq, b, a, **kw)


def top(q: BBO) -> tuple[float, float, float, float]:
    return (q.bid, q.bid_size, q.ask, q.ask_size)


# -- documented and SDK-built frames ---------------------------------------------------------


def test_documented_snapshot() -> None:
    (q,) = make_parser(ParserContext())(FRAMES["snapshot_documented"].encode())
    assert q == BBO("BTC-USD", 25670.0, 25770.0, 0.1, 0.1, 1701563440000 * MS)


def test_documented_snapshot_then_delta_keeps_the_untouched_side() -> None:
    parse = make_parser(ParserContext())
    parse(FRAMES["snapshot_documented"].encode())
    (q,) = parse(FRAMES["delta_documented"].encode())
    # a new bid price is the new top of the bids (a new level starts at q); `a` is empty: asks unchanged
    assert q == BBO("BTC-USD", 25671.0, 25770.0, 0.05, 0.1, 1701563440050 * MS)


def test_the_sdk_test_frame_is_crossed_and_refused_with_a_resync() -> None:
    parse = make_parser(ParserContext())
    with pytest.raises(ResyncRequired) as ei:
        parse(FRAMES["snapshot_sdk_test"].encode())
    assert ei.value.kind == "crossed_book"
    # nothing of it was kept: a DELTA now has no book to apply to
    with pytest.raises(ResyncRequired):
        parse(delta(571, [("43540", "1")]))


def test_unknown_fields_are_ignored() -> None:
    parse = make_parser(ParserContext())
    (q,) = parse(FRAMES["snapshot_with_type_and_depth_in_data"].encode())
    assert q == BBO("ETH-USD", 2210.5, 2210.6, 3.2, 1.75, 1701563440000 * MS)
    extra = orjson.dumps({"ts": T0, "type": "SNAPSHOT", "zz": [1], "error": None, "seq": 2, "data": {
        "m": "ETH-USD", "x": {}, "b": [{"p": "2210.5", "q": "3.2", "o": 4}], "a": [{"p": "2210.6", "q": "1.75"}]}})
    (q2,) = parse(extra)
    assert top(q2) == top(q)


@pytest.mark.parametrize("name", ["error_stream", "error_rest_envelope"])
def test_error_frames_raise_error_reply(name: str) -> None:
    with pytest.raises(ParseError) as ei:
        make_parser(ParserContext())(FRAMES[name].encode())
    assert ei.value.kind == "error_reply"


def test_other_message_types_are_skipped() -> None:
    assert make_parser(ParserContext())(FRAMES["other_type"].encode()) == []


# -- snapshot / delta sequences --------------------------------------------------------------


def test_snapshots_are_self_contained_whatever_their_seq() -> None:
    parse = make_parser(ParserContext())
    for seq in (5, 6, 9, 3, 3):  # a gap before a SNAPSHOT loses nothing at depth 1
        (q,) = parse(snap(seq, bid=f"10{seq}", ask=f"10{seq}.5"))
        assert (q.bid, q.ask) == (float(f"10{seq}"), float(f"10{seq}.5"))


def test_delta_relative_size_at_the_same_price_and_zero_removal() -> None:
    parse = make_parser(ParserContext())
    parse(snap(1, "100", "1.5", "101", "2"))
    (q,) = parse(delta(2, b=[("100", "0.25")]))           # SDK rule: q adds to the size at that price
    assert top(q) == (100.0, 1.75, 101.0, 2.0)
    (q,) = parse(delta(3, a=[("101", "-0.5")]))
    assert top(q) == (100.0, 1.75, 101.0, 1.5)
    assert parse(delta(4, a=[("101", "-1.5")])) == []      # the top ask is consumed: that side is unknown
    (q,) = parse(delta(5, a=[("101.5", "3")]))             # ...until a level names it again; bids were kept
    assert top(q) == (100.0, 1.75, 101.5, 3.0)
    assert parse(delta(6, b=[("100", "0")])) == []         # q "0" removes the level
    (q,) = parse(delta(7, b=[("99.5", "4")], a=[("101", "1")]))
    assert top(q) == (99.5, 4.0, 101.0, 1.0)


def test_delta_absolute_size_c_wins_over_q() -> None:
    parse = make_parser(ParserContext())
    parse(FRAMES["snapshot_documented"].encode())
    (q,) = parse(FRAMES["delta_absolute_c"].encode())
    assert top(q) == (25670.0, 0.5, 25770.0, 0.1)
    (q,) = parse(delta(3, b=[{"p": "25670", "q": "-0.5", "c": "0"}, {"p": "25669", "q": "7", "c": "7"}]))
    assert top(q) == (25669.0, 7.0, 25770.0, 0.1)


def test_a_delta_replacing_the_top_in_either_order() -> None:
    parse = make_parser(ParserContext())
    parse(snap(1, "100", "1", "101", "1"))
    (q,) = parse(delta(2, b=[("100", "0"), ("99", "2")]))   # removal first, then the successor
    assert top(q)[:2] == (99.0, 2.0)
    (q,) = parse(delta(3, b=[("98", "3"), ("99", "0")]))    # the successor first, then the removal
    assert top(q)[:2] == (98.0, 3.0)


def test_a_snapshot_with_an_empty_side_waits_for_it() -> None:
    parse = make_parser(ParserContext())
    assert parse(frame("SNAPSHOT", 1, [("100", "1")], [])) == []
    (q,) = parse(delta(2, a=[("100.5", "2")]))
    assert top(q) == (100.0, 1.0, 100.5, 2.0)
    assert parse(frame("SNAPSHOT", 3, [], [])) == []


def test_a_seq_gap_requires_a_resync_until_the_next_snapshot() -> None:
    parse = make_parser(ParserContext())
    parse(snap(10))
    parse(delta(11, b=[("100", "0.5")]))
    with pytest.raises(ResyncRequired) as ei:
        parse(delta(13, b=[("100", "0.5")]))
    assert ei.value.kind == "seq_gap"
    with pytest.raises(ResyncRequired):
        parse(delta(14, b=[("100", "0.5")]))  # still no trustworthy book
    (q,) = parse(snap(20))
    assert top(q) == (100.0, 1.0, 100.5, 2.0)
    assert parse(delta(21, b=[("100", "1")]))[0].bid_size == 2.0


@pytest.mark.parametrize("seq", [1, 2, 0])
def test_a_delta_before_any_snapshot_requires_a_resync(seq: int) -> None:
    with pytest.raises(ResyncRequired) as ei:
        make_parser(ParserContext())(delta(seq, b=[("100", "1")], a=[("101", "1")]))
    assert ei.value.kind == "no_snapshot"


def test_a_delta_that_crosses_the_book_requires_a_resync() -> None:
    parse = make_parser(ParserContext())
    parse(snap(1, "100", "1", "101", "1"))
    with pytest.raises(ResyncRequired) as ei:
        parse(delta(2, b=[("102", "1")]))
    assert ei.value.kind == "crossed_book"
    with pytest.raises(ResyncRequired):
        parse(delta(3, a=[("103", "1")]))
    with pytest.raises(ResyncRequired) as ei:
        parse(snap(4, "101", "1", "100", "1"))
    assert ei.value.kind == "crossed_book"


def test_a_malformed_delta_changes_nothing_and_the_next_delta_resyncs() -> None:
    parse = make_parser(ParserContext())
    parse(snap(1, "100", "1", "101", "1"))
    with pytest.raises(ParseError) as ei:
        parse(delta(2, b=[("100", "0.5")], a=[("x", "1")]))
    assert ei.value.kind == "bad_value" and not isinstance(ei.value, ResyncRequired)
    with pytest.raises(ResyncRequired):
        parse(delta(3, b=[("100", "0.5")]))


def test_each_market_keeps_its_own_book() -> None:
    parse = make_parser(ParserContext())
    parse(snap(1, "100", "1", "101", "1", m="BTC-USD"))
    parse(snap(2, "10", "5", "11", "6", m="ETH-USD"))
    (q,) = parse(delta(3, b=[("100", "1")], m="BTC-USD"))
    assert q.symbol == "BTC-USD" and top(q) == (100.0, 2.0, 101.0, 1.0)


def test_parsers_share_no_state() -> None:
    a, b = make_parser(ParserContext()), make_parser(ParserContext())
    a(snap(1))
    assert isinstance(a, ExtendedParser) and a is not b
    with pytest.raises(ResyncRequired):
        b(delta(2, b=[("100", "1")]))


def test_contract_sizes_convert_to_base_units_per_market() -> None:
    parse = make_parser(ParserContext({"BTC-USD": 0.001}))
    (q,) = parse(snap(1, "100", "1500", "101", "2500"))
    assert (q.bid_size, q.ask_size) == pytest.approx((1.5, 2.5), rel=1e-12)
    (q,) = parse(snap(2, "100", "1500", "101", "2500", m="ETH-USD"))
    assert (q.bid_size, q.ask_size) == (1500.0, 2500.0)


def _snap_fields(**over: Any) -> bytes:
    msg: dict[str, Any] = {"ts": T0, "type": "SNAPSHOT", "seq": 1,
                           "data": {"m": "BTC-USD", "b": [{"p": "100", "q": "1"}], "a": [{"p": "101", "q": "1"}]}}
    for k, v in over.items():
        if k in ("m", "b", "a"):
            msg["data"][k] = v
        elif k == "data":
            msg["data"] = v
        elif v is KeyError:
            del msg[k]
        else:
            msg[k] = v
    return orjson.dumps(msg)


@pytest.mark.parametrize(
    "raw, kind",
    [
        (b"not json", "not_json"),
        (b"[1,2]", "unexpected_shape"),
        (b'{"foo":1}', "unexpected_shape"),
        (_snap_fields(data=[1]), "unexpected_shape"),
        (_snap_fields(data="x"), "unexpected_shape"),
        (_snap_fields(seq=KeyError), "missing_field"),
        (_snap_fields(ts=KeyError), "missing_field"),
        (b'{"type":"SNAPSHOT","ts":1,"seq":1,"data":{"m":"X","b":[]}}', "missing_field"),
        (_snap_fields(m=5), "bad_field"),
        (_snap_fields(seq="1"), "bad_field"),
        (_snap_fields(seq=1.0), "bad_field"),
        (_snap_fields(ts=99999999999999999), "bad_timestamp"),
        (_snap_fields(ts=None), "bad_timestamp"),
        (_snap_fields(b={"p": "1"}), "unexpected_shape"),
        (_snap_fields(b=[{"q": "1"}]), "missing_field"),
        (_snap_fields(b=[[100, 1]]), "bad_value"),
        (_snap_fields(b=[{"p": None, "q": "1"}]), "bad_value"),
        (_snap_fields(b=[{"p": "x", "q": "1"}]), "bad_value"),
        (_snap_fields(b=[{"p": "NaN", "q": "1"}]), "bad_price"),
        (_snap_fields(b=[{"p": "-1", "q": "1"}]), "bad_price"),
        (_snap_fields(b=[{"p": "0", "q": "1"}]), "bad_price"),
        (_snap_fields(a=[{"p": "Infinity", "q": "1"}]), "bad_price"),
        (_snap_fields(a=[{"p": "1e400", "q": "1"}]), "bad_price"),
        (_snap_fields(b=[{"p": "100", "q": "-1"}]), "bad_size"),
        (_snap_fields(b=[{"p": "100", "q": "NaN"}]), "bad_size"),
        (_snap_fields(a=[{"p": "101", "q": "1e400"}]), "bad_size"),
    ],
)
def test_malformed_frames_raise_parse_error_with_kind(raw: bytes, kind: str) -> None:
    with pytest.raises(ParseError) as ei:
        make_parser(ParserContext())(raw)
    assert ei.value.kind == kind


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ParseError) as ei:
        make_parser(ParserContext())(snap(1), True)
    assert ei.value.kind == "unexpected_binary"


# -- spec ----------------------------------------------------------------------------------


def test_the_url_subscribes_one_market_per_connection() -> None:
    assert subscribe(["BTC-USD", "ETH-USD"]) == []
    assert SPEC.public_url == "wss://api.starknet.extended.exchange/stream.extended.exchange/v1/orderbooks"
    assert SPEC.public_url.endswith(SPEC.demo_path)
    assert connections(SPEC.public_url, ["BTC-USD", "ETH-USD"]) == [
        ("wss://api.starknet.extended.exchange/stream.extended.exchange/v1/orderbooks/BTC-USD?depth=1", ["BTC-USD"]),
        ("wss://api.starknet.extended.exchange/stream.extended.exchange/v1/orderbooks/ETH-USD?depth=1", ["ETH-USD"]),
    ]
    base = "ws://127.0.0.1:9" + SPEC.demo_path
    assert SPEC.connections(base + "/", ["SOL-USD"]) == [(base + "/SOL-USD?depth=1", ["SOL-USD"])]
    assert connections(base, []) == []


def test_handshake_carries_a_user_agent_and_no_app_ping() -> None:
    assert SPEC.extra_headers.get("User-Agent", "").startswith("perpbot/")
    assert SPEC.ping is None  # protocol pings only, answered by picows
    assert SPEC.name == "extended" and not SPEC.binary


# -- fuzz ----------------------------------------------------------------------------------

BAD_VALUES: list[Any] = [None, True, [], {}, "", "x", "NaN", "Infinity", "-Infinity", "-1", "-0.0", "0", 0, -1,
                         1e308, -1e308, 2**64 - 1, "1e400", "99999999999999999999999", 1.5, [1, 2], {"p": "1"},
                         "DELTA", "SNAPSHOT"]


def _structural(rng: random.Random, raw: bytes) -> bytes:
    """A JSON-level mutation: a wrong type or value at any path, a deleted key, or bid and ask swapped."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    paths = [p for p in json_paths(obj) if p]
    if not paths:
        return raw
    op = rng.randrange(5)
    if op == 0 and isinstance(obj, dict) and isinstance(obj.get("data"), dict) and "b" in obj["data"]:
        d = obj["data"]
        d["b"], d["a"] = d.get("a"), d["b"]  # bid above ask
        return orjson.dumps(obj)
    if op == 1 and isinstance(obj, dict) and type(obj.get("seq")) is int:
        obj["seq"] += rng.choice((-1, 1, 2, 1000))  # a gap, a repeat, a jump
        return orjson.dumps(obj)
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if op == 2 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(BAD_VALUES)
    return orjson.dumps(obj)


def _bytewise(rng: random.Random, raw: bytes) -> bytes:
    kind = rng.randrange(6) if len(raw) > 1 else 2
    if kind == 0:
        return raw[: rng.randrange(len(raw) + 1)]
    if kind == 1:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
    if kind == 3:
        i, j = sorted(rng.randrange(len(raw) + 1) for _ in range(2))
        return raw[:i] + raw[j:]
    if kind == 4:
        return raw.replace(b'"', b"", rng.randint(1, 3))
    return raw + raw[: rng.randrange(len(raw) + 1)]


def test_fuzzed_frames_raise_only_parse_errors_and_yield_only_valid_quotes() -> None:
    rng = random.Random(20261201)
    seeds = [v.encode() for v in FRAMES.values()]
    seeds += [snap(1), delta(2, b=[("100", "0.5")]), delta(3, a=[{"p": "100.5", "q": "1", "c": "3"}])]
    parser: Parser = make_parser(ParserContext({"BTC-USD": 0.01}))
    accepted = refused = 0
    seq = 0
    for i in range(12_000):
        if i % 50 == 0:  # keep a live book so DELTAs get past the sequence check now and then
            seq += 1
            parser(snap(seq, bid="25600", ask="25800"))
        raw = seeds[i % len(seeds)]
        if raw.startswith(b'{"ts":') and b'"DELTA"' in raw and rng.random() < 0.5:
            raw = orjson.dumps({**orjson.loads(raw), "seq": seq + 1})
        raw = _structural(rng, raw) if rng.random() < 0.6 else _bytewise(rng, raw)
        if rng.random() < 0.2:
            raw = _bytewise(rng, raw)
        try:
            out = parser(raw, rng.random() < 0.02)
        except ParseError:
            refused += 1
            continue
        try:
            got = orjson.loads(raw)["seq"]
            seq = got if type(got) is int and abs(got) < 2**62 else seq
        except (orjson.JSONDecodeError, KeyError, TypeError):
            pass
        for q in out:
            accepted += 1
            assert all(math.isfinite(x) for x in (q.bid, q.ask, q.bid_size, q.ask_size)), q
            assert 0 < q.bid <= q.ask and q.bid_size >= 0 and q.ask_size >= 0, q
            assert isinstance(q.symbol, str) and 0 < q.ts_exchange_ns < 2**63
    assert accepted > 100 and refused > 1000


# -- the demo market's protocol against the parser --------------------------------------------


def _proto() -> ExtendedProtocol:
    return PROTOCOL(SPEC.demo_path)


def test_protocol_is_registered_under_the_feed_name() -> None:
    from perpbot.sim.protocols import get_protocol

    assert get_protocol("extended") is PROTOCOL and PROTOCOL.name == SPEC.name


@pytest.mark.parametrize(
    "path, topics",
    [
        ("/stream.extended.exchange/v1/orderbooks/BTC-USD?depth=1", ["BTC-USD"]),
        ("/stream.extended.exchange/v1/orderbooks/ETH-USD?foo=2&depth=1", ["ETH-USD"]),
        ("/stream.extended.exchange/v1/orderbooks/NOPE-USD?depth=1", ["NOPE-USD"]),  # routed, stays silent
        ("/stream.extended.exchange/v1/orderbooks/BTC-USD", None),
        ("/stream.extended.exchange/v1/orderbooks/BTC-USD?depth=5", None),
        ("/stream.extended.exchange/v1/orderbooks?depth=1", None),
        ("/stream.extended.exchange/v1/orderbooks/?depth=1", None),
        ("/stream.extended.exchange/v1/orderbooks/BTC-USD/x?depth=1", None),
        ("/stream.extended.exchange/v1/publicTrades/BTC-USD?depth=1", None),
        ("/ws", None),
    ],
)
def test_route_names_the_market_of_a_depth_1_url(path: str, topics: list[str] | None) -> None:
    assert _proto().route(path) == topics


def test_every_connection_url_of_the_spec_is_routed_to_its_market() -> None:
    proto = _proto()
    for url, syms in connections("ws://127.0.0.1:1" + SPEC.demo_path, ["BTC-USD", "ETH-USD"]):
        assert proto.route(url.split("127.0.0.1:1", 1)[1]) == [proto.topic(s) for s in syms]


def test_client_frames_get_no_answer() -> None:
    s = Session(topics={"BTC-USD"}, known=lambda t: True)
    for raw in (b"ping", b'{"method":"subscribe"}', b"\x00\x01"):
        assert _proto().on_message(raw, False, s) == []
    assert s.topics == {"BTC-USD"}


@pytest.mark.parametrize("contract_size", [1.0, 0.01, 0.0001, 10.0])
def test_every_snapshot_and_quote_parses_to_the_quoted_numbers_in_base_units(contract_size: float) -> None:
    cfg = make_config()
    model = MarketModel(cfg, 0)
    proto = _proto()
    insts = {
        sym: Instrument(m, proto.topic(m), model.price_decimals(sym), model.size_decimals(sym), contract_size)
        for sym, m in (("BTC-PERP", "BTC-USD"), ("ETH-PERP", "ETH-USD"), ("SOL-PERP", "SOL-USD"))
    }
    venue = model.venues[0]
    n = 0
    # one parser per market, as the feed opens one connection per market; seq is the venue's update id
    parsers = {i.symbol: make_parser(ParserContext({i.symbol: contract_size})) for i in insts.values()}
    uid = dict.fromkeys(insts, 0)
    for sym, inst in insts.items():
        f = proto.snapshot(inst, model.quote(venue, sym), 0, T0)
        assert f is not None and not f.binary and orjson.loads(f.payload)["type"] == "SNAPSHOT"
        parsers[inst.symbol](f.payload)
    for step in range(1, 2001):
        for vi, si in model.advance(step * MS):
            if vi != 0:
                continue
            sym = model.symbols[si]
            uid[sym] += 1
            q = model.quote(venue, sym)
            f = proto.quote(insts[sym], q, uid[sym], T0 + step)
            (bbo,) = parsers[insts[sym].symbol](f.payload)
            assert bbo.symbol == insts[sym].symbol
            assert (bbo.bid, bbo.ask) == (q.bid, q.ask)
            if contract_size == 1.0:
                assert (bbo.bid_size, bbo.ask_size) == (q.bid_size, q.ask_size)
            else:
                assert (bbo.bid_size, bbo.ask_size) == pytest.approx((q.bid_size, q.ask_size), rel=1e-12)
            assert bbo.ts_exchange_ns == (T0 + step) * MS
            n += 1
    assert n > 100


def test_quote_frame_has_the_documented_shape() -> None:
    inst = Instrument("BTC-USD", "BTC-USD", 1, 3)
    f = _proto().quote(inst, SimQuote(60000.1, 60000.2, 0.812, 1.09), 17, 1786541241006)
    assert orjson.loads(f.payload) == {"ts": 1786541241006, "type": "SNAPSHOT", "data": {
        "m": "BTC-USD", "b": [{"p": "60000.1", "q": "0.812"}], "a": [{"p": "60000.2", "q": "1.090"}]}, "seq": 17}
    assert orjson.loads(f.payload).keys() == orjson.loads(FRAMES["snapshot_documented"]).keys()
