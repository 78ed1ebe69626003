"""The method's steps as plain functions: supervised (local) training, fine-tuning with early stopping,
evaluation, MIM pretraining, averaging and server-side distillation with retention.

None of these needs Flower; the Flower apps only call them.
"""

from collections.abc import Callable, Iterator
import copy
from dataclasses import dataclass
import math
import time

import torch
from torch import nn

from meduniverse.config import FinetuneConfig, MethodConfig
from meduniverse.losses import mim_loss, probabilities, soft_target_loss, task_loss
from meduniverse.metrics import task_metrics
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import UniversalModel
from meduniverse.sites import Split
from meduniverse.tasks import is_segmentation, primary_metric
from meduniverse.transforms import normalize, random_flip

StepCallback = Callable[[int, int], None]


@dataclass
class TrainStats:
    """What a training call did: steps, images seen, seconds and the mean loss."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    loss: float = float("nan")

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def batch_size_for(task_or_group: str, method: MethodConfig) -> int:
    """Batch size of a task type or input group ('segmentation' or 'classification')."""
    return method.seg_batch_size if is_segmentation(task_or_group) else method.batch_size


def shuffled_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` batches of indices, reshuffling after every pass over the n examples."""
    order, pos = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch_size > n and pos > 0:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        yield idx


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


Penalty = Callable[[], torch.Tensor]


def train_supervised(model: UniversalModel, task_name: str, data: Split, steps: int, batch_size: int,
                     optimizer: torch.optim.Optimizer, seed: int, penalty: Penalty | None = None) -> TrainStats:
    """Train encoder + one head on labelled data for a number of steps (random flips as augmentation),
    adding `penalty()` to each step's loss if given (FedProx's proximal term)."""
    task = model.tasks[task_name].task
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start, total = time.perf_counter(), 0.0
    stats = TrainStats()
    for idx in shuffled_batches(len(data), min(batch_size, len(data)), steps, generator):
        masks = data.targets[idx] if is_segmentation(task) else None
        images, masks = random_flip(data.images[idx], masks, generator)
        targets = masks if masks is not None else data.targets[idx]
        loss = task_loss(model(normalize(images), task_name), targets, task)
        if penalty is not None:
            loss = loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        stats.images += len(idx)
    stats.steps, stats.seconds = steps, time.perf_counter() - start
    stats.loss = total / max(steps, 1)
    return stats


def steps_per_epoch(n: int, batch_size: int, minimum: int, cap: int = 0) -> int:
    """Enough steps to see every example once, at least `minimum`, at most `cap` if one is set (0: none)."""
    steps = max(math.ceil(n / batch_size), minimum)
    return min(steps, cap) if cap else steps


def local_steps(task: str, n: int, method: MethodConfig) -> int:
    """Steps of one stage's local training on n examples: local_epochs passes."""
    bs = batch_size_for(task, method)
    return method.local_epochs * steps_per_epoch(n, bs, method.min_steps_per_epoch, method.max_steps_per_epoch)


def train_local(model: UniversalModel, task_name: str, data: Split, method: MethodConfig, seed: int,
                penalty: Penalty | None = None) -> TrainStats:
    """A site's stage: fine-tune the global encoder + its head on its private train split."""
    task = model.tasks[task_name].task
    optimizer = make_optimizer(model.parameters(), method.lr, method.weight_decay)
    return train_supervised(model, task_name, data, local_steps(task, len(data), method), batch_size_for(task, method),
                            optimizer, seed, penalty)


def proximal_term(model: nn.Module, reference: dict[str, torch.Tensor], mu: float) -> Penalty:
    """FedProx: mu/2 * ||w - w_global||^2 over the parameters named in `reference`."""
    pairs = [(p, reference[name].detach().clone()) for name, p in model.named_parameters() if name in reference]
    return lambda: (mu / 2) * sum((p - ref).pow(2).sum() for p, ref in pairs)


def train_multitask(model: UniversalModel, data: dict[str, Split], method: MethodConfig, seed: int,
                    on_step: StepCallback | None = None) -> TrainStats:
    """Centralised training on pooled data: every task gets its stages x local-training steps, interleaved at random."""
    generator = torch.Generator().manual_seed(seed)
    tasks = {name: model.tasks[name].task for name in data}
    budget = {name: method.stages * local_steps(tasks[name], len(split), method) for name, split in data.items()}
    order = [name for name, steps in budget.items() for _ in range(steps)]
    order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
    batches = {name: shuffled_batches(len(split), min(batch_size_for(tasks[name], method), len(split)), budget[name], generator)
               for name, split in data.items()}
    optimizer = make_optimizer(model.parameters(), method.lr, method.weight_decay)
    model.train()
    stats, start, total = TrainStats(steps=len(order)), time.perf_counter(), 0.0
    for step, name in enumerate(order, 1):
        idx, split = next(batches[name]), data[name]
        masks = split.targets[idx] if is_segmentation(tasks[name]) else None
        images, masks = random_flip(split.images[idx], masks, generator)
        loss = task_loss(model(normalize(images), name), masks if masks is not None else split.targets[idx], tasks[name])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        stats.images += len(idx)
        if on_step:
            on_step(step, len(order))
    stats.seconds, stats.loss = time.perf_counter() - start, total / max(len(order), 1)
    return stats


