"""The comparison arms' building blocks and the statistics of an experiment, without the runtime."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from meduniverse.core.config import leave_out
from meduniverse.core.errors import ConfigError
from meduniverse.method.centralized import train_multitask
from meduniverse.method.personal import train_ditto, train_fedrep
from meduniverse.method.site import finetune, local_steps, train_site
from meduniverse.method.supervised import evaluate, proximal_term
from meduniverse.models.universal import build_model
from meduniverse.results.adapt import label_subset
from meduniverse.results.statistics import bootstrap_ci, paired_test, per_task_test
from meduniverse.sites.sources import load_site


def site_data(config, index):
    site = config.sites[index]
    return load_site(site, config.pool, config.input_spec(site.task), config.seed)


def test_bootstrap_ci_brackets_the_mean():
    low, high = bootstrap_ci([0.70, 0.80, 0.90])
    assert 0.70 - 1e-9 <= low < 0.80 < high <= 0.90 + 1e-9
    assert bootstrap_ci([0.5]) == [0.5, 0.5]


def test_paired_test_counts_wins_and_detects_a_consistent_gain():
    a = [0.8 + 0.01 * i for i in range(12)]
    b = [x - 0.05 - 0.001 * i for i, x in enumerate(a)]
    test = paired_test(a, b)
    assert test["n_pairs"] == 12 and test["wins"] == 12 and test["losses"] == 0
    assert test["wilcoxon_p"] < 0.01 and test["mean_difference"] > 0
    mixed = paired_test([0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.4, 0.3])
    assert mixed["wins"] == 2 and mixed["losses"] == 2 and mixed["wilcoxon_p"] > 0.5
    assert per_task_test([0.5], [0.4])["ttest_p"] is None  # one seed: no test


def test_label_subset_keeps_every_class_and_the_fraction():
    targets = np.repeat([0, 1, 2], [500, 100, 10])
    idx = label_subset(targets, 0.01, "multiclass", seed=0)
    assert set(targets[idx]) == {0, 1, 2} and len(idx) == 5 + 1 + 1
    assert len(label_subset(targets, 1.0, "multiclass", seed=0)) == len(targets)
    assert not np.array_equal(
        label_subset(targets, 0.1, "multiclass", 0), label_subset(targets, 0.1, "multiclass", 1)
    )


def test_leave_out_drops_the_site_from_the_sites_and_the_pool(shared8_config):
    config = leave_out(shared8_config, "breast_us")
    assert (
        "breast_us" not in {s.name for s in config.sites} and "breast_us" not in config.pool.sites
    )
    assert len(config.sites) == len(shared8_config.sites) - 1
    with pytest.raises(ConfigError, match="no site named 'nowhere'"):
        leave_out(shared8_config, "nowhere")


def test_proximal_term_is_zero_at_the_global_weights_and_grows_away_from_them(demo_config):
    model = build_model(demo_config, seed=0)
    reference = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.")}
    term = proximal_term(model, reference, mu=0.1)
    assert float(term().detach()) == 0.0
    with torch.no_grad():
        next(model.encoder.parameters()).add_(1.0)
    assert float(term().detach()) > 0


def test_probe_trains_the_head_and_leaves_the_encoder_frozen(demo_config):
    data = site_data(demo_config, 0)
    model = build_model(demo_config, seed=0)
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in model.heads[data.name].state_dict().items()}
    finetune(
        model,
        data.name,
        data.splits["train"],
        data.splits["val"],
        demo_config.method,
        replace(demo_config.finetune, max_epochs=2, patience=2),
        seed=0,
        frozen_encoder=True,
    )
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, model.heads[data.name].state_dict()[k]) for k, v in head.items())
    assert all(p.requires_grad for p in model.encoder.parameters())  # unfrozen again afterwards


def test_centralized_training_gives_every_task_its_local_budget_and_learns(demo_config):
    method = replace(
        demo_config.method,
        stages=2,
        local_epochs=2,
        min_steps_per_epoch=6,
        max_steps_per_epoch=0,
        lr=3e-3,
    )
    data = {s.name: site_data(demo_config, i) for i, s in enumerate(demo_config.sites[:2])}
    model = build_model(demo_config, seed=0)
    before = {n: evaluate(model, n, d.splits["val"])["auc"] for n, d in data.items()}
    stats = train_multitask(model, {n: d.splits["train"] for n, d in data.items()}, method, seed=0)
    assert stats.steps == sum(
        2 * local_steps(d.task, len(d.splits["train"]), method) for d in data.values()
    )
    after = {n: evaluate(model, n, d.splits["val"])["auc"] for n, d in data.items()}
    assert all(after[n] > before[n] + 0.05 for n in data)


def test_fedrep_trains_the_head_on_the_received_encoder_then_the_encoder_alone(demo_config):
    data = site_data(demo_config, 0)
    method = replace(
        demo_config.method, local_epochs=1, min_steps_per_epoch=3, max_steps_per_epoch=3
    )
    model, reference = build_model(demo_config, seed=0), build_model(demo_config, seed=0)
    start = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    torch.manual_seed(7)  # the heads' dropout draws from the global generator
    train_fedrep(model, data.name, data.splits, method, demo_config.finetune, seed=5)
    torch.manual_seed(7)
    train_site(
        reference, data.name, data.splits, method, demo_config.finetune, 5, frozen_encoder=True
    )
    head, first = model.heads[data.name].state_dict(), reference.heads[data.name].state_dict()
    assert all(
        torch.equal(head[k], first[k]) for k in head
    )  # the body phase left the head as it was
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in start.items())
    assert all(p.requires_grad for p in model.parameters())  # nothing left frozen


def test_ditto_pulls_the_personal_model_towards_the_global_one(demo_config):
    data = site_data(demo_config, 0)
    method = replace(
        demo_config.method, local_epochs=1, min_steps_per_epoch=4, max_steps_per_epoch=4
    )
    distance = {}
    for strength in (0.0, 50.0):
        model, personal = build_model(demo_config, seed=0), build_model(demo_config, seed=1)
        received = {k: v.clone() for k, v in model.state_dict().items()}
        train_ditto(
            model, personal, data.name, data.splits, method, demo_config.finetune, 0, strength
        )
        distance[strength] = sum(
            float((p - received[n]).pow(2).sum()) for n, p in personal.named_parameters()
        )
    assert distance[50.0] < distance[0.0]
