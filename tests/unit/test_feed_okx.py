"""The OKX feed: parser on recorded and documented frames, subscribe frames, simulator round trip, fuzz."""

from __future__ import annotations

import json
import math
import random
from decimal import Decimal
from typing import Any

import orjson
import pytest
from fuzz import mutate_frame
from kit import DATA, make_config

from perpbot.feeds.okx import MAX_ARGS_PER_REQUEST, SPEC, make_parser, subscribe
from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import BBO, ParseError, Parser, ParserContext
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session
from perpbot.sim.protocols.okx import PROTOCOL

RECORDING = DATA / "recorded" / "OKX.ws.1.0"
VENUE_DATA = DATA / "venues" / "okx"
#: ctVal per SWAP instId (OKX /api/v5/public/instruments)
CT_VAL = {"BTC-USDT-SWAP": 0.01, "ETH-USDT-SWAP": 0.1, "BCH-USDT-SWAP": 0.1, "SOL-USDT-SWAP": 1.0}
MS = 1_000_000


def parser(contract_sizes: dict[str, float] | None = None) -> Parser:
    return make_parser(ParserContext(contract_sizes or {}))


def in_base(contracts: object, ct_val: float) -> float:
    """The exact decimal product, as the nearest float: what the parser must give."""
    return float(Decimal(str(contracts)) * Decimal(repr(ct_val)))


def recorded_frames() -> list[bytes]:
    """Frames the client received; `URL <- T: ...` lines are what it sent."""
    out = []
    for line in RECORDING.read_text().splitlines()[1:]:
        if " <- " in line:
            continue
        _ts, _, frame = line.partition(": ")
        out.append(frame.encode())
    return out


def documented() -> dict[str, bytes]:
    doc = json.loads((VENUE_DATA / "documented.json").read_text())
    return {f["name"]: f["frame"].encode() for f in doc["frames"]}


def ccxt_cases() -> list[dict[str, Any]]:
    return list(json.loads((VENUE_DATA / "ccxt_ws.json").read_text())["cases"])


# -- recorded frames ---------------------------------------------------------------------


def test_every_recorded_tickers_frame_parses_to_its_fields() -> None:
    parse = parser()
    n = 0
    inst_ids = set()
    for frame in recorded_frames():
        msg = orjson.loads(frame)
        quotes = parse(frame)
        if "data" not in msg or msg["arg"]["channel"] != "tickers":
            assert quotes == []  # acks, books and trades share the connection
            continue
        (d,) = msg["data"]
        (q,) = quotes
        assert q.symbol == msg["arg"]["instId"] == d["instId"]
        assert (q.bid, q.ask) == (float(d["bidPx"]), float(d["askPx"]))
        assert (q.bid_size, q.ask_size) == (float(d["bidSz"]), float(d["askSz"]))
        assert q.ts_exchange_ns == int(d["ts"]) * MS
        assert q.bid <= q.ask
        inst_ids.add(q.symbol)
        n += 1
    assert n == 28  # every tickers frame in the recording
    assert inst_ids == {"BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"}  # a future, an inverse swap, spot


def test_recorded_frames_with_contract_sizes_scale_only_their_instruments() -> None:
    parse = parser({"UNI-USD-SWAP": 10.0})
    for frame in recorded_frames():
        for q in parse(frame):
            d = orjson.loads(frame)["data"][0]
            cs = 10.0 if q.symbol == "UNI-USD-SWAP" else 1.0
            assert (q.bid_size, q.ask_size) == (in_base(d["bidSz"], cs), in_base(d["askSz"], cs))


def test_ccxt_live_frames_match_ccxt_parsed_responses_in_base_units() -> None:
    parse = parser(CT_VAL)
    checked = 0
    for case in ccxt_cases():
        data_frames = []
        for msg in case["messages"]:
            quotes = parse(orjson.dumps(msg))
            if "event" in msg:
                assert quotes == [], msg
            else:
                data_frames.append(quotes)
        assert all(len(quotes) == 1 for quotes in data_frames), case["description"]
        # ccxt answers its first watch call; later frames have no parsed response of their own
        parsed = case["parsedResponses"]
        for quotes, want in zip(data_frames[: len(parsed)], parsed, strict=True):
            (q,) = quotes
            inst = case["sentMessages"][0]["args"][0]["instId"]
            cs = CT_VAL.get(inst, 1.0)
            if "bids" in want:  # order book: ccxt's top level [price, contracts]
                bid, bid_sz = want["bids"][0][:2]
                ask, ask_sz = want["asks"][0][:2]
            else:
                bid, bid_sz, ask, ask_sz = want["bid"], want["bidVolume"], want["ask"], want["askVolume"]
            assert q.symbol == inst
            assert (q.bid, q.ask) == (bid, ask)
            assert (q.bid_size, q.ask_size) == (in_base(bid_sz, cs), in_base(ask_sz, cs))
            assert q.ts_exchange_ns == want["timestamp"] * MS
            checked += 1
    assert checked == 9


