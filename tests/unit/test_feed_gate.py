"""The Gate USDT-futures feed: parser on recorded and documented frames, subscribe, simulator round trip, fuzz."""

from __future__ import annotations

import json
import math
import random
import time
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fuzz import mutate_frame
from kit import DATA, make_config

from perpbot.feeds.gate import MAX_CONTRACTS_PER_REQUEST, SPEC, make_parser, subscribe
from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import BBO, ParseError, Parser, ParserContext
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.protocol import Instrument, Session
from perpbot.sim.protocols.gate import PROTOCOL

RECORDING = DATA / "recorded" / "GATEIO_FUTURES.ws.1.0"
VENUE_DATA = DATA / "venues" / "gate"
#: quanto_multiplier per contract (Gate /futures/usdt/contracts)
QUANTO = {"BTC_USDT": 0.0001, "ETH_USDT": 0.01, "SOL_USDT": 1.0}
MS = 1_000_000


def parser(contract_sizes: dict[str, float] | None = None) -> Parser:
    return make_parser(ParserContext(contract_sizes or {}))


def in_base(contracts: object, multiplier: float) -> float:
    """The exact decimal product, as the nearest float: what the parser must give."""
    return float(Decimal(str(contracts)) * Decimal(repr(multiplier)))


def recorded_frames() -> list[bytes]:
    """Frames the client received; `URL <- T: ...` lines are what it sent."""
    out = []
    for line in RECORDING.read_text().splitlines()[1:]:
        if " <- " in line:
            continue
        _ts, _, frame = line.partition(": ")
        out.append(frame.encode())
    return out


def recorded_requests() -> list[dict[str, Any]]:
    return [orjson.loads(line.partition(": ")[2]) for line in RECORDING.read_text().splitlines() if " <- " in line]


def documented() -> dict[str, bytes]:
    doc = json.loads((VENUE_DATA / "documented.json").read_text())
    return {f["name"]: f["frame"].encode() for f in doc["frames"]}


def ccxt_messages() -> list[dict[str, Any]]:
    cases = json.loads((VENUE_DATA / "ccxt_ws.json").read_text())["cases"]
    return [m for c in cases for m in c["messages"]]


# -- recorded frames ---------------------------------------------------------------------


def test_every_recorded_book_ticker_frame_parses_to_its_fields() -> None:
    parse = parser()
    n = 0
    for frame in recorded_frames():
        msg = orjson.loads(frame)
        quotes = parse(frame)
        if msg["channel"] != "futures.book_ticker" or msg["event"] != "update":
            assert quotes == []  # acks, order_book_update, trades, candlesticks
            continue
        r = msg["result"]
        (q,) = quotes
        assert q.symbol == r["s"]
        assert (q.bid, q.ask) == (float(r["b"]), float(r["a"]))
        assert type(r["B"]) is int and (q.bid_size, q.ask_size) == (r["B"], r["A"])  # no size header in 2023
        assert q.ts_exchange_ns == r["t"] * MS
        assert q.bid <= q.ask
        n += 1
    assert n == 75  # every futures.book_ticker update in the recording


def test_recorded_frames_scale_by_their_own_contract_size() -> None:
    sizes = {"RDNT_USDT": 1.0, "WOO_USDT": 10.0, "PHB_USDT": 0.1}
    parse = parser(sizes)
    seen = set()
    for frame in recorded_frames():
        for q in parse(frame):
            r = orjson.loads(frame)["result"]
            cs = sizes.get(q.symbol, 1.0)
            assert (q.bid_size, q.ask_size) == (in_base(r["B"], cs), in_base(r["A"], cs))
            seen.add(q.symbol)
    assert set(sizes) <= seen


def test_the_recorded_subscription_batches_ten_contracts_in_one_message() -> None:
    """Evidence that Gate takes several contracts per subscribe: ten, one success ack."""
    (req,) = [r for r in recorded_requests() if r["channel"] == "futures.book_ticker"]
    assert len(req["payload"]) == 10
    acks = [f for f in recorded_frames() if b'"futures.book_ticker","event":"subscribe"' in f]
    assert len(acks) == 1 and orjson.loads(acks[0])["result"] == {"status": "success"}


