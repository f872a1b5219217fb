"""The encrypted key file: round trip, wrong passphrase, tampering, permissions, atomic writes, the
`perpbot keys` actions in process, and where a venue's credentials come from at start-up."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from kit import example_raw

from perpbot import keys, logs
from perpbot.config import parse_config
from perpbot.errors import ConfigError, FatalError
from perpbot.exec.venues.ccxt_venue import credentials_from_env
from perpbot.exec.venues.registry import live_start_refusal
from perpbot.keys import KeyFileError, read_keys, write_keys

#: cheap scrypt for tests (the format and the code path are the same as the default's)
FAST = {"n": 2**10}
PASS = "correct horse battery staple"
VENUES = {"okx": {"apiKey": "okx-key-1111", "secret": "okx-secret-2222", "password": "okx-pass-3333"},
          "hyperliquid": {"walletAddress": "0x" + "ab" * 20, "privateKey": "0x" + "cd" * 32}}


@pytest.fixture
def kf(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "keys.enc"
    write_keys(path, PASS, VENUES, **FAST)
    return path


def test_round_trip_mode_and_fresh_salt(kf: Path) -> None:
    assert read_keys(kf, PASS) == VENUES
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    assert stat.S_IMODE(kf.parent.stat().st_mode) == 0o700  # the directory it created
    first = json.loads(kf.read_text())
    text = kf.read_text()
    for secret in (v for fields in VENUES.values() for v in fields.values()):
        assert secret not in text
    assert "okx" not in text  # venue names are encrypted too
    write_keys(kf, PASS, VENUES, **FAST)
    second = json.loads(kf.read_text())
    assert first["header"]["kdf"]["salt"] != second["header"]["kdf"]["salt"]
    assert first["header"]["cipher"]["nonce"] != second["header"]["cipher"]["nonce"]
    assert first["ciphertext"] != second["ciphertext"]
    assert read_keys(kf, PASS) == VENUES
    assert [p.name for p in kf.parent.iterdir()] == ["keys.enc"]  # no temporary file left


def test_default_parameters_and_path() -> None:
    assert keys.default_keys_file() == Path(os.path.expanduser("~")) / ".config" / "perpbot" / "keys.enc"
    assert keys.keys_file_path("~/k.enc") == Path(os.path.expanduser("~/k.enc"))
    assert keys.SCRYPT_N >= 2**15 and keys.SCRYPT_R == 8


def test_wrong_passphrase_is_a_clear_error(kf: Path) -> None:
    with pytest.raises(KeyFileError) as err:
        read_keys(kf, "not the passphrase")
    assert str(err.value) == f"wrong passphrase or damaged file: {kf}"


def _flip_b64(text: str, at: int) -> str:
    """`text` with the base64 character at `at` replaced by another one."""
    return text[:at] + ("B" if text[at] == "A" else "A") + text[at + 1:]


def _edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)


def test_a_tampered_ciphertext_byte_is_refused(kf: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        doc["ciphertext"] = _flip_b64(doc["ciphertext"], len(doc["ciphertext"]) // 2)

    _edit(kf, change)
    with pytest.raises(KeyFileError, match="wrong passphrase or damaged file"):
        read_keys(kf, PASS)


@pytest.mark.parametrize("change", [
    lambda d: d["header"]["kdf"].update(salt=_flip_b64(d["header"]["kdf"]["salt"], 3)),
    lambda d: d["header"]["cipher"].update(nonce=_flip_b64(d["header"]["cipher"]["nonce"], 3)),
    lambda d: d["header"]["kdf"].update(n=2**11),  # authenticated: not only the key changes
], ids=["salt", "nonce", "kdf-n"])
def test_a_tampered_header_is_refused(kf: Path, change: Any) -> None:
    _edit(kf, change)
    with pytest.raises(KeyFileError, match="wrong passphrase or damaged file"):
        read_keys(kf, PASS)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["header"].update(format="other"), "not a perpbot key file"),
    (lambda d: d["header"]["kdf"].update(n=2**30), "scrypt parameters out of range"),
    (lambda d: d["header"]["kdf"].update(salt="***"), "salt is not base64"),
    (lambda d: d["header"].update(extra=1), "unexpected header"),
    (lambda d: d.pop("ciphertext"), "not a perpbot key file"),
    (lambda d: d["header"].update(version=99), "format version 99"),
])
def test_a_damaged_header_is_named(kf: Path, change: Any, message: str) -> None:
    _edit(kf, change)
    with pytest.raises(KeyFileError, match=message) as err:
        read_keys(kf, PASS)
    assert str(kf) in str(err.value)


def test_a_truncated_file_or_another_file_is_refused(kf: Path, tmp_path: Path) -> None:
    kf.write_bytes(kf.read_bytes()[:40])
    with pytest.raises(KeyFileError, match=f"damaged file: {kf}: not a perpbot key file"):
        read_keys(kf, PASS)
    other = tmp_path / "other"
    other.write_bytes(b"\x00\xff binary")
    os.chmod(other, 0o600)
    with pytest.raises(KeyFileError, match="not a perpbot key file"):
        read_keys(other, PASS)
    with pytest.raises(KeyFileError, match="no key file"):
        read_keys(tmp_path / "missing.enc", PASS)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_file_open_to_group_or_others_is_refused(kf: Path, mode: int) -> None:
    os.chmod(kf, mode)
    with pytest.raises(KeyFileError) as err:
        read_keys(kf, PASS)
    assert str(kf) in str(err.value) and f"chmod 600 {kf}" in str(err.value)


def test_a_failed_write_keeps_the_old_file(kf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = kf.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys.os, "fsync", broken_fsync)
    with pytest.raises(KeyFileError, match="left as it was"):
        write_keys(kf, PASS, {"bybit": {"apiKey": "x" * 8, "secret": "y" * 8}}, **FAST)
    monkeypatch.undo()
    assert kf.read_bytes() == before and read_keys(kf, PASS) == VENUES
    assert [p.name for p in kf.parent.iterdir()] == ["keys.enc"]

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(keys.os, "replace", broken_replace)
    with pytest.raises(KeyFileError):
        write_keys(kf, PASS, {}, **FAST)
    monkeypatch.undo()
    assert kf.read_bytes() == before and [p.name for p in kf.parent.iterdir()] == ["keys.enc"]


def test_unknown_fields_are_not_written(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="unknown credential field 'token'"):
        write_keys(tmp_path / "k.enc", PASS, {"okx": {"token": "abc"}}, **FAST)
    assert not (tmp_path / "k.enc").exists()


# --------------------------------------------------------------------------- perpbot keys, in process


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         env: dict[str, str] | None = None) -> tuple[int, str, str]:
    monkeypatch.setattr(keys, "SCRYPT_N", 2**10)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASS)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    p = argparse.ArgumentParser(prog="perpbot")
    keys.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    out = io.StringIO()
    rc = keys.run(args, out)
    return rc, out.getvalue(), capsys.readouterr().err


def test_list_shows_fields_never_values(kf: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(["keys", "list", "--file", str(kf)], monkeypatch, capsys)
    assert rc == 0, err
    assert out.splitlines() == ["hyperliquid: walletAddress, privateKey", "okx: apiKey, secret, password"]
    for secret in (v for fields in VENUES.values() for v in fields.values()):
        assert secret not in out + err


def test_add_prompts_for_the_venues_fields_and_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.enc"
    asked: list[str] = []
    answers = iter(["bitget-key", "bitget-secret", "bitget-pass"])

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr(keys.getpass, "getpass", fake_getpass)
    rc, out, err = _cli(["keys", "add", "bitget", "--file", str(path)], monkeypatch, capsys)
    assert rc == 0, err
    assert asked == ["bitget apiKey: ", "bitget secret: ", "bitget password: "]
    assert read_keys(path, PASS) == {"bitget": {"apiKey": "bitget-key", "secret": "bitget-secret",
                                                "password": "bitget-pass"}}
    assert "bitget-key" not in out
    rc, out, err = _cli(["keys", "remove", "bitget", "--file", str(path)], monkeypatch, capsys)
    assert rc == 0 and read_keys(path, PASS) == {}
    rc, out, err = _cli(["keys", "remove", "bitget", "--file", str(path)], monkeypatch, capsys)
    assert rc == 2 and err.count("\n") == 1 and "no venue 'bitget'" in err


def test_add_from_env_uses_the_configs_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    raw = example_raw()
    raw["venues"]["okx"].update(api_key_env="T_OKX_API_KEY", api_secret_env="T_OKX_API_SECRET")
    raw["run"]["keys_file"] = str(tmp_path / "from-config.enc")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(raw))
    env = {"T_OKX_API_KEY": "env-key-1", "T_OKX_API_SECRET": "env-secret-2", "T_OKX_API_PASSPHRASE": "env-pass-3"}
    rc, out, err = _cli(["keys", "add", "okx", "--from-env", "--config", str(cfg_path)], monkeypatch, capsys, env)
    assert rc == 0, err
    assert read_keys(tmp_path / "from-config.enc", PASS) == {
        "okx": {"apiKey": "env-key-1", "secret": "env-secret-2", "password": "env-pass-3"}}
    monkeypatch.delenv("T_OKX_API_PASSPHRASE")
    rc, out, err = _cli(["keys", "add", "okx", "--from-env", "--config", str(cfg_path)], monkeypatch, capsys)
    assert rc == 2 and "$T_OKX_API_PASSPHRASE" in err and "env-" not in err and err.count("\n") == 1
    rc, out, err = _cli(["keys", "add", "bybit", "--from-env", "--config", str(cfg_path)], monkeypatch, capsys)
    assert rc == 2 and "names no environment variable" in err


def test_cli_errors_are_one_line(kf: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(["keys", "list", "--file", str(kf)], monkeypatch, capsys, {keys.PASSPHRASE_ENV: "nope"})
    assert rc == 2 and err == f"perpbot keys: wrong passphrase or damaged file: {kf}\n"
    os.chmod(kf, 0o644)
    rc, _, err = _cli(["keys", "add", "okx", "--file", str(kf)], monkeypatch, capsys)
    assert rc == 2 and "chmod 600" in err and err.count("\n") == 1
    rc, _, err = _cli(["keys", "add", "okx", "--from-env", "--file", str(kf)], monkeypatch, capsys)
    assert rc == 2 and "--from-env needs --config" in err


# --------------------------------------------------------------------------- start-up


def _cfg(tmp_path: Path, keys_file: Path | None) -> Any:
    raw = example_raw()
    raw["mode"] = "readonly"
    raw["venues"] = {"okx": {"feed": "okx", "taker_fee_bps": 5.0, "symbols": {"BTC-PERP": "BTC-USDT-SWAP"},
                             "api_key_env": "T_OKX_KEY", "api_secret_env": "T_OKX_SECRET"},
                     "hyperliquid": {"feed": "hyperliquid", "taker_fee_bps": 5.0,
                                     "symbols": {"BTC-PERP": "BTC/USDC:USDC"}}}
    raw["symbols"] = {"BTC-PERP": raw["symbols"]["BTC-PERP"]}
    raw["run"]["keys_file"] = None if keys_file is None else str(keys_file)
    return parse_config(raw)


def test_stored_credentials_decrypt_once_and_are_redacted(kf: Path, tmp_path: Path) -> None:
    logs.clear_secrets()
    try:
        assert keys.stored_credentials(_cfg(tmp_path, None), {}) == {}
        cfg = _cfg(tmp_path, kf)
        with pytest.raises(KeyFileError, match=keys.PASSPHRASE_ENV):
            keys.stored_credentials(cfg, {})
        with pytest.raises(KeyFileError, match="wrong passphrase"):
            keys.stored_credentials(cfg, {keys.PASSPHRASE_ENV: "nope"})
        assert keys.stored_credentials(cfg, {keys.PASSPHRASE_ENV: PASS}) == VENUES
        line = logs.redact(f"okx said {VENUES['okx']['secret']} with {PASS}")
        assert VENUES["okx"]["secret"] not in line and PASS not in line
        assert keys.PASSPHRASE_ENV in logs.secret_env_names(cfg)
        assert "T_OKX_PASSPHRASE" in logs.secret_env_names(cfg)
    finally:
        logs.clear_secrets()


def test_the_environment_wins_over_the_key_file() -> None:
    names = {"apiKey": "E_K", "secret": "E_S", "password": "E_P"}
    stored = VENUES["okx"]
    assert credentials_from_env("okx", names, {"E_K": "from-env"}, stored=stored) == {
        "apiKey": "from-env", "secret": "okx-secret-2222", "password": "okx-pass-3333"}
    assert credentials_from_env("okx", {}, {}, stored=stored) == stored
    assert credentials_from_env("okx", names, {"E_S": ""}, stored=stored)["secret"] == "okx-secret-2222"
    with pytest.raises(FatalError, match=r"environment and the key file: password \(\$E_P\)"):
        credentials_from_env("okx", names, {}, stored={"apiKey": "a", "secret": "b"})


def test_keys_file_config(tmp_path: Path) -> None:
    raw = example_raw()
    raw["run"]["keys_file"] = " "
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.path == "$.run.keys_file"
    raw["run"]["keys_file"] = "~/.config/perpbot/keys.enc"
    assert parse_config(raw).run.keys_file == "~/.config/perpbot/keys.enc"


def test_live_start_accepts_key_file_credentials(kf: Path, tmp_path: Path) -> None:
    raw = example_raw()
    raw["mode"] = "live"
    raw["venues"] = {"okx": {"feed": "okx", "taker_fee_bps": 5.0, "symbols": {"BTC-PERP": "BTC-USDT-SWAP"},
                             "api_key_env": "T_OKX_KEY", "api_secret_env": "T_OKX_SECRET"},
                     "hyperliquid": {"feed": "hyperliquid", "taker_fee_bps": 5.0,
                                     "symbols": {"BTC-PERP": "BTC/USDC:USDC"}}}
    raw["symbols"] = {"BTC-PERP": raw["symbols"]["BTC-PERP"]}
    with pytest.raises(ConfigError):  # without a key file every credential variable must be named
        parse_config(raw)
    raw["run"]["keys_file"] = str(kf)
    cfg = parse_config(raw)
    ok = {keys.PASSPHRASE_ENV: PASS}
    logs.clear_secrets()
    try:
        assert "--confirm-live" in (live_start_refusal(cfg, confirmed=False, environ=ok) or "")
        assert live_start_refusal(cfg, confirmed=True, environ=ok) is None
        why = live_start_refusal(cfg, confirmed=True, environ={keys.PASSPHRASE_ENV: "nope"}) or ""
        assert f"wrong passphrase or damaged file: {kf}" in why and "nope" not in why
        assert keys.PASSPHRASE_ENV in (live_start_refusal(cfg, confirmed=True, environ={}) or "")
        # okx's password only in the environment, hyperliquid's private key nowhere
        write_keys(kf, PASS, {"okx": {"apiKey": "k" * 8, "secret": "s" * 8},
                              "hyperliquid": {"walletAddress": "0x" + "ab" * 20}}, **FAST)
        why = live_start_refusal(cfg, confirmed=True, environ=ok) or ""
        assert "$T_OKX_PASSPHRASE (venue okx, password)" in why and "venue hyperliquid's privateKey" in why
        assert "walletAddress" not in why and "apiKey" not in why
        why = live_start_refusal(cfg, confirmed=True, environ={**ok, "T_OKX_PASSPHRASE": "from-env"}) or ""
        assert "okx" not in why and "hyperliquid" in why
    finally:
        logs.clear_secrets()


def test_the_terminal_passphrase_is_asked_twice_for_a_new_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.enc"
    answers: list[str] = []
    monkeypatch.setattr(keys.getpass, "getpass", lambda prompt="": answers.pop(0))
    monkeypatch.setattr(keys, "SCRYPT_N", 2**10)
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    p = argparse.ArgumentParser(prog="perpbot")
    keys.add_parser(p.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        return keys.run(p.parse_args(["keys", *argv, "--file", str(path)]), io.StringIO())

    answers[:] = ["first-pass", "other-pass"]
    assert run("add", "bybit") == 2 and "differ" in capsys.readouterr().err and not path.exists()
    answers[:] = [""]
    assert run("add", "bybit") == 2 and "empty passphrase" in capsys.readouterr().err
    answers[:] = ["first-pass", "first-pass", "bybit-key", "bybit-secret"]
    assert run("add", "bybit") == 0 and not answers
    answers[:] = ["first-pass"]  # an existing file: decrypting it checks the one answer
    assert run("list") == 0 and not answers
    answers[:] = ["wrong-pass"]
    assert run("remove", "bybit") == 2 and "wrong passphrase" in capsys.readouterr().err
    assert read_keys(path, "first-pass") == {"bybit": {"apiKey": "bybit-key", "secret": "bybit-secret"}}