# -- documented samples ------------------------------------------------------------------------


def test_documented_bbo_tbt_books5_and_tickers_samples() -> None:
    parse = parser(CT_VAL)
    doc = documented()
    assert parse(doc["bbo_tbt_spot"]) == [
        BBO("BTC-USDT", 36232.1, 36232.2, 0.00572212, 1.8826134, 1651826598363 * MS)
    ]
    # SWAP sizes are contracts: 57745 x 0.1 BCH
    assert parse(doc["bbo_tbt_swap"]) == [BBO("BCH-USDT-SWAP", 111.05, 111.06, 5774.5, 5515.4, 1670324386802 * MS)]
    # 421.93 x 0.01 is 4.2193000000000005 in binary; the parser lands on the decimal
    assert parse(doc["books5_swap_live"]) == [
        BBO("BTC-USDT-SWAP", 63921.4, 63921.5, 4.2193, 7.9041, 1786541241006 * MS)
    ]
    assert parse(doc["tickers_spot"]) == [BBO("BTC-USDT", 31500.0, 31500.1, 3.05652439, 0.00998144, 1626526618762 * MS)]


def test_subscribe_is_the_documented_request() -> None:
    assert subscribe(["BTC-USDT-SWAP", "ETH-USDT-SWAP"]) == [documented()["subscribe_request"]]


def test_subscribe_batches_args_under_the_request_budget() -> None:
    syms = [f"C{i}-USDT-SWAP" for i in range(2 * MAX_ARGS_PER_REQUEST + 50)]
    frames = subscribe(syms)
    assert len(frames) == 3
    msgs = [orjson.loads(f) for f in frames]
    assert all(m["op"] == "subscribe" for m in msgs)
    assert [a["instId"] for m in msgs for a in m["args"]] == syms
    assert {a["channel"] for m in msgs for a in m["args"]} == {"bbo-tbt"}
    assert max(len(f) for f in frames) < 64 * 1024
    assert subscribe([]) == []


def test_spec_urls_and_text_ping() -> None:
    assert FEEDS["okx"] is SPEC
    assert SPEC.public_url == "wss://ws.okx.com:8443/ws/v5/public"
    assert SPEC.public_url.endswith(SPEC.demo_path)
    assert SPEC.ping is not None
    assert 0 < SPEC.ping.interval_s < 30  # OKX drops a connection silent for 30 s
    assert SPEC.ping.payload() == b"ping"
    assert SPEC.ping.is_pong(b"pong")
    assert not SPEC.ping.is_pong(documented()["subscribe_ack"])
    assert SPEC.binary is False and dict(SPEC.extra_headers) == {}


# -- control frames, errors, malformed frames ------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"pong",
        b'{"event":"subscribe","arg":{"channel":"bbo-tbt","instId":"BTC-USDT-SWAP"},"connId":"a4d3ae55"}',
        b'{"event":"unsubscribe","arg":{"channel":"bbo-tbt","instId":"BTC-USDT-SWAP"},"connId":"a4d3ae55"}',
        b'{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade.",'
        b'"connId":"a4d3ae55"}',
        b'{"event":"channel-conn-count","channel":"bbo-tbt","connCount":"2","connId":"a4d3ae55"}',
        b'{"arg":{"channel":"trades","instId":"BTC-USDT-SWAP"},"data":[{"px":"1","sz":"2","ts":"1"}]}',
        b'{"arg":{"channel":"books","instId":"BTC-USDT-SWAP"},"action":"update","data":[{"asks":[],"bids":[]}]}',
        b'{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT-SWAP"},"data":[]}',
    ],
)
def test_control_and_other_channel_frames_carry_no_quotes(frame: bytes) -> None:
    assert parser(CT_VAL)(frame) == []


