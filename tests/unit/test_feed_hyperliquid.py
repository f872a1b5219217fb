"""The Hyperliquid feed (bbo/l2Book parser, spec) and its demo-market protocol, checked against each other."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest
from fuzz import json_paths
from kit import DATA, make_config

from perpbot.feeds.hyperliquid import GREETING, SPEC, is_pong, make_parser, subscribe
from perpbot.feeds.spec import BBO, ParseError, ParserContext
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.protocol import Instrument, Session
from perpbot.sim.protocols.hyperliquid import PROTOCOL, HyperliquidProtocol

HERE = DATA / "venues" / "hyperliquid"
FIXTURE = json.loads((HERE / "ccxt_ws_fixture.json").read_text())
DOC: dict[str, str] = json.loads((HERE / "documented.json").read_text())
MS = 1_000_000


def parse(frame: bytes | str, ctx: ParserContext | None = None) -> list[BBO]:
    raw = frame.encode() if isinstance(frame, str) else frame
    return make_parser(ctx or ParserContext())(raw)


def bbo_frame(bid: Any = "100.5", bsz: Any = "1.5", ask: Any = "100.6", asz: Any = "2.5",
              coin: Any = "BTC", time: Any = 1786539643751) -> bytes:
    return orjson.dumps({"channel": "bbo", "data": {"coin": coin, "time": time, "bbo": [
        {"px": bid, "sz": bsz, "n": 1}, {"px": ask, "sz": asz, "n": 2}]}})


# -- real recorded and documented frames -----------------------------------------------------


def test_recorded_l2book_frames_give_their_first_level_as_ccxt_parsed_them() -> None:
    frames = [f for f in FIXTURE["l2book"]["frames"] if f.startswith('{"channel":"l2Book"')]
    tops = FIXTURE["l2book"]["ccxt_parsed_top"]
    assert len(frames) == len(tops) == 2
    for frame, top in zip(frames, tops, strict=True):
        data = orjson.loads(frame)["data"]
        (q,) = parse(frame)
        bids, asks = data["levels"]
        assert q.symbol == "BTC"
        assert (q.bid, q.bid_size) == (float(bids[0]["px"]), float(bids[0]["sz"]))
        assert (q.ask, q.ask_size) == (float(asks[0]["px"]), float(asks[0]["sz"]))
        assert [q.bid, q.bid_size] == top["bid"] and [q.ask, q.ask_size] == top["ask"]
        assert q.ts_exchange_ns == top["timestamp"] * MS


def test_recorded_acks_and_other_channels_are_not_quotes() -> None:
    acks = [f for f in FIXTURE["l2book"]["frames"] if "subscriptionResponse" in f]
    assert acks and FIXTURE["other_channels"]
    for frame in acks + FIXTURE["other_channels"]:
        assert parse(frame) == []


def test_captured_bbo_frame_of_a_hip3_market() -> None:
    (q,) = parse(DOC["bbo_hip3"])
    assert q == BBO("xyz:SILVER", 67.388, 67.389, 10.08, 76.55, 1790119644141 * MS)


def test_documented_l2book_sample() -> None:
    (q,) = parse(DOC["l2book"])
    assert q == BBO("BTC", 68674.0, 68675.0, 0.97139, 0.04396, 1710131872708 * MS)


def test_greeting_ack_and_pong_are_control_frames() -> None:
    assert DOC["greeting"].encode() == GREETING
    for name in ("greeting", "ack", "pong"):
        assert parse(DOC[name]) == [], name
    assert parse(b'{"channel": "pong"}') == []


@pytest.mark.parametrize("name", ["error_parse", "error_already_subscribed"])
def test_error_replies_raise_error_reply(name: str) -> None:
    with pytest.raises(ParseError) as ei:
        parse(DOC[name])
    assert ei.value.kind == "error_reply"


def test_pong_is_recognised_and_nothing_else_is() -> None:
    assert is_pong(DOC["pong"].encode()) and is_pong(b'{"channel": "pong"}')
    assert SPEC.ping is not None and SPEC.ping.is_pong is is_pong
    for other in (b'{"channel":"error","data":"pong"}', DOC["ack"].encode(), GREETING, bbo_frame(), b"pong"):
        assert not is_pong(other), other


# -- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("sides", [[None, {"px": "1", "sz": "1", "n": 1}],
                                   [{"px": "1", "sz": "1", "n": 1}, None], [None, None]])
def test_a_null_side_emits_nothing(sides: list[Any]) -> None:
    frame = orjson.dumps({"channel": "bbo", "data": {"coin": "BTC", "time": 1, "bbo": sides}})
    assert parse(frame) == []


def test_an_empty_l2book_side_emits_nothing() -> None:
    frame = b'{"channel":"l2Book","data":{"coin":"BTC","time":1,"levels":[[],[{"px":"2","sz":"1","n":1}]]}}'
    assert parse(frame) == []


def test_unknown_fields_are_ignored() -> None:
    frame = orjson.dumps({"channel": "bbo", "zz": {"a": [1]}, "data": {
        "coin": "BTC", "time": 1786539643751, "extra": None, "bbo": [
            {"px": "100.5", "sz": "1.5", "n": 1, "new": "x"}, {"px": "100.6", "sz": "2.5", "n": 2, "z": [1, 2]}]}})
    assert parse(frame) == parse(bbo_frame()) == [BBO("BTC", 100.5, 100.6, 1.5, 2.5, 1786539643751 * MS)]


def test_numbers_as_json_numbers_are_read_too() -> None:
    (q,) = parse(bbo_frame(100.5, 1.5, 100.6, 2.5))
    assert (q.bid, q.ask, q.bid_size, q.ask_size) == (100.5, 100.6, 1.5, 2.5)


def test_contract_sizes_convert_to_base_units_per_coin() -> None:
    ctx = ParserContext({"BTC": 0.01})
    (q,) = parse(bbo_frame(bsz="150", asz="250"), ctx)
    assert (q.bid_size, q.ask_size) == pytest.approx((1.5, 2.5), rel=1e-12)
    (q,) = parse(bbo_frame(coin="ETH", bsz="150", asz="250"), ctx)
    assert (q.bid_size, q.ask_size) == (150.0, 250.0)


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"not json", "not_json"),
        (b"Websocket connection established", "not_json"),
        (b"[1,2]", "unexpected_shape"),
        (b'{"data":{}}', "unexpected_shape"),
        (b'{"channel":"bbo"}', "missing_field"),
        (b'{"channel":"bbo","data":{"coin":"BTC","time":1}}', "missing_field"),
        (b'{"channel":"bbo","data":{"coin":"BTC","bbo":[{"px":"1","sz":"1"},{"px":"2","sz":"1"}]}}', "missing_field"),
        (b'{"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[{"px":"1"},{"px":"2","sz":"1"}]}}', "missing_field"),
        (b'{"channel":"bbo","data":[1,2]}', "bad_value"),
        (b'{"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":[{"px":"1","sz":"1"}]}}', "bad_value"),
        (b'{"channel":"bbo","data":{"coin":"BTC","time":1,"bbo":"ab"}}', "bad_value"),
        (b'{"channel":"l2Book","data":{"coin":"BTC","time":1,"levels":5}}', "bad_value"),
        (bbo_frame(bid="x"), "bad_value"),
        (bbo_frame(bsz=None), "bad_value"),
        (bbo_frame(ask=[1]), "bad_value"),
        (bbo_frame(bid="101", ask="100"), "crossed_book"),
        (bbo_frame(bsz="-1"), "negative_size"),
        (bbo_frame(bid="NaN"), "non_finite"),
        (bbo_frame(ask="Infinity"), "non_finite"),
        (bbo_frame(bid="1e999", ask="2e999"), "non_finite"),
        (bbo_frame(bid="0"), "non_positive_price"),
        (bbo_frame(bid="-1"), "non_positive_price"),
        (bbo_frame(coin=7), "bad_field"),
        (bbo_frame(time=99999999999999999), "bad_timestamp"),
        (bbo_frame(time="x"), "bad_timestamp"),
        (bbo_frame(time=1.5), "bad_timestamp"),
        (bbo_frame(time=True), "bad_timestamp"),
    ],
)
def test_malformed_frames_raise_parse_error_with_kind(frame: bytes, kind: str) -> None:
    with pytest.raises(ParseError) as ei:
        parse(frame)
    assert ei.value.kind == kind


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ParseError) as ei:
        make_parser(ParserContext())(bbo_frame(), True)
    assert ei.value.kind == "unexpected_binary"


# -- spec ----------------------------------------------------------------------------------


def test_one_subscribe_frame_per_coin() -> None:
    frames = subscribe(["BTC", "ETH", "xyz:SILVER"])
    assert [orjson.loads(f) for f in frames] == [
        {"method": "subscribe", "subscription": {"type": "bbo", "coin": c}} for c in ("BTC", "ETH", "xyz:SILVER")]
    assert frames[0] == DOC["subscribe"].encode()
    assert subscribe([]) == []


def test_spec_urls_and_keepalive() -> None:
    assert SPEC.name == "hyperliquid"
    assert SPEC.public_url == "wss://api.hyperliquid.xyz/ws" and SPEC.demo_path == "/ws"
    assert SPEC.ping is not None and 0 < SPEC.ping.interval_s < 60  # the venue closes after 60 s of client silence
    assert SPEC.ping.payload() == DOC["ping"].encode()
    assert SPEC.connections("wss://x/ws", ["BTC", "ETH"]) == [("wss://x/ws", ["BTC", "ETH"])]
    assert not SPEC.binary and not SPEC.extra_headers


# -- fuzz ----------------------------------------------------------------------------------

BAD_VALUES: list[Any] = [None, True, [], {}, "", "x", "NaN", "Infinity", "-Infinity", "-1", "-0.0", "0", 0, -1,
                         1e308, -1e308, 2**64 - 1, "1e400", "99999999999999999999999", 1.5, [1, 2], {"px": "1"}]


def _structural(rng: random.Random, frame: bytes) -> bytes:
    """A JSON-level mutation: a wrong type or value at any path, a deleted key, or swapped sides."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return frame
    paths = [p for p in json_paths(obj) if p]
    if not paths:
        return frame
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    op = rng.randrange(4)
    if op == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif op == 1 and isinstance(parent, list) and len(parent) == 2:
        parent.reverse()  # bid above ask, or levels swapped
    else:
        parent[path[-1]] = rng.choice(BAD_VALUES)
    return orjson.dumps(obj)


