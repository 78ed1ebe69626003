"""Use a saved universal model: class probabilities or a segmentation mask per image."""

from pathlib import Path

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

from meduniverse.core.config import InputSpec
from meduniverse.core.errors import DataError
from meduniverse.core.tasks import task_type
from meduniverse.data.images import read_image
from meduniverse.data.transforms import images_to_spec
from meduniverse.method.site import predict_probs
from meduniverse.models.universal import UniversalModel


def task_card(card: dict, task: str) -> dict:
    for entry in card["tasks"]:
        if entry["name"] == task:
            return entry
    raise DataError(
        f"model has no task '{task}' (tasks: {', '.join(t['name'] for t in card['tasks'])})"
    )


def predict_image(model: UniversalModel, card: dict, task: str, path: Path) -> torch.Tensor:
    """Probabilities (C,) for classification or (C,H,W) at the image's own size for segmentation.

    Args:
        model: the universal model.
        card: its card (the task's input spec and type).
        task: the head to use.
        path: the image file.
    """
    entry = task_card(card, task)
    spec = InputSpec(entry["input"]["size"], entry["input"]["channels"])
    image = read_image(path)
    probs = predict_probs(model, task, images_to_spec(image[None], spec))[0]
    if task_type(entry["type"]).segmentation:
        probs = F.interpolate(
            probs[None], size=image.shape[:2], mode="bilinear", align_corners=False
        )[0]
    return probs


def write_mask(probs: torch.Tensor, path: Path) -> None:
    """Class ids as a gray PNG, spread over 0..255 (binary: 0 background, 255 foreground)."""
    ids = probs.argmax(0).numpy().astype(np.uint8)
    scale = 255 // max(probs.shape[0] - 1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids * scale).save(path)
