"""The server's unlabelled pool, built once per run, and the check that it shares no image with any
site.

The pool holds the images that pool sites lend (`meduniverse.sites.sources.pool_indices`) and the
images of extra unlabelled files; the server reads image arrays only, never labels.
"""

from dataclasses import dataclass

import numpy as np
import torch

from meduniverse.core.config import FederationConfig
from meduniverse.core.errors import DataError, PrivacyError
from meduniverse.core.tasks import task_type
from meduniverse.data.npz import read_images_npz
from meduniverse.data.transforms import images_to_spec
from meduniverse.sites.duplicates import duplicate_keys, image_hashes, near_pairs, signatures
from meduniverse.sites.sources import (
    pool_indices,
    private_part,
    read_raw,
    read_raw_images,
)


@dataclass
class Pool:
    """The pool of one run.

    Args:
        sources: per source (a pool site's data source, or an extra file), its images as stored
            (N,H,W[,C]).
        images: per input group ('classification', 'segmentation'), uint8 N×C×S×S at that group's
            input spec: at most the group's limit, shared evenly between the sources.
        origins: per input group, the source of each of its images.
    """

    sources: dict[str, np.ndarray]
    images: dict[str, torch.Tensor]
    origins: dict[str, list[str]]

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The images of every input group on `device`."""
        return {group: x.to(device) for group, x in self.images.items()}

    def hashes(self) -> dict[str, str]:
        """SHA-256 of every pool image -> its source."""
        return {h: src for src, imgs in self.sources.items() for h in image_hashes(imgs)}


def pool_sources(config: FederationConfig) -> dict[str, np.ndarray]:
    """The server's pool as stored, by source: lent train images of pool sites, then extra files."""
    out = {}
    for name in config.pool.sites:
        site = config.site(name)
        images = read_raw_images(site, config.seed)
        out[site.source] = images["train"][
            pool_indices(
                duplicate_keys(images, config.pool.near_duplicate),
                config.pool.fraction,
                config.pool.seed,
            )
        ]
    for path in config.pool.files:
        out[str(path)] = read_images_npz(path, "images")
    return out


def balanced_subset(sizes: list[int], limit: int, seed: int) -> list[np.ndarray]:
    """Indices per source keeping at most `limit` in all, the room shared as evenly as the sizes
    allow."""
    keep, room = [0] * len(sizes), limit
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for rank, pos in enumerate(order):
        keep[pos] = min(sizes[pos], room // (len(order) - rank))
        room -= keep[pos]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.permutation(n)[:k]) for n, k in zip(sizes, keep, strict=True)]


def build_pool(config: FederationConfig) -> Pool:
    """The pool at each input spec the federation uses; raises DataError if it is empty."""
    sources = pool_sources(config)
    if not sources:
        raise DataError(f"{config.source}: the server pool is empty (set pool.sites or pool.files)")
    parts = list(sources.values())
    limits = {
        "classification": config.pool.max_images,
        "segmentation": config.pool.segmentation_max,
    }
    images, origins = {}, {}
    for group in sorted({task_type(s.task).group for s in config.sites}):
        picks = balanced_subset([len(p) for p in parts], limits[group], config.pool.seed)
        spec = dict(config.inputs)[group]
        images[group] = torch.cat(
            [images_to_spec(p[idx], spec) for p, idx in zip(parts, picks, strict=True) if len(idx)]
        )
        origins[group] = [src for src, idx in zip(sources, picks, strict=True) for _ in idx]
    return Pool(sources, images, origins)


def own_images(config: FederationConfig, pool: Pool) -> dict[str, torch.Tensor]:
    """Per site, which images of its input group's pool its own data lent (bool (N,)); all False
    for a site that lends none."""
    out = {}
    for site in config.sites:
        group = task_type(site.task).group
        out[site.name] = torch.tensor([src == site.source for src in pool.origins[group]])
    return out


def verify_disjoint(config: FederationConfig, pool: Pool) -> int:
    """Compare every private image with the pool, by hash and (pool.near_duplicate > 0) by
    thumbnail; raise PrivacyError on an identical or near-identical pair. Returns the pool's size
    (distinct images)."""
    pool_hashes, threshold = pool.hashes(), config.pool.near_duplicate
    pool_signatures = (
        {src: signatures(x) for src, x in pool.sources.items() if len(x)} if threshold > 0 else {}
    )
    for site in config.sites:
        raw = read_raw(site, config.seed)
        keys = duplicate_keys({k: v.images for k, v in raw.items()}, threshold)
        for split, data in private_part(site, raw, config.pool, keys).items():
            where = f"site '{site.name}' ({site.source}) [{split}]"
            overlap = [h for h in image_hashes(data.images) if h in pool_hashes]
            if overlap:
                raise PrivacyError(
                    f"{where}: {len(overlap)} private image(s) also in the server pool "
                    f"(from {pool_hashes[overlap[0]]}); pool and private data must be "
                    "disjoint"
                )
            mine = signatures(data.images) if pool_signatures else None
            for source, theirs in pool_signatures.items():
                near = {i for i, _ in near_pairs(mine, theirs, threshold)}
                if near:
                    raise PrivacyError(
                        f"{where}: {len(near)} private image(s) nearly identical to "
                        f"pool images from {source} (thumbnail correlation >= "
                        f"{threshold}); pool and private data must be disjoint"
                    )
    return len(pool_hashes)
