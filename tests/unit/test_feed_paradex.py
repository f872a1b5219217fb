"""Paradex: SBE BboEvent/BookEvent and JSON-RPC frames, real and documented samples, fuzz, sim round trip."""

from __future__ import annotations

import copy
import math
import random
import struct
from collections.abc import Callable

import orjson
import pytest
from kit import DATA, make_config

from perpbot.feeds import paradex
from perpbot.feeds.spec import BBO, ParseError, Parser, ParserContext
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session
from perpbot.sim.protocols import paradex as sim
from perpbot.sim.protocols.paradex import PROTOCOL, bbo_event, book_event, heartbeat_event, mantissa

HERE = DATA / "venues" / "paradex"
RECORDED = orjson.loads((HERE / "ccxt_watch_order_book.json").read_bytes())
DOCS = orjson.loads((HERE / "docs_samples.json").read_bytes())
GOLDEN = bytes.fromhex(DOCS["bbo_sbe"]["hex"].replace(" ", ""))

BTC = "BTC-USD-PERP"
TS_US = 1_786_614_474_487_123
NULL = -(2**63)
MS = 1_000_000


def parser(**contract_sizes: float) -> Parser:
    return paradex.make_parser(ParserContext({k.replace("_", "-"): v for k, v in contract_sizes.items()}))


PARSE = parser()


def frame(msg: object) -> bytes:
    return orjson.dumps(msg)


def kind_of(f: bytes, binary: bool = True) -> str:
    with pytest.raises(ParseError) as ei:
        PARSE(f, binary)
    return ei.value.kind


def header(block: int, template: int, schema: int = 1, version: int = 2) -> bytes:
    return struct.pack("<HHHH", block, template, schema, version)


# -- real recorded frames (ccxt fixtures, JSON era) -------------------------------------------


def test_recorded_ack_is_not_a_quote_and_sent_frame_matches_ours() -> None:
    ack = RECORDED["messages"][0]
    assert "result" in ack and "usIn" in ack  # real acks carry timing fields, ignored
    assert PARSE(frame(ack)) == []
    sent = RECORDED["sentMessages"][0]
    ours = orjson.loads(paradex.subscribe([BTC])[0])
    assert {k: v for k, v in ours.items() if k != "id"} == sent | {"params": {"channel": f"bbo.{BTC}"}}


def test_recorded_snapshots_have_no_api_asks_so_give_no_quote() -> None:
    # the live frames list five bids and no asks (only the RPI best_ask_interactive, not tradable by API)
    for msg in RECORDED["messages"][1:]:
        assert kind_of(frame(msg), binary=False) == "one_sided_book"


def test_recorded_snapshot_with_an_ask_matches_ccxt_parsed_response() -> None:
    msg = copy.deepcopy(RECORDED["messages"][1])
    msg["params"]["data"]["inserts"].append({"side": "SELL", "price": "63676.7", "size": "0.0002"})
    (q,) = PARSE(frame(msg))
    expected = RECORDED["parsedResponses"][0]
    assert q.symbol == BTC
    assert [q.bid, q.bid_size] == expected["bids"][0]
    assert (q.ask, q.ask_size) == (63676.7, 0.0002)
    assert q.ts_exchange_ns == expected["timestamp"] * MS


# -- documented samples ------------------------------------------------------------------------


def test_documented_ack_and_request() -> None:
    assert PARSE(DOCS["subscribe_ack"]["frame"].encode()) == []
    assert paradex.subscribe([BTC]) == [DOCS["subscribe_request"]["frame"].encode()]


@pytest.mark.parametrize("name", ["error_method", "error_params", "error_auth"])
def test_documented_errors_are_error_replies(name: str) -> None:
    assert kind_of(DOCS[name]["frame"].encode(), binary=False) == "error_reply"


def test_legacy_json_bbo_push() -> None:
    (q,) = PARSE(DOCS["bbo_json_legacy"]["frame"].encode())
    assert q == BBO(BTC, 66821.1, 67643.2, 0.078, 3.734, 1718377985388 * MS)


