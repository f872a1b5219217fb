"""The Bitget v2 books1/books5/ticker parser: real frames, documented samples, fuzz, and the sim round trip."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest
from fuzz import mutate_bytes, mutate_json
from kit import DATA

from perpbot.feeds.bitget import MAX_CHANNELS_PER_CONNECTION, SPEC, connections, is_pong, make_parser, subscribe
from perpbot.feeds.spec import BBO, ParseError, Parser, ParserContext
from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Instrument, Session
from perpbot.sim.protocols.bitget import BitgetProtocol

VENUE = DATA / "venues" / "bitget"


def case(name: str) -> dict[str, Any]:
    return json.loads((VENUE / f"{name}.json").read_text())  # type: ignore[no-any-return]


def raw(msg: object) -> bytes:
    return orjson.dumps(msg)


def parser(**sizes: float) -> Parser:
    return make_parser(ParserContext(sizes))


def top(q: BBO) -> tuple[float, float, float, float]:
    return (q.bid, q.ask, q.bid_size, q.ask_size)


def books1(bids: list[list[str]], asks: list[list[str]], sym: str = "BTCUSDT", ts: str = "1786541258897") -> bytes:
    return raw({"action": "snapshot", "arg": {"instType": "USDT-FUTURES", "channel": "books1", "instId": sym},
                "data": [{"asks": asks, "bids": bids, "checksum": 0, "seq": 5, "ts": ts}], "ts": 1786541258899})


# -- real frames -----------------------------------------------------------------------------


def test_recorded_books5_frames_match_ccxt_parsed_top_of_book() -> None:
    c = case("futures_books5")
    parse = parser()
    quotes = []
    for msg in c["messages"]:
        out = parse(raw(msg))
        if "event" in msg:
            assert out == []
            continue
        (q,) = out
        assert q.symbol == msg["arg"]["instId"] == "BTCUSDT"
        assert q.ts_exchange_ns == int(msg["data"][0]["ts"]) * 1_000_000
        quotes.append(top(q))
    expected = [(r["bids"][0][0], r["asks"][0][0], r["bids"][0][1], r["asks"][0][1]) for r in c["parsedResponses"]]
    assert quotes == expected == [(63918.4, 63918.5, 8.8614, 3.1562), (63918.4, 63918.5, 8.8616, 3.1562)]


@pytest.mark.parametrize("name", ["futures_ticker", "spot_ticker_bids_asks"])
def test_recorded_ticker_frames_match_ccxt_parsed(name: str) -> None:
    c = case(name)
    parse = parser()
    quotes = []
    for msg in c["messages"]:
        out = parse(raw(msg))
        if "event" in msg:
            assert out == []
            continue
        (q,) = out
        d = msg["data"][0]
        assert q.symbol == d["instId"]
        assert q.ts_exchange_ns == int(d["ts"]) * 1_000_000
        quotes.append(q)
    for q, r in zip(quotes, c["parsedResponses"], strict=False):
        t = r if "bid" in r else next(iter(r.values()))  # watchBidsAsks nests by symbol
        assert top(q) == (t["bid"], t["ask"], t["bidVolume"], t["askVolume"])
        assert q.ts_exchange_ns == t["timestamp"] * 1_000_000
    assert quotes


def test_other_channels_and_acks_give_nothing() -> None:
    parse = parser()
    for msg in case("futures_trades")["messages"]:
        assert parse(raw(msg)) == []
    incremental = {"action": "update", "arg": {"instType": "USDT-FUTURES", "channel": "books", "instId": "BTCUSDT"},
                   "data": [{"asks": [["1", "1"]], "bids": [], "checksum": 1, "seq": 2, "ts": "1"}], "ts": 1}
    assert parse(raw(incremental)) == []  # the incremental full book is not a top of book


def test_recorded_subscribe_request_has_our_shape() -> None:
    (sent,) = case("futures_books5")["sentMessages"]
    (ours,) = subscribe(["BTCUSDT"])
    mine = orjson.loads(ours)
    assert mine == {"op": "subscribe", "args": [{**sent["args"][0], "channel": "books1"}]}


# -- documented samples ----------------------------------------------------------------------


def test_documented_samples() -> None:
    d = case("docs_samples")
    parse = parser()
    assert orjson.loads(subscribe(["BTCUSDT"])[0]) == d["subscribe"]
    assert parse(raw(d["subscribe_ack"])) == []
    (q,) = parse(raw(d["books5_doc"]))
    assert q == ("BTCUSDT", 27000.0, 27000.5, 2.71, 8.76, 1695716059516_000_000)
    (q,) = parse(raw(d["ticker_spot_live"]))
    assert q == ("BTCUSDT", 63707.41, 63707.42, 4.00188, 0.094654, 1786613190242_000_000)
    with pytest.raises(ParseError) as ei:
        parse(raw(d["subscribe_error"]))
    assert ei.value.kind == "error_reply" and "30001" in str(ei.value)


def test_pong_is_bare_text() -> None:
    assert is_pong(b"pong") and not is_pong(b"ping") and not is_pong(b'{"event":"subscribe"}')
    assert parser()(b"pong") == []
    assert SPEC.ping is not None and SPEC.ping.payload() == b"ping" and SPEC.ping.interval_s < 30


def test_subscribe_and_connections_hold_fifty_channels_each() -> None:
    syms = [f"S{i}USDT" for i in range(120)]
    frames = [orjson.loads(f) for f in subscribe(syms)]
    assert [len(f["args"]) for f in frames] == [50, 50, 20]
    assert [a["instId"] for f in frames for a in f["args"]] == syms
    assert all(a["instType"] == "USDT-FUTURES" and a["channel"] == "books1" for f in frames for a in f["args"])
    conns = connections("wss://x/v2/ws/public", syms)
    assert [len(s) for _, s in conns] == [50, 50, 20] and all(u == "wss://x/v2/ws/public" for u, _ in conns)
    assert [s for _, group in conns for s in group] == syms
    # each connection then sends exactly one request: well inside 10 messages/s
    assert all(len(subscribe(group)) == 1 for _, group in conns)
    assert connections("wss://x", ["A"]) == [("wss://x", ["A"])]
    assert MAX_CHANNELS_PER_CONNECTION == 50
    assert SPEC.public_url == "wss://ws.bitget.com/v2/ws/public" and SPEC.demo_path == "/v2/ws/public"


# -- book frames -----------------------------------------------------------------------------------


def test_an_empty_side_is_no_quote() -> None:
    parse = parser()
    assert parse(books1([], [["100.5", "2"]])) == []
    assert parse(books1([["100.0", "1"]], [])) == []
    (q,) = parse(books1([["100.0", "1"]], [["100.5", "2"]]))
    assert top(q) == (100.0, 100.5, 1.0, 2.0)


def test_every_push_stands_alone() -> None:
    parse = parser()
    (q,) = parse(books1([["100.0", "1"]], [["100.5", "2"]]))
    (q,) = parse(books1([["90.0", "3"]], [["90.5", "4"]], sym="ETHUSDT"))
    assert (q.symbol, top(q)) == ("ETHUSDT", (90.0, 90.5, 3.0, 4.0))
    (q,) = parse(books1([["100.1", "1"]], [["100.2", "2"]]))
    assert (q.symbol, top(q)) == ("BTCUSDT", (100.1, 100.2, 1.0, 2.0))


def test_contract_sizes_convert_to_base_units() -> None:
    (q,) = parser(BTCUSDT=0.01)(books1([["100.0", "250"]], [["100.5", "3"]]))
    assert (q.bid_size, q.ask_size) == (2.5, 0.03)


def test_unknown_fields_are_ignored() -> None:
    msg = case("futures_books5")["messages"][1]
    msg["zz"] = [1, {"a": None}]
    msg["arg"]["extra"] = "x"
    msg["data"][0]["new"] = {"x": 1}
    msg["data"][0]["bids"][0].append("7")  # a third element per level
    (q,) = parser()(raw(msg))
    assert top(q) == (63918.4, 63918.5, 8.8614, 3.1562)


_ARG = '"arg":{"instType":"USDT-FUTURES","channel":"books1","instId":"X"}'


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"not json", "not_json"),
        (b"[1]", "unexpected_shape"),
        (b'{"hello":1}', "unexpected_shape"),
        (b'{"data":[]}', "missing_field"),
        (b'{"arg":[1],"data":[]}', "unexpected_shape"),
        (f'{{{_ARG},"data":{{"a":1}}}}'.encode(), "unexpected_shape"),
        (f'{{{_ARG},"data":[7]}}'.encode(), "unexpected_shape"),
        (b'{"arg":{"channel":"books1","instId":5},"data":[]}', "bad_field"),
        (b'{"arg":{"channel":["books1"],"instId":"X"},"data":[]}', "bad_field"),
        (f'{{{_ARG},"data":[{{"bids":[["1","1"]],"ts":"1"}}]}}'.encode(), "missing_field"),
        (f'{{{_ARG},"data":[{{"bids":{{}},"asks":[],"ts":"1"}}]}}'.encode(), "bad_field"),
        (f'{{{_ARG},"data":[{{"bids":["12"],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "bad_level"),
        (f'{{{_ARG},"data":[{{"bids":[["1"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "bad_level"),
        (f'{{{_ARG},"data":[{{"bids":[["x","1"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "bad_number"),
        (f'{{{_ARG},"data":[{{"bids":[[null,"1"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "bad_number"),
        (f'{{{_ARG},"data":[{{"bids":[["NaN","1"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "non_finite"),
        (f'{{{_ARG},"data":[{{"bids":[["1","Infinity"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "non_finite"),
        (f'{{{_ARG},"data":[{{"bids":[["0","1"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "non_positive_price"),
        (f'{{{_ARG},"data":[{{"bids":[["1","-1"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "negative_size"),
        (f'{{{_ARG},"data":[{{"bids":[["3","1"]],"asks":[["2","1"]],"ts":"1"}}]}}'.encode(), "crossed_book"),
        (f'{{{_ARG},"data":[{{"bids":[["1","1"]],"asks":[["2","1"]],"ts":"-5"}}]}}'.encode(), "bad_timestamp"),
        (b'{"arg":{"channel":"ticker","instId":"X"},"data":[{"bidPr":"","askPr":"2","bidSz":"1","askSz":"1",'
         b'"ts":"1"}]}', "bad_number"),
        (b'{"arg":{"channel":"ticker","instId":"X"},"data":[{"bidPr":"1","askPr":"2","bidSz":"1","ts":"1"}]}',
         "missing_field"),
        (b'{"event":"error","code":30003,"msg":"invalid op"}', "error_reply"),
        (b'{"event":7}', "unexpected_shape"),
    ],
)
def test_malformed_frames_raise_parse_error_with_kind(frame: bytes, kind: str) -> None:
    with pytest.raises(ParseError) as ei:
        parser()(frame)
    assert ei.value.kind == kind


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ParseError) as ei:
        parser()(b"pong", True)
    assert ei.value.kind == "unexpected_binary"


# -- fuzz ---------------------------------------------------------------------------------------


def _seed_messages() -> list[Any]:
    msgs: list[Any] = []
    for name in ("futures_books5", "futures_ticker", "spot_ticker_bids_asks", "futures_trades"):
        msgs.extend(case(name)["messages"])
    d = case("docs_samples")
    msgs.extend(d[k] for k in ("subscribe_ack", "books5_doc", "ticker_spot_live", "subscribe_error"))
    proto = BitgetProtocol(SPEC.demo_path)
    inst = Instrument("BTCUSDT", proto.topic("BTCUSDT"), 1, 3)
    msgs.append(orjson.loads(proto.quote(inst, SimQuote(100.0, 100.5, 1.0, 2.0), 42, 1786613159750).payload))
    crossed = case("futures_books5")["messages"][1]
    crossed["data"][0]["bids"][0][0] = "99999.0"  # bid above ask
    msgs.append(crossed)
    return msgs


def test_fuzzed_frames_raise_only_parse_errors_and_yield_only_valid_quotes() -> None:
    rng = random.Random(20260802)
    seeds = _seed_messages()
    parse = parser(BTCUSDT=0.5)
    accepted = rejected = 0
    for i in range(12_000):
        msg = seeds[i % len(seeds)]
        r = rng.random()
        if r < 0.55:
            frame = mutate_json(rng, msg)
        elif r < 0.95:
            frame = mutate_bytes(rng, raw(msg))
        else:
            frame = rng.choice([b"pong", b"ping", b"", b"\xff\xfe", raw(msg)])
        try:
            out = parse(frame, rng.random() < 0.03)
        except ParseError:
            rejected += 1
            continue
        for q in out:
            accepted += 1
            assert isinstance(q.symbol, str)
            assert all(math.isfinite(x) for x in top(q)), q
            assert q.bid > 0 and q.ask > 0 and q.bid <= q.ask and q.bid_size >= 0 and q.ask_size >= 0, q
            assert 0 < q.ts_exchange_ns < 2**63
    assert accepted > 500 and rejected > 5000


# -- the simulator's frames through the parser ----------------------------------------------------


@pytest.mark.parametrize("contract_size", [1.0, 0.5, 0.01, 10.0])
def test_every_simulator_frame_parses_to_the_quoted_numbers(contract_size: float) -> None:
    proto = BitgetProtocol(SPEC.demo_path)
    syms = ["BTCUSDT", "ETHUSDT"]
    insts = {s: Instrument(s, proto.topic(s), 2, 4, contract_size) for s in syms}
    session = Session(known=lambda t: t in {i.topic for i in insts.values()})
    parse = parser(**{s: contract_size for s in syms})

    assert proto.greeting() == [] and proto.route(SPEC.demo_path) == []
    control = [f for req in subscribe(syms) for f in proto.on_message(req, False, session)]
    assert session.topics == {i.topic for i in insts.values()}
    assert [orjson.loads(f.payload)["arg"]["instId"] for f in control] == syms  # one ack per arg
    assert all(parse(f.payload) == [] for f in control)
    assert SPEC.ping is not None
    (pong,) = proto.on_message(SPEC.ping.payload(), False, session)
    assert SPEC.ping.is_pong(pong.payload) and parse(pong.payload) == []

    rng = random.Random(contract_size)
    for s, inst in insts.items():
        for i in range(300):
            bid_t = rng.randint(1, 10**7)
            q = SimQuote(round(bid_t * 0.01, 2), round((bid_t + rng.randint(1, 3)) * 0.01, 2),
                         round(rng.randint(1, 10**6) * 0.0001, 4), round(rng.randint(1, 10**6) * 0.0001, 4))
            f = proto.snapshot(inst, q, i + 1, 1786613159000 + i) if i == 0 else proto.quote(inst, q, i + 1,
                                                                                              1786613159000 + i)
            assert f is not None and not f.binary
            (bbo,) = parse(f.payload)
            assert bbo.symbol == s and bbo.ts_exchange_ns == (1786613159000 + i) * 1_000_000
            assert (bbo.bid, bbo.ask) == (q.bid, q.ask)
            if contract_size in (1.0, 0.5):
                assert (bbo.bid_size, bbo.ask_size) == (q.bid_size, q.ask_size)
            else:  # text exact in contracts; the float product may be an ulp off
                assert (bbo.bid_size, bbo.ask_size) == pytest.approx((q.bid_size, q.ask_size), rel=1e-12)


def test_simulator_replies_for_bad_requests_parse_as_error_replies() -> None:
    proto = BitgetProtocol(SPEC.demo_path)
    known = proto.topic("BTCUSDT")
    session = Session(known=lambda t: t == known)
    parse = parser()
    for req in (b"not json", b"[1]", b'{"op":"hello","args":[]}', b'{"op":"subscribe"}',
                b'{"op":"subscribe","args":[1]}', b'{"op":"subscribe","args":[{"instType":"USDT-FUTURES"}]}'):
        (reply,) = proto.on_message(req, False, session)
        with pytest.raises(ParseError) as ei:
            parse(reply.payload)
        assert ei.value.kind == "error_reply"
    assert session.topics == set()
    req = orjson.dumps({"op": "subscribe", "args": [
        {"instType": "USDT-FUTURES", "channel": "books1", "instId": "BTCUSDT"},
        {"instType": "USDT-FUTURES", "channel": "books1", "instId": "XYZUSDT"},
        {"instType": "USDT-FUTURES", "channel": "ticker", "instId": "BTCUSDT"},
    ]})
    ok, unknown, other_channel = proto.on_message(req, False, session)
    assert parse(ok.payload) == [] and session.topics == {known}
    err = orjson.loads(unknown.payload)
    assert err["event"] == "error" and err["code"] == 30001 and err["arg"]["instId"] == "XYZUSDT"
    assert err["msg"] == "instType:USDT-FUTURES,channel:books1,instId:XYZUSDT doesn't exist"
    assert orjson.loads(other_channel.payload)["code"] == 30001  # the demo market serves books1 only
    unsub = req.replace(b'"subscribe"', b'"unsubscribe"')
    (reply, *_) = proto.on_message(unsub, False, session)
    assert orjson.loads(reply.payload)["event"] == "unsubscribe" and session.topics == set()
