"""How one synthetic fundus photograph is painted: anatomy, vessels and lesions by grade.

The internals of `sterling.demo.fundus`, which draws datasets with them:
`Painter` lays out one image's geometry, vessels and lesion spots from its
own generator; `splat` and `compose` turn a chunk of images' layers into
pixels, per pixel, so chunking changes no result.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from sterling.demo.fundus import FundusConfig

# Mean lesion counts per image by true grade (before the per-image load factor and `lesion_scale`).
# Grades 0 and 1 share their lesions' kinds and differ in number; every lesion kind appears, rarely,
# one grade below the one that defines it, so adjacent grades overlap.
MICROANEURYSMS = (0.4, 5.0, 8.0, 10.0, 10.0)
HAEMORRHAGES = (0.05, 0.6, 5.0, 14.0, 12.0)
EXUDATE_CLUSTERS = (0.05, 0.25, 1.6, 2.5, 2.2)
COTTON_WOOL = (0.0, 0.03, 0.3, 2.2, 2.2)
BEADING = (0.0, 0.0, 0.05, 0.5, 0.5)  # probability that the veins are beaded
NEW_VESSELS = (0.0, 0.0, 0.0, 0.15, 1.8)
PRERETINAL = (0.0, 0.0, 0.0, 0.0, 0.35)  # probability of a pre-retinal (boat-shaped) haemorrhage
LASER = (0.0, 0.0, 0.0, 0.03, 0.4)  # probability of panretinal laser scars (treated eyes)


CHUNK = 256  # images composed together; every operation is per pixel, so chunks change no result
STEP = 0.035  # length of one step of a vessel's random walk, in field-of-view radii
F32 = np.float32
Walks = tuple[np.ndarray, np.ndarray, np.ndarray]  # complex points by row, headings, points per row
#: Each photograph's look, drawn uniformly in these ranges: colour (luminance, green/red and
#: blue/green ratios), illumination, fovea, disc, vessel contrast, light leak, exposure, focus, noise.
LOOKS = {
    "lum": (0.5, 0.95), "g_r": (0.42, 0.78), "b_g": (0.35, 0.8),
    "vignette": (0.25, 0.6), "tilt_u": (-0.15, 0.15), "tilt_v": (-0.15, 0.15), "texture": (0.02, 0.1),
    "fovea_sigma": (0.07, 0.12), "fovea_depth": (0.2, 0.45),
    "disc_alpha": (0.7, 0.95), "disc_g": (0.75, 0.92), "disc_b": (0.4, 0.65), "disc_gain": (0.95, 1.15),
    "cup": (0.4, 0.6), "vessel": (0.55, 0.95),
    "leak": (0.0, 1.0), "leak_angle": (0.0, 2 * math.pi), "leak_amp": (0.2, 0.6), "leak_b": (0.3, 0.8),
    "exposure": (-0.3, 0.3), "gamma": (0.85, 1.15), "crop": (0.0, 1.0), "crop_at": (0.85, 0.97),
    "blur": (0.1, 0.55), "noise": (1.0, 5.0),
}  # fmt: skip
LEAK, CROP = 0.25, 0.3  # how often light leaks in at the rim, and how often the rim is cut off
GEOMETRY = ("size", "cx", "cy", "rf", "disc_u", "disc_v", "disc_r", "fovea_u", "fovea_v")
COLUMNS = {name: i for i, name in enumerate((*GEOMETRY, *LOOKS))}
_LOW = np.array([lo for lo, _ in LOOKS.values()])
_SPAN = np.array([hi - lo for lo, hi in LOOKS.values()])
TEXTURE = 6  # knots per side of the choroidal texture
DARK, PALE, BRIGHT = 0, 1, 2  # lesion channels: red (haemorrhages), cotton-wool, yellow (exudates)
PATCH_RADIUS = 0.07  # the largest lesion's radius as a fraction of the image side (0.14 × 0.5)


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    out: np.ndarray = x * x * (3 - 2 * x)
    return out


def _rgb(r: float, g: float, b: float) -> np.ndarray:
    return np.array([r, g, b], dtype=F32)


@functools.cache
def _upsampler(size: int, grid: int) -> np.ndarray:
    """The (size, grid) matrix of linear interpolation from `grid` knots to `size` pixels."""
    x = np.clip((np.arange(size) + 0.5) / size * grid - 0.5, 0, grid - 1)
    lo = np.minimum(x.astype(np.int64), grid - 2)
    m = np.zeros((size, grid), dtype=F32)
    m[np.arange(size), lo] = 1 - (x - lo)
    m[np.arange(size), lo + 1] = x - lo
    return m


def _blur(img: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of (B, H, W, C) images, one sigma per image, edges extended."""
    size = img.shape[1]
    reach = math.ceil(2.5 * LOOKS["blur"][1] * size / 28)  # fixed, so an image's result is its own
    offsets = np.arange(-reach, reach + 1, dtype=F32)
    taps = np.exp(-(offsets**2) / (2 * sigma[:, None] ** 2))
    taps = (taps / taps.sum(axis=1, keepdims=True))[:, :, None, None, None]
    pad = np.pad(img, ((0, 0), (reach, reach), (0, 0), (0, 0)), mode="edge")
    rows = np.zeros_like(img)
    for t in range(len(offsets)):
        rows += taps[:, t] * pad[:, t : t + size]
    pad = np.pad(rows, ((0, 0), (0, 0), (reach, reach), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for t in range(len(offsets)):
        out += taps[:, t] * pad[:, :, t : t + size]
    return out


class Painter:
    """Draws one photograph's sharp parts and its look; `compose` paints it.

    Points are complex numbers in field-of-view units (centre 0, rim radius
    1, y down). What is sharp (vessels, lesions) is drawn with Pillow as
    masks at `oversample` times the output size and reduced with an area
    filter; what is smooth (illumination, disc, fovea, rim) is computed at
    the output size with soft edges, which is antialiased and cheap.
    """

    def __init__(self, rng: np.random.Generator, config: FundusConfig) -> None:
        self.rng = rng
        self.config = config
        self.size, self.k = config.size, config.oversample
        self.rf = config.size * rng.uniform(0.44, 0.5)  # rim radius in output pixels
        jitter = rng.normal(0, 0.015, 2) * config.size
        self.centre = complex(config.size / 2 + jitter[0], config.size / 2 + jitter[1])
        self.side = 1.0 if rng.random() < 0.5 else -1.0  # which eye: the side of the disc
        self.disc = complex(self.side * rng.uniform(0.22, 0.42), rng.normal(0, 0.06))
        self.disc_r = rng.uniform(0.10, 0.14)
        self.fovea = self.disc + complex(-self.side * rng.uniform(0.5, 0.62), rng.uniform(0.0, 0.08))
        self.vessels = Image.new("L", (self.size * self.k, self.size * self.k), 0)

    def layers(self, grade: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(look, vessel mask, texture knots, noise, lesion spots) of one photograph of `grade`."""
        rng, s = self.rng, self.size
        self.arcades(beaded=rng.random() < BEADING[grade])
        spots = self.lesions(grade)
        geometry = (s, self.centre.real, self.centre.imag, self.rf, self.disc.real, self.disc.imag,
                    self.disc_r, self.fovea.real, self.fovea.imag)  # fmt: skip
        look = np.concatenate([geometry, _LOW + _SPAN * rng.random(len(LOOKS))])
        vessels = np.frombuffer(self.vessels.reduce(self.k).tobytes(), dtype=np.uint8).reshape(s, s)
        knots = rng.random((TEXTURE, TEXTURE), dtype=F32)
        return look, vessels, knots, rng.standard_normal((s, s, 3), dtype=F32), spots

    # ---------------------------------------------------------------- helpers
    def flat(self, z: np.ndarray) -> list[float]:
        """Points to Pillow's flat [x0, y0, x1, y1, ...] list at the drawing size."""
        return ((z * self.rf + self.centre) * self.k).view(np.float64).tolist()  # type: ignore[no-any-return]

    def spots(self, draw: ImageDraw.ImageDraw, z: np.ndarray, radius: np.ndarray, value: np.ndarray) -> None:
        xy = self.flat(z)
        rp = np.maximum(0.6, radius * self.rf * self.k).tolist()
        for i, (r, val) in enumerate(zip(rp, value.tolist(), strict=True)):
            x, y = xy[2 * i], xy[2 * i + 1]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=int(val))

    def where(self, k: int, *, reach: float = 0.9) -> np.ndarray:
        """k points spread evenly over the disc of radius `reach`."""
        u = self.rng.random((2, k))
        return reach * np.sqrt(u[0]) * np.exp(2j * math.pi * u[1])  # type: ignore[no-any-return]

    def count(self, table: tuple[float, ...], grade: int, load: float) -> int:
        return int(self.rng.poisson(table[grade] * load * self.config.lesion_scale))

    def walks(self, start: np.ndarray, heading: np.ndarray, length: np.ndarray, curl: np.ndarray,
              wiggle: float) -> Walks:  # fmt: skip
        """Random walks, one per row, each with a steady turn of `curl` radians per unit, and jitter."""
        steps = np.maximum(2, (length / STEP).astype(np.int64))
        ang = heading[:, None] + np.cumsum(
            curl[:, None] * STEP + self.rng.normal(0, wiggle, (len(start), int(steps.max()))), axis=1
        )
        z = np.empty((len(start), ang.shape[1] + 1), dtype=np.complex128)
        z[:, 0] = start
        z[:, 1:] = start[:, None] + np.cumsum(STEP * np.exp(1j * ang), axis=1)
        return z, ang, steps + 1

    # ---------------------------------------------------------------- anatomy
    def vessels_from(self, draw: ImageDraw.ImageDraw, walks: Walks, width: np.ndarray, value: np.ndarray,
                     branching: np.ndarray, depth: int) -> None:  # fmt: skip
        """Draw vessels (thinner and fainter in their outer half) and, level by level, their branches."""
        z, ang, lengths = walks
        xy = (z * self.rf + self.centre) * self.k
        w = np.maximum(1, np.rint(width * self.rf * self.k)).astype(np.int64).tolist()
        w_out = np.maximum(1, np.rint(width * 0.75 * self.rf * self.k)).astype(np.int64).tolist()
        taper = self.size > 32  # invisible at 28 pixels; each line drawn costs
        for row, n in enumerate(lengths.tolist()):
            half = n // 2 + 1 if taper else n
            draw.line(xy[row, :half].view(np.float64).tolist(), fill=int(value[row]), width=w[row])
            if taper:
                line = xy[row, half - 1 : n].view(np.float64).tolist()
                draw.line(line, fill=int(value[row] * 0.8), width=w_out[row])
        if depth >= (1 if self.size <= 32 else 2):
            return
        rng = self.rng
        parent = np.repeat(
            np.arange(len(lengths)), (rng.poisson(2.5 if depth == 0 else 1.0, len(lengths)) + 1) * branching
        )
        parent = parent[lengths[parent] >= 8]
        if not len(parent):
            return
        at = rng.integers(2, lengths[parent] - 3)
        turn = np.where(rng.random(len(parent)) < 0.5, 1, -1) * rng.uniform(0.4, 1.1, len(parent))
        length = (lengths[parent] - at) * STEP * rng.uniform(0.3, 0.7, len(parent))
        child = self.walks(
            z[parent, at], ang[parent, at - 1] + turn, length, rng.normal(0, 1.0, len(parent)), 0.12
        )
        self.vessels_from(
            draw, child, width[parent] * 0.62, value[parent] * 0.85, np.ones(len(parent), bool), depth + 1
        )

    def arcades(self, beaded: bool) -> None:
        """Four arcades from the disc, each a vein and an artery: two temporal, bending around the macula."""
        rng, temporal = self.rng, -self.side
        up = np.array([-1.0, -1, 1, 1, -1, -1, 1, 1])
        vein = np.array([True, False] * 4)
        nasal = np.arange(8) >= 4
        skew = rng.normal(0, 0.1, 8) + np.where(vein, 0.0, 0.12)
        heading = np.where(
            nasal, np.arctan2(up * 0.8, -temporal * (0.6 + skew)), np.arctan2(up, temporal * (0.35 + skew))
        )
        length = np.where(nasal, rng.uniform(0.6, 0.9, 8), rng.uniform(1.1, 1.5, 8))
        curl = np.where(nasal, rng.normal(0, 0.6, 8), -up * temporal * rng.uniform(1.3, 1.9, 8))
        main = self.walks(np.full(8, self.disc), heading, length, curl, 0.1)
        width = np.where(vein, 0.03, 0.021) * np.where(nasal, 0.8, 1.0)
        draw = ImageDraw.Draw(self.vessels)
        self.vessels_from(draw, main, width, np.where(vein, 230.0, 150.0), ~nasal, 0)
        if beaded:
            for row in np.flatnonzero(vein & ~nasal).tolist():
                beads = main[0][row, 3 : main[2][row] // 2 : 2]
                self.spots(draw, beads, np.full(len(beads), width[row] * 0.9), np.full(len(beads), 230))

    # ---------------------------------------------------------------- lesions
    def lesions(self, grade: int) -> np.ndarray:
        """Round lesions as rows (channel, x, y, radius, strength, top) in output pixels, for `splat`.

        New vessels, being lines, are drawn into the vessel mask instead.
        """
        rng, disc = self.rng, self.disc
        rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        load = rng.lognormal(0.0, 0.45) * self.config.lesion_scale  # how badly this eye is affected
        tables = (MICROANEURYSMS, HAEMORRHAGES, EXUDATE_CLUSTERS, COTTON_WOOL)
        n_ma, n_haem, n_ex, n_cw = rng.poisson([t[grade] * load for t in tables]).tolist()
        n_pigment, n_drusen = rng.poisson(1.0, 2).tolist()
        # confounders at every grade: pigment dots, and drusen around the macula
        rows.append(
            (DARK, self.where(n_pigment), np.full(n_pigment, 0.012), rng.uniform(0.27, 0.5, n_pigment))
        )
        z = self.where(n_drusen, reach=0.5) + self.fovea
        rows.append((BRIGHT, z, rng.uniform(0.01, 0.02, n_drusen), rng.uniform(0.25, 0.47, n_drusen)))
        z = self.where(n_ma, reach=0.75) + self.fovea * 0.3
        rows.append((DARK, z, rng.uniform(0.018, 0.03, n_ma), rng.uniform(0.67, 1.0, n_ma)))
        # haemorrhages: dots and blots, and flames (three spots along the nerve fibres, radial from the disc)
        z, r, strength = (
            self.where(n_haem, reach=0.88),
            rng.uniform(0.04, 0.085, n_haem),
            rng.uniform(0.7, 1.0, n_haem),
        )
        along = (
            (z - disc)
            / (np.abs(z - disc) + 1e-6)
            * rng.uniform(0.02, 0.04, n_haem)
            * (rng.random(n_haem) < 0.35)
        )
        flame = np.where(along != 0, 0.65, 1.0)
        for shift in (-1, 0, 1):
            rows.append((DARK, z + shift * along, r * flame, strength))
        # hard exudates: clusters of small bright spots near the macula
        per = rng.integers(3, 12, n_ex)
        centres = np.repeat(self.where(n_ex, reach=0.35) + self.fovea, per)
        z = centres + self.where(len(centres), reach=1.0) * np.repeat(rng.uniform(0.06, 0.15, n_ex), per)
        rows.append((BRIGHT, z, rng.uniform(0.02, 0.04, len(z)), rng.uniform(0.67, 1.0, len(z))))
        # cotton-wool spots: pale, soft-edged, slightly irregular (three offset rings)
        z, r, strength = (
            self.where(n_cw, reach=0.7),
            rng.uniform(0.05, 0.09, n_cw),
            rng.uniform(0.6, 0.9, n_cw),
        )
        for shrink, fade in ((1.0, 0.35), (0.75, 0.7), (0.5, 1.0)):
            rows.append((PALE, z + self.where(n_cw, reach=0.02), r * shrink, strength * fade))
        if rng.random() < LASER[grade]:  # panretinal laser scars: pale, pigmented rims, mid-periphery
            k = int(rng.integers(15, 40))
            z = rng.uniform(0.55, 0.92, k) * np.exp(2j * math.pi * rng.random(k))
            r = rng.uniform(0.03, 0.05, k)
            rows.append((DARK, z, r * 1.3, rng.uniform(0.3, 0.5, k)))
            rows.append((PALE, z, r, rng.uniform(0.5, 0.8, k)))
        tufts = int(rng.poisson(NEW_VESSELS[grade])) + (grade == 4)
        if tufts:  # new vessels: tufts of fine tortuous loops, on the disc or elsewhere
            at = np.where(
                rng.random(tufts) < 0.5, disc + self.where(tufts, reach=0.08), self.where(tufts, reach=0.75)
            )
            at = np.repeat(at, rng.integers(5, 12, tufts))
            heading, length = rng.uniform(0, 2 * math.pi, len(at)), rng.uniform(0.06, 0.16, len(at))
            z, _, lengths = self.walks(at, heading, length, np.full(len(at), 8.0), 0.8)
            draw, xy = ImageDraw.Draw(self.vessels), (z * self.rf + self.centre) * self.k
            for row, (n, value) in enumerate(
                zip(lengths.tolist(), rng.integers(150, 230, len(at)).tolist(), strict=True)
            ):
                draw.line(xy[row, :n].view(np.float64).tolist(), fill=value, width=max(1, self.k // 3))
        boat = rng.random() < PRERETINAL[grade]
        if boat:  # pre-retinal haemorrhage: boat-shaped, flat above
            rows.append((DARK, self.where(1, reach=0.6), rng.uniform(0.07, 0.14, 1), rng.uniform(0.8, 1, 1)))
        z = np.concatenate([row[1] for row in rows])
        out = np.empty((len(z), 6))
        out[:, 0] = np.repeat([row[0] for row in rows], [len(row[1]) for row in rows])
        out[:, 1] = self.centre.real + self.rf * z.real
        out[:, 2] = self.centre.imag + self.rf * z.imag
        out[:, 3] = np.concatenate([row[2] for row in rows]) * self.rf
        out[:, 4] = np.concatenate([row[3] for row in rows])
        out[:, 5] = -np.inf
        if boat:
            out[-1, 5] = out[-1, 2] - 0.3 * out[-1, 3]
        return out


def splat(spots: np.ndarray, images: int, size: int, oversample: int) -> np.ndarray:
    """Lesion alpha (images, size, size, 3) from rows (image, channel, x, y, radius, strength, top).

    Each disc's coverage of a pixel is measured on an oversample × oversample grid of points in
    it (the area filter the vessels get from Pillow); overlapping lesions keep the stronger.
    """
    out = np.zeros(images * size * size * 3, dtype=F32)
    if not len(spots):
        return out.reshape(images, size, size, 3)
    patch = 2 * math.ceil(PATCH_RADIUS * size) + 2  # pixels per side around each spot: fits the largest
    image, channel, x, y, r, strength, top = (spots[:, i] for i in range(7))
    ox, oy = np.floor(x) - patch // 2 + 1, np.floor(y) - patch // 2 + 1
    sub = (np.arange(patch * oversample) + 0.5) / oversample
    dx = (ox[:, None] + sub[None, :] - x[:, None]).astype(F32)
    dy = (oy[:, None] + sub[None, :] - y[:, None]).astype(F32)
    inside = dx[:, None, :] ** 2 + dy[:, :, None] ** 2 <= (r * r).astype(F32)[:, None, None]
    inside &= (oy[:, None] + sub[None, :] >= top[:, None])[:, :, None]
    cover = inside.reshape(len(spots), patch, oversample, patch, oversample).mean(axis=(2, 4), dtype=F32)
    cover *= strength.astype(F32)[:, None, None]
    px = ox.astype(np.int64)[:, None, None] + np.arange(patch)[None, None, :]
    py = oy.astype(np.int64)[:, None, None] + np.arange(patch)[None, :, None]
    keep = (px >= 0) & (px < size) & (py >= 0) & (py < size) & (cover > 0)
    index = ((image.astype(np.int64)[:, None, None] * size + py) * size + px) * 3 + channel.astype(np.int64)[
        :, None, None
    ]
    np.maximum.at(out, index[keep], cover[keep])
    return out.reshape(images, size, size, 3)


def compose(
    look: np.ndarray, vessels: np.ndarray, lesions: np.ndarray, knots: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """Paint a chunk of photographs (B, s, s, 3) uint8 from their looks, vessel masks and lesions."""
    s = vessels.shape[1]

    def col(name: str) -> np.ndarray:  # one number per image, shaped to broadcast over (B, s, s)
        return look[:, COLUMNS[name]].astype(F32)[:, None, None]

    def rgb(r: ArrayLike, g: ArrayLike, b: ArrayLike) -> np.ndarray:
        return np.stack(np.broadcast_arrays(r, g, b), axis=-1)

    pixel = np.arange(s, dtype=F32) + F32(0.5)
    rf = col("rf")
    u, v = (pixel[None, None, :] - col("cx")) / rf, (pixel[None, :, None] - col("cy")) / rf
    r2 = u * u + v * v
    light = 1 - col("vignette") * r2 + col("tilt_u") * u + col("tilt_v") * v
    up = _upsampler(s, TEXTURE)
    light *= 1 + col("texture") * (up @ knots @ up.T - F32(0.5))
    lum, g_r = col("lum"), col("g_r")
    img = light[..., None] * rgb(lum, lum * g_r, lum * g_r * col("b_g"))
    # fovea: darker, most in green and blue (macular pigment)
    sig2 = 2 * col("fovea_sigma") ** 2
    fovea = np.exp(-((u - col("fovea_u")) ** 2) / sig2) * np.exp(-((v - col("fovea_v")) ** 2) / sig2)
    img *= 1 - (col("fovea_depth") * fovea)[..., None] * _rgb(0.8, 1.0, 1.0)
    # optic disc, yellowish, with a paler cup
    du, dv = u - col("disc_u"), (v - col("disc_v")) / F32(1.1)
    dd = np.sqrt(du * du + dv * dv) / col("disc_r")
    edge = np.maximum(F32(0.25), 1 / (col("disc_r") * rf))
    disc = (_smooth((1 - dd) / edge) * col("disc_alpha"))[..., None]
    gain = col("disc_gain")
    img = img * (1 - disc) + rgb(gain, gain * col("disc_g"), gain * col("disc_b")) * disc
    cup = (_smooth((col("cup") - dd) / edge) * F32(0.6))[..., None]
    img = img * (1 - cup) + F32(0.97) * cup
    img *= 1 - (vessels * (col("vessel") / 255))[..., None] * _rgb(0.4, 0.62, 0.55)
    for c, colour in (
        (DARK, lum[..., None] * _rgb(0.42, 0.05, 0.04)),  # haemorrhages, microaneurysms
        (PALE, _rgb(0.96, 0.88, 0.78)),  # cotton-wool spots
        (BRIGHT, _rgb(1.0, 0.92, 0.45)),  # hard exudates
    ):
        a = lesions[..., c : c + 1]
        img = img * (1 - a) + colour * a
    r = np.sqrt(r2)
    # light leaking in at the rim, as in many real photographs
    t = col("leak_angle")
    facing = np.maximum((u * np.cos(t) + v * np.sin(t)) / np.maximum(r, F32(1e-3)), 0)
    leak = _smooth((r - F32(0.75)) * 4) * facing**4 * col("leak_amp") * (col("leak") < LEAK)
    img += leak[..., None] * rgb(F32(0.9), F32(0.9), col("leak_b"))
    img = np.clip(img * np.exp(col("exposure"))[..., None], 0, 1) ** col("gamma")[..., None]
    rim = _smooth((1 - r) * rf)
    rim = np.where(col("crop") < CROP, rim * _smooth((col("crop_at") - np.abs(v)) * rf), rim)
    img *= rim[..., None]
    img = _blur(img, look[:, COLUMNS["blur"]].astype(F32) * F32(s / 28))  # focus
    img += noise * (col("noise") / 255)[..., None]
    out: np.ndarray = (np.clip(img, 0, 1) * 255 + F32(0.5)).astype(np.uint8)
    return out
