"""The demo's market: who sells fundus photographs, on what terms, and how the data is shared out.

Each provider is a development account of the local chain. Their terms
differ on purpose, to show what Sterling enforces:

- St Mary's Hospital lets consumers holding its credential use the data for
  free (an on-chain policy contract, `CredentialPolicy`);
- Dr. Okafor's practice allows only logistic regression (a provider
  contract, run in the enclave's sandbox);
- the rural screening van has a small ε budget, which a later job overspends;
- QuickData Ltd sells noise: copied photographs graded backwards (no DR sold
  as proliferative), which look right and which appraisal should flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sterling.data.dataset import Dataset, Schema

GWEI = 10**9


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    kind: str  # "honest", "credential", "logreg_only" or "noise"
    price_per_job_gwei: int
    price_per_epsilon_gwei: int
    budget: float
    cap: float
    share: float  # relative size of its partition (randomised around this)
    appraisal_fee_gwei: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "price_per_job_wei": self.price_per_job_gwei * GWEI,
            "price_per_epsilon_wei": self.price_per_epsilon_gwei * GWEI,
            "epsilon_budget": self.budget,
            "max_epsilon_per_job": self.cap,
            "appraisal_fee_wei": self.appraisal_fee_gwei * GWEI,
        }


BASE = (
    ProviderSpec("St Mary's Hospital", "credential", 20_000_000, 5_000_000, 30.0, 8.0, 1.4),
    ProviderSpec("Lakeside Eye Clinic", "honest", 10_000_000, 8_000_000, 20.0, 8.0, 1.0),
    ProviderSpec("Dr. Okafor's practice", "logreg_only", 5_000_000, 3_000_000, 20.0, 8.0, 0.8),
    ProviderSpec("Rural screening van", "honest", 2_000_000, 2_000_000, 9.0, 8.0, 0.6),
    ProviderSpec("Patient co-op", "honest", 1_000_000, 1_000_000, 20.0, 8.0, 0.7),
)
NOISE = ProviderSpec(
    "QuickData Ltd", "noise", 3_000_000, 1_000_000, 40.0, 8.0, 0.8, appraisal_fee_gwei=500_000
)


def providers(honest: int) -> list[ProviderSpec]:
    """`honest` data providers (at least 4: the base cast, then more clinics) and the noise seller."""
    specs = list(BASE[:honest])
    for i in range(len(specs), honest):
        specs.append(ProviderSpec(f"Clinic #{i + 1}", "honest", 4_000_000, 2_000_000, 20.0, 8.0, 0.8))
    return [*specs, NOISE]


def partition(dataset: Dataset, specs: list[ProviderSpec], *, seed: int) -> list[Dataset]:
    """Randomly sized partitions of `dataset` for honest providers; noise of its shape for the rest."""
    rng = np.random.default_rng(seed)
    honest = [s for s in specs if s.kind != "noise"]
    weights = rng.dirichlet([8 * s.share for s in honest])
    order = rng.permutation(dataset.schema.rows)
    cuts = np.floor(np.cumsum(weights)[:-1] * len(order)).astype(int)
    parts = iter(np.split(order, cuts))
    out = []
    for spec in specs:
        if spec.kind == "noise":
            rows = max(50, int(len(order) * 0.12))
            out.append(noise_like(dataset, rows, seed=seed + 7))
        else:
            idx = np.sort(next(parts))
            s = dataset.schema
            schema = Schema(s.modality, s.shape, s.dtype, s.classes, len(idx), s.feature_names)
            out.append(Dataset(dataset.features[idx], dataset.labels[idx], schema))
    return out


def noise_like(dataset: Dataset, rows: int, *, seed: int) -> Dataset:
    """What a dishonest seller lists: real-looking photographs (copies from the pool) graded backwards.

    Pixels of pure noise would be easy to spot by eye; copied photographs with random labels are
    the fraud a buyer cannot see without appraisal: they look right and teach the model wrong.
    """
    rng = np.random.default_rng(seed)
    s = dataset.schema
    idx = rng.choice(s.rows, size=min(rows, s.rows), replace=False)
    labels = (len(s.classes) - 1 - dataset.labels[idx]).astype(np.int64)  # the grading scale reversed
    return Dataset(
        dataset.features[idx],
        labels,
        Schema(s.modality, s.shape, s.dtype, s.classes, len(idx), s.feature_names),
    )
