#!/usr/bin/env python3
"""Write the configuration reference (docs/CONFIG.md) from the config schema itself.

    .venv/bin/python tools/config_reference.py            # rewrite docs/CONFIG.md
    .venv/bin/python tools/config_reference.py --check    # exit 1 if it is out of date

Every key comes from the frozen config structs in perpbot/config.py: its type,
its default and the `#:` comment above it. A test runs `--check`, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import typing
from pathlib import Path
from typing import Any

import msgspec

from perpbot import alerts as alerts_module
from perpbot import config as config_module
from perpbot.config import Config

OUT = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"


def _comments() -> dict[tuple[str, str], str]:
    """(struct name, field) -> the `#:` comment lines right above the field, in every config module."""
    out: dict[tuple[str, str], str] = {}
    for module in (config_module, alerts_module):
        out.update(_module_comments(inspect.getsource(module)))
    return out


def _module_comments(source: str) -> dict[tuple[str, str], str]:
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    doc = []
                    i = item.lineno - 2
                    while i >= 0 and lines[i].strip().startswith("#:"):
                        doc.insert(0, lines[i].strip()[2:].strip())
                        i -= 1
                    out[(node.name, item.target.id)] = " ".join(doc)
    return out


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(t)
        bounds = []
        for m in meta:
            if isinstance(m, msgspec.Meta):
                for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    v = getattr(m, k, None)
                    if v is not None:
                        bounds.append(f"{sym} {v}")
        return _type_name(base) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(t))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    if origin is dict:
        k, v = typing.get_args(t)
        return f"map {_type_name(k)} → {_type_name(v)}"
    if t is type(None):
        return "null"
    return getattr(t, "__name__", str(t))


def _default(struct: type[msgspec.Struct], name: str) -> str:
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    f = fields[name]
    if f.required:
        return "required"
    value = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
    if isinstance(value, msgspec.Struct):
        return "(section)"
    if isinstance(value, tuple) and value and isinstance(value[0], msgspec.Struct):
        return f"`{msgspec.json.encode(value).decode()}`"
    return f"`{msgspec.json.encode(value).decode()}`" if value not in ({}, []) else "empty"


def _walk(struct: type[msgspec.Struct], path: str, comments: dict[tuple[str, str], str],
          rows: list[tuple[str, str, str, str]], seen: set[type]) -> None:
    hints = typing.get_type_hints(struct, include_extras=True)
    for name in struct.__struct_fields__:
        t = hints[name]
        key = f"{path}.{name}"
        inner = t
        while typing.get_origin(inner) is typing.Annotated:
            inner = typing.get_args(inner)[0]
        optional = [a for a in typing.get_args(inner) if a is not type(None)]
        if typing.get_origin(inner) in (typing.Union, getattr(__import__("types"), "UnionType", None)) \
                and len(optional) == 1 and isinstance(optional[0], type) and issubclass(optional[0], msgspec.Struct):
            inner = optional[0]  # an optional section
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            doc = comments.get((struct.__name__, name), "") or (inner.__doc__ or "").strip().split("\n")[0]
            rows.append((key, "section", "", doc))
            _walk(inner, key, comments, rows, seen)
            continue
        if typing.get_origin(inner) is tuple:
            args = typing.get_args(inner)
            if args and isinstance(args[0], type) and issubclass(args[0], msgspec.Struct):
                doc = comments.get((struct.__name__, name), "") or (args[0].__doc__ or "").strip().split("\n")[0]
                rows.append((f"{key}[]", "list of sections", _default(struct, name), doc))
                _walk(args[0], f"{key}[]", comments, rows, seen)
                continue
        if typing.get_origin(inner) is dict:
            value_t = typing.get_args(inner)[1]
            if isinstance(value_t, type) and issubclass(value_t, msgspec.Struct):
                doc = comments.get((struct.__name__, name), "") or (value_t.__doc__ or "").strip().split("\n")[0]
                rows.append((f"{key}.<name>", "section (one per name)", _default(struct, name), doc))
                _walk(value_t, f"{key}.<name>", comments, rows, seen)
                continue
        rows.append((key, _type_name(t), _default(struct, name), comments.get((struct.__name__, name), "")))


def render() -> str:
    rows: list[tuple[str, str, str, str]] = []
    _walk(Config, "", _comments(), rows, set())
    out = [
        "# Configuration reference",
        "",
        "Generated from `perpbot/config.py` by `tools/config_reference.py`; a test fails when it is out of",
        "date. Units are in the key names. Unknown keys are errors; every error names the key path.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, typ, default, doc in rows:
        out.append(f"| `{key.lstrip('.')}` | {typ} | {default} | {doc} |")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/CONFIG.md differs from the schema")
    args = p.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.name} is out of date: run tools/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
