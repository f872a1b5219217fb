"""Feed registry: venue protocol name -> its `FeedSpec`."""

from __future__ import annotations

from perpbot.feeds import binanceusdm
from perpbot.feeds.spec import FeedSpec

FEEDS: dict[str, FeedSpec] = {s.name: s for s in (binanceusdm.SPEC,)}


def get_feed(name: str) -> FeedSpec:
    try:
        return FEEDS[name]
    except KeyError:
        raise KeyError(f"unknown feed {name!r}; known: {', '.join(sorted(FEEDS))}") from None
