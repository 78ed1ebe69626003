"""What the server does with one stage's site models: reject bad updates, then distil them into the
universal model."""

from dataclasses import dataclass
import math

import torch

from meduniverse.core.config import FederationConfig
from meduniverse.core.tasks import task_type
from meduniverse.data.transforms import augmented_views
from meduniverse.method.distill import distill, pool_features, pool_logits
from meduniverse.method.loop import StepCallback, TrainStats
from meduniverse.method.outputs import DiskRows, outputs_folder
from meduniverse.method.select import holdout_rows
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import (
    PERSONAL_PREFIX,
    UniversalModel,
    as_personal,
    build_model,
    encoder_part,
    head_part,
    part_of,
)

MAX_NORM_RATIO = 1e3
CPU_DEVICE = torch.device("cpu")


@dataclass
class SiteUpdate:
    """A site model of this stage: encoder + its head (or, with strict transfer, only its outputs
    on the stage's distillation pool), and how many private examples trained it."""

    site: str
    state: dict[str, torch.Tensor]
    num_examples: int
    outputs: torch.Tensor | None = None


def update_problem(update: SiteUpdate, reference: dict[str, torch.Tensor]) -> str | None:
    """Why an update must be rejected (wrong keys/shapes, NaN or inf, norm far beyond the global
    model's), or None."""
    expected = part_of(reference, update.site)
    if any(k.startswith(PERSONAL_PREFIX) for k in update.state):  # Ditto's personal model too
        expected = {**expected, **as_personal(expected)}
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
        return (
            f"weight norm {math.sqrt(norm_new):.3g} is over {MAX_NORM_RATIO:g} times "
            "the global model's"
        )
    return None


def weighted_average(
    states: list[dict[str, torch.Tensor]], weights: list[float]
) -> dict[str, torch.Tensor]:
    """Sample-weighted average of state dicts with the same keys (floating tensors only)."""
    total = float(sum(weights))
    return {
        k: sum(s[k].float() * (w / total) for s, w in zip(states, weights, strict=True)).to(
            states[0][k].dtype
        )
        for k in states[0]
    }


def student_for(
    previous: dict[str, torch.Tensor],
    updates: list[SiteUpdate],
    config: FederationConfig,
    device: torch.device = CPU_DEVICE,
) -> UniversalModel:
    """(a) distil_only: start from G_{s-1}. (b) average_then_distil: the encoder is the
    sample-weighted average of the site encoders and each site's head comes with it."""
    student = build_model(config).to(device)
    student.load_state_dict(previous)
    if config.method.variant == "average_then_distil":
        state = weighted_average(
            [encoder_part(u.state) for u in updates], [u.num_examples for u in updates]
        )
        for u in updates:
            state.update(head_part(u.state, u.site))
        student.load_state_dict(state, strict=False)
    return student


def view_counts(config: FederationConfig, groups: list[str]) -> dict[str, int]:
    """Per input group of the pool, the views distillation compares teachers and student on:
    `distill_dense_views` for a group that segmentation heads read (when set), else
    `distill_views`."""
    m = config.method
    dense = {task_type(s.task).group for s in config.sites if task_type(s.task).segmentation}
    return {
        g: m.distill_dense_views if g in dense and m.distill_dense_views else m.distill_views
        for g in groups
    }


def distillation_pool(
    config: FederationConfig, pool: dict[str, torch.Tensor], seed: int
) -> dict[str, torch.Tensor]:
    """The images a stage distils on: per input group, the pool and its augmented views
    (`view_counts`), drawn from the stage's seed, so the server and, with strict transfer, the
    sites see the same ones.

    Args:
        config: the method's view settings.
        pool: per input group, uint8 images N×C×S×S.
        seed: the stage's distillation seed.
    """
    views, m = view_counts(config, list(pool)), config.method
    generator = torch.Generator().manual_seed(seed)
    return {
        g: augmented_views(x, views[g], generator, m.distill_crop_area) if views[g] > 1 else x
        for g, x in pool.items()
    }


def outputs_shape(config: FederationConfig, site: str, images: torch.Tensor) -> tuple[int, ...]:
    """The shape of a site head's logits on `images` (N×C×S×S): (N, outputs) or, for a
    segmentation head, (N, outputs, S, S)."""
    spec = config.site(site)
    kind = task_type(spec.task)
    channels = kind.outputs(len(spec.classes))
    spatial = tuple(images.shape[2:]) if kind.segmentation else ()
    return (len(images), channels, *spatial)


def server_step(
    previous: dict[str, torch.Tensor],
    updates: list[SiteUpdate],
    config: FederationConfig,
    pool: dict[str, torch.Tensor],
    seed: int,
    mim_decoder: DecoderHead | None = None,
    on_step: StepCallback | None = None,
    own: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], TrainStats]:
    """One stage's server step: the teachers' and G_{s-1}'s outputs on the pool (in memory or, with
    `runtime.teacher_outputs` = 'disk', in a scratch folder read row by row), then distillation
    into the student.

    Args:
        previous: G_{s-1}'s state (encoder and every head).
        updates: the accepted site models of this stage, in the configuration's site order.
        config: the federation (model, sites' task types, method settings).
        pool: per input group, uint8 images N×C×S×S, on the device the step computes on (extended
            by augmented copies when `view_counts` asks for more than one view).
        seed: the distillation's seed (and its views').
        mim_decoder: with method.mim_weight > 0, the pixel decoder of the MIM term (trained along).
        on_step: progress callback (step, steps).
        own: per site, which images of its group's pool its own data lent (bool (N,)); with
            method.distill_own_weight != 1 they weigh that much more in its head's teacher term.

    Returns:
        G_s's state and the distillation's TrainStats.
    """
    group_of = {s.name: task_type(s.task).group for s in config.sites}
    device = next(iter(pool.values())).device  # the models compute where the pool lives
    m = config.method
    drawn = distillation_pool(config, pool, seed)
    views = {g: len(drawn[g]) // len(x) for g, x in pool.items()}  # the views per pool image
    pool = drawn
    weights = None
    if own and m.distill_own_weight != 1:
        weights = {
            site: (1 + (m.distill_own_weight - 1) * mask.float())
            .repeat(views[group_of[site]])
            .to(device)
            for site, mask in own.items()
        }
    held = None
    if m.distill_select == "agreement":
        held = holdout_rows({g: len(x) for g, x in pool.items()}, views, m.distill_holdout, seed)
    with outputs_folder(config.runtime.teacher_outputs) as folder:
        teacher = build_model(config).to(device)
        teacher.load_state_dict(previous)
        retained = pool_logits(  # G_{s-1}'s outputs, before any site model is loaded
            teacher, list(group_of), pool, group_of, folder=folder and folder / "retained"
        )
        teacher_logits: dict[str, torch.Tensor | DiskRows] = {}
        features: dict[str, torch.Tensor] = {}
        teachers = folder and folder / "teachers"
        for u in updates:
            if u.outputs is not None:  # strict transfer: the site computed them on the same views
                teacher_logits[u.site] = u.outputs.to(device)
                continue
            teacher.load_state_dict(u.state, strict=False)
            teacher_logits.update(pool_logits(teacher, [u.site], pool, group_of, folder=teachers))
            if m.feature_weight > 0:
                features[u.site] = pool_features(teacher, u.site, pool[group_of[u.site]])
        student = student_for(previous, updates, config, device)
        stats = distill(
            student,
            teacher_logits,
            retained,
            pool,
            group_of,
            m,
            seed,
            mim_decoder,
            on_step,
            weights,
            features,
            held,
        )
    return student.state_dict(), stats
