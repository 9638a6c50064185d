"""Training on data larger than memory: streamed by row from a sealed container, against in memory.

Run: `sterling bench stream --format json [--rows N]` (default 1,000,000 rows).

One run writes two sealed datasets of 28×28×3 uint8 images in 5 classes (cheap
generated patterns: a class-coloured square on noise), chunk by chunk with
`sterling.data.rows.write_sealed`, never holding the whole array: a large one
(`--rows`, default 1,000,000: 2.35 GB of pixels) and one that fits in memory
(100,000 rows). Each training run is a child process that reports its own
peak RSS (VmHWM from /proc; `ru_maxrss` is given too, but on Linux it carries
the parent's peak across exec, so it is an upper bound only):

- `stream`: `SealedRows` over the container file (an LRU of 16 decrypted
  chunks), DP-SGD's `fit_rows`: Poisson sampling over row indices from
  `SecretRandom`, each step gathering its sampled rows in ascending order;
- `memory`: what the worker does below its threshold: the ciphertext read and
  decrypted whole, `Dataset.from_bytes`, every row as a float tensor, `fit`.

Both train the same DP-SGD (logistic regression, expected batch 256, σ 1.0,
C 1.0), with one torch thread each (on this shared 2-core machine two threads
spun against other processes and made every small op five times slower). At
100,000 rows both run one full epoch (1/q steps) on the same file; at the
large size the streamed run takes a fixed number of steps and seconds per
epoch are extrapolated from them (`extrapolated_from_steps`). Poisson
sampling draws one secret 64-bit integer per row each step (about 27 ms at
1,000,000 rows here, in either path). Each sampled row costs a chunk
decryption, so a streamed epoch decrypts about chunk size / row size times
the data: the chunk size is a producer's choice (16 KiB here; `chunk_kib`)
and is reported with the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SHAPE, CLASSES, BATCH = (28, 28, 3), 5, 256
BIG_ROWS, FIT_ROWS = 1_000_000, 100_000
CHUNK = 16 << 10
BIG_STEPS = 400
BLOCK = 20_000
MIN_ROWS = 4 * BATCH


def _blocks(rows: int, labels: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """Images in blocks: noise, and a square whose colour and place follow the class."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, BLOCK):
        y = labels[start : start + BLOCK]
        x = rng.integers(0, 96, (len(y), *SHAPE), dtype=np.uint8)
        for c in range(CLASSES):
            sel = y == c
            x[sel, 4 + 3 * c : 12 + 3 * c, 6:18, c % 3] += 150
        yield x


def _write(path: Path, key: bytes, rows: int, seed: int) -> float:
    from sterling.data.dataset import Schema
    from sterling.data.rows import write_sealed_file

    labels = np.random.default_rng(seed + 1).integers(0, CLASSES, rows).astype(np.int64)
    schema = Schema("image", SHAPE, "uint8", tuple(f"class{c}" for c in range(CLASSES)), rows)
    start = time.perf_counter()
    write_sealed_file(
        path, key, schema=schema, labels=labels, blocks=_blocks(rows, labels, seed), chunk_size=CHUNK
    )
    return time.perf_counter() - start


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def _engine(rows: int) -> Any:
    from sterling.crypto.entropy import SecretRandom
    from sterling.privacy.dpsgd import DPSGD
    from sterling.privacy.graph import template

    q = BATCH / rows
    return DPSGD(
        template("logistic_regression", classes=CLASSES),
        (3, 28, 28),
        clipping_norm=1.0,
        noise_multiplier=1.0,
        sample_rate=q,
        steps=10**9,
        learning_rate=0.5,
        rng=SecretRandom.from_os(),
        device="cpu",
    )


