"""Frame mutators shared by the venue parsers' fuzz tests (tests/unit/test_feed_*.py).

Each returns bytes a parser must survive: only `ParseError` may escape and
every quote it returns must be valid. Venues differ only in how a frame is
made crossed (a callback) and which odd values are worth trying.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import orjson

#: odd values for a field: wrong types, non-numbers, numbers too large for any venue
WRONG: list[Any] = [None, True, 0, -1, 1.5, 1e308, 2**63 - 1, "", "x", "NaN", "Infinity", "-Infinity", "-1", "0",
         "1e999", "99999999999999999999999999", [], [[]], [["1"]], {}, {"a": 1}]


def json_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(json_paths(v, (*path, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(json_paths(v, (*path, i)))
    return out


def mutate_json(rng: random.Random, msg: Any) -> bytes:
    msg = json.loads(json.dumps(msg))
    paths = [p for p in json_paths(msg) if p]
    if not paths:
        return orjson.dumps(rng.choice(WRONG))
    p = rng.choice(paths)
    parent = msg
    for k in p[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[p[-1]]
    else:
        parent[p[-1]] = rng.choice(WRONG)
    return orjson.dumps(msg)


def mutate_bytes(rng: random.Random, frame: bytes) -> bytes:
    kind = rng.randrange(6)
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
        return frame.replace(b'"', b"", rng.randint(1, 3))
    if kind == 4:
        return frame.replace(b"1", rng.choice([b"9", b"-", b"e9", b"."]), rng.randint(1, 3))
    return frame + frame[: rng.randrange(len(frame) + 1)]


def json_slots(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in a JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield node, k
        yield from json_slots(v)


def mutate_frame(rng: random.Random, frame: bytes, weird: list[Any],
                 crossed: Callable[[Any], None]) -> tuple[bytes, bool]:
    """One mutated frame and whether it arrives as binary."""
    kind = rng.randrange(10)
    if kind == 0:
        return frame[: rng.randrange(len(frame) + 1)], False
    if kind == 1:
        b = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), False
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(80))), rng.random() < 0.5
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return frame[::-1], False
    slots = list(json_slots(msg))
    if kind in (3, 4, 5) and slots:
        for _ in range(1 if kind == 3 else rng.randint(2, 4)):
            node, key = rng.choice(slots)
            node[key] = copy.deepcopy(rng.choice(weird))  # a shared [] would tie the tree in a loop
            slots = list(json_slots(msg))
    elif kind == 6 and slots:
        node, key = rng.choice(slots)
        del node[key]
    elif kind == 7:
        crossed(msg)
    elif kind == 8:
        for node, key in slots:  # negative sizes and prices
            v = node[key]
            if isinstance(v, int) and not isinstance(v, bool) and rng.random() < 0.3:
                node[key] = -v
            elif isinstance(v, str) and v[:1].isdigit() and rng.random() < 0.3:
                node[key] = "-" + v
    else:
        msg = copy.deepcopy(rng.choice(weird))
    return json.dumps(msg).encode(), False  # stdlib json writes NaN, Infinity and huge ints