def test_golden_sbe_frame_from_the_official_schema() -> None:
    (q,) = PARSE(GOLDEN, True)
    assert q == BBO(BTC, 63659.6, 63676.7, 0.03139, 0.0002, TS_US * 1000)
    # the demo market's encoder writes exactly these bytes
    assert bbo_event(BTC, 63659.6, 0.03139, 63676.7, 0.0002, TS_US, 7613251297) == GOLDEN
    assert GOLDEN[:8] == header(48, 2)


def test_sbe_frames_decode_without_the_binary_flag() -> None:
    # the feed process may not pass `binary`; schema id 1 at bytes 4-5 is never JSON text
    assert PARSE(GOLDEN) == PARSE(GOLDEN, True)
    hb = heartbeat_event(TS_US, 1)
    assert PARSE(hb) == [] and PARSE(hb, True) == []
    assert kind_of(b"not json", binary=False) == "not_json"


# -- SBE details ------------------------------------------------------------------------------------


def test_heartbeat_and_reserved_binary_ack_are_not_quotes() -> None:
    assert PARSE(heartbeat_event(TS_US, 42), True) == []
    subscribed = header(17, 41) + struct.pack("<qqB", TS_US, 1, 0) + b"\x03bbo"
    assert PARSE(subscribed, True) == []


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_every_known_schema_version_decodes(version: int) -> None:
    f = bbo_event(BTC, 100.5, 1.0, 100.6, 2.0, TS_US, 1, version=version)
    assert PARSE(f, True)[0].bid == 100.5


def test_longer_block_and_trailing_bytes_are_skipped() -> None:
    # a later version may append fields to the block, or var data after the market
    block = struct.pack("<qqqqqq", TS_US, 9, mantissa(10.0), mantissa(1.0), mantissa(11.0), mantissa(2.0))
    longer = header(56, 2) + block + struct.pack("<q", 123) + b"\x03ABC" + b"\x05extra"
    assert PARSE(longer, True) == [BBO("ABC", 10.0, 11.0, 1.0, 2.0, TS_US * 1000)]


def test_bbo_sizes_are_scaled_by_contract_size() -> None:
    (q,) = parser(BTC_USD_PERP=0.5)(GOLDEN, True)
    assert (q.bid_size, q.ask_size) == (0.03139 * 0.5, 0.0002 * 0.5)


def test_book_snapshot_takes_level_one_even_unsorted() -> None:
    f = book_event(BTC, [(63653.8, 0.5), (63659.6, 0.03139)], [(63680.0, 1.0), (63676.7, 0.0002)], TS_US, 9)
    assert PARSE(f, True) == [BBO(BTC, 63659.6, 63676.7, 0.03139, 0.0002, TS_US * 1000)]


def test_book_snapshot_reads_as_ccxt_reads_it() -> None:
    ccxt_pro = pytest.importorskip("ccxt.pro")
    levels_b, levels_a = [(63659.6, 0.03139), (63653.8, 0.03139)], [(63676.7, 0.0002), (63680.1, 1.5)]
    f = book_event(BTC, levels_b, levels_a, TS_US, 7613251297)
    data = ccxt_pro.paradex().parse_sbe_message(f)["params"]["data"]
    (q,) = PARSE(f, True)
    bids = [(float(x["price"]), float(x["size"])) for x in data["inserts"] if x["side"] == "BUY"]
    asks = [(float(x["price"]), float(x["size"])) for x in data["inserts"] if x["side"] == "SELL"]
    assert (bids, asks) == (levels_b, levels_a)
    assert (q.bid, q.bid_size) == max(bids) and (q.ask, q.ask_size) == min(asks)
    assert data["market"] == q.symbol and data["last_updated_at"] == q.ts_exchange_ns // MS


