"""Stage 0: masked image modelling (SimMIM) of the encoder on the unlabelled server pool."""

import torch
from torch import nn

from meduniverse.core.config import FederationConfig, MethodConfig
from meduniverse.data.transforms import normalize
from meduniverse.method.loop import (
    StepCallback,
    TrainStats,
    cycle_batches,
    make_optimizer,
    optimise,
    pool_batch_sizes,
    pool_steps,
)
from meduniverse.method.losses import mim_loss
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import UniversalModel, build_model


def random_patch_mask(
    n: int, size: int, patch: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """N×1×size×size mask, 1 on a random `ratio` of the patch×patch squares.

    Args:
        n: masks to draw.
        size: image side in pixels.
        patch: side of a masked square.
        ratio: share of squares hidden.
        generator: the random source.
    """
    cells = size // patch
    scores = torch.rand(n, cells * cells, generator=generator)
    hidden = scores.argsort(1) < round(ratio * cells * cells)
    grid = hidden.view(n, 1, cells, cells).float()
    return grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def mim_step_loss(
    encoder: nn.Module,
    decoder: DecoderHead,
    images: torch.Tensor,
    method: MethodConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """SimMIM on a uint8 batch: hide random patches (set to 0 after normalisation), reconstruct
    their pixels.

    Args:
        encoder: gives the feature pyramid.
        decoder: reconstructs pixels from it.
        images: uint8 N×C×S×S.
        method: mask ratio and patch size.
        generator: the masks' random source.
    """
    x = normalize(images)
    size = x.shape[-1]
    mask = random_patch_mask(
        x.shape[0],
        size,
        max(1, int(size * method.mask_patch_fraction)),
        method.mask_ratio,
        generator,
    )
    mask = mask.to(x.device)
    return mim_loss(decoder(encoder(x * (1 - mask))), x, mask)


def pretrain_mim(
    encoder: nn.Module,
    decoder: DecoderHead,
    pool: dict[str, torch.Tensor],
    method: MethodConfig,
    seed: int,
    on_step: StepCallback | None = None,
) -> TrainStats:
    """MIM-pretrain the encoder (and its pixel decoder) on every input group of the pool.

    Args:
        encoder, decoder: trained in place; the decoder reconstructs pixels from the encoder's
        pyramid.
        pool: per input group, uint8 images N×C×S×S.
        method: mim_epochs, mask ratio and patch size, lr (one-cycle schedule), batch sizes.
        seed: batches and masks.
        on_step: progress callback (step, steps).
    """
    generator = torch.Generator().manual_seed(seed)
    sizes = pool_batch_sizes(pool, method)
    steps = pool_steps(pool, sizes, method.mim_epochs)
    optimizer = make_optimizer(
        list(encoder.parameters()) + list(decoder.parameters()), method.lr, method.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=method.lr, total_steps=steps, pct_start=0.1
    )
    encoder.train(), decoder.train()
    losses = (
        (
            sum(
                mim_step_loss(encoder, decoder, pool[g][idx], method, generator)
                for g, idx in batch.items()
            ),
            sum(len(idx) for idx in batch.values()),
        )
        for batch in cycle_batches(pool, sizes, steps, generator)
    )
    return optimise(optimizer, losses, steps, schedule, on_step)


def mim_model(
    config: FederationConfig,
    pool: dict[str, torch.Tensor],
    seed: int,
    on_step: StepCallback | None = None,
) -> tuple[UniversalModel, DecoderHead, TrainStats]:
    """Stage 0's model: a universal model built from `seed` whose encoder `pretrain_mim` trains on
    the pool (the baseline's encoder and G_0), with the pixel decoder trained along; both on the
    pool's device.

    Args:
        config: the federation (model and MIM settings).
        pool: per input group, uint8 images N×C×S×S, on the device to compute on.
        seed: the model's initialisation, batches and masks.
        on_step: progress callback (step, steps).
    """
    device = next(iter(pool.values())).device
    model = build_model(config, seed=seed).to(device)
    decoder = DecoderHead(model.encoder.widths, config.inputs[0][1].channels).to(device)
    stats = pretrain_mim(model.encoder, decoder, pool, config.method, seed, on_step)
    return model, decoder, stats
