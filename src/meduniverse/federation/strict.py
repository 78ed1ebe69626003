"""Strict transfer (`privacy.transfer = 'outputs'`): what the universal model's strategy needs to
send each site the public pool images of its input group and to check the logits it sends back."""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from meduniverse.core.config import FederationConfig
from meduniverse.core.tasks import task_type
from meduniverse.method.server import distillation_pool, outputs_shape


@dataclass(frozen=True)
class StrictTransfer:
    """Strict transfer (`privacy.transfer = 'outputs'`) for `UniversalDistillation`: each stage,
    every site gets its input group's distillation images with the weights and sends back only its
    model's logits on them.

    Args:
        pool: the stage's seed -> per input group, the images distilled on
            (`meduniverse.method.server.distillation_pool`: the server draws the same ones again).
        group_of: site -> its input group.
        shape: (site, images) -> the shape its head's logits on them must have
            (`meduniverse.method.server.outputs_shape`).
    """

    pool: Callable[[int], dict[str, torch.Tensor]]
    group_of: dict[str, str]
    shape: Callable[[str, torch.Tensor], tuple[int, ...]]

    @classmethod
    def of(cls, config: FederationConfig, pool: dict[str, torch.Tensor]) -> "StrictTransfer":
        """Strict transfer for this federation and pool (per input group, N×C×S×S)."""
        return cls(
            partial(distillation_pool, config, pool),
            {s.name: task_type(s.task).group for s in config.sites},
            partial(outputs_shape, config),
        )
