"""Sites' private data and the server's public pool, as tensors in memory at the input specification.

A fraction of a pool site's train images stands in for public images of that modality: it is
removed from the site's private split and given to the server's pool, selected by image hash so
that byte-identical copies never end up on both sides.
"""

from dataclasses import dataclass
from functools import lru_cache
import hashlib
from pathlib import Path

import numpy as np
import torch

from meduniverse.config import FederationConfig, PoolConfig, SiteConfig
from meduniverse.data.medmnist import medmnist_file
from meduniverse.data.npz import SPLITS, RawSplit, open_npz, read_array, read_images_npz, check_images, read_labelled_npz
from meduniverse.data.synthetic import make_synthetic
from meduniverse.errors import DataError, PrivacyError
from meduniverse.tasks import is_segmentation, spec_group
from meduniverse.transforms import InputSpec, images_to_spec, masks_to_spec


@dataclass
class Split:
    """Images (uint8, N×C×H×W at the input spec) and targets (labels or masks) of one split."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class SiteData:
    config: SiteConfig
    spec: InputSpec
    splits: dict[str, Split]
    native_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def task(self) -> str:
        return self.config.task


def image_hashes(images: np.ndarray) -> list[str]:
    """SHA-256 of each image's bytes."""
    return [hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() for img in images]


def data_file(site: SiteConfig) -> Path:
    if site.medmnist:
        return medmnist_file(site.medmnist, site.medmnist_root, site.medmnist_size)
    return site.path


def read_raw(site: SiteConfig, seed: int = 0) -> dict[str, RawSplit]:
    """All splits of a site as stored, checked."""
    if site.synthetic:
        return make_synthetic(site.synthetic, site.task, len(site.classes), seed)
    return read_labelled_npz(data_file(site), site.task, len(site.classes))


def read_raw_images(site: SiteConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Images of every split, never the labels: what the server may read of a pool site."""
    if site.synthetic:
        return {k: v.images for k, v in make_synthetic(site.synthetic, site.task, len(site.classes), seed).items()}
    path = data_file(site)
    with open_npz(path) as npz:
        return {s: check_images(read_array(npz, f"{s}_images", path), f"{path} [{s}]") for s in SPLITS}


def pool_indices(images: dict[str, np.ndarray], fraction: float, seed: int) -> np.ndarray:
    """Train indices lent to the pool: whole groups of identical images, none equal to a val/test image."""
    hashes = image_hashes(images["train"])
    held_out = set(image_hashes(images["val"])) | set(image_hashes(images["test"]))
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        groups.setdefault(h, []).append(i)
    candidates = [h for h in groups if h not in held_out]
    order = np.random.default_rng(seed).permutation(len(candidates))
    chosen: list[int] = []
    target = int(round(fraction * len(hashes)))
    for j in order:
        if len(chosen) >= target:
            break
        chosen.extend(groups[candidates[j]])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def private_raw(site: SiteConfig, pool: PoolConfig, seed: int = 0) -> dict[str, RawSplit]:
    """A site's private splits: its train split minus the images it lends to the pool."""
    raw = read_raw(site, seed)
    if site.name in pool.sites:
        lent = pool_indices({k: v.images for k, v in raw.items()}, pool.fraction, pool.seed)
        keep = np.setdiff1d(np.arange(len(raw["train"].images)), lent)
        raw["train"] = RawSplit(raw["train"].images[keep], raw["train"].targets[keep])
        if keep.size == 0:
            raise DataError(f"{site.source}: pool.fraction {pool.fraction} leaves no private train images")
    return raw


def to_site_data(site: SiteConfig, raw: dict[str, RawSplit], spec: InputSpec) -> SiteData:
    splits = {}
    for name, split in raw.items():
        images = images_to_spec(split.images, spec)
        targets = masks_to_spec(split.targets, spec) if is_segmentation(site.task) else torch.from_numpy(split.targets)
        splits[name] = Split(images, targets)
    return SiteData(site, spec, splits, tuple(raw["train"].images.shape[1:]))


@lru_cache(maxsize=16)
def load_site(site: SiteConfig, pool: PoolConfig, spec: InputSpec, seed: int = 0) -> SiteData:
    """A site's private data at the input spec (cached per process: Flower reuses the process across stages)."""
    return to_site_data(site, private_raw(site, pool, seed), spec)


def pool_images_raw(config: FederationConfig) -> dict[str, np.ndarray]:
    """The server's pool as stored, by source: lent train images of pool sites, then extra files."""
    out = {}
    for name in config.pool.sites:
        site = config.site(name)
        images = read_raw_images(site, config.seed)
        out[site.source] = images["train"][pool_indices(images, config.pool.fraction, config.pool.seed)]
    for path in config.pool.files:
        out[str(path)] = read_images_npz(path, "images")
    return out


def balanced_subset(sizes: list[int], limit: int, seed: int) -> list[np.ndarray]:
    """Indices per source keeping at most `limit` in all, the room shared as evenly as the sizes allow."""
    keep, room = [0] * len(sizes), limit
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for rank, pos in enumerate(order):
        keep[pos] = min(sizes[pos], room // (len(order) - rank))
        room -= keep[pos]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.permutation(n)[:k]) for n, k in zip(sizes, keep, strict=True)]


@lru_cache(maxsize=4)
def load_pool(config: FederationConfig) -> dict[str, torch.Tensor]:
    """The pool at each input spec the federation uses, e.g. {'classification': N×3×32×32, 'segmentation': ...}.

    Each group keeps at most its limit of images (pool.max_images, pool.segmentation_max), shared evenly
    between the sources, so that every modality stays in the pool.
    """
    raw = pool_images_raw(config)
    if not raw:
        raise DataError(f"{config.source}: the server pool is empty (set pool.sites or pool.files)")
    parts = list(raw.values())
    limits = {"classification": config.pool.max_images, "segmentation": config.pool.segmentation_max}
    out = {}
    for group in sorted({spec_group(s.task) for s in config.sites}):
        picks = balanced_subset([len(p) for p in parts], limits[group], config.pool.seed)
        spec = dict(config.inputs)[group]
        out[group] = torch.cat([images_to_spec(p[idx], spec) for p, idx in zip(parts, picks, strict=True) if len(idx)])
    return out


def verify_disjoint(config: FederationConfig) -> int:
    """Hash every pool image and every private image; raise PrivacyError on any overlap. Returns pool size."""
    pool = pool_images_raw(config)
    pool_hashes = {h: src for src, imgs in pool.items() for h in image_hashes(imgs)}
    for site in config.sites:
        raw = private_raw(site, config.pool, config.seed)
        for split, data in raw.items():
            overlap = [h for h in image_hashes(data.images) if h in pool_hashes]
            if overlap:
                raise PrivacyError(
                    f"site '{site.name}' ({site.source}) [{split}]: {len(overlap)} private image(s) also in the "
                    f"server pool (from {pool_hashes[overlap[0]]}); pool and private data must be disjoint"
                )
    return len(pool_hashes)
