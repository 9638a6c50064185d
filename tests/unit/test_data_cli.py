"""`sterling data encrypt/decrypt`: the provider's own round trip, refusing tampering and bad passphrases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sterling.data.loaders import load_dataset

STERLING = [sys.executable, "-m", "sterling.cli"]


def run(tmp_path, *args):
    env = {**os.environ, "STERLING_HOME": str(tmp_path / "home")}
    env.pop("STERLING_PASSPHRASE", None)
    return subprocess.run([*STERLING, *args], capture_output=True, text=True, env=env, timeout=120)


def test_encrypt_then_decrypt_round_trip(tmp_path):
    src = tmp_path / "clinic.csv"
    src.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    out = run(tmp_path, "data", "encrypt", str(src), "--out", str(tmp_path / "sealed"),
              "--passphrase-file", str(pw), "-f", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    sealed = tmp_path / "sealed" / "clinic.sealed"
    assert made["ciphertext"] == str(sealed)
    assert b"3,4,y" not in sealed.read_bytes()
    manifest = json.loads((tmp_path / "sealed" / "clinic.manifest.json").read_text())
    assert manifest["schema"]["rows"] == 3
    back = run(tmp_path, "data", "decrypt", str(sealed), "--key", made["key_file"],
               "--out", str(tmp_path / "back.npz"), "--passphrase-file", str(pw))  # fmt: skip
    assert back.returncode == 0, back.stderr
    original, restored = load_dataset(src), load_dataset(tmp_path / "back.npz")
    assert np.array_equal(original.features, restored.features)
    assert restored.schema == original.schema
    again = run(
        tmp_path, "data", "encrypt", str(src), "--out", str(tmp_path / "sealed"), "--passphrase-file", str(pw)
    )
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr


def test_decrypt_refuses_tampering_and_wrong_passphrase_writing_nothing(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("a,label\n1,x\n2,y\n")
    pw, wrong = tmp_path / "pw", tmp_path / "wrong"
    pw.write_text("right")
    wrong.write_text("wrong")
    made = json.loads(run(tmp_path, "data", "encrypt", str(src), "--out", str(tmp_path / "s"),
                          "--passphrase-file", str(pw), "-f", "json").stdout)  # fmt: skip
    bad = run(tmp_path, "data", "decrypt", made["ciphertext"], "--key", made["key_file"],
              "--out", str(tmp_path / "o.npz"), "--passphrase-file", str(wrong))  # fmt: skip
    assert bad.returncode == 7
    assert "wrong passphrase" in bad.stderr
    sealed = Path(made["ciphertext"])
    blob = bytearray(sealed.read_bytes())
    blob[-3] ^= 1
    sealed.write_bytes(bytes(blob))
    tampered = run(tmp_path, "data", "decrypt", made["ciphertext"], "--key", made["key_file"],
                   "--out", str(tmp_path / "o.npz"), "--passphrase-file", str(pw))  # fmt: skip
    assert tampered.returncode == 6
    assert "failed authentication" in tampered.stderr
    assert not (tmp_path / "o.npz").exists()
    assert "Traceback" not in bad.stderr + tampered.stderr
