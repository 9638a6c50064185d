"""The demo's photographs: who holds which, from RetinaMNIST or drawn by the synthetic generator.

`load_data` gives the pool the providers share out, and the researcher's own
validation and test sets.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sterling.data.dataset import Dataset

#: Lesions three times as frequent as the generator's default make a task a DP CNN learns from a
#: few thousand images in a minute (docs/retinopathy-data.md).
DEMO_LESION_SCALE = 3.0


@dataclass
class Split:
    source: str
    pool: Dataset  # shared out among the providers
    validation: Dataset  # the consumer's own
    test: Dataset  # the consumer's own


def load_data(data: Path | None, *, images: int, seed: int) -> Split:
    """RetinaMNIST's splits from `data`, or `images` synthetic photographs (and the researcher's).

    The synthetic ones are drawn in two spawned processes, which import the caller's main
    module: a script that runs the demo in-process needs the usual
    ``if __name__ == "__main__":`` guard (the CLI and ``python -m sterling.cli`` have it).
    """
    if data is not None:
        from sterling.demo.retinamnist import retinamnist_splits

        parts = retinamnist_splits(data)
        return Split("retinamnist", parts["train"], parts["val"], parts["test"])
    from sterling.demo.fundus import FundusConfig, generate

    config = FundusConfig(lesion_scale=DEMO_LESION_SCALE)
    # Drawn on both cores: 4,680 images took 11.7 s in one process. Spawned, not forked: the
    # demo's process already runs threads (the enclave worker) and PyTorch.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return Split(
            "synthetic",
            generate(images, seed=seed, config=config, pool=pool),
            generate(max(100, images // 10), seed=seed + 1, config=config, pool=pool),
            generate(max(200, images // 5), seed=seed + 2, config=config, pool=pool),
        )
