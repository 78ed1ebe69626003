"""Sites' private data, as tensors in memory at the input specification.

A fraction of a pool site's train images stands in for public images of that modality: it is
removed from the site's private split and given to the server's pool (`meduniverse.sites.pool`),
selected by image hash so that byte-identical copies never end up on both sides.
"""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from meduniverse.core.config import InputSpec, PoolConfig, SiteConfig
from meduniverse.core.errors import DataError
from meduniverse.core.tasks import task_type
from meduniverse.data.folders import read_folder
from meduniverse.data.medmnist import medmnist_file
from meduniverse.data.npz import check_images, open_npz, read_array, read_labelled_npz
from meduniverse.data.splits import SPLITS, RawSplit, Split
from meduniverse.data.synthetic import make_synthetic
from meduniverse.data.transforms import images_to_spec, masks_to_spec
from meduniverse.sites.duplicates import duplicate_keys

CPU_DEVICE = torch.device("cpu")


@dataclass
class SiteData:
    """A site's private splits at its input spec, and the native shape of its stored images."""

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

    @property
    def device(self) -> torch.device:
        return self.splits["train"].images.device


def data_file(site: SiteConfig) -> Path:
    if site.medmnist:
        return medmnist_file(site.medmnist, site.medmnist_root, site.medmnist_size)
    return site.path


def is_folder(site: SiteConfig) -> bool:
    """Whether the site is kept as a folder of its own files (not an npz file)."""
    return site.path is not None and site.path.is_dir()


def read_raw(site: SiteConfig, seed: int = 0) -> dict[str, RawSplit]:
    """All splits of a site as stored (npz file, folder of its own files, synthetic), checked."""
    if site.synthetic:
        return make_synthetic(site.synthetic, site.task, len(site.classes), seed)
    if is_folder(site):
        return read_folder(
            site.path,
            site.task,
            site.classes,
            site.size,
            site.split,
            site.split_seed,
            site.labels,
            site.axis,
        )
    return read_labelled_npz(data_file(site), site.task, len(site.classes))


def read_raw_images(site: SiteConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Images of every split, never the labels: what the server may read of a pool site."""
    if site.synthetic or is_folder(site):  # generated, or labelled by its layout: read, then
        return {k: v.images for k, v in read_raw(site, seed).items()}  # the labels dropped
    path = data_file(site)
    with open_npz(path) as npz:
        return {
            s: check_images(read_array(npz, f"{s}_images", path), f"{path} [{s}]") for s in SPLITS
        }


def pool_indices(hashes: dict[str, list[str]], fraction: float, seed: int) -> np.ndarray:
    """Train indices lent to the pool: whole groups of identical (or near-identical) images, none
    like a val/test image.

    Args:
        hashes: per split ('train', 'val', 'test'), each image's `duplicate_keys` group.
        fraction: share of the train images to lend.
        seed: the pool's seed.
    """
    held_out = set(hashes["val"]) | set(hashes["test"])
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes["train"]):
        groups.setdefault(h, []).append(i)
    candidates = [h for h in groups if h not in held_out]
    order = np.random.default_rng(seed).permutation(len(candidates))
    chosen: list[int] = []
    target = round(fraction * len(hashes["train"]))
    for j in order:
        if len(chosen) >= target:
            break
        chosen.extend(groups[candidates[j]])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def private_part(
    site: SiteConfig,
    raw: dict[str, RawSplit],
    pool: PoolConfig,
    hashes: dict[str, list[str]] | None = None,
) -> dict[str, RawSplit]:
    """A site's private splits: its train split minus the images it lends to the pool (if it is a
    pool site).

    Args:
        site: the site.
        raw: its splits as stored.
        pool: the pool settings (which sites lend, how much).
        hashes: the splits' image hashes, when already computed.
    """
    if site.name not in pool.sites:
        return raw
    hashes = hashes or duplicate_keys({k: v.images for k, v in raw.items()}, pool.near_duplicate)
    lent = pool_indices(hashes, pool.fraction, pool.seed)
    keep = np.setdiff1d(np.arange(len(raw["train"].images)), lent)
    if keep.size == 0:
        raise DataError(
            f"{site.source}: pool.fraction {pool.fraction} leaves no private train images"
        )
    return {**raw, "train": RawSplit(raw["train"].images[keep], raw["train"].targets[keep])}


def private_raw(site: SiteConfig, pool: PoolConfig, seed: int = 0) -> dict[str, RawSplit]:
    """A site's private splits as stored: see `private_part`."""
    return private_part(site, read_raw(site, seed), pool)


def to_split(raw: RawSplit, spec: InputSpec, task: str) -> Split:
    """A stored split at the input spec: images resized once, masks nearest-neighbour, labels as
    they are."""
    targets = (
        masks_to_spec(raw.targets, spec)
        if task_type(task).segmentation
        else torch.from_numpy(raw.targets)
    )
    return Split(images_to_spec(raw.images, spec), targets)


def to_site_data(site: SiteConfig, raw: dict[str, RawSplit], spec: InputSpec) -> SiteData:
    splits = {name: to_split(split, spec, site.task) for name, split in raw.items()}
    return SiteData(site, spec, splits, tuple(raw["train"].images.shape[1:]))


@lru_cache(maxsize=16)
def load_site(
    site: SiteConfig,
    pool: PoolConfig,
    spec: InputSpec,
    seed: int = 0,
    device: torch.device = CPU_DEVICE,
) -> SiteData:
    """A site's private data at the input spec (cached per process: Flower reuses the process across
    stages).

    Args:
        site: the site.
        pool: the pool settings (what the site lends).
        spec: the input spec of its task's group.
        seed: the federation's seed (synthetic sites).
        device: where the tensors are placed, once.
    """
    data = to_site_data(site, private_raw(site, pool, seed), spec)
    data.splits = {name: split.to(device) for name, split in data.splits.items()}
    return data


def class_warnings(data: SiteData) -> list[str]:
    """Lines about classes a classification site declares but whose labels a split never uses."""
    if task_type(data.task).segmentation or data.task == "multilabel":
        return []
    out = []
    for split, part in data.splits.items():
        present = set(part.targets.unique().tolist())
        absent = [c for i, c in enumerate(data.config.classes) if i not in present]
        if absent:
            out.append(
                f"site '{data.name}' [{split}]: no example of class(es) {', '.join(absent)} "
                f"({len(present)} of {len(data.config.classes)} classes used)"
            )
    return out