@pytest.mark.parametrize("name", ["error_illegal_request", "error_no_such_channel"])
def test_documented_error_replies_raise(name: str) -> None:
    with pytest.raises(ParseError) as ei:
        parser()(documented()[name])
    assert ei.value.kind == "error_reply"
    assert "600" in str(ei.value)  # the code travels with it for the log


_LEVELS = (b'{"arg":{"channel":"bbo-tbt","instId":"X"},"data":[{"asks":[["%s","%s","0","1"]],'
           b'"bids":[["%s","%s","0","1"]],"ts":%s}]}')


def levels(bid: str = "1", bsz: str = "1", ask: str = "2", asz: str = "1", ts: str = '"1700000000000"') -> bytes:
    return _LEVELS % (ask.encode(), asz.encode(), bid.encode(), bsz.encode(), ts.encode())


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"not json", "not_json"),
        (b"ping", "not_json"),
        (b"[1,2]", "unexpected_shape"),
        (b'{"arg":"bbo-tbt","data":[]}', "unexpected_shape"),
        (b'{"arg":{"channel":"bbo-tbt"},"data":[]}', "missing_field"),
        (b'{"data":[]}', "missing_field"),
        (b'{"arg":{"channel":"bbo-tbt","instId":"X"},"data":{"asks":[]}}', "unexpected_shape"),
        (b'{"arg":{"channel":"bbo-tbt","instId":7},"data":[]}', "bad_field"),
        (b'{"arg":{"channel":"bbo-tbt","instId":"X"},"data":[{"asks":[["2","1","0","1"]],"ts":"1"}]}', "missing_field"),
        (b'{"arg":{"channel":"bbo-tbt","instId":"X"},"data":[{"asks":[["2","1"]],"bids":[],"ts":"1"}]}', "empty_side"),
        (b'{"arg":{"channel":"bbo-tbt","instId":"X"},"data":[{"asks":[["2"]],"bids":[["1","1"]],"ts":"1"}]}',
         "bad_field"),
        (b'{"arg":{"channel":"tickers","instId":"X"},"data":[{"bidPx":"","bidSz":"0","askPx":"2","askSz":"1","ts":"1"}]}',
         "empty_side"),
        (b'{"arg":{"channel":"bbo-tbt","instId":"X"},"data":["row"]}', "bad_number"),
        (levels(bid="x"), "bad_number"),
        (levels(bsz="[]"), "bad_number"),
        (levels(bid="3"), "crossed_book"),
        (levels(bsz="-1"), "negative_size"),
        (levels(bid="nan"), "non_finite"),
        (levels(ask="Infinity"), "non_finite"),
        (levels(ask="1e999"), "non_finite"),
        (levels(asz="1e5"), "bad_number"),  # venues send plain decimals; a size with an exponent is refused
        (levels(bid="0"), "non_positive_price"),
        (levels(bid="-1"), "non_positive_price"),
        (levels(ts='"99999999999999999"'), "bad_timestamp"),
        (levels(ts='"-5"'), "bad_timestamp"),
        (levels(ts="1.5"), "bad_timestamp"),
    ],
)
def test_malformed_frames_raise_parse_error_with_kind(frame: bytes, kind: str) -> None:
    with pytest.raises(ParseError) as ei:
        parser({"X": 0.01})(frame)
    assert ei.value.kind == kind


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ParseError) as ei:
        parser()(documented()["bbo_tbt_spot"], True)
    assert ei.value.kind == "unexpected_binary"


def test_unknown_fields_are_ignored_at_every_level() -> None:
    msg = orjson.loads(documented()["bbo_tbt_swap"])
    msg["zz"] = {"nested": [1, 2]}
    msg["arg"]["uid"] = "77"
    msg["data"][0]["instId"] = "BCH-USDT-SWAP"
    msg["data"][0]["checksum"] = -855196043
    msg["data"][0]["asks"][0].append("extra")
    msg["data"][0]["bids"].append(["100", "1", "0", "1"])  # deeper levels do not matter
    parse = parser(CT_VAL)
    assert parse(orjson.dumps(msg)) == parse(documented()["bbo_tbt_swap"])


def test_frames_are_independent_no_book_state() -> None:
    """bbo-tbt and tickers frames each carry the whole top of book: nothing to resync."""
    parse = parser({"X": 0.01})
    first = parse(levels(bid="1", ask="2"))
    with pytest.raises(ParseError, match="crossed_book"):
        parse(levels(bid="3", ask="2"))
    # an older frame after a newer one, and a crossed one in between, change nothing
    assert parse(levels(bid="1.5", ask="2", ts='"1700000000001"'))[0].bid == 1.5
    assert parse(levels(bid="1", ask="2")) == first


