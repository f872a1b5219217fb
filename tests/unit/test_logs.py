"""Structured logs: JSON fields, rotation, and secrets that never reach a file or the console."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kit import example_raw

from perpbot import logs
from perpbot.config import Config, parse_config

SECRET = "sk-live-Zq81xYtEsTsEcReT"
OTHER_SECRET = "ap1-secret-with-\"quote\\and-backslash"


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Each test starts and ends without our handlers or registered secrets."""
    root = logging.getLogger()
    level = root.level
    yield
    for h in list(root.handlers):
        if getattr(h, "_perpbot_logs", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logs.clear_secrets()


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(ln) for ln in path.read_bytes().splitlines()]


def test_json_lines_carry_the_fields(tmp_path: Path) -> None:
    console = io.StringIO()
    log = logs.setup_logging("feed-okx", tmp_path, "DEBUG", console=console)
    before = time.time_ns()
    log.info("connected to %s after %d ms", "okx", 42)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("parse failed")
    log.warning("with context", extra={"venue": "okx", "n": 3})
    for h in logging.getLogger().handlers:
        h.flush()

    recs = _lines(tmp_path / "feed-okx.jsonl")
    assert len(recs) == 3
    first = recs[0]
    assert first["msg"] == "connected to okx after 42 ms"
    assert first["level"] == "INFO"
    assert first["process"] == "feed-okx"
    assert first["logger"] == "perpbot.feed-okx"
    assert isinstance(first["pid"], int)
    assert isinstance(first["ts_ns"], int) and first["ts_ns"] >= before
    assert isinstance(first["mono_ns"], int)
    assert isinstance(first["ts"], str) and first["ts"].endswith("Z") and "T" in first["ts"]
    assert first["ts"][:19] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first["ts_ns"] // 10**9))
    assert "exc" not in first
    assert recs[1]["level"] == "ERROR"
    assert "ZeroDivisionError" in str(recs[1]["exc"])
    assert recs[2]["extra"] == {"venue": "okx", "n": 3}
    # the console gets human lines, not JSON
    text = console.getvalue()
    assert "feed-okx INFO perpbot.feed-okx: connected to okx after 42 ms" in text
    assert "Traceback" in text and not text.lstrip().startswith("{")


def test_console_only_without_a_log_dir(tmp_path: Path) -> None:
    console = io.StringIO()
    log = logs.setup_logging("scanner", None, console=console)
    log.info("hello")
    assert "scanner INFO" in console.getvalue()
    assert not list(tmp_path.iterdir())


def test_console_level_raises_the_console_threshold(tmp_path: Path) -> None:
    console = io.StringIO()
    log = logs.setup_logging("exec", tmp_path, "INFO", console=console, console_level="WARNING")
    log.info("routine")
    log.warning("unusual")
    for h in logging.getLogger().handlers:
        h.flush()
    assert "routine" not in console.getvalue() and "unusual" in console.getvalue()
    assert [r["msg"] for r in _lines(tmp_path / "exec.jsonl")] == ["routine", "unusual"]


def test_setup_twice_replaces_its_own_handlers(tmp_path: Path) -> None:
    logs.setup_logging("exec", tmp_path, console=io.StringIO())
    logs.setup_logging("exec", tmp_path, console=io.StringIO())
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_perpbot_logs", False)]
    assert len(ours) == 2  # one console, one file


def test_rotation_at_the_configured_size(tmp_path: Path) -> None:
    log = logs.setup_logging("exec", tmp_path, console=io.StringIO(), console_level="CRITICAL",
                             max_bytes=2000, backup_count=2)
    for i in range(200):
        log.info("line %03d %s", i, "x" * 60)
    for h in logging.getLogger().handlers:
        h.flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["exec.jsonl", "exec.jsonl.1", "exec.jsonl.2"]  # backup_count bounds the history
    for name in files:
        size = (tmp_path / name).stat().st_size
        assert 0 < size <= 2000
        assert all(r["process"] == "exec" for r in _lines(tmp_path / name))
    # the newest line is in the live file, older ones in .1
    assert str(_lines(tmp_path / "exec.jsonl")[-1]["msg"]).startswith("line 199")
    assert str(_lines(tmp_path / "exec.jsonl.1")[-1]["msg"]) < str(_lines(tmp_path / "exec.jsonl")[0]["msg"])


