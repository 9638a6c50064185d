"""The CLI as a user meets it: help everywhere, one clear line for every mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

STERLING = [sys.executable, "-m", "sterling.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STERLING, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["chain"],
        ["chain", "up"],
        ["chain", "deploy"],
        ["chain", "status"],
        ["chain", "compile"],
        ["bench"],
        ["demo"],
        ["serve"],
        ["version"],
        ["enclave"],
        ["enclave", "attest"],
        ["enclave", "register"],
        ["enclave", "run"],
        ["enclave", "status"],
        ["job", "submit"],
        ["job", "watch"],
        ["job", "result"],
        ["job", "status"],
        ["job", "cancel"],
    ],
)
def test_every_command_has_help(cmd):
    result = run(*cmd, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert len(result.stdout.splitlines()) > 3


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["chain", "status", "--rpc-url", "ftp://example"], 2, "must be an http(s) URL"),
        (["chain", "status", "--rpc-url", "http://127.0.0.1:1"], 4, "no EVM node answers"),
        (["bench", "no-such-bench"], 2, "no benchmark named 'no-such-bench'"),
        (["chain", "up", "--port", "70000"], 2, "--port must be between 1 and 65535"),
    ],
)
def test_mistakes_print_one_clear_line_and_exit_non_zero(args, code, message):
    result = run(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_deploy_refuses_a_bad_key_file_without_printing_it(tmp_path: Path):
    key = tmp_path / "key"
    key.write_text("not-a-key-but-secret-looking")
    result = run("chain", "deploy", "--rpc-url", "http://127.0.0.1:1", "--key-file", str(key))
    assert result.returncode != 0
    assert "not-a-key-but-secret-looking" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_missing_option_is_a_usage_error():
    result = run("chain", "status")
    assert result.returncode == 2
    assert "--rpc-url" in result.stderr


def test_version_prints_the_package_version():
    from sterling import __version__

    assert run("version").stdout.strip() == __version__


def test_compile_check_passes_on_committed_artefacts():
    result = run("chain", "compile", "--check")
    assert result.returncode == 0, result.stderr
    assert "match" in result.stdout


def test_enclave_attest_says_it_is_a_simulation(tmp_path):
    result = run("enclave", "attest", "--state", str(tmp_path), "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["simulated"] is True
    assert doc["backend"] == "simulation"
    assert "SIMULATION" in doc["mode"]
    assert "SIMULATION" in doc["evidence"]["warning"]
    assert len(bytes.fromhex(doc["measurement"][2:])) == 32
    assert len(bytes.fromhex(doc["hpke_public_key"][2:])) == 32
    again = json.loads(run("enclave", "attest", "--state", str(tmp_path), "--format", "json").stdout)
    assert (again["signing_address"], again["hpke_public_key"]) == (
        doc["signing_address"],
        doc["hpke_public_key"],
    )
    # Keys exist only sealed: nothing in the state folder holds them in the clear.
    for path in tmp_path.rglob("*.sealed"):
        assert doc["hpke_public_key"][2:] not in path.read_bytes().hex()


def test_enclave_attest_refuses_an_unavailable_backend(tmp_path):
    result = run("enclave", "attest", "--state", str(tmp_path), "--backend", "sgx-gramine")
    assert result.returncode != 0
    assert result.stderr.startswith("error:")
    assert "Gramine" in result.stderr