def child(mode: str, path: Path, key: bytes, steps: int | None) -> dict[str, Any]:
    """One training run in this process; prints its figures (the parent reads them)."""
    import resource

    import torch

    from sterling.crypto import container
    from sterling.data.dataset import Dataset
    from sterling.data.rows import PooledRows, SealedRows
    from sterling.enclave.split import ModelRows
    from sterling.privacy.features import to_model_input

    torch.set_num_threads(1)
    base = _hwm_kib()
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if mode == "stream":
        store = SealedRows.open(path, key)
        rows = len(store)
        data = ModelRows(PooledRows([store]), np.arange(rows), (3, 28, 28))
        engine = _engine(rows)
        epoch = round(1 / engine.q)
        n = epoch if steps is None else min(steps, epoch)
        loaded = time.perf_counter()
        engine.fit_rows(data, until=n)
        extra["chunks_decrypted"] = store.reader.decrypted
        extra["chunks"] = store.reader.chunks
    else:
        ds = Dataset.from_bytes(container.decrypt_bytes(path.read_bytes(), key))
        x, y = to_model_input(ds.features, (3, 28, 28)), torch.from_numpy(ds.labels)
        rows = len(y)
        del ds
        engine = _engine(rows)
        epoch = round(1 / engine.q)
        n = epoch if steps is None else min(steps, epoch)
        loaded = time.perf_counter()
        engine.fit(x, y, until=n)
    trained = time.perf_counter()
    per_step = (trained - loaded) / n
    return {
        "mode": mode,
        "rows": rows,
        "steps": n,
        "steps_per_epoch": epoch,
        "load_seconds": round(loaded - start, 3),
        "seconds_per_step": round(per_step, 5),
        "seconds_per_epoch": round(per_step * epoch, 2),
        "peak_rss_mib": round(_hwm_kib() / 1024, 1),
        "rss_before_data_mib": round(base / 1024, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **extra,
    }


def _spawn(mode: str, path: Path, key: bytes, steps: int | None) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", mode, str(path), "" if steps is None else str(steps)]
    out = subprocess.run(args, input=key.hex(), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the {mode} child failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(quick: bool = False, rows: int | None = None) -> dict[str, Any]:
    big = rows or (20_000 if quick else BIG_ROWS)
    if big < MIN_ROWS:
        from sterling.errors import UsageError

        raise UsageError(f"--rows must be at least {MIN_ROWS} (the expected batch is {BATCH}), got {big}")
    fit = min(big, 10_000 if quick else FIT_ROWS)
    steps = 50 if quick else BIG_STEPS
    key = os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="sterling-bench-stream-") as tmp:
        small, large = Path(tmp) / "fit.sealed", Path(tmp) / "big.sealed"
        write_small = _write(small, key, fit, seed=1)
        memory = _spawn("memory", small, key, None)
        streamed_small = _spawn("stream", small, key, None)
        small.unlink()
        write_large = _write(large, key, big, seed=2)
        large_bytes = large.stat().st_size
        streamed = _spawn("stream", large, key, steps)
    extrapolated = streamed["steps"] < streamed["steps_per_epoch"]
    return {
        "shape": list(SHAPE),
        "chunk_kib": CHUNK >> 10,
        "expected_batch": BATCH,
        "model": "logistic_regression",
        "large": {
            "rows": big,
            "sealed_bytes": large_bytes,
            "write_seconds": round(write_large, 1),
            **streamed,
            **({"extrapolated_from_steps": streamed["steps"]} if extrapolated else {}),
            "peak_rss_under_2_gib": streamed["peak_rss_mib"] < 2048,
        },
        "fits_in_memory": {
            "rows": fit,
            "write_seconds": round(write_small, 1),
            "memory": memory,
            "stream": streamed_small,
            "epoch_seconds_stream_over_memory": round(
                streamed_small["seconds_per_epoch"] / memory["seconds_per_epoch"], 2
            ),
            "peak_rss_stream_over_memory": round(streamed_small["peak_rss_mib"] / memory["peak_rss_mib"], 3),
        },
    }


if __name__ == "__main__" and len(sys.argv) >= 5 and sys.argv[1] == "--child":
    _key = bytes.fromhex(sys.stdin.read().strip())
    _steps = int(sys.argv[4]) if sys.argv[4] else None
    print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), _key, _steps)))