def test_several_data_rows_give_several_quotes() -> None:
    msg = orjson.loads(documented()["bbo_tbt_swap"])
    row = dict(msg["data"][0], ts="1670324386803")
    msg["data"].append(row)
    quotes = parser(CT_VAL)(orjson.dumps(msg))
    assert [q.ts_exchange_ns for q in quotes] == [1670324386802 * MS, 1670324386803 * MS]


@pytest.mark.parametrize("ct_val", [0.01, 0.1, 0.001, 0.0001, 1.0, 10.0, 100.0, 1e-5])
def test_contract_sizes_convert_to_the_exact_decimal(ct_val: float) -> None:
    rng = random.Random(f"okx-ct-{ct_val}")
    parse = parser({"X": ct_val})
    for _ in range(300):
        dp = rng.randrange(0, 5)
        sz = f"{rng.randrange(0, 10**7) / 10**dp:.{dp}f}"
        (q,) = parse(levels(bsz=sz, asz=sz))
        assert q.bid_size == q.ask_size == in_base(sz, ct_val), sz


# -- fuzz ----------------------------------------------------------------------------------------

#: values a careless or hostile venue might put in any field
WEIRD: list[Any] = [
    None, True, False, 0, -1, 1.5, 1e308, -1e308, 10**30, 2**64, "NaN", "nan", "Infinity", "-Infinity",
    "-1", "-0", "0", "", "abc", "1e999", "1_000", " 7 ", "\u0661", [], {}, [[]], [["1", "1"]], {"a": 1},
]





def _crossed(msg: Any) -> None:
    for row in msg.get("data", []) if isinstance(msg, dict) else []:
        if isinstance(row, dict) and row.get("asks") and row.get("bids"):
            row["bids"][0][0] = str(float(row["asks"][0][0]) * 1.5)
        elif isinstance(row, dict) and "askPx" in row:
            row["bidPx"] = str(float(row["askPx"]) + 1)


def mutate(rng: random.Random, frame: bytes) -> tuple[bytes, bool]:
    """One mutated frame and whether it arrives as binary."""
    return mutate_frame(rng, frame, WEIRD, _crossed)





def sim_frames() -> list[bytes]:
    proto = PROTOCOL(SPEC.demo_path)
    inst = Instrument("BTC-USDT-SWAP", proto.topic("BTC-USDT-SWAP"), 1, 3, 0.01)
    return [proto.quote(inst, SimQuote(60000.1, 60000.2, 0.812, 1.09), 7, 1786541241006).payload]


def test_fuzzed_frames_raise_only_parse_errors_and_yield_only_valid_quotes() -> None:
    doc = documented()
    seeds = [f for f in recorded_frames() if b'"tickers"' in f or b'"event"' in f]
    seeds += [doc[k] for k in ("bbo_tbt_spot", "bbo_tbt_swap", "books5_swap_live", "tickers_spot", "subscribe_ack",
                                "error_no_such_channel")]
    seeds += [*sim_frames(), b"pong"]
    rng = random.Random(20260801)
    parse = parser(CT_VAL)
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
    assert {"not_json", "bad_number", "crossed_book", "negative_size", "missing_field"} <= kinds, kinds


# -- simulator round trip -----------------------------------------------------------------------


BOARD_TO_OKX = {"BTC-PERP": "BTC-USDT-SWAP", "ETH-PERP": "ETH-USDT-SWAP", "SOL-PERP": "SOL-USDT-SWAP"}


def sim_session(proto: Any, inst_ids: list[str]) -> Session:
    topics = {proto.topic(s) for s in inst_ids}
    return Session(known=lambda t: t in topics)


