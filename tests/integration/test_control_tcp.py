"""A tcp:// control endpoint works only with CURVE keys the launcher allows."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest
import yaml
import zmq
from kit import example_raw

from perpbot import bus

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ctl(endpoint: str, server_pub: bytes, secret_env: str, env: dict[str, str],
         *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perpbot.ctl", "--endpoint", endpoint, "--server-key", server_pub.decode(),
         "--client-secret-env", secret_env, "--timeout-ms", "3000", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False)


def test_curve_secured_tcp_control(tmp_path: Path) -> None:
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    _, intruder_sec = zmq.curve_keypair()
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    run_root = Path(tempfile.mkdtemp(prefix="pbt"))
    raw = example_raw()
    raw["run"].update(run_root=str(run_root), data_dir=str(tmp_path / "data"), control_tcp=endpoint,
                      curve_server_secret_env="PB_TEST_CURVE_SERVER", curve_client_public_keys=[client_pub.decode()])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PB_TEST_CURVE_SERVER": server_sec.decode(), "PB_CLIENT": client_sec.decode(),
           "PB_INTRUDER": intruder_sec.decode()}
    log = tmp_path / "launch.log"
    proc = subprocess.Popen([sys.executable, "-m", "perpbot.launch", "--config", str(cfg), "--duration", "300"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
    try:
        end = time.monotonic() + 60
        while b"all processes running" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.2)
        ok = _ctl(endpoint, server_pub, "PB_CLIENT", env, "--json", "status")
        assert ok.returncode == 0, ok.stderr
        assert orjson.loads(ok.stdout)["trading_state"] == "RUNNING"
        # a key the launcher does not list gets no answer at all
        denied = _ctl(endpoint, server_pub, "PB_INTRUDER", env, "status")
        assert denied.returncode == 3 and "no reply" in denied.stderr
        # nor does a client without CURVE
        with pytest.raises(TimeoutError):
            bus.control_request(endpoint, "status", timeout_ms=1500)
        # the allowed client can stop trading from afar
        kill = _ctl(endpoint, server_pub, "PB_CLIENT", env, "--json", "kill")
        assert kill.returncode == 0 and orjson.loads(kill.stdout)["state"] == "HALTED"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_root, ignore_errors=True)
    assert server_sec.decode() not in log.read_text()


def test_a_tcp_endpoint_without_its_secret_in_the_environment_stops_start_up(tmp_path: Path) -> None:
    client_pub, _ = zmq.curve_keypair()
    raw = example_raw()
    raw["run"].update(run_root=tempfile.mkdtemp(prefix="pbt"), data_dir=str(tmp_path / "data"),
                      control_tcp=f"tcp://127.0.0.1:{_free_port()}", curve_server_secret_env="PB_UNSET_CURVE_KEY",
                      curve_client_public_keys=[client_pub.decode()])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "PB_UNSET_CURVE_KEY"}
    r = subprocess.run([sys.executable, "-m", "perpbot.launch", "--config", str(cfg)], capture_output=True,
                       text=True, env=env, timeout=60, check=False)
    assert r.returncode == 2
    assert "$.run.curve_server_secret_env" in r.stderr
    shutil.rmtree(raw["run"]["run_root"], ignore_errors=True)
