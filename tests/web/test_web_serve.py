"""`sterling serve` as a user runs it: help, loopback only unless asked, and a real server on anvil.

The server answers only with its launch token (web/guard.py): the printed URL carries it.
"""

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
        "--token",
        "?token=",
        "Authorization:",
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
        "error: --host 0.0.0.0 is not a loopback address: the API signs with dev accounts; pass "
        "--allow-remote HOST (the name clients will use) to listen there anyway"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow-remote", "*"], "error: --allow-remote takes a host name as clients type it in the URL"),
        (["--allow-remote", "http://x.lan/"], "error: --allow-remote takes a host name"),
        (["--token", "short"], "error: --token must be 16 to 256 characters"),
        (["--token", "spaces are not url safe"], "error: --token must be 16 to 256 characters"),
    ],
)
def test_a_bad_allowed_host_or_token_is_refused_in_one_line(tmp_path, args, message):
    out = subprocess.run(
        [*STERLING, "serve", *args, "--rpc-url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path),
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(message)


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
        assert up["login_url"] == f"{up['url']}/?token={up['token']}"
        assert len(up["token"]) >= 32
        assert up["marketplace"] == ready["marketplace"]
        assert httpx.get(up["url"] + "/api/status", timeout=30).status_code == 401
        rebound = httpx.get(up["url"] + "/api/status", headers={"Host": "evil.example"}, timeout=30)
        assert rebound.status_code == 400
        auth = {"Authorization": f"token {up['token']}"}
        status = httpx.get(up["url"] + "/api/status", headers=auth, timeout=30).json()
        assert status["chain_id"] == ready["chain_id"] == up["chain_id"]
        assert status["simulation"] is True
        assert status["rpc_url"] == ready["rpc_url"]
        with httpx.Client(base_url=up["url"], timeout=30) as browser:
            page = browser.get(up["login_url"], follow_redirects=True)  # sets the cookie, then /
            assert page.status_code == 200
            assert browser.get("/api/status").json()["chain_id"] == ready["chain_id"]
        assert "html" in page.headers["content-type"]
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        for proc in (server, chain):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
