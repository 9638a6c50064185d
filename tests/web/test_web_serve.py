"""`sterling serve` as a user runs it: help, loopback only unless asked, and a real server on anvil."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

STERLING = [sys.executable, "-m", "sterling.cli"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STERLING_RPC_URL",)}
    env["STERLING_HOME"] = str(home)
    return env


def test_help_answers_how_to_start_it():
    out = subprocess.run([*STERLING, "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for words in (
        "--rpc-url",
        "--port",
        "--max-upload-mb",
        "--allow-remote",
        "sterling chain up",
        "loopback",
    ):
        assert words in out.stdout, words


def test_a_non_loopback_host_is_refused_without_allow_remote(tmp_path):
    out = subprocess.run(
        [*STERLING, "serve", "--host", "0.0.0.0", "--rpc-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path),
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is not a loopback address: the API signs with dev accounts and has no "
        "login; pass --allow-remote to listen there anyway"
    ]


@pytest.mark.anvil
def test_serve_on_anvil_prints_its_url_and_answers(tmp_path, anvil_binary):
    env = _env(tmp_path)
    chain = subprocess.Popen(
        [*STERLING, "chain", "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    server = None
    try:
        ready = json.loads(chain.stdout.readline())  # type: ignore[union-attr]
        server = subprocess.Popen(
            [*STERLING, "serve", "--rpc-url", ready["rpc_url"], "--port", "0", "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert line, server.stderr.read()  # type: ignore[union-attr]
        up = json.loads(line)
        assert up["url"].startswith("http://127.0.0.1:")
        assert up["marketplace"] == ready["marketplace"]
        status = httpx.get(up["url"] + "/api/status", timeout=30).json()
        assert status["chain_id"] == ready["chain_id"] == up["chain_id"]
        assert status["simulation"] is True
        assert status["rpc_url"] == ready["rpc_url"]
        page = httpx.get(up["url"] + "/", timeout=30)
        assert page.status_code == 200
        assert "html" in page.headers["content-type"]
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        for proc in (server, chain):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