def _bbo_raw(ts: int = TS_US, bp: int = mantissa(10.0), bs: int = mantissa(1.0), ap: int = mantissa(11.0),
             asz: int = mantissa(2.0), market: bytes = b"\x03ABC", block: int = 48, template: int = 2,
             schema: int = 1, version: int = 2) -> bytes:
    return header(block, template, schema, version) + struct.pack("<qqqqqq", ts, 1, bp, bs, ap, asz) + market


@pytest.mark.parametrize(
    "f, kind",
    [
        (b"\x30\x00\x02\x00\x01", "sbe_truncated"),
        (GOLDEN[:30], "sbe_truncated"),
        (GOLDEN[:-3], "sbe_truncated"),
        (GOLDEN[:56], "sbe_truncated"),
        (_bbo_raw(schema=2), "sbe_schema"),
        (_bbo_raw(version=4), "sbe_version"),
        (_bbo_raw(template=1), "sbe_template"),
        (_bbo_raw(template=999), "sbe_template"),
        (_bbo_raw(block=40), "sbe_block_length"),
        (_bbo_raw(bp=NULL, bs=NULL), "one_sided_book"),
        (_bbo_raw(ap=NULL, asz=NULL), "one_sided_book"),
        (_bbo_raw(bs=NULL), "null_size"),
        (_bbo_raw(bp=mantissa(12.0)), "crossed_book"),
        (_bbo_raw(bs=-5), "negative_size"),
        (_bbo_raw(bp=0), "non_positive_price"),
        (_bbo_raw(ts=0), "bad_timestamp"),
        (_bbo_raw(ts=2**62), "bad_timestamp"),
        (_bbo_raw(market=b"\x00"), "bad_symbol"),
        (_bbo_raw(market=b"\x02\xff\xfe"), "bad_symbol"),
        (book_event(BTC, [(1.0, 1.0)], [(2.0, 1.0)], TS_US, 1, snapshot=False), "book_delta"),
        (book_event(BTC, [(1.0, 1.0)], [], TS_US, 1), "one_sided_book"),
        (book_event(BTC, [(1.0, 1.0)], [(2.0, 1.0)], TS_US, 1)[:-20], "sbe_truncated"),
        (header(17, 3) + struct.pack("<qqB", TS_US, 1, 7), "sbe_pkg_type"),
        (header(17, 3) + struct.pack("<qqBHH", TS_US, 1, 0, 8, 0), "sbe_group"),
        (header(10, 3) + bytes(10), "sbe_block_length"),
    ],
)
def test_malformed_binary_frames_raise_parse_error_with_kind(f: bytes, kind: str) -> None:
    assert kind_of(f) == kind


# -- JSON details ---------------------------------------------------------------------------------


def _json_bbo(**data: object) -> bytes:
    d: dict[str, object] = {"market": BTC, "bid": "10", "bid_size": "1", "ask": "11", "ask_size": "2",
                            "last_updated_at": 1786614474487, "seq_no": 3}
    d.update(data)
    return frame({"jsonrpc": "2.0", "method": "subscription", "params": {"channel": f"bbo.{BTC}", "data": d}})


def test_json_unknown_fields_are_ignored_and_contract_size_applies() -> None:
    f = _json_bbo(zz={"a": [1]}, interactive=True)
    assert PARSE(f) == [BBO(BTC, 10.0, 11.0, 1.0, 2.0, 1786614474487 * MS)]
    assert parser(BTC_USD_PERP=0.01)(f)[0].ask_size == 2 * 0.01


