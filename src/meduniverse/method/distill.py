"""Server-side distillation: the site models' outputs on the public pool become targets for the
universal model's heads, with a retention term that keeps what the heads knew before."""

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from meduniverse.core.config import MethodConfig
from meduniverse.data.transforms import normalize
from meduniverse.method.loop import (
    StepCallback,
    StepLosses,
    TrainStats,
    backward_by_head,
    cycle_batches,
    make_optimizer,
    optimise,
    pool_batch_sizes,
    pool_steps,
)
from meduniverse.method.losses import feature_distance, soft_target_loss, teacher_term
from meduniverse.method.mim import mim_step_loss
from meduniverse.method.outputs import DiskRows, RowWriter
from meduniverse.method.select import BestStudent
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import UniversalModel, pooled


@torch.no_grad()
def pool_logits(
    model: UniversalModel,
    task_names: list[str],
    pool: dict[str, torch.Tensor],
    group_of: dict[str, str],
    batch: int = 128,
    folder: Path | None = None,
) -> dict[str, torch.Tensor | DiskRows]:
    """Logits (float16) of the given heads on the pool images of their input group, one encoder pass
    per batch, each head's written before the next head runs.

    Args:
        model: evaluated in eval mode.
        task_names: the heads.
        pool: per input group, uint8 images N×C×S×S.
        group_of: each head's input group.
        batch: images per forward pass.
        folder: None: each head's logits in memory, (N, C) or (N, C, S, S); a folder: written there
            batch by batch and read back by rows (`DiskRows`), so memory holds one batch.
    """
    model.eval()
    device = next(iter(pool.values())).device
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, RowWriter] = {}
    for group, images in pool.items():
        names = [t for t in task_names if group_of[t] == group]
        writers = {t: RowWriter(t, folder, device) for t in names}
        for x in images.split(batch):
            pyramids = model.pyramids(normalize(x), names)
            for t in names:  # one head's logits at a time: memory flat in the number of heads
                writers[t].add(model.heads[t](pyramids[t]))
        out.update(writers)
    return {t: w.done() for t, w in out.items() if w.count}


@torch.no_grad()
def pool_features(
    model: UniversalModel, task: str, images: torch.Tensor, batch: int = 128
) -> torch.Tensor:
    """One task's encoder features on its group's pool images (`pooled`: the deepest level averaged
    over space), float32, N×D.

    Args:
        model: evaluated in eval mode.
        task: whose pyramid (its adapters, if the model has them).
        images: uint8 N×C×S×S.
        batch: images per forward pass.
    """
    model.eval()
    return torch.cat(
        [pooled(model.pyramids(normalize(x), [task])[task]).float() for x in images.split(batch)]
    )


@dataclass
class FeatureTargets:
    """Feature-level distillation's targets and maps: per head, its teacher's `pool_features` (N×D)
    and a linear map from the student's features to them (starts as the identity)."""

    features: dict[str, torch.Tensor]
    maps: nn.ModuleDict

    @classmethod
    def identity(cls, features: dict[str, torch.Tensor]) -> "FeatureTargets":
        maps = nn.ModuleDict()
        for task, f in features.items():
            maps[task] = nn.Linear(f.shape[1], f.shape[1]).to(f.device)
            nn.init.eye_(maps[task].weight)
            nn.init.zeros_(maps[task].bias)
        return cls(features, maps)