def test_ccxt_live_frames_of_other_channels_and_acks_carry_no_quotes() -> None:
    parse = parser(QUANTO)
    msgs = ccxt_messages()
    assert {m["channel"] for m in msgs} >= {"futures.tickers", "futures.order_book_update"}
    for msg in msgs:
        assert parse(orjson.dumps(msg)) == [], msg


# -- documented samples ------------------------------------------------------------------------


def test_documented_book_ticker_samples() -> None:
    doc = documented()
    assert parser()(doc["book_ticker_doc"]) == [BBO("BTC_USD", 54696.6, 54696.7, 37000.0, 47061.0, 1615366379123 * MS)]
    # 20884 contracts x 0.0001 BTC
    assert parser(QUANTO)(doc["book_ticker_live"]) == [
        BBO("BTC_USDT", 62914.2, 62914.3, 2.0884, 3.3644, 1785548245214 * MS)
    ]


def test_decimal_string_sizes_from_the_size_header_are_read() -> None:
    """With `X-Gate-Size-Decimal: 1` sizes are strings that may carry decimals (ccxt's spot sample shows the form)."""
    spot = orjson.loads(documented()["spot_book_ticker"])
    assert (spot["result"]["B"], spot["result"]["A"]) == ("0.0134", "0.0353")
    msg = orjson.loads(documented()["book_ticker_live"])
    msg["result"].update(B="20884.7", A="33644")
    (q,) = parser(QUANTO)(orjson.dumps(msg))
    assert (q.bid_size, q.ask_size) == (2.08847, 3.3644)


def test_subscribe_matches_the_documented_request_with_a_current_time() -> None:
    (frame,) = subscribe(["BTC_USDT", "ETH_USDT"])
    msg = orjson.loads(frame)
    want = orjson.loads(documented()["subscribe_request"])
    assert {k: v for k, v in msg.items() if k not in ("time", "id")} == {k: v for k, v in want.items() if k != "time"}
    assert abs(msg["time"] - time.time()) < 60 and msg["id"] == 1


def test_subscribe_batches_contracts() -> None:
    syms = [f"C{i}_USDT" for i in range(2 * MAX_CONTRACTS_PER_REQUEST + 50)]
    msgs = [orjson.loads(f) for f in subscribe(syms)]
    assert [len(m["payload"]) for m in msgs] == [MAX_CONTRACTS_PER_REQUEST, MAX_CONTRACTS_PER_REQUEST, 50]
    assert [p for m in msgs for p in m["payload"]] == syms
    assert [m["id"] for m in msgs] == [1, 2, 3]
    assert {(m["channel"], m["event"]) for m in msgs} == {("futures.book_ticker", "subscribe")}
    assert subscribe([]) == []


def test_spec_url_size_header_and_application_ping() -> None:
    assert FEEDS["gate"] is SPEC
    assert SPEC.public_url == "wss://fx-ws.gateio.ws/v4/ws/usdt"
    assert SPEC.public_url.endswith(SPEC.demo_path)
    assert dict(SPEC.extra_headers) == {"X-Gate-Size-Decimal": "1"}
    assert SPEC.ping is not None and 0 < SPEC.ping.interval_s <= 30
    ping = orjson.loads(SPEC.ping.payload())
    assert ping["channel"] == "futures.ping" and abs(ping["time"] - time.time()) < 60
    assert SPEC.ping.is_pong(documented()["pong_doc"])
    assert not any(SPEC.ping.is_pong(f) for f in recorded_frames())
    assert SPEC.binary is False


# -- control frames, errors, malformed frames ------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["subscribe_ack_doc", "unsubscribe_ack_doc", "subscribe_ack_2026", "pong_doc", "spot_book_ticker"]
)
def test_documented_control_frames_carry_no_quotes(name: str) -> None:
    assert parser(QUANTO)(documented()[name]) == []


@pytest.mark.parametrize(
    "frame",
    [
        b'{"time":1789147120,"channel":"futures.book_ticker","event":"subscribe","error":null,'
        b'"result":{"status":"success"}}',
        b'{"channel":"futures.pong"}',
        b'{"time":1789147120,"channel":"futures.system","event":"update","result":{"type":"upgrade","msg":"reconnect"}}',
        b'{"time":1789147120,"channel":"futures.book_ticker","event":"all","result":{}}',
    ],
)
def test_control_and_other_frames_carry_no_quotes(frame: bytes) -> None:
    assert parser(QUANTO)(frame) == []