def _bytewise(rng: random.Random, frame: bytes) -> bytes:
    kind = rng.randrange(6) if len(frame) > 1 else 2
    if kind == 0:
        return frame[: rng.randrange(len(frame) + 1)]
    if kind == 1:
        b = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
    if kind == 3:
        i, j = sorted(rng.randrange(len(frame) + 1) for _ in range(2))
        return frame[:i] + frame[j:]
    if kind == 4:
        return frame.replace(b'"', b"", rng.randint(1, 3))
    return frame + frame[: rng.randrange(len(frame) + 1)]


def _seeds() -> list[bytes]:
    out = [f.encode() for f in FIXTURE["l2book"]["frames"]] + [f.encode() for f in FIXTURE["other_channels"][:3]]
    out += [v.encode() for v in DOC.values()]
    out += [bbo_frame(), bbo_frame(100.5, 1.5, 100.6, 2.5)]
    return out


def test_fuzzed_frames_raise_only_parse_errors_and_yield_only_valid_quotes() -> None:
    rng = random.Random(20260901)
    seeds = _seeds()
    parser = make_parser(ParserContext({"BTC": 0.01}))
    accepted = refused = 0
    for i in range(12_000):
        frame = seeds[i % len(seeds)]
        frame = _structural(rng, frame) if rng.random() < 0.5 else _bytewise(rng, frame)
        if rng.random() < 0.2:
            frame = _bytewise(rng, frame)
        try:
            out = parser(frame, rng.random() < 0.02)
        except ParseError:
            refused += 1
            continue
        for q in out:
            accepted += 1
            assert all(math.isfinite(x) for x in (q.bid, q.ask, q.bid_size, q.ask_size)), q
            assert 0 < q.bid <= q.ask and q.bid_size >= 0 and q.ask_size >= 0, q
            assert isinstance(q.symbol, str) and 0 < q.ts_exchange_ns < 2**63
    assert accepted > 100 and refused > 1000


