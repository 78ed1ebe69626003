"""Keeping the best student of a distillation, chosen without labels: its agreement with the
teachers on pool images held out of the distillation (`method.distill_select = 'agreement'`)."""

import copy

import torch

from meduniverse.core.config import MethodConfig
from meduniverse.core.progress import log
from meduniverse.data.transforms import normalize
from meduniverse.method.loop import StepCallback
from meduniverse.method.losses import teacher_term
from meduniverse.method.outputs import DiskRows
from meduniverse.models.universal import UniversalModel


def holdout_rows(
    sizes: dict[str, int], views: dict[str, int], share: float, seed: int
) -> dict[str, torch.Tensor]:
    """Per input group, which rows of the distillation pool are held out: a `share` of the pool's
    images (at least one), with every view of them, so no view of a held-out image is trained on.

    Args:
        sizes: per group, the rows of the distillation pool (views × images, view by view).
        views: per group, the views per image.
        share: the share of images held out, in (0, 0.5].
        seed: which images.

    Returns:
        per group, a bool mask over the rows (True: held out).
    """
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for group, rows in sizes.items():
        images = rows // views[group]
        held = torch.zeros(images, dtype=torch.bool)
        held[torch.randperm(images, generator=generator)[: max(1, round(share * images))]] = True
        masks[group] = held.repeat(views[group])
    return masks


class BestStudent:
    """Tracks the student's loss towards its teachers on the held-out rows after every epoch of a
    distillation and keeps the state where it was lowest.

    Args:
        student: the model being distilled (its state is copied at each new best).
        teacher_logits: per head, the teacher's logits on its group's distillation pool.
        pool: per input group, uint8 images (views·N)×C×S×S.
        held: per group, the held-out rows (`holdout_rows`).
        group_of: each head's input group.
        method: the teacher term's settings (`teacher_term`).
    """

    def __init__(
        self,
        student: UniversalModel,
        teacher_logits: dict[str, torch.Tensor | DiskRows],
        pool: dict[str, torch.Tensor],
        held: dict[str, torch.Tensor],
        group_of: dict[str, str],
        method: MethodConfig,
    ):
        self.student, self.teacher_logits, self.pool = student, teacher_logits, pool
        self.rows = {g: mask.nonzero().squeeze(1) for g, mask in held.items()}
        self.group_of, self.method = group_of, method
        self.best, self.state, self.checks, self.best_check = float("inf"), None, 0, 0

    @torch.no_grad()
    def loss(self) -> float:
        """The teachers' terms on the held-out rows, summed over the heads (each a mean over its
        rows)."""
        self.student.eval()
        total = 0.0
        for head, logits in self.teacher_logits.items():
            group = self.group_of[head]
            task = self.student.tasks[head].task
            parts = []
            for idx in self.rows[group].split(128):
                out = self.student(normalize(self.pool[group][idx]), head).float()
                parts.append(float(teacher_term(out, logits[idx].float(), task, self.method)))
            total += sum(parts) / len(parts)
        self.student.train()
        return total

    def check(self) -> None:
        """Score the student now; keep its state if it is the best so far."""
        self.checks += 1
        loss = self.loss()
        if loss < self.best:
            self.best, self.best_check = loss, self.checks
            self.state = copy.deepcopy(self.student.state_dict())

    def every_epoch(self, steps_per_epoch: int, on_step: StepCallback | None) -> StepCallback:
        """A step callback that checks after every epoch (and the last step), then calls
        `on_step`."""

        def callback(step: int, steps: int) -> None:
            if step % steps_per_epoch == 0 or step == steps:
                self.check()
            if on_step:
                on_step(step, steps)

        return callback

    def restore(self) -> None:
        """Load the best state into the student."""
        if self.state is not None:
            self.student.load_state_dict(self.state)
            log.info(
                "distillation: kept the student of check %d of %d (held-out teacher loss %.4f)",
                self.best_check,
                self.checks,
                self.best,
            )
