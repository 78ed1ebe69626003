"""Differentially private local training (DP-SGD with Opacus): per-example gradients clipped to a
norm, Gaussian noise added, Poisson-sampled batches; the noise is set so that a site's whole run
(every stage) spends at most its target epsilon at delta = 1/n, and the RDP accountant reports what
each stage has spent so far."""

from collections.abc import Callable
import warnings

import torch

from meduniverse.core.config import MethodConfig, PrivacyConfig
from meduniverse.core.tasks import task_type
from meduniverse.data.splits import Split
from meduniverse.data.transforms import normalize
from meduniverse.method.loop import TrainStats, make_optimizer, optimise
from meduniverse.method.site import local_batch, local_steps
from meduniverse.method.supervised import supervised_losses
from meduniverse.models.universal import UniversalModel


def poisson_batches(n: int, rate: float, steps: int, generator: torch.Generator):
    """`steps` batches, each example in each batch with probability `rate` (never an empty one)."""
    for _ in range(steps):
        chosen = torch.nonzero(torch.rand(n, generator=generator) < rate)[:, 0]
        yield chosen if len(chosen) else torch.randint(n, (1,), generator=generator)


def noise_for(privacy: PrivacyConfig, n: int, rate: float, steps: int) -> float:
    """The noise multiplier that spends `privacy.epsilon` at delta = 1/n over `steps` steps."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # Opacus notes its own choice of RDP orders
        warnings.simplefilter("ignore")
        return float(
            get_noise_multiplier(
                target_epsilon=privacy.epsilon,
                target_delta=1 / n,
                sample_rate=rate,
                steps=steps,
                accountant="rdp",
            )
        )


def dp_schedule(
    task: str, n: int, method: MethodConfig, privacy: PrivacyConfig
) -> tuple[float, int, float]:
    """A site's DP-SGD stage on n examples of `task`: its sampling rate (`batch_scale` times the
    method's batch over n, at most 1), its steps (`local_steps`) and the noise multiplier that
    spends `privacy.epsilon` over every stage of them."""
    rate = min(1.0, local_batch(task, method, privacy.batch_scale) / n)
    steps = local_steps(task, n, method, privacy.batch_scale)
    return rate, steps, noise_for(privacy, n, rate, method.stages * steps)


def expected_batch(rate: float, n: int) -> int:
    """The batch Poisson sampling at `rate` draws from n examples on average (at least 1)."""
    return max(1, round(rate * n))


def spent(noise: float, n: int, rate: float, steps: int) -> float:
    """Epsilon at delta = 1/n after `steps` Poisson-sampled steps with this noise (RDP)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise, rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=1 / n))


def used_parameters(
    model: UniversalModel, task_name: str, data: Split, trains: str = "all"
) -> list[torch.nn.Parameter]:
    """The trainable parameters the task's forward pass reaches (one example, no update), all of
    them or (`trains` = 'head') only its head's: Opacus needs a per-example gradient for every
    parameter it optimises."""
    kind = task_type(model.tasks[task_name].task)
    model.zero_grad(set_to_none=True)
    kind.loss(model(normalize(data.images[:1]), task_name), data.targets[:1]).backward()
    used = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    model.zero_grad(set_to_none=True)
    if trains == "head":
        head = set(map(id, model.heads[task_name].parameters()))
        used = [p for p in used if id(p) in head]
    return used


class IterateAverage:
    """An exponential moving average of parameters over optimiser steps, with a warm-up
    (decay min(`decay`, (1 + t) / (10 + t)) at step t) so that the starting weights fade fast;
    `decay` = 0 keeps the last iterate. Over a stage of under ~100 steps the warm-up, not
    `decay`, sets the average once `decay` >= 0.9 (the demo's DP screen: 0.9 and 0.97 gave the
    same model, 0.007 below the last iterate on val; bench/results/dp_screen.json)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.average = [p.detach().clone() for p in params] if decay > 0 else []

    def update(self, step: int, steps: int) -> None:
        """After optimiser step `step` (1..steps): blend the new iterate in."""
        if self.average:
            decay = min(self.decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def release(self) -> None:
        """Write the average into the parameters (nothing with `decay` = 0)."""
        if self.average:
            torch._foreach_copy_(self.params, self.average)


def clip_and_noise_in_fp32(optimizer: torch.optim.Optimizer, device_type: str) -> None:
    """Run a DPOptimizer's clipping, noise and scaling (its `pre_step`) outside autocast: under it,
    Opacus's sums of clipped per-sample gradients come out in bf16, and a bf16 gradient cannot be
    given to an fp32 parameter."""
    pre_step = optimizer.pre_step

    def full_precision(closure: Callable[[], float] | None = None) -> float | None:
        with torch.autocast(device_type, enabled=False):
            return pre_step(closure)

    optimizer.pre_step = full_precision


def train_private(
    model: UniversalModel,
    task_name: str,
    data: Split,
    method: MethodConfig,
    privacy: PrivacyConfig,
    seed: int,
    stage: int,
) -> tuple[TrainStats, float]:
    """One stage's local training with DP-SGD, at the caller's precision: under bf16 autocast the
    forward pass and Opacus's per-sample gradients are in bf16, its clipping and noise in fp32
    (`clip_and_noise_in_fp32`). A whole shared8 run this way against one with DP-SGD in fp32:
    bench/results/privacy_shared8_b4_local4_lr3_dpbf16.json (the README's privacy section).

    Args:
        model: encoder + the site's head, trained in place.
        task_name: the site's head.
        data: the site's private train split.
        method: stages, local epochs, batch sizes, lr (the stage runs `local_steps` steps).
        privacy: target epsilon over the whole run, the clipping norm, what DP-SGD trains, the
            batch scale and learning rate, the iterate average's decay.
        seed: the stage's seed at this site (batches, flips, noise).
        stage: which stage this is (1..S): what has been spent after it.

    Returns:
        The stage's TrainStats, and the epsilon spent after it.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = len(data)
    rate, steps, noise = dp_schedule(model.tasks[task_name].task, n, method, privacy)
    generator = torch.Generator().manual_seed(seed)
    used = used_parameters(model, task_name, data, privacy.dp_trains)
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not u for u in used)]
    for p in frozen:  # other tasks' heads, adapters (with 'head': the encoder): no grad sample
        p.requires_grad_(False)
    wrapped = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(
        make_optimizer(used, privacy.lr_scale * method.lr, method.weight_decay),
        noise_multiplier=noise,
        max_grad_norm=privacy.clip,
        expected_batch_size=expected_batch(rate, n),
        loss_reduction="mean",
        generator=generator,
    )
    model.train()
    try:
        batches = poisson_batches(n, rate, steps, generator)
        losses = supervised_losses(model, task_name, data, batches, generator, forward=wrapped)
        clip_and_noise_in_fp32(optimizer, data.images.device.type)
        with warnings.catch_warnings():  # Opacus's hooks fire on outputs: inputs need no grad
            warnings.filterwarnings("ignore", message="Full backward hook")
            average = IterateAverage(used, privacy.ema)
            stats = optimise(optimizer, losses, steps, on_step=average.update)
            average.release()
    finally:
        wrapped._close()
        for p in frozen:
            p.requires_grad_(True)
    return stats, spent(noise, n, rate, stage * steps)
