"""The Bybit v5 orderbook.1 parser: real frames, documented samples, book sequences, fuzz, and the sim round trip."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest
from fuzz import mutate_bytes, mutate_json
from kit import DATA

from perpbot.feeds.bybit import SPEC, SUBSCRIBE_BATCH, is_pong, make_parser, subscribe
from perpbot.feeds.spec import BBO, ParseError, Parser, ParserContext, ResyncRequired
from perpbot.sim.market import SimQuote
from perpbot.sim.protocol import Instrument, Session
from perpbot.sim.protocols.bybit import MAX_ARGS, BybitProtocol

VENUE = DATA / "venues" / "bybit"


def case(name: str) -> dict[str, Any]:
    return json.loads((VENUE / f"{name}.json").read_text())  # type: ignore[no-any-return]


def raw(msg: object) -> bytes:
    return orjson.dumps(msg)


def parser(**sizes: float) -> Parser:
    return make_parser(ParserContext(sizes))


def book(kind: str, u: int, b: list[list[str]], a: list[list[str]], sym: str = "BTCUSDT",
         ts: int = 1786613159749, depth: int = 1) -> bytes:
    return raw({"topic": f"orderbook.{depth}.{sym}", "type": kind, "ts": ts,
                "data": {"s": sym, "b": b, "a": a, "u": u, "seq": 112603120278 + u}, "cts": ts - 1})


def top(q: BBO) -> tuple[float, float, float, float]:
    return (q.bid, q.ask, q.bid_size, q.ask_size)


# -- real frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["spot_orderbook1_bids_asks", "spot_orderbook1", "linear_orderbook50"])
def test_recorded_books_match_ccxt_parsed_top_of_book(name: str) -> None:
    c = case(name)
    parse = parser()
    quotes: list[BBO] = []
    for msg in c["messages"]:
        out = parse(raw(msg))
        if "topic" not in msg:
            assert out == []  # the subscribe ack
            continue
        (q,) = out
        assert q.symbol == msg["data"]["s"]
        assert q.ts_exchange_ns == msg["cts"] * 1_000_000  # engine time; ccxt stamps with `ts`
        quotes.append(q)
    expected = []
    for r in c["parsedResponses"]:
        if "bids" not in r:  # watchBidsAsks: {symbol: {bid, ask, bidVolume, askVolume}}
            (t,) = r.values()
            expected.append((t["bid"], t["ask"], t["bidVolume"], t["askVolume"]))
        else:
            expected.append((r["bids"][0][0], r["asks"][0][0], r["bids"][0][1], r["asks"][0][1]))
    assert [top(q) for q in quotes][: len(expected)] == expected


def test_recorded_depth50_delta_keeps_the_top_and_advances_u() -> None:
    snap, delta = case("linear_orderbook50")["messages"]
    parse = parser()
    (q0,) = parse(raw(snap))
    (q1,) = parse(raw(delta))  # levels below the top change; the top stays
    assert top(q0) == top(q1) == (63982.7, 63982.8, 6.408, 5.015)
    assert q1.ts_exchange_ns == delta["cts"] * 1_000_000
    with pytest.raises(ResyncRequired) as ei:
        parse(raw(delta))  # the same u again is a gap
    assert ei.value.kind == "sequence_gap"


@pytest.mark.parametrize("name", ["linear_trades", "linear_tickers"])
def test_other_topics_and_acks_on_the_connection_give_nothing(name: str) -> None:
    parse = parser()
    for msg in case(name)["messages"]:
        assert parse(raw(msg)) == []


def test_recorded_subscribe_request_has_our_shape() -> None:
    (sent,) = case("spot_orderbook1")["sentMessages"]
    (ours,) = subscribe(["BTCUSDT"])
    mine = orjson.loads(ours)
    assert sent["op"] == mine["op"] == "subscribe" and sent["args"] == mine["args"] == ["orderbook.1.BTCUSDT"]


# -- documented samples ----------------------------------------------------------------------


def test_documented_snapshot_and_one_sided_delta() -> None:
    d = case("docs_samples")
    parse = parser()
    (q,) = parse(raw(d["snapshot_linear"]))
    assert q == ("BTCUSDT", 42663.5, 42663.6, 0.91, 11.446, 1702645020906_000_000)
    delta = d["delta_one_sided"]
    u = delta["data"]["u"]
    parse(book("snapshot", u - 1, [["27646.80", "1.5"]], [["27647.00", "2"]]))
    (q,) = parse(raw(delta))
    # the bid side is untouched; the ask level is the new top; no `cts`, so `ts` stamps it
    assert q == ("BTCUSDT", 27646.8, 27646.9, 1.5, 20.396, delta["ts"] * 1_000_000)


def test_documented_delta_without_a_snapshot_needs_a_resync() -> None:
    with pytest.raises(ResyncRequired) as ei:
        parser()(raw(case("docs_samples")["delta_one_sided"]))
    assert ei.value.kind == "delta_before_snapshot"


def test_documented_control_frames() -> None:
    d = case("docs_samples")
    parse = parser()
    assert parse(raw(d["subscribe_ack"])) == []
    for pong in (d["pong"], d["pong_op"]):
        assert is_pong(raw(pong)) and parse(raw(pong)) == []
    assert not is_pong(raw(d["subscribe_ack"])) and not is_pong(raw(d["snapshot_linear"]))
    with pytest.raises(ParseError) as ei:
        parse(raw(d["subscribe_error"]))
    assert ei.value.kind == "error_reply" and "handler not found" in str(ei.value)


def test_subscribe_batches_within_bybits_args_limit() -> None:
    syms = [f"S{i}USDT" for i in range(25)]
    frames = [orjson.loads(f) for f in subscribe(syms)]
    assert [len(f["args"]) for f in frames] == [SUBSCRIBE_BATCH, SUBSCRIBE_BATCH, 5]
    assert [a for f in frames for a in f["args"]] == [f"orderbook.1.{s}" for s in syms]
    assert all(f["op"] == "subscribe" and isinstance(f["req_id"], str) for f in frames)
    assert len({f["req_id"] for f in frames}) == 3
    assert subscribe([]) == []
    assert SPEC.public_url == "wss://stream.bybit.com/v5/public/linear" and SPEC.demo_path == "/v5/public/linear"
    assert SPEC.ping is not None and SPEC.ping.interval_s <= 20 and orjson.loads(SPEC.ping.payload()) == {"op": "ping"}


# -- snapshot and delta sequences -------------------------------------------------------------


def test_size_change_on_one_side_keeps_the_other() -> None:
    parse = parser()
    parse(book("snapshot", 10, [["100.0", "1"]], [["100.5", "2"]]))
    (q,) = parse(book("delta", 11, [["100.0", "3"]], []))
    assert top(q) == (100.0, 100.5, 3.0, 2.0)
    (q,) = parse(book("delta", 12, [], [["100.5", "4"]]))
    assert top(q) == (100.0, 100.5, 3.0, 4.0)


@pytest.mark.parametrize("order", ["delete_first", "insert_first"])
def test_price_change_is_delete_plus_insert_in_either_order(order: str) -> None:
    parse = parser()
    parse(book("snapshot", 10, [["100.0", "1"]], [["100.5", "2"]]))
    levels = [["100.0", "0"], ["99.5", "7"]]
    (q,) = parse(book("delta", 11, levels if order == "delete_first" else levels[::-1], [["101.0", "5"]]))
    assert top(q) == (99.5, 101.0, 7.0, 5.0)


def test_a_side_left_empty_emits_nothing_until_it_is_quoted_again() -> None:
    parse = parser()
    assert parse(book("snapshot", 1, [], [["100.5", "2"]])) == []  # u=1: a restart snapshot
    (q,) = parse(book("delta", 2, [["100.0", "1"]], []))
    assert top(q) == (100.0, 100.5, 1.0, 2.0)
    assert parse(book("delta", 3, [], [["100.5", "0"]])) == []
    assert parse(book("delta", 4, [], [["100.7", "0"]])) == []  # deleting a level we do not hold
    (q,) = parse(book("delta", 5, [], [["100.6", "3"]]))
    assert top(q) == (100.0, 100.6, 1.0, 3.0)


def test_snapshot_replaces_state_and_may_repeat_or_reset_u() -> None:
    parse = parser()
    parse(book("snapshot", 500, [["100.0", "1"]], [["100.5", "2"]]))
    (q,) = parse(book("snapshot", 500, [["100.1", "1"]], [["100.6", "2"]]))  # re-pushed after 3 s, same u
    assert top(q) == (100.1, 100.6, 1.0, 2.0)
    (q,) = parse(book("snapshot", 1, [["90.0", "1"]], [["90.5", "2"]]))  # service restart
    assert top(q) == (90.0, 90.5, 1.0, 2.0)
    (q,) = parse(book("delta", 2, [["90.0", "4"]], []))
    assert top(q) == (90.0, 90.5, 4.0, 2.0)


def test_sequence_gap_forces_a_resync_until_the_next_snapshot() -> None:
    parse = parser()
    parse(book("snapshot", 10, [["100.0", "1"]], [["100.5", "2"]]))
    with pytest.raises(ResyncRequired) as ei:
        parse(book("delta", 12, [["100.0", "3"]], []))
    assert ei.value.kind == "sequence_gap"
    with pytest.raises(ResyncRequired) as ei:
        parse(book("delta", 13, [["100.0", "3"]], []))
    assert ei.value.kind == "delta_before_snapshot"
    (q,) = parse(book("snapshot", 20, [["100.0", "1"]], [["100.5", "2"]]))
    assert top(q) == (100.0, 100.5, 1.0, 2.0)


def test_crossed_result_forces_a_resync() -> None:
    parse = parser()
    parse(book("snapshot", 10, [["100.0", "1"]], [["100.5", "2"]]))
    with pytest.raises(ResyncRequired) as ei:
        parse(book("delta", 11, [["100.0", "0"], ["100.6", "1"]], []))
    assert ei.value.kind == "crossed_book"
    with pytest.raises(ResyncRequired):
        parse(book("delta", 12, [["100.0", "1"]], []))  # the book was dropped
    with pytest.raises(ResyncRequired) as ei:
        parser()(book("snapshot", 10, [["101.0", "1"]], [["100.5", "2"]]))
    assert ei.value.kind == "crossed_book"


def test_a_malformed_delta_is_not_applied_and_the_next_one_resyncs() -> None:
    parse = parser()
    parse(book("snapshot", 10, [["100.0", "1"]], [["100.5", "2"]]))
    with pytest.raises(ParseError) as ei:
        parse(book("delta", 11, [["100.0", "x"]], []))
    assert ei.value.kind == "bad_number" and not isinstance(ei.value, ResyncRequired)
    with pytest.raises(ResyncRequired) as ei:
        parse(book("delta", 12, [["100.0", "3"]], []))
    assert ei.value.kind == "sequence_gap"


def test_symbols_keep_their_own_books() -> None:
    parse = parser()
    parse(book("snapshot", 10, [["100.0", "1"]], [["100.5", "2"]], sym="AUSDT"))
    parse(book("snapshot", 70, [["5.0", "1"]], [["5.5", "2"]], sym="BUSDT"))
    (qa,) = parse(book("delta", 11, [["100.0", "9"]], [], sym="AUSDT"))
    (qb,) = parse(book("delta", 71, [], [["5.5", "8"]], sym="BUSDT"))
    assert (qa.symbol, top(qa)) == ("AUSDT", (100.0, 100.5, 9.0, 2.0))
    assert (qb.symbol, top(qb)) == ("BUSDT", (5.0, 5.5, 1.0, 8.0))


def test_deeper_book_deleting_its_top_needs_a_resync() -> None:
    parse = parser()
    parse(book("snapshot", 10, [["100.0", "1"], ["99.0", "1"]], [["100.5", "2"]], depth=50))
    (q,) = parse(book("delta", 11, [["99.5", "4"]], [["100.4", "1"]], depth=50))  # better ask, worse bid
    assert top(q) == (100.0, 100.4, 1.0, 1.0)
    with pytest.raises(ResyncRequired) as ei:
        parse(book("delta", 12, [["100.0", "0"]], [], depth=50))
    assert ei.value.kind == "top_removed"


def test_contract_sizes_convert_to_base_units() -> None:
    parse = parser(BTCUSDT=0.01)
    (q,) = parse(book("snapshot", 10, [["100.0", "250"]], [["100.5", "3"]]))
    assert (q.bid_size, q.ask_size) == (2.5, 0.03)
    (q,) = parse(book("delta", 11, [], [["100.5", "50"]]))
    assert q.ask_size == 0.5


def test_unknown_fields_are_ignored() -> None:
    msg = case("docs_samples")["snapshot_linear"]
    msg["zz"] = {"new": [1, 2]}
    msg["data"]["extra"] = "x"
    msg["data"]["b"][0].append("9")  # a third element per level
    (q,) = parser()(raw(msg))
    assert q == ("BTCUSDT", 42663.5, 42663.6, 0.91, 11.446, 1702645020906_000_000)


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"not json", "not_json"),
        (b"[1,2]", "unexpected_shape"),
        (b'{"hello":1}', "unexpected_shape"),
        (b'{"topic":7}', "bad_field"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":[1]}', "unexpected_shape"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":[],"a":[]}}', "missing_field"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":[],"a":[],"u":"1"}}', "bad_field"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":9,"b":[],"a":[],"u":1}}', "bad_field"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":{},"a":[],"u":1}}', "bad_field"),
        (b'{"topic":"orderbook.1.X","type":"other","ts":1,"data":{"s":"X","b":[],"a":[],"u":1}}', "bad_field"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":"x","data":{"s":"X","b":[],"a":[],"u":1}}',
         "bad_timestamp"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":["12"],"a":[],"u":1}}', "bad_level"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":[["a","1"]],"a":[],"u":1}}',
         "bad_number"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":[["NaN","1"]],"a":[],"u":1}}',
         "non_finite"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":[["1","1e999"]],"a":[],"u":1}}',
         "non_finite"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":[["-1","1"]],"a":[],"u":1}}',
         "non_positive_price"),
        (b'{"topic":"orderbook.1.X","type":"snapshot","ts":1,"data":{"s":"X","b":[["1","-1"]],"a":[],"u":1}}',
         "negative_size"),
        (b'{"success":false,"ret_msg":"error:invalid op","conn_id":"c","op":""}', "error_reply"),
    ],
)
def test_malformed_frames_raise_parse_error_with_kind(frame: bytes, kind: str) -> None:
    with pytest.raises(ParseError) as ei:
        parser()(frame)
    assert ei.value.kind == kind


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ParseError) as ei:
        parser()(b"\x00\x01", True)
    assert ei.value.kind == "unexpected_binary"


# -- fuzz ---------------------------------------------------------------------------------------


def _seed_messages() -> list[Any]:
    msgs: list[Any] = []
    for name in ("spot_orderbook1_bids_asks", "spot_orderbook1", "linear_orderbook50", "linear_trades"):
        msgs.extend(case(name)["messages"])
    d = case("docs_samples")
    msgs.extend(d[k] for k in ("snapshot_linear", "delta_one_sided", "subscribe_ack", "pong", "pong_op",
                               "subscribe_error"))
    proto = BybitProtocol(SPEC.demo_path)
    inst = Instrument("BTCUSDT", proto.topic("BTCUSDT"), 1, 3)
    msgs.append(orjson.loads(proto.snapshot(inst, SimQuote(100.0, 100.5, 1.0, 2.0), 41, 1786613159749)[0]))  # type: ignore[index]
    msgs.append(orjson.loads(proto.quote(inst, SimQuote(100.1, 100.5, 1.0, 3.0), 42, 1786613159750).payload))
    crossed = case("docs_samples")["snapshot_linear"]
    crossed["data"]["b"][0][0] = "99999.0"  # bid above ask
    msgs.append(crossed)
    return msgs


def test_fuzzed_frames_raise_only_parse_errors_and_yield_only_valid_quotes() -> None:
    rng = random.Random(20260801)
    seeds = _seed_messages()
    parse = parser(BTCUSDT=0.5)
    accepted = rejected = 0
    for i in range(12_000):
        msg = seeds[i % len(seeds)]
        r = rng.random()
        if r < 0.5:
            frame = mutate_json(rng, msg)
        elif r < 0.9:
            frame = mutate_bytes(rng, raw(msg))
        else:
            frame = raw(msg)  # intact frames keep books alive so deltas get exercised
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


def _walk(rng: random.Random, n: int, tick: float, lot: float, dp: int, sdp: int) -> list[SimQuote]:
    """Quotes that move one side, both, only sizes, or nothing at all."""
    bid_t, spread, bl, al = 600_000, 1, 812, 1090
    out = []
    for _ in range(n):
        move = rng.randrange(5)
        if move == 0:
            bid_t += rng.choice([-2, -1, 1, 2])
        elif move == 1:
            spread = rng.randint(1, 3)
        elif move == 2:
            bl = rng.randint(1, 5000)
        elif move == 3:
            al = rng.randint(1, 5000)
        out.append(SimQuote(round(bid_t * tick, dp), round((bid_t + spread) * tick, dp),
                            round(bl * lot, sdp), round(al * lot, sdp)))
    return out


@pytest.mark.parametrize("contract_size", [1.0, 0.5, 0.01, 10.0])
def test_every_simulator_frame_parses_to_the_quoted_numbers(contract_size: float) -> None:
    proto = BybitProtocol(SPEC.demo_path)
    syms = ["BTCUSDT", "ETHUSDT"]
    insts = {s: Instrument(s, proto.topic(s), 1, 3, contract_size) for s in syms}
    session = Session(known=lambda t: t in {i.topic for i in insts.values()})
    parse = parser(**{s: contract_size for s in syms})

    assert proto.greeting() == []
    control = [f for req in subscribe(syms) for f in proto.on_message(req, False, session)]
    assert session.topics == {i.topic for i in insts.values()}
    assert SPEC.ping is not None
    (pong,) = proto.on_message(SPEC.ping.payload(), False, session)
    assert SPEC.ping.is_pong(pong.payload) and parse(pong.payload) == []
    assert all(parse(f.payload) == [] for f in control)
    acks = [orjson.loads(f.payload) for f in control]
    assert all(a["success"] is True and a["op"] == "subscribe" and a["ret_msg"] == "" for a in acks)

    rng = random.Random(contract_size)
    for s, inst in insts.items():
        quotes = _walk(rng, 300, 0.1, 0.001, 1, 3)
        update_id = rng.randint(1, 10**9)
        snap = proto.snapshot(inst, quotes[0], update_id, 1786613159000)
        assert snap is not None and not snap.binary
        frames = [snap, *(proto.quote(inst, q, update_id + i, 1786613159000 + i) for i, q in enumerate(quotes) if i)]
        for i, (f, q) in enumerate(zip(frames, quotes, strict=True)):
            (bbo,) = parse(f.payload)
            assert bbo.symbol == s and bbo.ts_exchange_ns == (1786613159000 + i) * 1_000_000
            assert (bbo.bid, bbo.ask) == (q.bid, q.ask)
            if contract_size in (1.0, 0.5):
                assert (bbo.bid_size, bbo.ask_size) == (q.bid_size, q.ask_size)
            else:  # text exact in contracts; the float product may be an ulp off
                assert (bbo.bid_size, bbo.ask_size) == pytest.approx((q.bid_size, q.ask_size), rel=1e-12)


def test_simulator_deltas_carry_only_what_changed() -> None:
    proto = BybitProtocol(SPEC.demo_path)
    inst = Instrument("BTCUSDT", proto.topic("BTCUSDT"), 1, 3)
    first = proto.quote(inst, SimQuote(100.0, 100.5, 1.0, 2.0), 7, 1)  # no book yet: a snapshot
    assert orjson.loads(first.payload)["type"] == "snapshot"
    d = orjson.loads(proto.quote(inst, SimQuote(100.0, 100.5, 1.5, 2.0), 8, 2).payload)["data"]
    assert (d["b"], d["a"], d["u"]) == ([["100.0", "1.500"]], [], 8)
    d = orjson.loads(proto.quote(inst, SimQuote(100.0, 100.4, 1.5, 2.0), 9, 3).payload)["data"]
    assert (d["b"], d["a"]) == ([], [["100.5", "0"], ["100.4", "2.000"]])
    d = orjson.loads(proto.quote(inst, SimQuote(100.0, 100.4, 1.5, 2.0), 10, 4).payload)["data"]
    assert (d["b"], d["a"], d["u"]) == ([], [], 10)


def test_simulator_replies_for_bad_requests_parse_as_error_replies() -> None:
    proto = BybitProtocol(SPEC.demo_path)
    session = Session(known=lambda t: t == "orderbook.1.BTCUSDT")
    parse = parser()
    bad = [
        b"not json",
        b"[1]",
        b'{"op":"subscribe"}',
        b'{"op":"subscribe","args":[1]}',
        b'{"op":"hello","args":["orderbook.1.BTCUSDT"]}',
        orjson.dumps({"op": "subscribe", "args": [f"orderbook.1.S{i}" for i in range(MAX_ARGS + 1)]}),
    ]
    for req in bad:
        (reply,) = proto.on_message(req, False, session)
        with pytest.raises(ParseError) as ei:
            parse(reply.payload)
        assert ei.value.kind == "error_reply"
    assert session.topics == set()
    (reply,) = proto.on_message(b'{"op":"subscribe","args":["orderbook.1.BTCUSDT","orderbook.1.XYZ"],"req_id":"7"}',
                                False, session)
    msg = orjson.loads(reply.payload)
    assert msg["success"] is False and msg["ret_msg"] == "error:handler not found,topic:orderbook.1.XYZ"
    assert msg["req_id"] == "7" and msg["op"] == "subscribe"
    assert session.topics == {"orderbook.1.BTCUSDT"}  # the listed topic of the request still subscribes
    (reply,) = proto.on_message(b'{"op":"unsubscribe","args":["orderbook.1.BTCUSDT"],"req_id":8}', False, session)
    assert parse(reply.payload) == [] and orjson.loads(reply.payload)["req_id"] == "8"
    assert session.topics == set()
