"""The demo market in its own process, for designs measured outside PerpBot's launcher.

    with BenchMarket(cfg) as market:          # a Config, or the path of a config file
        market.urls                           # {"binanceusdm": "ws://127.0.0.1:40123/...", ...}
        ...                                   # run a design against the URLs
    # the market process is gone here (SIGTERM, then kill)

The child is `python -m perpbot_bench.market --config FILE --urls-file FILE`:
it serves the market the config's mode asks for with PerpBot's own
`perpbot.sim.process.start_market`, writes `{"urls": {venue: url}}` to the
URLs file atomically once every venue listens (the ready handshake), and
serves until SIGTERM/SIGINT. Like PerpBot's market process it is a process
of its own, so the market's CPU is never inside the process being measured,
and it dies with its parent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import msgspec
import orjson
import yaml

from perpbot.config import Config, load_config

#: how long the child may take to report its URLs
START_TIMEOUT_S = 20.0
#: how long SIGTERM is given before the child is killed
STOP_TIMEOUT_S = 5.0


def write_config(cfg: Config, path: Path) -> Path:
    """`cfg` as a YAML file a child process can load (`perpbot.config.load_config`)."""
    path.write_text(yaml.safe_dump(msgspec.to_builtins(cfg), sort_keys=False))
    return path


def pin(cpu: int | None) -> None:
    """Pin this process to one core (None: leave it to the OS)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


class BenchMarket:
    """The demo (or replay) market for `cfg` in a child process; a context manager.

    `cpu` pins the child to that core. `urls` is set once the child is ready.
    """

    def __init__(self, cfg: Config | str | os.PathLike[str], *, cpu: int | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self._cfg = cfg
        self._cpu = cpu
        self._start_timeout_s = start_timeout_s
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.urls: dict[str, str] = {}

    @property
    def pid(self) -> int | None:
        """The market process's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> dict[str, str]:
        """Start the child and wait for its URLs; raises RuntimeError if it fails or is too slow."""
        if self._proc is not None:
            raise RuntimeError("market already started")
        self._dir = Path(tempfile.mkdtemp(prefix="pbm"))
        try:
            if isinstance(self._cfg, Config):
                cfg_path = write_config(self._cfg, self._dir / "config.yaml")
            else:
                cfg_path = Path(self._cfg)
            urls_file = self._dir / "urls.json"
            log_path = self._dir / "market.log"
            cmd = [sys.executable, "-m", "perpbot_bench.market", "--config", str(cfg_path),
                   "--urls-file", str(urls_file)]
            if self._cpu is not None:
                cmd += ["--cpu", str(self._cpu)]
            with open(log_path, "wb") as log:
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self._start_timeout_s
            while True:
                if urls_file.exists():
                    self.urls = orjson.loads(urls_file.read_bytes())["urls"]
                    return self.urls
                code = self._proc.poll()
                if code is not None:
                    raise RuntimeError(f"market process exited ({code}) before it was ready:\n"
                                       f"{log_path.read_text(errors='replace')[-4000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"market process not ready within {self._start_timeout_s:.0f} s:\n"
                                       f"{log_path.read_text(errors='replace')[-4000:]}")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the child, kill it if it does not exit in time, reap it, remove its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        elif proc is not None:
            proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# -- the child --------------------------------------------------------------------------------


def _write_urls(path: Path, urls: dict[str, str]) -> None:
    """So that a reader sees either nothing or the whole file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"urls": urls}))
    os.replace(tmp, path)


async def serve(cfg: Config, urls_file: Path) -> int:
    """Serve the market until SIGTERM/SIGINT; 1 if it stopped feeding on its own."""
    from perpbot.sim.process import start_market

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    market = await start_market(cfg)
    try:
        _write_urls(urls_file, market.urls)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
            if market.error() is not None:
                return 1
        return 0
    finally:
        await market.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m perpbot_bench.market`."""
    p = argparse.ArgumentParser(description="Serve the demo market for a config until SIGTERM.")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--urls-file", required=True, type=Path, help="where to write {'urls': {venue: url}}")
    p.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = p.parse_args(argv)
    from perpbot.runctx import die_with_parent

    die_with_parent()
    pin(args.cpu)
    import uvloop

    return uvloop.run(serve(load_config(args.config), args.urls_file))


if __name__ == "__main__":
    sys.exit(main())