def distill(
    student: UniversalModel,
    teacher_logits: dict[str, torch.Tensor | DiskRows],
    retained_logits: dict[str, torch.Tensor | DiskRows],
    pool: dict[str, torch.Tensor],
    group_of: dict[str, str],
    method: MethodConfig,
    seed: int,
    mim_decoder: DecoderHead | None = None,
    on_step: StepCallback | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    teacher_features: dict[str, torch.Tensor] | None = None,
    held: dict[str, torch.Tensor] | None = None,
) -> TrainStats:
    """Train the student so that head k matches teacher k on the pool, plus the retention term.

    'mixed': every step, every head k gets KD(H_k, teacher_k) + retention * KD(H_k, G_{s-1}'s H_k)
    (`retained_logits`). 'round_robin' (FedNet): the steps are split into one block per site k; in
    block k the loss is KD(H_k, teacher_k) + retention * mean over j != k of KD(H_j, H_j as it was
    when block k began). Either way + mim_weight * the MIM loss on the pool when a MIM decoder is
    given (variant c), + feature_weight * the feature term of every head whose teacher's features
    are given (`FeatureTargets`).

    Args:
        student: the universal model, trained in place.
        teacher_logits: per head, the teacher's logits on its group's pool images (row i = pool
            image i), a tensor or rows on disk (`pool_logits`).
        retained_logits: per head, G_{s-1}'s logits on the same images (the retention targets).
        pool: per input group, uint8 images N×C×S×S.
        group_of: each head's input group.
        method: distill_epochs, schedule, retention, temperature, mim_weight, lr, batch sizes.
        seed: batches and MIM masks.
        mim_decoder: the stage-0 pixel decoder, trained along when mim_weight > 0.
        on_step: progress callback (step, steps).
        weights: per head, a weight for each of its group's pool images in its teacher's term
            (None: equal weights).
        teacher_features: per head, its teacher's `pool_features` (used when feature_weight > 0).
        held: per input group, the pool rows held out of training (`holdout_rows`); given, the
            student is checked on them after every epoch and the best one is kept (`BestStudent`).
    """
    generator = torch.Generator().manual_seed(seed)
    sizes = pool_batch_sizes(pool, method)
    steps = pool_steps(pool, sizes, method.distill_epochs)
    names = list(teacher_logits)
    targets = (
        FeatureTargets.identity(teacher_features)
        if teacher_features and method.feature_weight > 0
        else None
    )
    params = list(student.parameters()) + (list(mim_decoder.parameters()) if mim_decoder else [])
    params += list(targets.maps.parameters()) if targets else []
    optimizer = make_optimizer(params, method.lr, method.weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        if method.distill_lr_schedule == "cosine"
        else None
    )
    best = BestStudent(student, teacher_logits, pool, held, group_of, method) if held else None
    out = held or {g: torch.zeros(len(x), dtype=torch.bool) for g, x in pool.items()}
    rows = {g: (~mask).nonzero().squeeze(1).to(pool[g].device) for g, mask in out.items()}
    batches = (  # the trained rows only
        {g: rows[g][i] for g, i in b.items()} for b in cycle_batches(rows, sizes, steps, generator)
    )
    if method.distill_schedule == "mixed":
        blocks = [(set(names), steps)]
    else:
        blocks = [
            ({t}, steps // len(names) + (i < steps % len(names))) for i, t in enumerate(names)
        ]
    losses = _distill_losses(
        student,
        teacher_logits,
        retained_logits,
        pool,
        group_of,
        method,
        blocks,
        batches,
        generator,
        mim_decoder,
        weights or {},
        targets,
    )
    callback = best.every_epoch(steps // method.distill_epochs, on_step) if best else on_step
    stats = optimise(optimizer, losses, steps, scheduler, callback)
    if best:
        best.restore()
    return stats


@dataclass
class _HeadTerms:
    """What a head's distillation loss is made of in one block (see `distill`)."""

    student: UniversalModel
    teacher_logits: dict[str, torch.Tensor | DiskRows]
    retained_logits: dict[str, torch.Tensor | DiskRows]
    tasks: dict[str, str]
    method: MethodConfig
    active: set[str]
    retained: list[str]
    retained_weight: float
    weights: dict[str, torch.Tensor]
    targets: FeatureTargets | None

    def loss(self, t: str, pyramid: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """Head t's loss on the pool rows `idx` from its encoder pyramid."""
        m, targets = self.method, self.targets
        output, loss = self.student.heads[t](pyramid), torch.zeros((), device=idx.device)
        if t in self.active and targets and t in targets.features:
            loss = loss + m.feature_weight * feature_distance(
                targets.maps[t](pooled(pyramid)), targets.features[t][idx].float()
            )
        if t in self.active:
            weights = self.weights[t][idx] if t in self.weights else None
            loss = loss + teacher_term(
                output, self.teacher_logits[t][idx].float(), self.tasks[t], m, weights
            )
        if t in self.retained:
            loss = loss + self.retained_weight * soft_target_loss(
                output, self.retained_logits[t][idx].float(), self.tasks[t], m.temperature
            )
        return loss


def _distill_losses(
    student: UniversalModel,
    teacher_logits: dict[str, torch.Tensor | DiskRows],
    retained_logits: dict[str, torch.Tensor | DiskRows],
    pool: dict[str, torch.Tensor],
    group_of: dict[str, str],
    method: MethodConfig,
    blocks: list[tuple[set[str], int]],
    batches,
    generator: torch.Generator,
    mim_decoder: DecoderHead | None,
    weights: dict[str, torch.Tensor],
    targets: FeatureTargets | None,
) -> StepLosses:
    """The loss of each distillation step, block by block (see `distill`), backpropagated head by
    head (`backward_by_head`) and yielded detached."""
    mixed = method.distill_schedule == "mixed"
    every_head = list(dict.fromkeys(list(teacher_logits) + list(retained_logits)))
    tasks = {t: student.tasks[t].task for t in every_head}
    for active, block_steps in blocks:
        retained = (
            [t for t in every_head if mixed or t not in active] if method.retention > 0 else []
        )
        if not mixed and retained:
            retained_logits = pool_logits(student, retained, pool, group_of)
        weight = method.retention if mixed else method.retention / max(len(retained), 1)
        terms = _HeadTerms(
            student,
            teacher_logits,
            retained_logits,
            tasks,
            method,
            active,
            retained,
            weight,
            weights,
            targets,
        )
        student.train()
        for _ in range(block_steps):
            batch = next(batches)
            loss = torch.zeros((), device=pool[next(iter(pool))].device)
            for group, idx in batch.items():
                heads = [
                    t for t in every_head if group_of[t] == group and (t in active or t in retained)
                ]
                if not heads:
                    continue
                pyramids = student.pyramids(normalize(pool[group][idx]), heads)
                loss = loss + backward_by_head(pyramids, partial(terms.loss, idx=idx))
                if mim_decoder is not None and method.mim_weight > 0:
                    reconstruction = method.mim_weight * mim_step_loss(
                        student.encoder, mim_decoder, pool[group][idx], method, generator
                    )
                    reconstruction.backward()
                    loss = loss + reconstruction.detach()
            yield loss, sum(len(idx) for idx in batch.values())