def test_simulator_control_frames_parse_as_the_feed_expects() -> None:
    proto = PROTOCOL(SPEC.demo_path)
    assert proto.name == "okx" and proto.route("/ws/v5/public") == [] and proto.route("/ws/v5/business") is None
    assert proto.greeting() == []
    session = sim_session(proto, ["BTC-USDT-SWAP", "ETH-USDT-SWAP"])
    parse = parser(CT_VAL)
    subs = subscribe(["BTC-USDT-SWAP", "ETH-USDT-SWAP"])
    acks = [f for frame in subs for f in proto.on_message(frame, False, session)]
    assert len(acks) == 2 and all(parse(f.payload) == [] for f in acks)
    assert [orjson.loads(f.payload)["event"] for f in acks] == ["subscribe", "subscribe"]
    assert session.topics == {"bbo-tbt:BTC-USDT-SWAP", "bbo-tbt:ETH-USDT-SWAP"}
    # the text ping: a bare `pong` the feed recognises before parsing
    (pong,) = proto.on_message(SPEC.ping.payload() if SPEC.ping else b"", False, session)
    assert pong == Frame(b"pong") and SPEC.ping is not None and SPEC.ping.is_pong(pong.payload)
    assert parse(pong.payload) == []
    # an unlisted instrument: 60018 for that arg, an ack for the others
    mixed = proto.on_message(subscribe(["XYZ-USDT-SWAP", "BTC-USDT-SWAP"])[0], False, session)
    assert [orjson.loads(f.payload).get("code") for f in mixed] == ["60018", None]
    with pytest.raises(ParseError, match="error_reply"):
        parse(mixed[0].payload)
    assert "bbo-tbt:XYZ-USDT-SWAP" not in session.topics
    # malformed requests: 60012
    for bad in (b"{nope", b'{"op":"subscribe"}', b'{"op":"login","args":[{}]}', b'{"op":"subscribe","args":[7]}',
                b"[]"):
        (err,) = proto.on_message(bad, False, session)
        assert orjson.loads(err.payload)["code"] == "60012"
        with pytest.raises(ParseError, match="error_reply"):
            parse(err.payload)
    (err,) = proto.on_message(b"\x00\x01", True, session)
    assert orjson.loads(err.payload)["code"] == "60012"
    # one connId per connection
    assert len({orjson.loads(f.payload)["connId"] for f in [*acks, *mixed]}) == 1
    (unsub,) = proto.on_message(b'{"op":"unsubscribe","args":[{"channel":"bbo-tbt","instId":"ETH-USDT-SWAP"}]}',
                                False, session)
    assert orjson.loads(unsub.payload)["event"] == "unsubscribe" and parse(unsub.payload) == []
    assert session.topics == {"bbo-tbt:BTC-USDT-SWAP"}


@pytest.mark.parametrize(
    "ct_vals",
    [
        {"BTC-PERP": 0.01, "ETH-PERP": 0.1, "SOL-PERP": 1.0},  # OKX's own
        {"BTC-PERP": 0.0001, "ETH-PERP": 10.0, "SOL-PERP": 0.001},  # any power of ten
    ],
)
def test_every_simulated_quote_parses_to_exactly_the_quote_in_base_units(ct_vals: dict[str, float]) -> None:
    cfg = make_config()
    model = MarketModel(cfg, 0)
    proto = PROTOCOL(SPEC.demo_path)
    parse = parser({BOARD_TO_OKX[b]: c for b, c in ct_vals.items()})
    insts = {
        b: Instrument(BOARD_TO_OKX[b], proto.topic(BOARD_TO_OKX[b]), model.price_decimals(b), model.size_decimals(b), c)
        for b, c in ct_vals.items()
    }
    n = 0
    for step in range(1, 3001):
        for vi, si in model.advance(step * MS):
            board = model.symbols[si]
            q = model.quote_at(vi, si)
            ts_ms = 1786541241006 + step
            make = proto.snapshot if step % 7 == 0 else proto.quote
            frame = make(insts[board], q, step, ts_ms)
            assert frame is not None and not frame.binary
            (bbo,) = parse(frame.payload)
            assert bbo == BBO(insts[board].symbol, q.bid, q.ask, q.bid_size, q.ask_size, ts_ms * MS), frame
            n += 1
    assert n > 1000


def test_simulated_sizes_are_contracts() -> None:
    proto = PROTOCOL(SPEC.demo_path)
    inst = Instrument("BTC-USDT-SWAP", proto.topic("BTC-USDT-SWAP"), 1, 3, 0.01)
    msg = orjson.loads(proto.quote(inst, SimQuote(60000.0, 60000.2, 0.812, 1.09), 17, 1786541241006).payload)
    assert msg == {
        "arg": {"channel": "bbo-tbt", "instId": "BTC-USDT-SWAP"},
        "data": [{"asks": [["60000.2", "109", "0", "1"]], "bids": [["60000", "81.2", "0", "1"]],
                  "ts": "1786541241006", "seqId": 17}],
    }
