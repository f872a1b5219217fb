"""perpbot-doctor for real: the demo market on loopback, a closed port, the (missing) internet, the CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kit import ROOT, example_raw, make_config

from perpbot.config import load_config
from perpbot.doctor import Check, Status, exit_status, network_checks, run_doctor
from perpbot.sim.server import serve_market

TIMEOUT_S = 2.0
#: a 2-core machine under load: generous, yet far below "hung"
DEADLINE_S = TIMEOUT_S * 2 + 10
#: a key value that must never reach stdout or stderr
SECRET_KEY = "DoctorTestKey-9f8e7d6c5b4a"
SECRET_SECRET = "DoctorTestSecret-0a1b2c3d4e5f"


def _offline() -> bool:
    """True on a host that cannot resolve the venues' names (the build machine)."""
    try:
        socket.getaddrinfo("fstream.binance.com", 443)
    except OSError:
        return True
    return False


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Config and run root in a short path (ipc socket paths are limited to 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="pdi-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _write_config(d: Path, raw: dict[str, Any], name: str = "cfg.yaml") -> Path:
    raw = {**raw, "run": {**raw.get("run", {}), "run_root": str(d / "run")}}
    path = d / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _paper(urls: dict[str, str] | None = None) -> dict[str, Any]:
    raw = example_raw()
    raw["mode"] = "paper"
    for venue, url in (urls or {}).items():
        raw["venues"][venue]["url"] = url
    return raw


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "perpbot.doctor", *args], cwd=ROOT, capture_output=True,
                          timeout=DEADLINE_S + 20, env={**os.environ, **(env or {})})


def test_websockets_pass_against_the_demo_market(short_dir: Path) -> None:
    """Paper mode with every venue's `url` pointing at the in-process demo market."""
    async def main() -> list[Check]:
        market = await serve_market(make_config())
        try:
            cfg = load_config(_write_config(short_dir, _paper(market.urls)))
            return await network_checks(cfg, timeout_s=TIMEOUT_S, env={})
        finally:
            await market.close()

    checks = _by_name(asyncio.run(main()))
    venues = list(example_raw()["venues"])
    for v in venues:
        assert checks[f"websocket {v}"].status is Status.PASS, checks[f"websocket {v}"]
    assert "3 connections" in checks["websocket extended"].detail  # one per market, as the feed opens them
    if _offline():
        # loopback answering proves nothing about the internet: REST is still offline, not failed
        for v in venues:
            assert checks[f"rest {v}"].status is Status.SKIP, checks[f"rest {v}"]
            assert checks[f"rest {v}"].detail.startswith("offline:")
            assert checks[f"clock {v}"].status is Status.SKIP


def test_a_closed_local_port_fails_quickly(short_dir: Path) -> None:
    port = _closed_port()
    urls = {v: f"ws://127.0.0.1:{port}/ws" for v in example_raw()["venues"]}
    cfg_path = _write_config(short_dir, _paper(urls))
    t0 = time.monotonic()
    proc = _cli("--config", str(cfg_path), "--timeout-s", str(TIMEOUT_S))
    elapsed = time.monotonic() - t0
    out = proc.stdout.decode()
    assert proc.returncode == 1, out + proc.stderr.decode()
    ws_lines = [ln for ln in out.splitlines() if " websocket " in f" {ln}"]
    assert len(ws_lines) == len(urls)
    assert all(ln.startswith("FAIL") and "refused" in ln.lower() for ln in ws_lines), ws_lines
    # refused at once: nowhere near the timeout per venue, even with the interpreter's start-up
    assert elapsed < DEADLINE_S


@pytest.mark.skipif(not _offline(), reason="this host can resolve the venues: the offline path is not reachable")
def test_real_venues_offline_are_skipped_not_failed_and_do_not_hang(short_dir: Path) -> None:
    cfg_path = _write_config(short_dir, _paper())
    t0 = time.monotonic()
    checks, _ = run_doctor(cfg_path, timeout_s=TIMEOUT_S, env={})
    elapsed = time.monotonic() - t0
    assert elapsed < DEADLINE_S
    net = [c for c in checks if c.name.split()[0] in ("websocket", "rest", "clock")]
    assert len(net) == 3 * len(example_raw()["venues"])
    for c in net:
        assert c.status is Status.SKIP and c.detail.startswith("offline:"), c
    assert exit_status(checks) == 0