@pytest.mark.parametrize("name", ["error_unknown_contract", "error_unknown_pair_2025"])
def test_documented_error_replies_raise(name: str) -> None:
    with pytest.raises(ParseError) as ei:
        parser()(documented()[name])
    assert ei.value.kind == "error_reply"
    assert "unknown" in str(ei.value)


def test_a_failed_status_without_an_error_object_is_an_error() -> None:
    with pytest.raises(ParseError, match="error_reply"):
        parser()(b'{"channel":"futures.book_ticker","event":"subscribe","result":{"status":"fail"}}')


_BT = (b'{"time":1,"time_ms":1,"channel":"futures.book_ticker","event":"update","result":'
       b'{"t":%s,"u":1,"s":"X","b":%s,"B":%s,"a":%s,"A":%s}}')


def book(bid: str = '"1"', bsz: str = "1", ask: str = '"2"', asz: str = '"1"', ts: str = "1700000000000") -> bytes:
    return _BT % (ts.encode(), bid.encode(), bsz.encode(), ask.encode(), asz.encode())


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"not json", "not_json"),
        (b"[]", "unexpected_shape"),
        (b'{"time":1,"event":"update","result":{}}', "unexpected_shape"),
        (b'{"channel":"futures.book_ticker","event":"update","result":[1]}', "unexpected_shape"),
        (b'{"channel":"futures.book_ticker","event":"update","result":{"s":"X","b":"1","a":"2","A":1,"t":1}}',
         "missing_field"),
        (b'{"channel":"futures.book_ticker","event":"update"}', "missing_field"),
        (book(bid='""', bsz="0"), "empty_side"),
        (book(ask='""', asz="0"), "empty_side"),
        (book(bid='"x"'), "bad_number"),
        (book(bsz="[]"), "bad_number"),
        (book(bsz="null"), "bad_number"),
        (book(bid='"3"'), "crossed_book"),
        (book(bsz="-1"), "negative_size"),
        (book(asz='"-0.5"'), "negative_size"),
        (book(bid='"nan"'), "non_finite"),
        (book(ask='"1e999"'), "non_finite"),
        (book(asz='"1e5"'), "bad_number"),  # venues send plain decimals; a size with an exponent is refused
        (book(bid='"0"'), "non_positive_price"),
        (book(ts="99999999999999999"), "bad_timestamp"),
        (book(ts='"abc"'), "bad_timestamp"),
        (book(ts="true"), "bad_timestamp"),
        (_BT.replace(b'"s":"X"', b'"s":["X"]') % (b"1", b'"1"', b"1", b'"2"', b"1"), "bad_field"),
    ],
)
def test_malformed_frames_raise_parse_error_with_kind(frame: bytes, kind: str) -> None:
    with pytest.raises(ParseError) as ei:
        parser({"X": 0.0001})(frame)
    assert ei.value.kind == kind


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ParseError) as ei:
        parser()(documented()["book_ticker_live"], True)
    assert ei.value.kind == "unexpected_binary"


def test_unknown_fields_are_ignored() -> None:
    msg = orjson.loads(documented()["book_ticker_live"])
    msg.update(conn_id="65dc8eae3d01e458", zz={"a": [1, 2]})
    msg["result"].update(l="1", extra=[None])
    parse = parser(QUANTO)
    assert parse(orjson.dumps(msg)) == parse(documented()["book_ticker_live"])


def test_frames_are_independent_no_book_state() -> None:
    """Every book_ticker frame is the whole top of book: nothing to keep, nothing to resync."""
    parse = parser({"X": 0.0001})
    first = parse(book())
    with pytest.raises(ParseError, match="crossed_book"):
        parse(book(bid='"3"'))
    assert parse(book(bid='"1.5"', ts="1699999999999"))[0].bid == 1.5  # an older `t` is still a valid quote
    assert parse(book()) == first