def _config_with_secret_envs() -> Config:
    raw = example_raw()
    raw["venues"]["okx"]["api_key_env"] = "PERPBOT_TEST_OKX_KEY"
    raw["venues"]["okx"]["api_secret_env"] = "PERPBOT_TEST_OKX_SECRET"
    raw["venues"]["bybit"]["api_key_env"] = "PERPBOT_TEST_BYBIT_KEY"  # set but too short
    raw["venues"]["gate"]["api_key_env"] = "PERPBOT_TEST_GATE_KEY"  # not set at all
    return parse_config(raw)


def test_secret_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERPBOT_TEST_OKX_KEY", SECRET)
    monkeypatch.setenv("PERPBOT_TEST_OKX_SECRET", OTHER_SECRET)
    monkeypatch.setenv("PERPBOT_TEST_BYBIT_KEY", "abc")
    monkeypatch.delenv("PERPBOT_TEST_GATE_KEY", raising=False)
    cfg = _config_with_secret_envs()
    assert logs.secret_values(cfg) == [SECRET, OTHER_SECRET]


def test_secrets_never_reach_the_file_or_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("PERPBOT_TEST_OKX_KEY", SECRET)
    monkeypatch.setenv("PERPBOT_TEST_OKX_SECRET", OTHER_SECRET)
    cfg = _config_with_secret_envs()
    log = logs.setup_logging("exec", tmp_path, "DEBUG", secrets=logs.secret_values(cfg))
    other = logging.getLogger("ccxt.base")  # a third-party logger goes through the same redaction

    log.info(f"signing with {SECRET}")  # in the message itself
    log.info("key=%s secret=%r", SECRET, OTHER_SECRET)  # in args, str and repr
    log.info("headers %s", {"X-API-KEY": SECRET, "nested": [{"s": OTHER_SECRET}]})  # in a dict
    log.info({"apiKey": SECRET})  # a dict as the message
    other.warning("request failed for %s", SECRET)
    log.info("extra", extra={"api_key": SECRET, "pair": OTHER_SECRET})
    try:
        raise PermissionError(f"invalid key {SECRET}", {"secret": OTHER_SECRET})
    except PermissionError:
        log.exception("auth failed")
    try:
        raise KeyError(SECRET)
    except KeyError as e:
        log.error("missing %s", e, exc_info=True, stack_info=True)
    for h in logging.getLogger().handlers:
        h.flush()

    raw_file = (tmp_path / "exec.jsonl").read_bytes()
    raw_console = capsys.readouterr().err.encode()
    forbidden = [SECRET, OTHER_SECRET, orjson.dumps(OTHER_SECRET).decode()[1:-1], repr(OTHER_SECRET)[1:-1]]
    for blob in (raw_file, raw_console, caplog.text.encode()):
        for s in forbidden:
            assert s.encode() not in blob
    # the lines are still there, with the secret replaced
    recs = _lines(tmp_path / "exec.jsonl")
    assert len(recs) == 8
    assert recs[0]["msg"] == "signing with ***"
    assert "***" in str(recs[6]["exc"]) and "PermissionError" in str(recs[6]["exc"])
    assert recs[5]["extra"] == {"api_key": "***", "pair": "***"}
    assert raw_console.count(b"***") >= 8


def test_added_secrets_apply_to_later_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = logs.setup_logging("launcher", tmp_path)
    logs.add_secrets(["123456:telegram-bot-token", "abc"])  # "abc" is too short to redact
    log.warning("posting to /bot123456:telegram-bot-token/sendMessage abc")
    for h in logging.getLogger().handlers:
        h.flush()
    assert b"telegram-bot-token" not in (tmp_path / "launcher.jsonl").read_bytes()
    err = capsys.readouterr().err
    assert "/bot***/sendMessage abc" in err