# -- the demo market's protocol against the parser --------------------------------------------


def _proto() -> HyperliquidProtocol:
    return PROTOCOL(SPEC.demo_path)


def _session(*coins: str) -> Session:
    known = {f"bbo:{c}" for c in coins}
    return Session(known=lambda t: t in known)


def test_protocol_is_registered_under_the_feed_name() -> None:
    from perpbot.sim.protocols import get_protocol

    assert get_protocol("hyperliquid") is PROTOCOL and PROTOCOL.name == SPEC.name
    assert _proto().route("/ws") == [] and _proto().route("/ws/") == [] and _proto().route("/info") is None


def test_protocol_control_frames_are_the_venues_and_carry_no_quotes() -> None:
    proto, parser = _proto(), make_parser(ParserContext())
    (greet,) = proto.greeting()
    assert greet.payload == GREETING and not greet.binary and parser(greet.payload) == []
    s = _session("BTC", "ETH")
    sub = subscribe(["BTC"])[0]
    (ack,) = proto.on_message(sub, False, s)
    assert ack.payload == DOC["ack"].encode() and parser(ack.payload) == []
    assert s.topics == {proto.topic("BTC")} == {"bbo:BTC"}
    (pong,) = proto.on_message(SPEC.ping.payload() if SPEC.ping else b"", False, s)
    assert is_pong(pong.payload) and parser(pong.payload) == []
    unsub = orjson.dumps({"method": "unsubscribe", "subscription": {"type": "bbo", "coin": "BTC"}})
    (uack,) = proto.on_message(unsub, False, s)
    assert orjson.loads(uack.payload)["data"]["method"] == "unsubscribe" and parser(uack.payload) == []
    assert s.topics == set()
    # another subscription type is acked (the venue has it) but the demo never feeds it
    (other,) = proto.on_message(b'{"method":"subscribe","subscription":{"type":"trades","coin":"BTC"}}', False, s)
    assert parser(other.payload) == [] and "trades:BTC" in s.topics


