"""The distillation's extra terms: the soft Dice against a teacher, the views per pool group and
feature-level distillation."""

from dataclasses import replace

import pytest
import torch

from meduniverse.core.config_file import check_config
from meduniverse.core.errors import ConfigError
from meduniverse.core.tasks import task_type
from meduniverse.method.distill import pool_features
from meduniverse.method.losses import (
    feature_distance,
    soft_dice_loss,
    soft_target_loss,
    teacher_term,
)
from meduniverse.method.server import SiteUpdate, server_step, view_counts
from meduniverse.models.universal import build_model, part_of
from meduniverse.sites.pool import build_pool


def thin_structure(n: int = 4, size: int = 32) -> torch.Tensor:
    """Teacher logits (N,2,S,S) that see a one-pixel line: background elsewhere, confidently."""
    logits = torch.zeros(n, 2, size, size)
    logits[:, 0], logits[:, 1] = 6.0, -6.0
    logits[:, 0, :, size // 2] = -6.0
    logits[:, 1, :, size // 2] = 6.0
    return logits


def test_soft_dice_sees_a_missed_thin_structure_that_the_pixel_mean_barely_sees():
    teacher = thin_structure()
    blind = teacher.clone()
    blind[:, 0], blind[:, 1] = 6.0, -6.0  # background everywhere: the line is missed
    assert soft_dice_loss(teacher, teacher, "segmentation") < 0.05
    assert soft_dice_loss(blind, teacher, "segmentation") > 0.9
    # the per-pixel KL of the same miss is small: the line is 1/32 of the pixels
    missed = soft_target_loss(blind, teacher, "segmentation", 1.0)
    assert missed < 0.5 * soft_dice_loss(blind, teacher, "segmentation")


def test_soft_dice_weights_examples():
    teacher = thin_structure(2)
    student = teacher.clone()
    student[1, 0], student[1, 1] = 6.0, -6.0  # only example 1 misses the line
    only_first = soft_dice_loss(student, teacher, "segmentation", torch.tensor([1.0, 0.0]))
    only_second = soft_dice_loss(student, teacher, "segmentation", torch.tensor([0.0, 1.0]))
    assert only_first < 0.05 < 0.9 < only_second


def test_teacher_term_adds_dice_only_to_segmentation_heads(demo_config):
    method = replace(demo_config.method, distill_dice_weight=2.0)
    teacher = thin_structure()
    blind = torch.zeros_like(teacher)
    plain = replace(method, distill_dice_weight=0.0)
    gain = teacher_term(blind, teacher, "segmentation", method) - teacher_term(
        blind, teacher, "segmentation", plain
    )
    assert gain == pytest.approx(2.0 * soft_dice_loss(blind, teacher, "segmentation"))
    labels = torch.randn(4, 3)
    assert teacher_term(labels, -labels, "multiclass", method) == teacher_term(
        labels, -labels, "multiclass", plain
    )


def test_view_counts_give_segmentation_pools_their_own_views(demo_config):
    groups = ["classification", "segmentation"]
    method = replace(demo_config.method, distill_views=2)
    assert view_counts(replace(demo_config, method=method), groups) == dict.fromkeys(groups, 2)
    dense = replace(demo_config, method=replace(method, distill_dense_views=6))
    assert view_counts(dense, groups) == {"classification": 2, "segmentation": 6}


@pytest.mark.parametrize(
    "setting",
    [{"distill_crop_area": 0.0}, {"distill_dense_views": -1}, {"distill_dice_weight": -1}],
)
def test_bad_distillation_settings_are_refused(demo_config, setting):
    config = replace(demo_config, method=replace(demo_config.method, **setting))
    with pytest.raises(ConfigError, match=r"method\.distill_"):
        check_config(config)


def test_feature_distance_is_blind_to_scale_and_sees_direction():
    a = torch.randn(8, 16)
    assert float(feature_distance(a, 3 * a)) == pytest.approx(0.0, abs=1e-6)
    assert float(feature_distance(a, -a)) == pytest.approx(4.0, abs=1e-5)
    assert 0 < float(feature_distance(a, torch.randn(8, 16))) < 4


def test_feature_distillation_pulls_the_students_features_towards_the_teachers(demo_config):
    pool = build_pool(demo_config).images
    previous = build_model(demo_config, seed=0).state_dict()
    teacher = build_model(demo_config, seed=1)
    updates = [
        SiteUpdate(s.name, part_of(teacher.state_dict(), s.name), 10) for s in demo_config.sites
    ]
    distance = {}
    for weight in (0.0, 5.0):
        method = replace(demo_config.method, distill_epochs=4, feature_weight=weight)
        config = replace(demo_config, method=method)
        state, _ = server_step(previous, updates, config, pool, seed=0)
        student = build_model(config)
        student.load_state_dict(state)
        distance[weight] = 0.0
        for site in config.sites:
            images = pool[task_type(site.task).group]
            distance[weight] += float(
                feature_distance(
                    pool_features(student, site.name, images).float(),
                    pool_features(teacher, site.name, images).float(),
                )
            )
    assert distance[5.0] < 0.8 * distance[0.0]


@pytest.mark.parametrize(
    "setting, transfer",
    [({"feature_weight": -1.0}, "weights"), ({"feature_weight": 1.0}, "outputs")],
)
def test_feature_distillation_settings_are_checked(demo_config, setting, transfer):
    config = replace(
        demo_config,
        method=replace(demo_config.method, **setting),
        privacy=replace(demo_config.privacy, transfer=transfer),
    )
    with pytest.raises(ConfigError, match=r"method\.feature_weight"):
        check_config(config)


@pytest.mark.parametrize("setting", [{"feature_weight": 1.0}, {"distill_select": "agreement"}])
def test_feature_distillation_and_selection_run_under_bf16_autocast(demo_config, setting):
    """The default precision on CUDA and on CPUs with bf16 arithmetic: no float16 tensor may meet a
    bf16 one there."""
    config = replace(demo_config, method=replace(demo_config.method, **setting))
    pool = build_pool(config).images
    previous = build_model(config, seed=0).state_dict()
    teachers = build_model(config, seed=1).state_dict()
    updates = [SiteUpdate(s.name, part_of(teachers, s.name), 10) for s in config.sites]
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        state, stats = server_step(previous, updates, config, pool, seed=0)
    assert stats.steps > 0 and all(torch.isfinite(v).all() for v in state.values())
