"""Synthetic colour fundus photographs, graded for diabetic retinopathy.

The demo must run without the real RetinaMNIST file, and the tests need data
whose answer is known, so this module paints small fundus photographs: a
reddish retina in a dark circular field of view, an optic disc, a darker
fovea and branching vessel arcades, with the lesions of the international
DR scale added grade by grade (microaneurysms; haemorrhages and hard
exudates; many haemorrhages, cotton-wool spots and venous beading; new
vessels and pre-retinal haemorrhage). Lesion counts are random with
overlapping ranges between adjacent grades, images vary in colour, focus and
exposure, and a fraction of labels is moved to a neighbouring grade (as
graders disagree), so the task is graded rather than separable.

Each image is painted at `oversample` times the output size with Pillow and
numpy and reduced with an area filter, as RetinaMNIST's 28×28 images are
reduced photographs. Image i is drawn from its own generator,
`SeedSequence(seed, spawn_key=(i,))`, so it does not depend on `n`.
Lesions are larger than anatomy would have them, so that some survive at
28×28; see docs/retinopathy-data.md.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sterling.data.dataset import Dataset, Schema
from sterling.demo.fundus_paint import CHUNK, Painter, compose, splat
from sterling.demo.retinamnist import GRADES
from sterling.errors import UsageError
from sterling.files import atomic_writer

#: RetinaMNIST's train split holds 486, 128, 206, 194 and 66 images of grades 0..4 (of 1,080).
GRADE_WEIGHTS = (0.45, 0.12, 0.19, 0.18, 0.06)


@dataclass(frozen=True)
class FundusConfig:
    """How the synthetic photographs are drawn; the defaults are the demo's.

    `label_noise` is the probability that an image's label is its grade's
    neighbour instead of its grade. `grade_weights` is the class balance of
    the true grades. `lesion_scale` multiplies every lesion count: lower is
    harder.
    """

    size: int = 28
    label_noise: float = 0.1
    grade_weights: tuple[float, ...] = GRADE_WEIGHTS
    lesion_scale: float = 1.0
    oversample: int = 4

    def __post_init__(self) -> None:
        problems = []
        if not 8 <= self.size <= 512:
            problems.append(f"size must be 8..512 pixels, got {self.size}")
        if not 0 <= self.label_noise <= 1:
            problems.append(f"label_noise must be in [0, 1], got {self.label_noise}")
        weights = self.grade_weights
        if len(weights) != len(GRADES) or min(weights) < 0 or sum(weights) <= 0:
            problems.append(f"grade_weights must be {len(GRADES)} non-negative weights, got {weights}")
        if not 0 <= self.lesion_scale <= 10:
            problems.append(f"lesion_scale must be in [0, 10], got {self.lesion_scale}")
        if not 1 <= self.oversample <= 8:
            problems.append(f"oversample must be 1..8, got {self.oversample}")
        if problems:
            raise UsageError("invalid fundus config: " + "; ".join(problems))


@dataclass(frozen=True, eq=False)
class FundusImages:
    """Rendered images with their true grades and their (noisy) labels."""

    images: np.ndarray  # (n, size, size, 3) uint8
    grades: np.ndarray  # (n,) int64, what was drawn
    labels: np.ndarray  # (n,) int64, what a grader wrote

    def dataset(self) -> Dataset:
        n, h, w, c = self.images.shape
        return Dataset(self.images, self.labels, Schema("image", (h, w, c), "uint8", GRADES, n))


def render(n: int, *, seed: int, config: FundusConfig = FundusConfig(), first: int = 0) -> FundusImages:
    """Draw `n` graded photographs; deterministic for (seed, config), image i independent of n.

    `first` skips ahead: the result is images first … first+n−1 of the seed's sequence.
    """
    if n <= 0:
        raise UsageError(f"n must be positive, got {n}")
    if first < 0:
        raise UsageError(f"first must be at least 0, got {first}")
    cumulative = np.cumsum(config.grade_weights) / sum(config.grade_weights)
    images = np.empty((n, config.size, config.size, 3), dtype=np.uint8)
    grades = np.empty(n, dtype=np.int64)
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, CHUNK):
        layers = []
        for i in range(start, min(n, start + CHUNK)):
            key = np.random.SeedSequence(seed, spawn_key=(first + i,))
            rng = np.random.Generator(np.random.PCG64(key))
            grade = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(GRADES) - 1)
            label = grade
            if rng.random() < config.label_noise:
                step = (
                    1 if grade == 0 else -1 if grade == len(GRADES) - 1 else 1 if rng.random() < 0.5 else -1
                )
                label = grade + step
            grades[i], labels[i] = grade, label
            layers.append(Painter(rng, config).layers(grade))
        look, vessels, knots, noise, spots = zip(*layers, strict=True)
        index = np.repeat(np.arange(len(spots), dtype=np.float64), [len(x) for x in spots])
        lesions = splat(
            np.column_stack([index, np.concatenate(spots)]), len(spots), config.size, config.oversample
        )
        images[start : start + len(layers)] = compose(
            np.stack(look), np.stack(vessels), lesions, np.stack(knots), np.stack(noise)
        )
    return FundusImages(images, grades, labels)


def generate(
    n: int,
    *,
    seed: int,
    config: FundusConfig = FundusConfig(),
    pool: Executor | None = None,
    slices: int = 2,
) -> Dataset:
    """`n` synthetic fundus photographs labelled with the five DR grades, as a `Dataset`.

    With `pool` (of processes), the images are drawn in `slices` slices in parallel; each image
    depends on (seed, its index) alone, so the result is the same.
    """
    if pool is None or slices < 2 or n < 2 * CHUNK:
        return render(n, seed=seed, config=config).dataset()
    cuts = [round(n * k / slices) for k in range(slices + 1)]
    futures = [
        pool.submit(render, b - a, seed=seed, config=config, first=a)
        for a, b in itertools.pairwise(cuts)
        if b > a
    ]
    parts = [f.result() for f in futures]
    return FundusImages(
        np.concatenate([p.images for p in parts]),
        np.concatenate([p.grades for p in parts]),
        np.concatenate([p.labels for p in parts]),
    ).dataset()


def sample_grid(path: Path, *, per_grade: int = 6, seed: int = 0, size: int = 64) -> Path:
    """Write a PNG with one labelled row of `per_grade` samples for each true grade."""
    if not 1 <= per_grade <= 32:
        raise UsageError(f"per_grade must be 1..32, got {per_grade}")
    config = FundusConfig(size=size, label_noise=0.0)
    # Draw until every grade has enough samples: rare grades need more draws.
    batch = render(per_grade * 40, seed=seed, config=config)
    gap, label_w = 4, 150
    grid = Image.new("RGB", (label_w + per_grade * (size + gap), len(GRADES) * (size + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for g, name in enumerate(GRADES):
        top = gap + g * (size + gap)
        draw.text((6, top + size // 2 - 6), f"{g}: {name}", fill="black", font=font)
        for j, i in enumerate(np.flatnonzero(batch.grades == g)[:per_grade]):
            grid.paste(Image.fromarray(batch.images[i]), (label_w + j * (size + gap), top))
    path = Path(path)
    with atomic_writer(path) as fh:
        grid.save(fh, format="PNG")
    return path


def render_samples_command(out: Path, per_grade: int, seed: int) -> Path:
    """The body of `sterling data fundus-samples`: a grid of samples per grade as a PNG."""
    return sample_grid(out, per_grade=per_grade, seed=seed)
