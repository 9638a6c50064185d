"""`sterling keys` as a user meets it: identities created encrypted, listed without a passphrase."""

from __future__ import annotations

import json
import os
import subprocess
import sys

STERLING = [sys.executable, "-m", "sterling.cli"]


def run(home, *args, env_extra=None):
    env = {**os.environ, "STERLING_HOME": str(home), **(env_extra or {})}
    env.pop("STERLING_PASSPHRASE", None)
    env.update(env_extra or {})
    return subprocess.run([*STERLING, *args], capture_output=True, text=True, env=env, timeout=120)


def test_new_identity_is_listed_and_its_files_are_private(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    made = run(tmp_path, "keys", "new", "clinic", "--passphrase-file", str(pw), "--format", "json")
    assert made.returncode == 0, made.stderr
    ident = json.loads(made.stdout)
    assert ident["address"].startswith("0x")
    assert len(bytes.fromhex(ident["x25519_public_key"][2:])) == 32
    listed = json.loads(run(tmp_path, "keys", "list", "--format", "json").stdout)
    assert listed == [ident]
    for path in (tmp_path / "keys").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
        assert "correct horse" not in path.read_text()
    again = run(tmp_path, "keys", "new", "clinic", "--passphrase-file", str(pw))
    assert again.returncode != 0
    assert "already exists" in again.stderr


def test_a_passphrase_is_required_without_a_terminal(tmp_path):
    out = run(tmp_path, "keys", "new", "clinic")
    assert out.returncode == 2
    assert "passphrase is needed" in out.stderr
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def test_bad_identity_name_is_refused(tmp_path):
    out = run(tmp_path, "keys", "new", "../evil", env_extra={"STERLING_PASSPHRASE": "x"})
    assert out.returncode == 2
    assert "identity name" in out.stderr