def test_the_cli_never_prints_a_key(short_dir: Path) -> None:
    raw = _paper()
    raw["venues"]["binanceusdm"].update(api_key_env="DOCTOR_TEST_KEY", api_secret_env="DOCTOR_TEST_SECRET")
    raw["venues"]["bybit"].update(api_key_env="DOCTOR_TEST_KEY", api_secret_env="DOCTOR_TEST_SECRET")
    raw["venues"]["okx"].update(api_key_env="DOCTOR_TEST_KEY", api_secret_env="DOCTOR_TEST_SECRET")
    cfg_path = _write_config(short_dir, raw)
    env = {"DOCTOR_TEST_KEY": SECRET_KEY, "DOCTOR_TEST_SECRET": SECRET_SECRET}
    for args in ((), ("--json",)):
        proc = _cli("--config", str(cfg_path), "--timeout-s", str(TIMEOUT_S), *args, env=env)
        for stream in (proc.stdout, proc.stderr):
            assert SECRET_KEY.encode() not in stream
            assert SECRET_SECRET.encode() not in stream
        assert proc.returncode in (0, 1)
    lines = {c["name"]: c for c in orjson.loads(proc.stdout)}
    assert lines["api keys binanceusdm"]["status"] == "PASS"
    assert "DOCTOR_TEST_KEY" in lines["api keys binanceusdm"]["detail"]  # the variable's name, not its value
    assert "api rights binanceusdm" in lines and "api rights okx" in lines
    # OKX keys need a passphrase and ccxt offers no rights call used here: "unknown", never a guess
    assert lines["api rights okx"]["status"] == "WARN" and "unknown" in lines["api rights okx"]["detail"]
    if _offline():
        assert lines["api rights binanceusdm"]["status"] == "SKIP"
        assert lines["api rights binanceusdm"]["detail"].startswith("offline:")


def test_the_cli_on_a_bad_config_fails_naming_the_key(short_dir: Path) -> None:
    raw = example_raw()
    raw["risk"]["max_open_trades"] = 0
    proc = _cli("--config", str(_write_config(short_dir, raw)))
    out = proc.stdout.decode()
    assert proc.returncode == 1
    first = out.splitlines()[0]
    assert first.startswith("FAIL") and "$.risk.max_open_trades" in first
    assert out.splitlines()[-1].startswith("score: 0/1")


def test_the_cli_on_the_demo_config_passes_and_leaves_nothing_behind(short_dir: Path) -> None:
    """Demo mode with the market started in a thread of this process; the CLI probes nothing remote."""
    cfg_path = _write_config(short_dir, example_raw())
    ready = threading.Event()
    stop: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            market = await serve_market(make_config())
            stop["event"] = asyncio.Event()
            stop["loop"] = asyncio.get_running_loop()
            stop["urls"] = market.urls
            ready.set()
            try:
                await stop["event"].wait()
            finally:
                await market.close()

        asyncio.run(main())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        raw = example_raw()
        for v, url in stop["urls"].items():
            raw["venues"][v]["url"] = url  # demo mode with overrides: the feeds (and the doctor) use them
        with_urls = _write_config(short_dir, raw, "urls.yaml")
        proc = _cli("--config", str(with_urls), "--json", "--timeout-s", str(TIMEOUT_S))
        lines = orjson.loads(proc.stdout)
        assert proc.returncode == 0, lines
        ws = [c for c in lines if c["name"].startswith("websocket ")]
        assert ws and all(c["status"] == "PASS" for c in ws), ws
        plain = _cli("--config", str(cfg_path))
        assert plain.returncode == 0, plain.stdout.decode()
        assert "served locally by the demo market" in plain.stdout.decode()
    finally:
        stop["loop"].call_soon_threadsafe(stop["event"].set)
        t.join(10)
    assert not (short_dir / "run").exists()  # the doctor created the run root only to check it


def test_one_venue_failing_among_answering_ones_is_its_own_fail(short_dir: Path) -> None:
    port = _closed_port()

    async def main() -> list[Check]:
        market = await serve_market(make_config())
        try:
            urls = {**market.urls, "okx": f"ws://127.0.0.1:{port}/ws/v5/public"}
            cfg = load_config(_write_config(short_dir, _paper(urls)))
            return await network_checks(cfg, timeout_s=TIMEOUT_S, env={})
        finally:
            await market.close()

    checks = _by_name(asyncio.run(main()))
    assert checks["websocket okx"].status is Status.FAIL
    assert f"127.0.0.1:{port}" in checks["websocket okx"].detail
    assert checks["websocket bybit"].status is Status.PASS
    assert exit_status(list(checks.values())) == 1


def test_a_resolver_that_never_answers_is_offline_within_the_timeout(short_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead DNS server hangs getaddrinfo: the probe gives up at the timeout and says offline."""
    from perpbot import doctor

    async def hang(host: str, port: int) -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(doctor, "_resolve", hang)
    cfg = load_config(_write_config(short_dir, _paper()))
    t0 = time.monotonic()
    checks = asyncio.run(network_checks(cfg, timeout_s=0.5, env={}))
    assert time.monotonic() - t0 < 5
    for c in checks:
        if c.name.split()[0] in ("websocket", "rest"):
            assert c.status is Status.SKIP and "name resolution timed out" in c.detail, c
