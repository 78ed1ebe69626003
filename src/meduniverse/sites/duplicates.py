"""Identical and near-identical images: the pool must share neither with any site's private data.

Two images are near-identical when their 16×16 gray thumbnails, each centred and scaled to unit
length, correlate at `threshold` or more (0.999 by default: a re-saved, re-compressed or slightly
shifted copy; on shared8 this flags 11 breast ultrasound and 4 fundus train images that byte hashes
miss).
"""

import hashlib

import numpy as np
import torch
import torch.nn.functional as F


def image_hashes(images: np.ndarray) -> list[str]:
    """SHA-256 of each image's bytes."""
    return [hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest() for img in images]


def signatures(images: np.ndarray) -> torch.Tensor:
    """(N, 256) unit vectors: each image's 16×16 gray thumbnail, centred."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x.mean(-1) if x.ndim == 4 else x
    x = F.interpolate(x[:, None], size=(16, 16), mode="area")[:, 0].reshape(len(x), -1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)


def near_pairs(
    a: torch.Tensor, b: torch.Tensor, threshold: float, chunk: int = 2048
) -> list[tuple[int, int]]:
    """Index pairs (i in a, j in b) of signatures correlating at `threshold` or more."""
    pairs = []
    for start in range(0, len(a), chunk):
        hits = torch.nonzero(a[start : start + chunk] @ b.T >= threshold)
        pairs += [(start + int(i), int(j)) for i, j in hits]
    return pairs


def duplicate_keys(images: dict[str, np.ndarray], threshold: float) -> dict[str, list[str]]:
    """Per split, a key for each image that identical and (with threshold > 0) near-identical images
    share, across splits: the SHA-256 of one image of its group."""
    names = list(images)
    keys = [h for split in names for h in image_hashes(images[split])]
    if threshold > 0:
        parent = list(range(len(keys)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        first = {}
        for i, key in enumerate(keys):  # identical images first
            parent[i] = root(first.setdefault(key, i))
        sig = signatures(np.concatenate([images[s] for s in names]))
        for i, j in near_pairs(sig, sig, threshold):
            if i < j:
                parent[root(j)] = root(i)
        keys = [keys[root(i)] for i in range(len(keys))]
    out, start = {}, 0
    for split in names:
        out[split] = keys[start : start + len(images[split])]
        start += len(images[split])
    return out
