"""Procedurally generated sites for the offline demo and tests: clearly synthetic, learnable,
several modalities."""

from collections.abc import Callable

import numpy as np

from meduniverse.data.npz import check_split
from meduniverse.data.splits import SPLITS, RawSplit

Generator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255, 0, 255).astype(np.uint8)


def xray_nodule(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Gray 'chest' fields; label 1 when a faint round nodule is present (binary)."""
    yy, xx = _grid(size)
    labels = rng.integers(0, 2, n)
    images = np.empty((n, size, size), np.float32)
    for i in range(n):
        lungs = np.exp(-_blob(yy, xx, 0.5, 0.3, 0.35, 0.15)) + np.exp(
            -_blob(yy, xx, 0.5, 0.7, 0.35, 0.15)
        )
        img = 0.2 + 0.4 * lungs + 0.08 * rng.standard_normal((size, size))
        if labels[i]:
            cy, cx = rng.uniform(0.3, 0.7), rng.choice([0.3, 0.7]) + rng.uniform(-0.08, 0.08)
            img += 0.5 * np.exp(-_blob(yy, xx, cy, cx, 0.09, 0.09) * 2)
        images[i] = img
    return _to_uint8(images), labels[:, None]


def fundus_grade(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """RGB 'fundus' discs; the grade 0..3 is the number of dark lesions (ordinal)."""
    yy, xx = _grid(size)
    labels = rng.integers(0, 4, n)
    images = np.zeros((n, size, size, 3), np.float32)
    disc = (_blob(yy, xx, 0.5, 0.5, 0.45, 0.45) < 1).astype(np.float32)
    for i in range(n):
        img = disc[..., None] * np.array([0.8, 0.35, 0.15]) * rng.uniform(0.8, 1.1)
        for _ in range(labels[i] * 2):
            spot = _blob(yy, xx, rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), 0.05, 0.05) < 1
            img[spot] = [0.35, 0.05, 0.05]
        images[i] = img + 0.04 * rng.standard_normal(img.shape)
    return _to_uint8(images), labels[:, None]


def cell_type(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """RGB stained 'cells': small round, large round or elongated (3 classes)."""
    yy, xx = _grid(size)
    labels = rng.integers(0, 3, n)
    images = np.empty((n, size, size, 3), np.float32)
    radii = {0: (0.12, 0.12), 1: (0.3, 0.3), 2: (0.1, 0.32)}
    for i in range(n):
        ry, rx = radii[int(labels[i])]
        if rng.random() < 0.5:
            ry, rx = rx, ry
        cell = np.exp(-(_blob(yy, xx, rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), ry, rx) ** 2))
        img = np.array([0.9, 0.85, 0.9]) - cell[..., None] * np.array([0.4, 0.6, 0.2])
        images[i] = img + 0.04 * rng.standard_normal(img.shape)
    return _to_uint8(images), labels[:, None]


def vessel_seg(rng: np.random.Generator, n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """RGB 'fundus' with dark curved vessels; the mask marks the vessels (segmentation)."""
    yy, xx = _grid(size)
    images = np.empty((n, size, size, 3), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(2, 5)):
            a, b, c = rng.uniform(-1.5, 1.5), rng.uniform(0, 1), rng.uniform(0.2, 0.8)
            if rng.random() < 0.5:
                masks[i] |= np.abs(yy - (c + a * (xx - b) ** 2)) < 0.03
            else:
                masks[i] |= np.abs(xx - (c + a * (yy - b) ** 2)) < 0.03
        img = np.array([0.75, 0.3, 0.15]) * (1 - 0.55 * masks[i][..., None])
        images[i] = img + 0.05 * rng.standard_normal(img.shape)
    return _to_uint8(images), masks


def lesion_seg(rng: np.random.Generator, n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Gray 'ultrasound' speckle with a bright elliptic lesion; the mask marks the lesion
    (segmentation)."""
    yy, xx = _grid(size)
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        inside = _blob(yy, xx, *rng.uniform(0.3, 0.7, 2), *rng.uniform(0.1, 0.3, 2)) < 1
        masks[i] = inside
        images[i] = 0.3 + 0.3 * inside + 0.12 * rng.standard_normal((size, size))
    return _to_uint8(images), masks


GENERATORS: dict[str, Generator] = {
    "xray_nodule": xray_nodule,
    "fundus_grade": fundus_grade,
    "cell_type": cell_type,
    "vessel_seg": vessel_seg,
    "lesion_seg": lesion_seg,
}
SPLIT_SIZES = {"train": 300, "val": 60, "test": 100}


def make_synthetic(name: str, task: str, num_classes: int, seed: int = 0) -> dict[str, RawSplit]:
    """All splits of one synthetic site, generated deterministically from its name and seed.

    Args:
        name: the generator (a key of GENERATORS).
        task: the task type the site declares.
        num_classes: the number of class names it declares.
        seed: the federation's seed.
    """
    generator = GENERATORS[name]
    out = {}
    for k, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, sum(map(ord, name)), k])
        images, targets = generator(rng, SPLIT_SIZES[split])
        out[split] = check_split(images, targets, task, num_classes, f"synthetic:{name} [{split}]")
    return out