@pytest.mark.parametrize("multiplier", [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1e-5])
def test_contract_sizes_convert_to_the_exact_decimal_for_ints_and_strings(multiplier: float) -> None:
    rng = random.Random(f"gate-q-{multiplier}")
    parse = parser({"X": multiplier})
    for _ in range(300):
        n = rng.randrange(0, 10**8)
        (q,) = parse(book(bsz=str(n), asz=f'"{n / 10:.1f}"'))
        assert q.bid_size == in_base(n, multiplier)
        assert q.ask_size == in_base(f"{n / 10:.1f}", multiplier)


# -- fuzz ----------------------------------------------------------------------------------------

#: values a careless or hostile venue might put in any field
WEIRD: list[Any] = [
    None, True, False, 0, -1, 1.5, 1e308, -1e308, 10**30, 2**64, "NaN", "nan", "Infinity", "-Infinity",
    "-1", "-0", "0", "", "abc", "1e999", "1_000", " 7 ", "\u0661", [], {}, [[]], {"status": "fail"},
]





def _crossed(msg: Any) -> None:
    r = msg.get("result") if isinstance(msg, dict) else None
    if isinstance(r, dict) and isinstance(r.get("a"), str) and r["a"]:
        r["b"] = str(float(r["a"]) * 1.5)


def mutate(rng: random.Random, frame: bytes) -> tuple[bytes, bool]:
    """One mutated frame and whether it arrives as binary."""
    return mutate_frame(rng, frame, WEIRD, _crossed)





def sim_frames() -> list[bytes]:
    proto = PROTOCOL(SPEC.demo_path)
    inst = Instrument("BTC_USDT", proto.topic("BTC_USDT"), 1, 3, 0.0001)
    return [proto.quote(inst, SimQuote(60000.1, 60000.2, 0.812, 1.09), 7, 1786541241006).payload]


def test_fuzzed_frames_raise_only_parse_errors_and_yield_only_valid_quotes() -> None:
    doc = documented()
    seeds = [f for f in recorded_frames() if b"book_ticker" in f]
    seeds += list(doc.values()) + sim_frames()
    rng = random.Random(20260802)
    parse = parser(QUANTO)
    kinds: set[str] = set()
    accepted = 0
    for i in range(12_000):
        frame, binary = mutate(rng, seeds[i % len(seeds)])
        try:
            out = parse(frame, binary)
        except ParseError as e:
            kinds.add(e.kind)
            continue
        for q in out:
            accepted += 1
            assert isinstance(q.symbol, str)
            assert all(math.isfinite(x) for x in (q.bid, q.ask, q.bid_size, q.ask_size)), q
            assert 0 < q.bid <= q.ask and q.bid_size >= 0 and q.ask_size >= 0, q
            assert type(q.ts_exchange_ns) is int and 0 < q.ts_exchange_ns < 2**63, q
    assert accepted > 500, "mutations too blunt: almost nothing parsed"
    assert {"not_json", "bad_number", "crossed_book", "negative_size", "missing_field", "empty_side"} <= kinds, kinds


# -- simulator round trip -----------------------------------------------------------------------


BOARD_TO_GATE = {"BTC-PERP": "BTC_USDT", "ETH-PERP": "ETH_USDT", "SOL-PERP": "SOL_USDT"}


def sim_session(proto: Any, contracts: list[str]) -> Session:
    topics = {proto.topic(s) for s in contracts}
    return Session(known=lambda t: t in topics)


