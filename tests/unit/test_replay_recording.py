"""The recording file format: lines, sections, binary frames and escaped text."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from kit import DATA

from perpbot.feeds import binanceusdm
from perpbot.record import (
    RecordedConnection,
    RecordedFrame,
    RecordingError,
    decode_frame,
    encode_frame,
    opened_line,
    parse_recording,
    read_recording,
    received_line,
    recording_url,
    sent_line,
)

BINANCE = DATA / "recorded" / "BINANCE_FUTURES.ws.1.0"
URL = "ws://127.0.0.1:40000/public/stream"


def test_the_binance_recording_reads_as_one_connection() -> None:
    (conn,) = read_recording(BINANCE)
    assert conn.url.startswith("wss://fstream.binance.com/stream?streams=sushiusdt@aggTrade/")
    assert conn.opened == 1626992740.179554
    assert conn.sent == []
    assert len(conn.received) == 1535
    assert not any(f.binary for f in conn.received)
    assert [f.t for f in conn.received] == sorted(f.t for f in conn.received)
    book = [f for f in conn.received if b'"e":"bookTicker"' in f.payload]
    assert len(book) == 613
    assert all(len(binanceusdm.parse(f.payload)) == 1 for f in book)
    assert recording_url(BINANCE) == conn.url


def test_the_recording_lines_are_read_back_verbatim() -> None:
    lines = BINANCE.read_text().split("\n")
    (conn,) = read_recording(BINANCE)
    assert [f.payload.decode() for f in conn.received] == [ln.partition(": ")[2] for ln in lines[1:] if ln]


@pytest.mark.parametrize(
    ("payload", "binary", "verbatim"),
    [
        (b'{"a":1}', False, True),
        (b"", False, True),
        (b"pong", False, True),
        (b"b64:looks like binary", False, False),
        (b"t64:looks escaped", False, False),
        (b'{"pretty":\n  1}', False, False),
        (b"carriage\rreturn", False, False),
        ("line\u2028separator".encode(), False, False),
        (b"\xff\xfe not utf-8", False, False),
        (b"\x00\x01\x02binary\n", True, False),
        (b"", True, False),
        (b'{"a":1}', True, False),
    ],
)
def test_every_frame_round_trips_on_one_line(payload: bytes, binary: bool, verbatim: bool) -> None:
    text = encode_frame(payload, binary)
    assert len(text.splitlines()) <= 1
    assert (text == payload.decode("utf-8", errors="replace")) is verbatim
    assert decode_frame(text) == (payload, binary)
    assert text.startswith("b64:") is binary
    line = received_line(1700000000.5, payload, binary)
    (conn,) = parse_recording([opened_line(URL, 1700000000.0), line])
    assert conn.received == [RecordedFrame(1700000000.5, payload, binary)]


def test_sections_sent_and_received_frames() -> None:
    other = "ws://127.0.0.1:40001/public/stream?streams=ethusdt@bookTicker"
    sub = b'{"method":"SUBSCRIBE","params":["btcusdt@bookTicker"],"id":1}'
    lines = [
        opened_line(URL, 10.0),
        sent_line(URL, 10.1, sub),
        received_line(10.2, b'{"result":null,"id":1}'),
        received_line(10.3, b"\x01\x02", True),
        opened_line(other, 10.05),
        received_line(10.25, b'{"stream":"ethusdt@bookTicker"}'),
        "",
    ]
    a, b = parse_recording(lines)
    assert a == RecordedConnection(URL, 10.0, [RecordedFrame(10.1, sub)], [
        RecordedFrame(10.2, b'{"result":null,"id":1}'), RecordedFrame(10.3, b"\x01\x02", True)])
    assert b == RecordedConnection(other, 10.05, [], [RecordedFrame(10.25, b'{"stream":"ethusdt@bookTicker"}')])


def test_a_frame_holding_the_line_markers_stays_a_received_frame() -> None:
    tricky = orjson.dumps({"x": "wss://a <- 1.0: b", "y": "u <-> 2"})
    (conn,) = parse_recording([opened_line(URL, 1.0), received_line(2.0, tricky)])
    assert conn.received == [RecordedFrame(2.0, tricky)]


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ([], "empty"),
        (["1.0: {}"], "before any `URL <-> T`"),
        ([opened_line(URL, 1.0), "hello"], "line 2: not a recording line"),
        ([opened_line(URL, 1.0), "2.0: b64:???"], "line 2: bad frame encoding"),
        ([opened_line(URL, 1.0), "ws://elsewhere <- 2.0: {}"], "outside its connection's section"),
        ([opened_line(URL, 1.0), f"{URL} <- soon: {{}}"], "bad time"),
        (["ws://x <-> later"], "expected `URL <-> T`"),
    ],
)
def test_malformed_recordings_name_the_line(lines: list[str], words: str) -> None:
    with pytest.raises(RecordingError) as ei:
        parse_recording(lines)
    assert words in str(ei.value)


def test_recording_url_reads_only_the_first_line(tmp_path: Path) -> None:
    p = tmp_path / "r.ws"
    p.write_text(opened_line(URL, 1.0) + "\nnot a line at all\n")
    assert recording_url(p) == URL
    p.write_text('{"not": "a recording"}\n')
    with pytest.raises(RecordingError, match="first line must be"):
        recording_url(p)
    with pytest.raises(OSError):
        recording_url(tmp_path / "missing.ws")
