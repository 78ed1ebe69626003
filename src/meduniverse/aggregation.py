"""What the server does with one stage's site models: reject bad updates, then distil them into the universal model."""

from dataclasses import dataclass
import math

import torch

from meduniverse.config import FederationConfig
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import UniversalModel, build_model, part_of
from meduniverse.tasks import spec_group
from meduniverse.training import TrainStats, distill, pool_logits, weighted_average

MAX_NORM_RATIO = 1e3


@dataclass
class SiteUpdate:
    """A site model of this stage: encoder + its head, and how many private examples trained it."""

    site: str
    state: dict[str, torch.Tensor]
    num_examples: int


def update_problem(update: SiteUpdate, reference: dict[str, torch.Tensor]) -> str | None:
    """Why an update must be rejected (wrong keys/shapes, NaN or inf, norm far beyond the global model's), or None."""
    expected = part_of(reference, update.site)
    if set(update.state) != set(expected):
        return f"unexpected parameter names ({len(set(update.state) ^ set(expected))} differ)"
    norm_new = norm_ref = 0.0
    for key, value in update.state.items():
        if value.shape != expected[key].shape:
            return f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
        if not torch.isfinite(value).all():
            return f"{key} holds NaN or inf"
        norm_new += float(value.double().pow(2).sum())
        norm_ref += float(expected[key].double().pow(2).sum())
    if math.sqrt(norm_new) > MAX_NORM_RATIO * max(math.sqrt(norm_ref), 1e-12):
        return f"weight norm {math.sqrt(norm_new):.3g} is over {MAX_NORM_RATIO:g} times the global model's"
    return None


def student_for(previous: dict[str, torch.Tensor], updates: list[SiteUpdate], config: FederationConfig) -> UniversalModel:
    """(a) distil_only: start from G_{s-1}. (b) average_then_distil: the encoder is the sample-weighted
    average of the site encoders and each site's head comes with it."""
    student = build_model(config)
    student.load_state_dict(previous)
    if config.method.variant == "average_then_distil":
        encoders = [{k: v for k, v in u.state.items() if k.startswith("encoder.")} for u in updates]
        state = weighted_average(encoders, [u.num_examples for u in updates])
        for u in updates:
            state.update({k: v for k, v in u.state.items() if k.startswith(f"heads.{u.site}.")})
        student.load_state_dict(state, strict=False)
    return student


def server_step(previous: dict[str, torch.Tensor], updates: list[SiteUpdate], config: FederationConfig,
                pool: dict[str, torch.Tensor], seed: int, mim_decoder: DecoderHead | None = None,
                on_step=None) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """One stage's server step: teachers' and G_{s-1}'s outputs on the pool, then distillation into the student."""
    group_of = {s.name: spec_group(s.task) for s in config.sites}
    teacher = build_model(config)
    teacher.load_state_dict(previous)
    retained = pool_logits(teacher, list(group_of), pool, group_of)  # G_{s-1}'s outputs, before any site model is loaded
    teacher_logits: dict[str, torch.Tensor] = {}
    for u in updates:
        teacher.load_state_dict(u.state, strict=False)
        teacher_logits.update(pool_logits(teacher, [u.site], pool, group_of))
    student = student_for(previous, updates, config)
    stats = distill(student, teacher_logits, retained, pool, group_of, config.method, seed, mim_decoder, on_step)
    return student.state_dict(), stats
