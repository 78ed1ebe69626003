"""The membership audit can fail: a model that memorised its training examples is caught by both
attacks, one that never saw them is not; bad settings are refused."""

import numpy as np
import pytest
import torch

from meduniverse.core.errors import ConfigError, DataError
from meduniverse.data.splits import Split
from meduniverse.method.loop import make_optimizer
from meduniverse.method.supervised import train_supervised
from meduniverse.models.universal import build_model
from meduniverse.results.audit import (
    AuditSettings,
    audit_site,
    balanced_draw,
    calibrated_scores,
    membership_auc,
)

TASK = "synthetic_xray_nodule"  # a binary site of the demo


def noise(n: int, seed: int) -> Split:
    """Random images with random labels: only memorising them lowers their loss."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Split(images, torch.randint(0, 2, (n,), generator=g))


@pytest.fixture(scope="module")
def splits():
    return {"train": noise(24, 1), "val": noise(24, 2), "test": noise(24, 3)}


def test_a_memorising_model_is_caught_and_a_fresh_one_is_not(demo_config, splits):
    stage0 = build_model(demo_config, seed=0)
    memorised = build_model(demo_config, seed=0)
    optimizer = make_optimizer(memorised.parameters(), 3e-3, 0.0)
    train_supervised(memorised, TASK, splits["train"], 150, 24, optimizer, seed=0)
    settings = AuditSettings(references=2, limit=24, seed=0)
    caught = audit_site(memorised, stage0, TASK, splits, demo_config, settings)
    assert caught["members"] == caught["non_members"] == 24
    assert caught["loss_auc"] > 0.9 and caught["reference_auc"] > 0.7  # chance is 0.5
    fresh = audit_site(stage0, stage0, TASK, splits, demo_config, AuditSettings(0, 24, 0))
    assert abs(fresh["loss_auc"] - 0.5) < 0.3 and "reference_auc" not in fresh


def test_scores_and_draws():
    assert membership_auc(np.array([3.0, 2.0]), np.array([1.0, 0.0])) == 1.0
    assert membership_auc(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.5
    references = np.array([[2.0, 1.0], [4.0, 1.0]])  # example 0 is usually harder than example 1
    scores = calibrated_scores(np.array([1.0, 1.0]), references)
    assert scores[0] > scores[1] == 0  # the same loss is telling on a hard example only
    members, non_members = balanced_draw(100, 7, 50, seed=0)
    assert len(members) == len(non_members) == 7 and len(set(members)) == 7
    with pytest.raises(DataError):
        membership_auc(np.array([]), np.array([1.0]))


@pytest.mark.parametrize("references, limit", [(1, 100), (-1, 100), (4, 3)])
def test_bad_settings_are_refused(references, limit):
    with pytest.raises(ConfigError):
        AuditSettings(references, limit)