@pytest.mark.parametrize(
    "f, kind",
    [
        (b"[1,2]", "unexpected_shape"),
        (b'{"jsonrpc":"2.0","id":1}', "unexpected_shape"),
        (b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"bbo.X"}}', "unexpected_shape"),
        (b'{"jsonrpc":"2.0","method":"other","params":{"channel":"bbo.X","data":{}}}', "unexpected_shape"),
        (frame({"method": "subscription", "params": {"channel": "trades.X", "data": {}}}), "unexpected_channel"),
        (_json_bbo(bid=None), "one_sided_book"),
        (_json_bbo(bid=True), "bad_number"),
        (_json_bbo(bid="x"), "bad_number"),
        (_json_bbo(bid_size=[1]), "bad_number"),
        (_json_bbo(bid="NaN"), "non_finite"),
        (_json_bbo(ask="Infinity"), "non_finite"),
        (_json_bbo(bid_size="-1"), "negative_size"),
        (_json_bbo(bid="12"), "crossed_book"),
        (_json_bbo(market=7), "bad_field"),
        (_json_bbo(last_updated_at="soon"), "bad_timestamp"),
        (_json_bbo(bid="1" + "0" * 400), "non_finite"),
        (frame({"method": "subscription", "params": {"channel": f"bbo.{BTC}", "data": {"market": BTC}}}),
         "missing_field"),
        (frame({"method": "subscription", "params": {"channel": f"order_book.{BTC}.deltas",
                                                     "data": {"update_type": "d", "inserts": [], "market": BTC,
                                                              "last_updated_at": 1}}}), "book_delta"),
    ],
)
def test_malformed_json_frames_raise_parse_error_with_kind(f: bytes, kind: str) -> None:
    assert kind_of(f, binary=False) == kind


# -- spec ------------------------------------------------------------------------------------------------


def test_spec_asks_for_a_served_sbe_version_and_one_channel_per_request() -> None:
    spec = paradex.SPEC
    assert spec.binary and spec.ping is None and spec.name == "paradex"
    assert spec.public_url == "wss://ws.api.prod.paradex.trade/v1?sbeSchemaId=1&sbeSchemaVersion=2"
    assert spec.public_url.endswith(spec.demo_path)
    frames = [orjson.loads(f) for f in spec.subscribe([BTC, "ETH-USD-PERP"])]
    assert frames == [
        {"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "bbo.BTC-USD-PERP"}, "id": 1},
        {"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "bbo.ETH-USD-PERP"}, "id": 2},
    ]


# -- fuzz ---------------------------------------------------------------------------------------------

_WRONG_VALUES: list[object] = [None, True, [], {}, [1, "2"], "", "NaN", "Infinity", "-Infinity", "-1", "-0",
                               "1e400", 1e308, -1, 0, 2**63, "9" * 400, "abc", {"a": 1}]


def _sbe_seeds() -> list[bytes]:
    return [
        GOLDEN,
        bbo_event("ETH-USD-PERP", 3000.12, 5.5, 3000.13, 0.25, TS_US, 77),
        _bbo_raw(block=56, market=b"\x00" * 8 + b"\x03ABC"),
        book_event(BTC, [(63659.6, 0.03139), (63653.8, 0.5)], [(63676.7, 0.0002)], TS_US, 9),
        heartbeat_event(TS_US, 3),
    ]


def _json_seeds() -> list[dict[str, object]]:
    snapshot = copy.deepcopy(RECORDED["messages"][1])
    snapshot["params"]["data"]["inserts"].append({"side": "SELL", "price": "63676.7", "size": "0.0002"})
    return [orjson.loads(_json_bbo()), snapshot, RECORDED["messages"][0], orjson.loads(DOCS["error_params"]["frame"])]


def _mutate_sbe(rng: random.Random, f: bytes) -> bytes:
    b = bytearray(f)
    op = rng.randrange(6)
    if op == 0:
        return bytes(b[:rng.randrange(len(b) + 1)])
    if op == 1:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2 and len(b) >= 16:  # an extreme int64 in some 8-byte slot of the block
        at = 8 + 8 * rng.randrange((len(b) - 8) // 8)
        v = rng.choice([NULL, 2**63 - 1, 0, -1, 1, -(10**12), rng.randrange(-(2**63), 2**63)])
        b[at:at + 8] = struct.pack("<q", v)
    elif op == 3:  # header fields
        at = 2 * rng.randrange(4)
        b[at:at + 2] = struct.pack("<H", rng.choice([0, 1, 2, 3, 16, 17, 40, 41, 48, 89, 255, 65535,
                                                     rng.randrange(65536)]))
    elif op == 4:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
    else:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 120)))
    return bytes(b)


