"""The simulated Binance USDⓈ-M protocol: every frame is what the venue's parser expects."""

from __future__ import annotations

import orjson
import pytest
from kit import make_config

from perpbot.feeds import binanceusdm
from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import ParseError, ParserContext
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.protocol import Frame, Instrument, Session
from perpbot.sim.protocols import PROTOCOLS, get_protocol
from perpbot.sim.protocols.binanceusdm import PROTOCOL, BinanceUsdmProtocol, error, result

MS = 1_000_000
TS_MS = 1_786_541_241_006
DEMO = binanceusdm.SPEC.demo_path


@pytest.fixture
def proto() -> BinanceUsdmProtocol:
    return BinanceUsdmProtocol(DEMO)


def inst(proto: BinanceUsdmProtocol, symbol: str, price_dp: int, size_dp: int) -> Instrument:
    return Instrument(symbol, proto.topic(symbol), price_dp, size_dp)


def ask(proto: BinanceUsdmProtocol, payload: bytes, session: Session) -> dict[str, object]:
    """The one reply to a request, decoded."""
    (reply,) = proto.on_message(payload, False, session)
    assert not reply.binary
    out: dict[str, object] = orjson.loads(reply.payload)
    return out


def test_registry_finds_the_module_by_its_feed_name() -> None:
    assert PROTOCOLS["binanceusdm"] is PROTOCOL is BinanceUsdmProtocol
    assert get_protocol("binanceusdm").name == "binanceusdm"
    assert set(PROTOCOLS) <= set(FEEDS)
    with pytest.raises(KeyError, match="binanceusdm"):
        get_protocol("nosuchvenue")


def test_book_ticker_frame_has_binance_shape(proto: BinanceUsdmProtocol) -> None:
    frame = proto.quote(inst(proto, "BTCUSDT", 1, 3), SimQuote(60000.1, 60000.2, 0.812, 1.09), 17, TS_MS)
    assert frame == Frame(frame.payload, binary=False)
    assert orjson.loads(frame.payload) == {
        "stream": "btcusdt@bookTicker",
        "data": {
            "e": "bookTicker", "u": 17, "s": "BTCUSDT",
            "b": "60000.1", "B": "0.812", "a": "60000.2", "A": "1.090",
            "T": TS_MS, "E": TS_MS,
        },
    }


def test_no_snapshot_no_greeting(proto: BinanceUsdmProtocol) -> None:
    assert proto.greeting() == []
    assert proto.snapshot(inst(proto, "BTCUSDT", 1, 3), SimQuote(1.0, 2.0, 1.0, 1.0), 1, TS_MS) is None


def test_every_model_quote_round_trips_through_the_binance_parser(proto: BinanceUsdmProtocol) -> None:
    cfg = make_config()
    model = MarketModel(cfg, 0)
    parse = binanceusdm.SPEC.make_parser(ParserContext())
    n = 0
    for step in range(1, 2001):
        for vi, si in model.advance(step * MS):
            venue, sym = model.venues[vi], model.symbols[si]
            i = inst(proto, cfg.venues[venue].symbols[sym], model.price_decimals(sym), model.size_decimals(sym))
            q = model.quote_at(vi, si)
            (bbo,) = parse(proto.quote(i, q, step, TS_MS + step).payload)
            assert bbo.symbol == i.symbol
            assert (bbo.bid, bbo.ask, bbo.bid_size, bbo.ask_size) == q
            assert bbo.ts_exchange_ns == (TS_MS + step) * MS
            n += 1
    assert n > 500


@pytest.mark.parametrize(
    ("price_dp", "size_dp", "q", "b", "bsz"),
    [
        (8, 0, SimQuote(0.00001234, 0.00001235, 5e7, 4e7), "0.00001234", "50000000"),
        (0, 3, SimQuote(25.0, 26.0, 0.001, 0.002), "25", "0.001"),
        (2, 2, SimQuote(3000.0, 3000.01, 10.0, 12.5), "3000.00", "10.00"),
    ],
)
def test_numbers_are_fixed_point_never_exponents(
    proto: BinanceUsdmProtocol, price_dp: int, size_dp: int, q: SimQuote, b: str, bsz: str
) -> None:
    frame = proto.quote(inst(proto, "XUSDT", price_dp, size_dp), q, 1, TS_MS).payload
    data = orjson.loads(frame)["data"]
    assert (data["b"], data["B"]) == (b, bsz)
    (bbo,) = binanceusdm.parse(frame)
    assert (bbo.bid, bbo.ask, bbo.bid_size, bbo.ask_size) == q


def test_topics_are_lower_case_streams(proto: BinanceUsdmProtocol) -> None:
    assert proto.topic("1000PEPEUSDT") == "1000pepeusdt@bookTicker"