@torch.no_grad()
def predict_probs(model: UniversalModel, task_name: str, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Probabilities of one head for uint8 images, batched, in eval mode."""
    model.eval()
    task = model.tasks[task_name].task
    return torch.cat([probabilities(model(normalize(x), task_name), task) for x in images.split(batch_size)])


def evaluate(model: UniversalModel, task_name: str, data: Split) -> dict[str, float]:
    info = model.tasks[task_name]
    return task_metrics(predict_probs(model, task_name, data.images), data.targets, info.task, len(info.classes))


def finetune(model: UniversalModel, task_name: str, train: Split, val: Split, method: MethodConfig,
             finetune_cfg: FinetuneConfig, seed: int, frozen_encoder: bool = False) -> dict:
    """Fine-tune encoder + head (or, with frozen_encoder, the head alone: a probe) with early stopping on the
    validation primary metric; keep the best epoch.

    Every per-task fine-tune and probe (every arm) runs this one function with the same optimiser and schedule.
    An 'epoch' is one pass over the train split, capped at finetune_cfg.max_steps_per_epoch steps
    (validation then runs at least that often on large sites).
    """
    task = model.tasks[task_name].task
    key = primary_metric(task)
    bs = batch_size_for(task, method)
    steps = steps_per_epoch(len(train), bs, method.min_steps_per_epoch, finetune_cfg.max_steps_per_epoch)
    model.encoder.requires_grad_(not frozen_encoder)
    optimizer = make_optimizer(model.parameters(), finetune_cfg.lr, method.weight_decay)
    best_score, best_state, best_epoch, waited = -math.inf, copy.deepcopy(model.state_dict()), 0, 0
    history = []
    for epoch in range(1, finetune_cfg.max_epochs + 1):
        stats = train_supervised(model, task_name, train, steps, bs, optimizer, seed * 1000 + epoch)
        score = evaluate(model, task_name, val)[key]
        history.append({"epoch": epoch, "loss": stats.loss, f"val_{key}": score})
        if score > best_score:
            best_score, best_state, best_epoch, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= finetune_cfg.patience:
                break
    model.load_state_dict(best_state)
    model.encoder.requires_grad_(True)
    return {"best_epoch": best_epoch, "epochs": len(history), f"val_{key}": best_score, "history": history}


def random_patch_mask(n: int, size: int, patch: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """N×1×size×size mask, 1 on a random `ratio` of the patch×patch squares."""
    cells = size // patch
    scores = torch.rand(n, cells * cells, generator=generator)
    hidden = scores.argsort(1) < int(round(ratio * cells * cells))
    grid = hidden.view(n, 1, cells, cells).float()
    return grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def mim_step_loss(encoder: nn.Module, decoder: DecoderHead, images: torch.Tensor, method: MethodConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """SimMIM on a uint8 batch: hide random patches (set to 0 after normalisation), reconstruct their pixels."""
    x = normalize(images)
    size = x.shape[-1]
    mask = random_patch_mask(x.shape[0], size, max(1, int(size * method.mask_patch_fraction)), method.mask_ratio, generator)
    return mim_loss(decoder(encoder(x * (1 - mask))), x, mask)


def cycle_batches(pool: dict[str, torch.Tensor], batch_sizes: dict[str, int], steps: int,
                  generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Each step, one batch of indices per input group, every group reshuffled when exhausted."""
    iters = {g: shuffled_batches(len(x), min(batch_sizes[g], len(x)), steps, generator) for g, x in pool.items()}
    for _ in range(steps):
        yield {g: next(it) for g, it in iters.items()}


def pool_steps(pool: dict[str, torch.Tensor], batch_sizes: dict[str, int], epochs: int) -> int:
    return epochs * max(math.ceil(len(x) / batch_sizes[g]) for g, x in pool.items())


def pool_batch_sizes(pool: dict[str, torch.Tensor], method: MethodConfig) -> dict[str, int]:
    return {g: batch_size_for(g, method) for g in pool}


def pretrain_mim(encoder: nn.Module, decoder: DecoderHead, pool: dict[str, torch.Tensor], method: MethodConfig,
                 seed: int, on_step: StepCallback | None = None) -> TrainStats:
    """Stage 0: masked image modelling of the encoder on the unlabelled server pool (every input group)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = pool_batch_sizes(pool, method)
    steps = pool_steps(pool, sizes, method.mim_epochs)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = make_optimizer(params, method.lr, method.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=method.lr, total_steps=steps, pct_start=0.1)
    encoder.train(), decoder.train()
    stats, start, total = TrainStats(steps=steps), time.perf_counter(), 0.0
    for step, batch in enumerate(cycle_batches(pool, sizes, steps, generator), 1):
        loss = sum(mim_step_loss(encoder, decoder, pool[g][idx], method, generator) for g, idx in batch.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item()
        stats.images += sum(len(idx) for idx in batch.values())
        if on_step:
            on_step(step, steps)
    stats.seconds, stats.loss = time.perf_counter() - start, total / steps
    return stats


def weighted_average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Sample-weighted average of state dicts with the same keys (floating tensors only)."""
    total = float(sum(weights))
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights, strict=True)).to(states[0][k].dtype) for k in states[0]}