def _paths(obj: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate_json(rng: random.Random, msg: dict[str, object]) -> bytes:
    m = copy.deepcopy(msg)
    op = rng.randrange(5)
    if op <= 1:
        path = rng.choice(_paths(m))
        parent: object = m
        for key in path[:-1]:
            parent = parent[key]  # type: ignore[index]
        if op == 0:
            parent[path[-1]] = rng.choice(_WRONG_VALUES)  # type: ignore[index]
        else:
            del parent[path[-1]]  # type: ignore[attr-defined]
    elif op == 2:  # bid above ask
        params = m.get("params")
        data: dict[str, object] = params.get("data", {}) if isinstance(params, dict) else {}
        if "bid" in data:
            data["bid"], data["ask"] = "99999999", "1"
        elif isinstance(data.get("inserts"), list):
            data["inserts"].append({"side": "BUY", "price": "99999999", "size": "1"})  # type: ignore[attr-defined]
    raw = orjson.dumps(m)
    if op == 3:
        return raw[:rng.randrange(len(raw) + 1)]
    if op == 4:
        b = bytearray(raw)
        b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    return raw


def _check(parse: Callable[[bytes, bool], list[BBO]], f: bytes, binary: bool) -> int:
    try:
        quotes = parse(f, binary)
    except ParseError:
        return 0
    for q in quotes:
        assert all(math.isfinite(x) for x in q[1:5])
        assert 0 < q.bid <= q.ask and q.bid_size >= 0 and q.ask_size >= 0
        assert type(q.symbol) is str and q.symbol and q.ts_exchange_ns > 0
    return len(quotes)


def test_fuzz_only_parse_errors_escape_and_quotes_are_sane() -> None:
    rng = random.Random(20260921)
    parse = parser(BTC_USD_PERP=0.5)
    sbe, js = _sbe_seeds(), _json_seeds()
    n = good = 0
    for i in range(12_000):
        f = _mutate_sbe(rng, rng.choice(sbe)) if i % 2 else _mutate_json(rng, rng.choice(js))
        good += _check(parse, f, rng.random() < 0.5)
        n += 1
    assert n == 12_000 and good > 500  # many mutations leave a valid quote: the checks above ran


# -- sim round trip -------------------------------------------------------------------------------------


def _proto() -> sim.ParadexProtocol:
    return PROTOCOL(paradex.SPEC.demo_path)


def _session(*known: str) -> Session:
    return Session(known=lambda t: t in known)


def _reply(frames: list[Frame]) -> dict[str, object]:
    (f,) = frames
    assert not f.binary
    return orjson.loads(f.payload)


def test_sim_routes_only_served_negotiations() -> None:
    p = _proto()
    assert p.name == "paradex" and p.binary_data and p.greeting() == []
    assert p.route(paradex.SPEC.demo_path) == []
    for v in (0, 1, 2):
        assert p.route(f"/v1?sbeSchemaId=1&sbeSchemaVersion={v}") == []
    for path in ("/v1", "/v1?sbeSchemaId=1&sbeSchemaVersion=3", "/v1?sbeSchemaId=1&sbeSchemaVersion=9",
                 "/v1?sbeSchemaId=2&sbeSchemaVersion=1", "/v1?sbeSchemaVersion=1", "/v1?sbeSchemaId=1",
                 "/v1?sbeSchemaId=1&sbeSchemaVersion=x", "/v1?sbeSchemaId=1&sbeSchemaVersion=%C2%B2",
                 "/v1?sbeSchemaId=1&sbeSchemaVersion=" + "9" * 5000, "/v2?sbeSchemaId=1&sbeSchemaVersion=1",
                 "/v1?sbeSchemaId=1&sbeSchemaVersion=1&sbeSchemaVersion=2"):
        assert p.route(path) is None, path


def test_sim_subscribe_unsubscribe_and_errors_parse_as_paradex_frames() -> None:
    p, s = _proto(), _session(f"bbo.{BTC}")
    sub = paradex.subscribe([BTC])[0]
    ack = p.on_message(sub, False, s)
    assert _reply(ack) == {"jsonrpc": "2.0", "result": {"channel": f"bbo.{BTC}"}, "id": 1}
    assert s.topics == {f"bbo.{BTC}"}
    assert PARSE(ack[0].payload) == []
    cases = [
        (sub, 100),  # a repeated subscribe is an error
        (paradex.subscribe(["NOPE-USD-PERP"])[0], -32602),
        (b'{"jsonrpc":"2.0","method":"subscribe","params":{},"id":5}', -32602),
        (b'{"jsonrpc":"2.0","method":"subscribe","id":5}', -32602),
        (b'{"jsonrpc":"2.0","method":"auth","params":{"bearer":"x"},"id":6}', -32601),
        (b'{"method":"subscribe","params":{"channel":"bbo.X"},"id":7}', -32600),
        (b"[1]", -32600),
        (b"{not json", -32700),
    ]
    for payload, code in cases:
        reply = p.on_message(payload, False, s)
        assert _reply(reply)["error"]["code"] == code, payload  # type: ignore[index]
        assert kind_of(reply[0].payload, binary=False) == "error_reply"
    assert _reply(p.on_message(sub, True, s))["error"]["code"] == -32600  # type: ignore[index]
    unsub = b'{"jsonrpc":"2.0","method":"unsubscribe","params":{"channel":"bbo.BTC-USD-PERP"},"id":"u1"}'
    assert _reply(p.on_message(unsub, False, s)) == {"jsonrpc": "2.0", "result": {"channel": f"bbo.{BTC}"},
                                                        "id": "u1"}
    assert s.topics == set()
    assert _reply(p.on_message(unsub, False, s))["error"]["code"] == 100  # type: ignore[index]
    snap = p.snapshot(Instrument(BTC, f"bbo.{BTC}", 1, 5), SimQuote(1.0, 2.0, 0.5, 0.25), 1, 1786614474000)
    assert snap is not None and snap.binary
    assert PARSE(snap.payload, True) == [BBO(BTC, 1.0, 2.0, 0.5, 0.25, 1786614474000 * MS)]


@pytest.mark.parametrize("contract_size", [1.0, 0.01, 0.001, 10.0])
def test_sim_quotes_round_trip_to_the_model_numbers(contract_size: float) -> None:
    cfg = make_config()
    model = MarketModel(cfg, 0)
    p = _proto()
    n = 0
    for step in range(1, 1001):
        for vi, si in model.advance(step * MS):
            sym = model.symbols[si]
            market = f"{sym.split('-')[0]}-USD-PERP"
            inst = Instrument(market, p.topic(market), model.price_decimals(sym), model.size_decimals(sym),
                              contract_size)
            q = model.quote_at(vi, si)
            f = p.quote(inst, q, step, 1786614474000 + step)
            assert f.binary
            (bbo,) = paradex.make_parser(ParserContext({market: contract_size}))(f.payload, True)
            assert bbo.symbol == market and bbo.ts_exchange_ns == (1786614474000 + step) * MS
            assert (bbo.bid, bbo.ask) == (q.bid, q.ask)
            if contract_size == 1.0:
                assert (bbo.bid_size, bbo.ask_size) == (q.bid_size, q.ask_size)
            else:  # wire sizes are contracts to 8 decimals: exact up to float rounding
                assert math.isclose(bbo.bid_size, q.bid_size, rel_tol=1e-9)
                assert math.isclose(bbo.ask_size, q.ask_size, rel_tol=1e-9)
            n += 1
    assert n > 200


def test_sim_topic_is_the_bbo_channel() -> None:
    assert _proto().topic(BTC) == f"bbo.{BTC}" == orjson.loads(paradex.subscribe([BTC])[0])["params"]["channel"]