def test_control_replies_parse_as_control_frames() -> None:
    assert orjson.loads(result(5)) == {"result": None, "id": 5}
    assert orjson.loads(result(6, ["btcusdt@bookTicker"])) == {"result": ["btcusdt@bookTicker"], "id": 6}
    assert binanceusdm.parse(result(5)) == []
    err = error(3, "Invalid JSON: x")
    assert orjson.loads(err) == {"error": {"code": 3, "msg": "Invalid JSON: x"}, "id": None}
    with pytest.raises(ParseError) as ei:
        binanceusdm.parse(err)
    assert ei.value.kind == "error_reply"


# -- routes and requests -------------------------------------------------------------------


def test_url_streams_on_the_routed_path(proto: BinanceUsdmProtocol) -> None:
    path = "/public/stream?streams=btcusdt@bookTicker/ETHUSDT@bookTicker"
    assert proto.route(path) == ["btcusdt@bookTicker", "ethusdt@bookTicker"]
    assert proto.route("/public/stream") == []
    assert proto.route("/public/stream/") == []
    # wrong routed paths: accepted by the server but silent
    assert proto.route("/ws?streams=btcusdt@bookTicker") is None
    assert proto.route("/market/stream?streams=btcusdt@bookTicker") is None


def test_subscribe_unsubscribe_and_list(proto: BinanceUsdmProtocol) -> None:
    s = Session()
    sub = b'{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","SOLUSDT@bookTicker"],"id":1}'
    assert ask(proto, sub, s) == {"result": None, "id": 1}
    assert s.topics == {"btcusdt@bookTicker", "solusdt@bookTicker"}
    unsub = b'{"method":"UNSUBSCRIBE","params":["btcusdt@bookTicker"],"id":2}'
    assert ask(proto, unsub, s) == {"result": None, "id": 2}
    assert s.topics == {"solusdt@bookTicker"}
    assert ask(proto, b'{"method":"LIST_SUBSCRIPTIONS","id":3}', s) == {"result": ["solusdt@bookTicker"], "id": 3}


def test_subscribe_frames_of_the_real_feed_are_acked(proto: BinanceUsdmProtocol) -> None:
    s = Session()
    for frame in binanceusdm.subscribe(["BTCUSDT", "ETHUSDT"]):
        (reply,) = proto.on_message(frame, False, s)
        assert binanceusdm.parse(reply.payload) == []
    assert s.topics == {"btcusdt@bookTicker", "ethusdt@bookTicker"}


def test_unknown_symbols_and_other_paths_streams_are_acked_and_silent(proto: BinanceUsdmProtocol) -> None:
    # Binance reports neither: the stream is well formed, it just never sends anything
    s = Session(known=lambda t: t == "btcusdt@bookTicker")
    req = b'{"method":"SUBSCRIBE","params":["dogeusdt@bookTicker","btcusdt@aggTrade","!bookTicker"],"id":4}'
    assert ask(proto, req, s) == {"result": None, "id": 4}
    assert s.topics == {"dogeusdt@bookTicker", "btcusdt@aggTrade", "!bookTicker"}
    assert not any(s.known(t) for t in s.topics)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", 3),
        (b"[1, 2]", 2),
        (b'{"method":"SUBSCRIB","params":[],"id":1}', 2),
        (b'{"method":"SUBSCRIBE","params":"btcusdt@bookTicker","id":1}', 2),
        (b'{"method":"SUBSCRIBE","params":[1],"id":1}', 2),
        (b'{"method":"SUBSCRIBE","params":[],"id":-1}', 2),
        (b'{"method":"SUBSCRIBE","params":[],"id":"x"}', 2),
        (b'{"method":"SUBSCRIBE","params":["not a stream"],"id":1}', 2),
        (b'{"method":"SUBSCRIBE","params":["ethusdt@bookTicker","btcusdt@bookticker"],"id":1}', 2),
        (b'{"method":"UNSUBSCRIBE","params":["btcusdt@nope"],"id":1}', 2),
    ],
)
def test_invalid_requests_get_an_error_and_change_nothing(
    proto: BinanceUsdmProtocol, payload: bytes, code: int
) -> None:
    s = Session({"btcusdt@bookTicker"})
    reply = ask(proto, payload, s)
    assert reply["error"]["code"] == code  # type: ignore[index]
    assert s.topics == {"btcusdt@bookTicker"}


def test_an_invalid_stream_is_named_as_binance_does(proto: BinanceUsdmProtocol) -> None:
    reply = ask(proto, b'{"method":"SUBSCRIBE","params":["btcusdt@bookticker"],"id":9}', Session())
    assert reply == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 9}


def test_binary_requests_are_read_like_text(proto: BinanceUsdmProtocol) -> None:
    s = Session()
    (reply,) = proto.on_message(b'{"method":"SUBSCRIBE","params":["btcusdt@bookTicker"],"id":1}', True, s)
    assert orjson.loads(reply.payload) == {"result": None, "id": 1}
    assert s.topics == {"btcusdt@bookTicker"}