@torch.no_grad()
def pool_logits(model: UniversalModel, task_names: list[str], pool: dict[str, torch.Tensor], group_of: dict[str, str],
                batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Logits of the given heads on the pool images of their input group (one encoder pass per batch)."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {t: [] for t in task_names}
    for group, images in pool.items():
        names = [t for t in task_names if group_of[t] == group]
        if not names:
            continue
        for x in images.split(batch_size):
            for t, logits in model.forward_heads(normalize(x), names).items():
                out[t].append(logits.half())
    return {t: torch.cat(v) for t, v in out.items() if v}


def distill(student: UniversalModel, teacher_logits: dict[str, torch.Tensor], retained_logits: dict[str, torch.Tensor],
            pool: dict[str, torch.Tensor], group_of: dict[str, str], method: MethodConfig, seed: int,
            mim_decoder: DecoderHead | None = None, on_step: StepCallback | None = None) -> TrainStats:
    """Server step: train the student so head k matches teacher k on the pool, plus the retention term.

    'mixed': every step, every head k gets KD(H_k, teacher_k) + retention * KD(H_k, G_{s-1}'s H_k)
    (`retained_logits`). 'round_robin' (FedNet): the steps are split into one block per site k; in
    block k the loss is KD(H_k, teacher_k) + retention * mean over j != k of KD(H_j, H_j as it was
    when block k began). Either way + mim_weight * the MIM loss on the pool when a MIM decoder is
    given (variant c).
    """
    generator = torch.Generator().manual_seed(seed)
    sizes = pool_batch_sizes(pool, method)
    steps = pool_steps(pool, sizes, method.distill_epochs)
    names = list(teacher_logits)
    every_head = list(dict.fromkeys(names + list(retained_logits)))
    tasks = {t: student.tasks[t].task for t in every_head}
    mixed = method.distill_schedule == "mixed"
    blocks = [(set(names), steps)] if mixed else [({t}, steps // len(names) + (i < steps % len(names))) for i, t in enumerate(names)]
    params = list(student.parameters()) + (list(mim_decoder.parameters()) if mim_decoder else [])
    optimizer = make_optimizer(params, method.lr, method.weight_decay)
    stats, start, total, step = TrainStats(steps=steps), time.perf_counter(), 0.0, 0
    batches = cycle_batches(pool, sizes, steps, generator)
    for active, block_steps in blocks:
        retained = [t for t in every_head if mixed or t not in active] if method.retention > 0 else []
        if not mixed and retained:
            retained_logits = pool_logits(student, retained, pool, group_of)
        weight = method.retention if mixed else method.retention / max(len(retained), 1)
        student.train()
        for _ in range(block_steps):
            batch = next(batches)
            loss = torch.zeros(())
            for group, idx in batch.items():
                heads = [t for t in every_head if group_of[t] == group and (t in active or t in retained)]
                if not heads:
                    continue
                outputs = student.forward_heads(normalize(pool[group][idx]), heads)
                for t in heads:
                    if t in active:
                        loss = loss + soft_target_loss(outputs[t], teacher_logits[t][idx].float(), tasks[t], method.temperature)
                    if t in retained:
                        loss = loss + weight * soft_target_loss(outputs[t], retained_logits[t][idx].float(), tasks[t], method.temperature)
                if mim_decoder is not None and method.mim_weight > 0:
                    loss = loss + method.mim_weight * mim_step_loss(student.encoder, mim_decoder, pool[group][idx], method, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            stats.images += sum(len(idx) for idx in batch.values())
            step += 1
            if on_step:
                on_step(step, steps)
    stats.seconds, stats.loss = time.perf_counter() - start, total / max(steps, 1)
    return stats
