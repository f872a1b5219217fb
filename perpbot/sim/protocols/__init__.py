"""Simulated venue protocols: feed name -> the `SimProtocol` class the demo market speaks it with.

Every module in this package that exports `PROTOCOL` (a `SimProtocol`
subclass whose `name` is the module name, which is also the feed's name in
`perpbot.feeds`) is a protocol; adding one is adding its module, nothing
else. `binanceusdm` is the reference module to copy. An import error in a
protocol module is loud, never a silently missing protocol.

    proto = get_protocol("binanceusdm")(spec.demo_path)
"""

from __future__ import annotations

import importlib
import pkgutil

from perpbot.sim.protocol import SimProtocol


def _discover() -> dict[str, type[SimProtocol]]:
    found: dict[str, type[SimProtocol]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        proto = getattr(mod, "PROTOCOL", None)
        if proto is None:
            continue
        if not (isinstance(proto, type) and issubclass(proto, SimProtocol)):
            raise ImportError(f"{mod.__name__}: PROTOCOL must be a SimProtocol subclass, got {proto!r}")
        if getattr(proto, "name", None) != info.name:
            raise ImportError(
                f"{mod.__name__}: PROTOCOL.name is {getattr(proto, 'name', None)!r}, must be the module name"
            )
        found[info.name] = proto
    return dict(sorted(found.items()))


#: feed name -> its simulated protocol class (one instance per simulated venue)
PROTOCOLS: dict[str, type[SimProtocol]] = _discover()


def get_protocol(name: str) -> type[SimProtocol]:
    """The protocol class for a feed name; KeyError naming the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(
            f"the demo market cannot speak feed {name!r}; known: {', '.join(PROTOCOLS) or 'none'}"
        ) from None


__all__ = ["PROTOCOLS", "get_protocol"]