@pytest.mark.parametrize(
    "request_frame, sentence",
    [
        (b"{not json", "Error parsing JSON into valid websocket request: {not json"),
        (b'{"method":"subscribe"}', "Error parsing JSON into valid websocket request"),
        (b'{"method":"subscribe","subscription":{"type":"bbo"}}', "Error parsing JSON"),
        (b'{"method":"subscribe","subscription":{"type":"bbo","coin":5}}', "Error parsing JSON"),
        (b'{"method":"post","id":1}', "Error parsing JSON"),
        (b"[1]", "Error parsing JSON"),
        (b'{"method":"subscribe","subscription":{"type":"bbo","coin":"NOPE"}}',
         'Invalid subscription {"type":"bbo","coin":"NOPE"}'),
        (b'{"method":"unsubscribe","subscription":{"type":"bbo","coin":"ETH"}}',
         'Already unsubscribed: {"type":"bbo","coin":"ETH"}'),
    ],
)
def test_protocol_errors_are_the_venues_and_parse_as_error_replies(request_frame: bytes, sentence: str) -> None:
    s = _session("BTC", "ETH")
    (reply,) = _proto().on_message(request_frame, False, s)
    msg = orjson.loads(reply.payload)
    assert msg["channel"] == "error" and msg["data"].startswith(sentence)
    assert s.topics == set()
    with pytest.raises(ParseError) as ei:
        make_parser(ParserContext())(reply.payload)
    assert ei.value.kind == "error_reply"


def test_protocol_refuses_a_repeat_subscription() -> None:
    s = _session("BTC")
    proto = _proto()
    proto.on_message(subscribe(["BTC"])[0], False, s)
    (reply,) = proto.on_message(subscribe(["BTC"])[0], False, s)
    sentence = 'Already subscribed: {"type":"bbo","coin":"BTC"}'
    assert orjson.loads(reply.payload) == {"channel": "error", "data": sentence}
    assert s.topics == {"bbo:BTC"}


@pytest.mark.parametrize("contract_size", [1.0, 0.01, 0.0001, 10.0])
def test_every_snapshot_and_quote_parses_to_the_quoted_numbers_in_base_units(contract_size: float) -> None:
    cfg = make_config()
    model = MarketModel(cfg, 0)
    proto = _proto()
    insts = {
        sym: Instrument(coin, proto.topic(coin), model.price_decimals(sym), model.size_decimals(sym), contract_size)
        for sym, coin in (("BTC-PERP", "BTC"), ("ETH-PERP", "ETH"), ("SOL-PERP", "xyz:SOL"))
    }
    parser = make_parser(ParserContext({i.symbol: contract_size for i in insts.values()}))
    n = 0
    venue = model.venues[0]
    for step in range(1, 2001):
        for vi, si in model.advance(step * MS):
            if vi != 0:
                continue
            sym = model.symbols[si]
            q = model.quote(venue, sym)
            frame = (proto.snapshot(insts[sym], q, step, 1_786_541_241_000 + step) if step % 7 == 0
                     else proto.quote(insts[sym], q, step, 1_786_541_241_000 + step))
            assert frame is not None and not frame.binary
            (bbo,) = parser(frame.payload)
            assert bbo.symbol == insts[sym].symbol
            assert (bbo.bid, bbo.ask) == (q.bid, q.ask)
            if contract_size == 1.0:
                assert (bbo.bid_size, bbo.ask_size) == (q.bid_size, q.ask_size)
            else:
                assert (bbo.bid_size, bbo.ask_size) == pytest.approx((q.bid_size, q.ask_size), rel=1e-12)
            assert bbo.ts_exchange_ns == (1_786_541_241_000 + step) * MS
            n += 1
    assert n > 100


def test_quote_frame_has_the_venue_shape() -> None:
    inst = Instrument("BTC", "bbo:BTC", 1, 3)
    frame = _proto().quote(inst, SimQuote(60000.1, 60000.2, 0.812, 1.09), 17, 1786541241006)
    msg = orjson.loads(frame.payload)
    assert msg == {"channel": "bbo", "data": {"coin": "BTC", "time": 1786541241006, "bbo": [
        {"px": "60000.1", "sz": "0.812", "n": msg["data"]["bbo"][0]["n"]},
        {"px": "60000.2", "sz": "1.090", "n": msg["data"]["bbo"][1]["n"]}]}}
    assert all(type(lv["n"]) is int and lv["n"] >= 1 for lv in msg["data"]["bbo"])
