"""Demo-market encoders and subscribe handlers: every frame is what the venue's parser expects."""

from __future__ import annotations

import orjson
import pytest
from kit import make_config

from perpbot.feeds import binanceusdm
from perpbot.feeds.registry import FEEDS
from perpbot.feeds.spec import ParseError
from perpbot.sim.encoders import (
    BINANCEUSDM,
    ENCODERS,
    Instrument,
    binanceusdm_error,
    binanceusdm_result,
    get_encoder,
)
from perpbot.sim.market import MarketModel, SimQuote
from perpbot.sim.server import HANDLERS, binanceusdm_on_text, binanceusdm_url_topics

MS = 1_000_000
TS_MS = 1_786_541_241_006


def test_every_encoder_is_a_known_feed_with_a_handler() -> None:
    assert "binanceusdm" in ENCODERS
    assert set(ENCODERS) <= set(FEEDS)
    assert set(HANDLERS) == set(ENCODERS)
    with pytest.raises(KeyError, match="binanceusdm"):
        get_encoder("nosuchvenue")


def test_book_ticker_frame_has_binance_shape() -> None:
    inst = BINANCEUSDM.instrument("BTCUSDT", 1, 3)
    frame = BINANCEUSDM.quote(inst, SimQuote(60000.1, 60000.2, 0.812, 1.09), 17, TS_MS)
    assert orjson.loads(frame) == {
        "stream": "btcusdt@bookTicker",
        "data": {
            "e": "bookTicker", "u": 17, "s": "BTCUSDT",
            "b": "60000.1", "B": "0.812", "a": "60000.2", "A": "1.090",
            "T": TS_MS, "E": TS_MS,
        },
    }


def test_every_model_quote_round_trips_through_the_binance_parser() -> None:
    cfg = make_config()
    model = MarketModel(cfg, 0)
    parse = binanceusdm.SPEC.make_parser({})
    n = 0
    for step in range(1, 2001):
        for vi, si in model.advance(step * MS):
            venue, sym = model.venues[vi], model.symbols[si]
            inst = BINANCEUSDM.instrument(
                cfg.venues[venue].symbols[sym], model.price_decimals(sym), model.size_decimals(sym)
            )
            q = model.quote_at(vi, si)
            (bbo,) = parse(BINANCEUSDM.quote(inst, q, step, TS_MS + step))
            assert bbo.symbol == inst.symbol
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
    price_dp: int, size_dp: int, q: SimQuote, b: str, bsz: str
) -> None:
    inst = BINANCEUSDM.instrument("XUSDT", price_dp, size_dp)
    data = orjson.loads(BINANCEUSDM.quote(inst, q, 1, TS_MS))["data"]
    assert (data["b"], data["B"]) == (b, bsz)
    (bbo,) = binanceusdm.parse(BINANCEUSDM.quote(inst, q, 1, TS_MS))
    assert (bbo.bid, bbo.ask, bbo.bid_size, bbo.ask_size) == q


def test_unsafe_symbol_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot send"):
        BINANCEUSDM.instrument('BTC"USDT', 1, 3)
    pepe = BINANCEUSDM.instrument("1000PEPEUSDT", 7, 0)
    assert pepe == Instrument("1000PEPEUSDT", "1000pepeusdt@bookTicker", 7, 0)


def test_control_replies_parse_as_control_frames() -> None:
    assert orjson.loads(binanceusdm_result(5)) == {"result": None, "id": 5}
    listed = orjson.loads(binanceusdm_result(6, ["btcusdt@bookTicker"]))
    assert listed == {"result": ["btcusdt@bookTicker"], "id": 6}
    assert binanceusdm.parse(binanceusdm_result(5)) == []
    err = binanceusdm_error(3, "Invalid JSON: x")
    assert orjson.loads(err) == {"error": {"code": 3, "msg": "Invalid JSON: x"}, "id": None}
    with pytest.raises(ParseError) as ei:
        binanceusdm.parse(err)
    assert ei.value.kind == "error_reply"


# -- the Binance subscribe handler -------------------------------------------------------


def test_url_streams_on_the_routed_path() -> None:
    demo = binanceusdm.SPEC.demo_path
    path = "/public/stream?streams=btcusdt@bookTicker/ETHUSDT@bookTicker"
    assert binanceusdm_url_topics(path, demo) == ["btcusdt@bookTicker", "ethusdt@bookTicker"]
    assert binanceusdm_url_topics("/public/stream", demo) == []
    assert binanceusdm_url_topics("/public/stream/", demo) == []
    # wrong routed paths: accepted by the server but silent
    assert binanceusdm_url_topics("/ws?streams=btcusdt@bookTicker", demo) is None
    assert binanceusdm_url_topics("/market/stream?streams=btcusdt@bookTicker", demo) is None


def test_subscribe_unsubscribe_and_list() -> None:
    topics: set[str] = set()
    sub = b'{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","SOLUSDT@bookTicker"],"id":1}'
    assert orjson.loads(binanceusdm_on_text(sub, topics) or b"") == {"result": None, "id": 1}
    assert topics == {"btcusdt@bookTicker", "solusdt@bookTicker"}
    unsub = b'{"method":"UNSUBSCRIBE","params":["btcusdt@bookTicker"],"id":2}'
    assert orjson.loads(binanceusdm_on_text(unsub, topics) or b"") == {"result": None, "id": 2}
    assert topics == {"solusdt@bookTicker"}
    req = b'{"method":"LIST_SUBSCRIPTIONS","id":3}'
    listed = orjson.loads(binanceusdm_on_text(req, topics) or b"")
    assert listed == {"result": ["solusdt@bookTicker"], "id": 3}


def test_subscribe_frames_of_the_real_feed_are_acked() -> None:
    topics: set[str] = set()
    for frame in binanceusdm.subscribe(["BTCUSDT", "ETHUSDT"]):
        reply = binanceusdm_on_text(frame, topics)
        assert reply is not None and binanceusdm.parse(reply) == []
    assert topics == {"btcusdt@bookTicker", "ethusdt@bookTicker"}


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
    ],
)
def test_invalid_requests_get_an_error_and_change_nothing(payload: bytes, code: int) -> None:
    topics = {"btcusdt@bookTicker"}
    reply = orjson.loads(binanceusdm_on_text(payload, topics) or b"")
    assert reply["error"]["code"] == code
    assert topics == {"btcusdt@bookTicker"}
