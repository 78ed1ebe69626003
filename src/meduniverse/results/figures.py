"""What the report's model figures show, computed from a run's checkpoints and the public pool: the
encoders' features of pool images (PCA) and the universal model's masks on pool images. The report
only draws them."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.tasks import task_type
from meduniverse.data.transforms import images_to_spec, normalize
from meduniverse.method.supervised import predict_probs
from meduniverse.models.universal import UniversalModel, build_model
from meduniverse.sites.pool import Pool

MAX_PER_SOURCE = 60
OVERLAYS_PER_SITE = 3


@dataclass
class Embedding:
    """Per pool image, its source's label and the first two principal components of each encoder's
    features."""

    labels: np.ndarray
    coords: dict[str, np.ndarray]  # 'baseline encoder (stage 0)' / 'universal encoder' -> (N, 2)


@dataclass
class Overlay:
    """A segmentation site's public pool images (uint8 C×S×S) and the universal model's foreground
    masks."""

    site: str
    images: np.ndarray
    masks: np.ndarray


def load_models(
    out_dir: Path, results: dict, config: FederationConfig
) -> tuple[UniversalModel, UniversalModel]:
    """The baseline (stage 0 encoder) and the universal model (last stage) of the first seed."""
    run_dir = out_dir / f"seed_{(results.get('seeds') or [config.seed])[0]}"
    ckpt = Checkpoints(
        run_dir if run_dir.is_dir() else out_dir
    )  # `meduniverse run` keeps one seed in out_dir itself
    for stage in (0, config.method.stages):
        if not ckpt.weights_path(stage).is_file():
            raise FileNotFoundError(f"no checkpoint {ckpt.weights_path(stage)}")
    baseline, universal = build_model(config), build_model(config)
    for model, stage, needed in ((baseline, 0, "encoder."), (universal, config.method.stages, "")):
        missing = [
            k
            for k in model.load_state_dict(ckpt.load_stage(stage), strict=False).missing_keys
            if k.startswith(needed)
        ]
        if missing:
            raise LookupError(
                f"the stage {stage} checkpoint lacks {missing[0]} and {len(missing) - 1} more "
                "weights"
            )
    return baseline.eval(), universal.eval()


def pool_samples(config: FederationConfig, pool: Pool) -> dict[str, tuple[str, torch.Tensor]]:
    """Per pool source: (site name, up to MAX_PER_SOURCE of its uint8 images at the site's input
    spec)."""
    sites = {s.source: s for s in config.sites}
    out = {}
    for source, images in pool.sources.items():
        if not len(images):
            continue
        site = sites.get(
            source
        )  # None for an extra pool file: named after it, at the classification spec
        pick = np.sort(np.random.default_rng(0).permutation(len(images))[:MAX_PER_SOURCE])
        spec = config.input_spec(site.task if site else "binary")
        out[source] = (site.name if site else Path(source).stem, images_to_spec(images[pick], spec))
    if not out:
        raise LookupError("the server pool is empty")
    return out


@torch.no_grad()
def features(model: UniversalModel, images: torch.Tensor) -> np.ndarray:
    """Global average pool of the encoder's deepest feature map."""
    return torch.cat(
        [model.encoder(normalize(x))[-1].mean((2, 3)) for x in images.split(64)]
    ).numpy()


def pca2(x: np.ndarray) -> np.ndarray:
    """The first two principal components (SVD of the centred features)."""
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))


def embedding(models: tuple[UniversalModel, UniversalModel], samples: dict) -> Embedding:
    """PCA of the pool samples' encoder features, baseline encoder and universal encoder."""
    labels = np.concatenate([[label] * len(imgs) for label, imgs in samples.values()])
    coords = {
        title: pca2(np.concatenate([features(model, imgs) for _, imgs in samples.values()]))
        for model, title in zip(
            models, ("baseline encoder (stage 0)", "universal encoder"), strict=True
        )
    }
    return Embedding(labels, coords)


def overlays(universal: UniversalModel, samples: dict, config: FederationConfig) -> list[Overlay]:
    """A few public images of each segmentation site with the universal model's predicted
    foreground."""
    out = []
    for site in config.sites:
        if task_type(site.task).segmentation and site.source in samples:
            images = samples[site.source][1][:OVERLAYS_PER_SITE]
            masks = predict_probs(universal, site.name, images).argmax(1).numpy() > 0
            out.append(Overlay(site.name, images.numpy(), masks))
    return out
