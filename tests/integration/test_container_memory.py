"""A 1 GiB file is encrypted and decrypted in constant memory (peak RSS under 100 MiB)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

GIB = 1 << 30
MIB = 1 << 20

SCRIPT = """
import json, sys
from pathlib import Path
from sterling.crypto import container
src, sealed, out = map(Path, sys.argv[1:4])
key = bytes(range(32))
container.encrypt_file(src, sealed, key)
container.decrypt_file(sealed, out, key)
# VmHWM is this process image's own peak RSS (ru_maxrss would carry the parent's over fork+exec).
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_kib": int(hwm.split()[1]), "sealed_bytes": sealed.stat().st_size}))
"""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MIB):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.slow
def test_one_gib_round_trip_in_under_100_mib(tmp_path):
    src, sealed, out = tmp_path / "plain.bin", tmp_path / "data.sealed", tmp_path / "back.bin"
    block = os.urandom(4 * MIB)
    with open(src, "wb") as fh:
        for i in range(GIB // len(block)):
            fh.write(i.to_bytes(8, "big") + block[8:])  # every block differs
    try:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(src), str(sealed), str(out)],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        report = json.loads(result.stdout)
        print(f"peak RSS {report['peak_rss_kib'] / 1024:.1f} MiB for a 1 GiB round trip")
        assert report["peak_rss_kib"] * 1024 < 100 * MIB, report
        assert report["sealed_bytes"] > GIB
        assert sha256_file(out) == sha256_file(src)
    finally:
        for p in (src, sealed, out):
            p.unlink(missing_ok=True)