def test_simulator_control_frames_parse_as_the_feed_expects() -> None:
    proto = PROTOCOL(SPEC.demo_path)
    assert proto.name == "gate" and proto.route("/v4/ws/usdt") == [] and proto.route("/v4/ws/btc") is None
    assert proto.greeting() == []
    session = sim_session(proto, ["BTC_USDT", "ETH_USDT", "SOL_USDT"])
    parse = parser(QUANTO)
    (ack,) = proto.on_message(subscribe(["BTC_USDT", "ETH_USDT"])[0], False, session)
    msg = orjson.loads(ack.payload)
    assert msg["event"] == "subscribe" and msg["result"] == {"status": "success"} and msg["id"] == 1
    assert msg["payload"] == ["BTC_USDT", "ETH_USDT"] and len(msg["trace_id"]) == 32 and len(msg["conn_id"]) == 16
    assert parse(ack.payload) == []
    assert session.topics == {"futures.book_ticker:BTC_USDT", "futures.book_ticker:ETH_USDT"}
    # the application ping
    assert SPEC.ping is not None
    (pong,) = proto.on_message(SPEC.ping.payload(), False, session)
    assert SPEC.ping.is_pong(pong.payload) and parse(pong.payload) == []
    assert orjson.loads(pong.payload)["channel"] == "futures.pong"
    # one unknown contract fails the whole request, as Gate does: the known SOL_USDT is not subscribed either
    (err,) = proto.on_message(subscribe(["SOL_USDT", "NOPE_USDT"])[0], False, session)
    assert orjson.loads(err.payload)["error"] == {"code": 2, "message": "unknown contract NOPE_USDT"}
    with pytest.raises(ParseError, match="error_reply"):
        parse(err.payload)
    assert "futures.book_ticker:SOL_USDT" not in session.topics
    for bad, code in ((b"{nope", 1), (b"[]", 1), (b'{"channel":"futures.book_ticker","event":"subscribe"}', 1),
                      (b'{"channel":"futures.tickers","event":"subscribe","payload":["BTC_USDT"]}', 2),
                      (b'{"channel":"futures.book_ticker","event":"bogus","payload":["BTC_USDT"]}', 2)):
        (err,) = proto.on_message(bad, False, session)
        assert orjson.loads(err.payload)["error"]["code"] == code, bad
        with pytest.raises(ParseError, match="error_reply"):
            parse(err.payload)
    (err,) = proto.on_message(b"\x00\x01", True, session)
    assert orjson.loads(err.payload)["error"]["code"] == 1
    (unsub,) = proto.on_message(
        b'{"time":1,"channel":"futures.book_ticker","event":"unsubscribe","payload":["ETH_USDT"]}', False, session
    )
    assert orjson.loads(unsub.payload)["result"] == {"status": "success"} and parse(unsub.payload) == []
    assert session.topics == {"futures.book_ticker:BTC_USDT"}
    # book_ticker pushes on change only: no image on subscription
    inst = Instrument("BTC_USDT", proto.topic("BTC_USDT"), 1, 3, 0.0001)
    assert proto.snapshot(inst, SimQuote(1.0, 2.0, 1.0, 1.0), 1, 1) is None


@pytest.mark.parametrize(
    "multipliers",
    [
        {"BTC-PERP": 0.0001, "ETH-PERP": 0.01, "SOL-PERP": 1.0},  # Gate's own
        {"BTC-PERP": 0.001, "ETH-PERP": 10.0, "SOL-PERP": 0.01},  # any power of ten
    ],
)
def test_every_simulated_quote_parses_to_exactly_the_quote_in_base_units(multipliers: dict[str, float]) -> None:
    cfg = make_config()
    model = MarketModel(cfg, 0)
    proto = PROTOCOL(SPEC.demo_path)
    parse = parser({BOARD_TO_GATE[b]: c for b, c in multipliers.items()})
    insts = {
        b: Instrument(BOARD_TO_GATE[b], proto.topic(BOARD_TO_GATE[b]), model.price_decimals(b),
                      model.size_decimals(b), c)
        for b, c in multipliers.items()
    }
    n = 0
    for step in range(1, 3001):
        for vi, si in model.advance(step * MS):
            board = model.symbols[si]
            q = model.quote_at(vi, si)
            ts_ms = 1786541241006 + step
            frame = proto.quote(insts[board], q, step, ts_ms)
            assert not frame.binary
            (bbo,) = parse(frame.payload)
            assert bbo == BBO(insts[board].symbol, q.bid, q.ask, q.bid_size, q.ask_size, ts_ms * MS), frame
            n += 1
    assert n > 1000


def test_simulated_sizes_are_contracts_as_decimal_strings() -> None:
    proto = PROTOCOL(SPEC.demo_path)
    inst = Instrument("BTC_USDT", proto.topic("BTC_USDT"), 1, 4, 0.0001)
    msg = orjson.loads(proto.quote(inst, SimQuote(60000.0, 60000.2, 0.812, 1.0905), 17, 1786541241006).payload)
    assert msg == {
        "time": 1786541241, "time_ms": 1786541241006, "channel": "futures.book_ticker", "event": "update",
        "result": {"t": 1786541241006, "u": 17, "s": "BTC_USDT", "b": "60000", "B": "8120", "a": "60000.2",
                   "A": "10905"},
    }
