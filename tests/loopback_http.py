"""A loopback HTTP server for ccxt's REST calls in tests, and ccxt's URLs pointed at it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web


class LoopbackHttp:
    """An aiohttp server on 127.0.0.1 (a free port) sending every request to `_handle`."""

    def __init__(self) -> None:
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def loopback_urls(urls: Any, base: str) -> Any:
    """Every URL in ccxt's `urls['api']` moved to the loopback base, path kept."""
    if isinstance(urls, dict):
        return {k: loopback_urls(v, base) for k, v in urls.items()}
    if isinstance(urls, str) and urls.startswith("http"):
        return base + urlsplit(urls).path
    return urls
