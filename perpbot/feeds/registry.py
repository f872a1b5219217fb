"""Feed registry: venue protocol name -> its `FeedSpec`.

Every module in `perpbot.feeds` that exports `SPEC` is a venue; adding a venue
is adding its module (and passing the conformance suite), nothing else. An
import error in a venue module is loud, never a silently missing venue.
"""

from __future__ import annotations

import importlib
import pkgutil

import perpbot.feeds
from perpbot.feeds.spec import FeedSpec

#: modules in the package that are machinery, not venues
_NOT_VENUES = frozenset({"spec", "registry", "process"})


def _discover() -> dict[str, FeedSpec]:
    found: dict[str, FeedSpec] = {}
    for info in pkgutil.iter_modules(perpbot.feeds.__path__):
        if info.name in _NOT_VENUES or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"perpbot.feeds.{info.name}")
        spec = getattr(mod, "SPEC", None)
        if isinstance(spec, FeedSpec):
            if spec.name != info.name:
                raise ImportError(f"perpbot.feeds.{info.name}: SPEC.name is {spec.name!r}, must be the module name")
            found[spec.name] = spec
    return dict(sorted(found.items()))


FEEDS: dict[str, FeedSpec] = _discover()


def get_feed(name: str) -> FeedSpec:
    try:
        return FEEDS[name]
    except KeyError:
        raise KeyError(f"unknown feed {name!r}; known: {', '.join(FEEDS)}") from None
