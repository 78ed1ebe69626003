"""The method's steps as plain functions: losses, metrics, local training, MIM, averaging,
distillation, retention."""

import copy
from dataclasses import replace
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from meduniverse.core import device
from meduniverse.core.config import PrivacyConfig
from meduniverse.core.device import Compute, resolve_device, resolve_precision
from meduniverse.core.errors import ConfigError
from meduniverse.core.metrics import classification_metrics, segmentation_metrics
from meduniverse.core.tasks import task_type
from meduniverse.data.transforms import augmented_views
from meduniverse.method.distill import pool_logits
from meduniverse.method.loop import steps_per_epoch
from meduniverse.method.losses import soft_target_loss
from meduniverse.method.mim import pretrain_mim
from meduniverse.method.outputs import PLACES, DiskRows, outputs_folder
from meduniverse.method.private import IterateAverage, train_private
from meduniverse.method.server import (
    SiteUpdate,
    server_step,
    student_for,
    update_problem,
    weighted_average,
)
from meduniverse.method.site import (
    finetune,
    keep_better,
    stage_method,
    train_local,
    train_site,
)
from meduniverse.method.supervised import evaluate, predict_probs
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import build_model, part_of
from meduniverse.sites.pool import build_pool, own_images
from meduniverse.sites.sources import load_site

TASKS = {"binary": 1, "multiclass": 3, "ordinal": 3, "multilabel": 3}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_probabilities_are_distributions(task):
    logits = torch.randn(5, TASKS[task])
    p = task_type(task).probabilities(logits)
    assert (p >= 0).all() and (p <= 1).all()
    if task != "multilabel":
        assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-6)


@pytest.mark.parametrize("task", [*sorted(TASKS), "segmentation"])
def test_soft_target_loss_is_stationary_at_the_teacher(task):
    shape = (4, 2, 8, 8) if task == "segmentation" else (4, TASKS[task])
    teacher = torch.randn(shape)
    student = teacher.clone().requires_grad_(True)
    soft_target_loss(student, teacher, task, 2.0).backward()
    assert student.grad.abs().max() < 1e-6
    far = torch.randn(shape, requires_grad=True)
    assert soft_target_loss(far, teacher, task, 2.0) > soft_target_loss(student, teacher, task, 2.0)


def test_task_losses_prefer_the_right_answer():
    labels = torch.tensor([0, 2, 1])
    right = torch.nn.functional.one_hot(labels, 3).float() * 10
    assert task_type("multiclass").loss(right, labels) < task_type("multiclass").loss(
        -right, labels
    )
    grades = torch.tensor([0, 2])
    assert task_type("ordinal").loss(torch.tensor([[-9.0, -9.0], [9.0, 9.0]]), grades) < 0.01
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, 2:6, 2:6] = 1
    good = torch.stack([1 - masks, masks], 1).float() * 10
    assert task_type("segmentation").loss(good, masks) < task_type("segmentation").loss(
        -good, masks
    )


def test_metrics_follow_medmnist_conventions():
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3)[labels] * 0.8 + 0.05
    assert classification_metrics(probs, labels) == {"auc": 1.0, "acc": 1.0}
    flipped = classification_metrics(probs[:, ::-1][:, [0, 1, 2]], labels)
    assert flipped["auc"] < 1.0
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :4] = 1
    assert segmentation_metrics(masks, masks, 2) == {"dice": 1.0, "iou": 1.0}
    half = masks.clone()
    half[:, :2] = 0
    scores = segmentation_metrics(half, masks, 2)
    assert scores["dice"] == pytest.approx(2 / 3) and scores["iou"] == pytest.approx(0.5)


def site_and_model(config, index):
    site = config.sites[index]
    data = load_site(site, config.pool, config.input_spec(site.task), 0)
    return data, build_model(config, seed=0)


@pytest.mark.parametrize("index", [0, 3])  # a classification and a segmentation site
def test_local_training_learns_the_site_task(demo_config, index):
    method = replace(
        demo_config.method, local_epochs=3, min_steps_per_epoch=10, max_steps_per_epoch=0, lr=3e-3
    )
    data, model = site_and_model(demo_config, index)
    before = evaluate(model, data.name, data.splits["val"])
    train_local(model, data.name, data.splits["train"], method, seed=0)
    after = evaluate(model, data.name, data.splits["val"])
    key = "dice" if data.task == "segmentation" else "auc"
    assert after[key] > before[key] + 0.05


def test_finetune_keeps_the_best_validation_epoch(demo_config):
    data, model = site_and_model(demo_config, 2)
    log = finetune(
        model,
        data.name,
        data.splits["train"],
        data.splits["val"],
        demo_config.method,
        replace(demo_config.finetune, max_epochs=4, patience=4),
        seed=0,
    )
    best = max(h["val_auc"] for h in log["history"])
    assert log["val_auc"] == best
    assert evaluate(model, data.name, data.splits["val"])["auc"] == pytest.approx(best)


def test_mim_pretraining_lowers_reconstruction_loss(demo_config):
    pool = build_pool(demo_config).images
    model = build_model(demo_config, seed=0)
    decoder = DecoderHead(model.encoder.widths, 3)
    short = replace(demo_config.method, mim_epochs=1)
    first = pretrain_mim(model.encoder, decoder, pool, short, seed=0)
    later = pretrain_mim(
        model.encoder, decoder, pool, replace(demo_config.method, mim_epochs=4), seed=1
    )
    assert later.loss < first.loss


def test_weighted_average():
    a, b = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    assert torch.allclose(weighted_average([a, b], [1, 3])["w"], torch.full((3,), 0.75))


def fake_updates(config, state, scale=0.01):
    updates = []
    for i, site in enumerate(config.sites):
        part = {k: v + scale * torch.randn_like(v) for k, v in part_of(state, site.name).items()}
        updates.append(SiteUpdate(site.name, part, 10 * (i + 1)))
    return updates


def test_average_then_distil_starts_from_the_weighted_site_encoders(demo_config):
    state = build_model(demo_config, seed=0).state_dict()
    updates = fake_updates(demo_config, state)
    student = student_for(
        state,
        updates,
        replace(demo_config, method=replace(demo_config.method, variant="average_then_distil")),
    )
    key = "encoder.stem.conv.weight"
    expected = weighted_average(
        [{key: u.state[key]} for u in updates], [u.num_examples for u in updates]
    )[key]
    assert torch.allclose(student.state_dict()[key], expected, atol=1e-6)
    first = updates[0]
    head_key = next(k for k in first.state if k.startswith(f"heads.{first.site}."))
    assert torch.equal(student.state_dict()[head_key], first.state[head_key])
    plain = student_for(
        state,
        updates,
        replace(demo_config, method=replace(demo_config.method, variant="distil_only")),
    )
    assert torch.equal(plain.state_dict()[key], state[key])


def test_update_problems_are_named(demo_config):
    state = build_model(demo_config, seed=0).state_dict()
    good = fake_updates(demo_config, state)[0]
    assert update_problem(good, state) is None
    key = next(iter(good.state))
    for value, reason in [(float("nan"), "NaN or inf"), (float("inf"), "NaN or inf")]:
        bad = {**good.state, key: good.state[key].clone().fill_(value)}
        assert reason in update_problem(SiteUpdate(good.site, bad, 1), state)
    huge = {k: v * 1e6 for k, v in good.state.items()}
    assert "times the global model" in update_problem(SiteUpdate(good.site, huge, 1), state)
    assert "unexpected parameter names" in update_problem(
        SiteUpdate(good.site, {key: good.state[key]}, 1), state
    )


def head_distance(config, model_state, reference_state, pool):
    group_of = {s.name: task_type(s.task).group for s in config.sites}
    a, b = build_model(config), build_model(config)
    a.load_state_dict(model_state)
    b.load_state_dict(reference_state)
    names = list(group_of)
    la, lb = pool_logits(a, names, pool, group_of), pool_logits(b, names, pool, group_of)
    return {t: float((la[t].float() - lb[t].float()).pow(2).mean()) for t in names}


AUGMENTED = {"distill_views": 2, "distill_lr_schedule": "cosine", "distill_own_weight": 4.0}
DENSE = {  # more crops at more scales for segmentation heads, and the soft Dice term
    "distill_dense_views": 3,
    "distill_crop_area": 0.2,
    "distill_dice_weight": 1.0,
    "distill_own_weight": 4.0,
}


@pytest.mark.parametrize(
    "schedule, extra", [("mixed", {}), ("round_robin", {}), ("mixed", AUGMENTED), ("mixed", DENSE)]
)
def test_distillation_moves_heads_towards_their_teachers(demo_config, schedule, extra):
    config = replace(
        demo_config,
        method=replace(
            demo_config.method,
            variant="distil_only",
            distill_epochs=25,
            distill_schedule=schedule,
            retention=0.5,
            **extra,
        ),
    )
    whole = build_pool(config)
    pool, own = whole.images, own_images(config, whole)
    previous = build_model(config, seed=0).state_dict()
    teachers = build_model(config, seed=1).state_dict()
    updates = [SiteUpdate(s.name, part_of(teachers, s.name), 10) for s in config.sites]
    before = head_distance(config, previous, teachers, pool)
    new_state, stats = server_step(previous, updates, config, pool, seed=0, own=own)
    after = head_distance(config, new_state, teachers, pool)
    assert stats.steps > 0
    assert sum(after.values()) < 0.7 * sum(before.values())


def test_teacher_outputs_on_disk_give_the_same_student_as_in_memory(demo_config, tmp_path):
    config = replace(demo_config, method=replace(demo_config.method, distill_epochs=2, **DENSE))
    whole = build_pool(config)
    previous = build_model(config, seed=0).state_dict()
    teachers = build_model(config, seed=1).state_dict()
    updates = [SiteUpdate(s.name, part_of(teachers, s.name), 10) for s in config.sites]
    states = {}
    for place in PLACES:
        runtime = replace(config.runtime, teacher_outputs=place)
        torch.manual_seed(0)  # the same global draws for both
        states[place], _ = server_step(
            previous, updates, replace(config, runtime=runtime), whole.images, seed=0
        )
    assert all(torch.equal(states["memory"][k], states["disk"][k]) for k in states["memory"])
    group_of = {s.name: task_type(s.task).group for s in config.sites}
    model = build_model(config, seed=1)
    names = list(group_of)
    kept = pool_logits(model, names, whole.images, group_of)
    spilled = pool_logits(model, names, whole.images, group_of, folder=tmp_path)
    idx = torch.tensor([3, 0, 3, 1])
    for name in names:
        assert isinstance(spilled[name], DiskRows) and len(spilled[name]) == len(kept[name])
        assert torch.equal(spilled[name][idx], kept[name][idx])
    with pytest.raises(IndexError, match="row"):
        spilled[names[0]][torch.tensor([len(kept[names[0]])])]
    with pytest.raises(ValueError, match="teacher outputs"), outputs_folder("cloud"):
        pass


def test_retention_keeps_a_head_without_teacher_near_its_previous_outputs(demo_config):
    pool = build_pool(demo_config).images
    previous = build_model(demo_config, seed=0).state_dict()
    teachers = build_model(demo_config, seed=1).state_dict()
    kept = demo_config.sites[0].name  # no update from this site: only retention speaks for its head
    updates = [
        SiteUpdate(s.name, part_of(teachers, s.name), 10)
        for s in demo_config.sites
        if s.name != kept
    ]
    drift = {}
    for weight in (0.0, 2.0):
        config = replace(
            demo_config,
            method=replace(
                demo_config.method, variant="distil_only", distill_epochs=4, retention=weight
            ),
        )
        state, _ = server_step(previous, updates, config, pool, seed=0)
        drift[weight] = head_distance(config, state, previous, pool)[kept]
    assert drift[2.0] < 0.5 * drift[0.0]


def test_vit_encoder_gives_the_same_pyramid_as_the_cnn(demo_config):
    config = replace(
        demo_config,
        inputs=(
            ("classification", demo_config.inputs[0][1]),
            ("segmentation", demo_config.inputs[0][1]),
        ),
        model=replace(
            demo_config.model, encoder="vit", vit_dim=32, vit_depth=2, vit_heads=2, vit_patch=8
        ),
    )
    model = build_model(config, seed=0)
    x = torch.zeros(2, 3, 32, 32)
    features = model.encoder(x)
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    assert [f.shape[1] for f in features] == list(config.model.widths)
    assert model(x, "synthetic_vessel_seg").shape == (2, 2, 32, 32)
    assert model(x, "synthetic_cell_type").shape == (2, 3)


def test_variant_c_adds_the_mim_loss_and_trains_the_mim_decoder(demo_config):
    config = replace(
        demo_config, method=replace(demo_config.method, mim_weight=1.0, distill_epochs=2)
    )
    pool = build_pool(config).images
    previous = build_model(config, seed=0).state_dict()
    updates = [SiteUpdate(s.name, part_of(previous, s.name), 10) for s in config.sites]
    decoder = DecoderHead(config.model.widths, 3)
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    _, with_mim = server_step(previous, updates, config, pool, seed=0, mim_decoder=decoder)
    _, without = server_step(previous, updates, config, pool, seed=0)
    assert with_mim.loss > without.loss  # same distillation terms, plus the (positive) MIM loss
    assert any(not torch.equal(before[k], v) for k, v in decoder.state_dict().items())


def test_bf16_autocast_trains_and_predicts_on_the_cpu(demo_config):
    """The mixed-precision path (the default on CUDA and on CPUs with bf16 arithmetic) trains and
    predicts."""
    data, model = site_and_model(demo_config, 0)
    small = data.splits["train"].subset(torch.arange(32))
    method = replace(
        demo_config.method, local_epochs=1, min_steps_per_epoch=2, max_steps_per_epoch=2
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with Compute(torch.device("cpu"), "bf16").autocast():
        stats = train_local(model, data.name, small, method, seed=0)
        probs = predict_probs(model, data.name, small.images)
    assert np.isfinite(stats.loss) and probs.dtype == torch.float32 and probs.device.type == "cpu"
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bf16_autocast_forward_passes_see_weights_changed_in_place():
    """One autocast context spans a site's whole handler: a forward pass after an optimiser step or
    a `load_state_dict` must use the new weights, not bf16 copies cast before the change."""
    layer, x = torch.nn.Linear(4, 1), torch.randn(3, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    with Compute(torch.device("cpu"), "bf16").autocast():
        losses = []
        for _ in range(3):
            loss = layer(x).float().pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            layer.load_state_dict({"weight": torch.zeros(1, 4), "bias": torch.zeros(1)})
            after = layer(x)
    assert losses[2] < losses[1] < losses[0] and not after.any()


@pytest.mark.parametrize("place", ["memory", "disk"])
def test_a_server_step_runs_under_bf16_autocast_on_the_cpu(demo_config, place):
    """The server's path under bf16 autocast (the default on CPUs with bf16 arithmetic): float16
    teacher outputs are gathered and distilled without autocast's CPU casting rules refusing
    them."""
    config = replace(
        demo_config,
        method=replace(demo_config.method, distill_epochs=1),
        runtime=replace(demo_config.runtime, teacher_outputs=place),
    )
    pool = build_pool(config).images
    previous = build_model(config, seed=0).state_dict()
    updates = [SiteUpdate(s.name, part_of(previous, s.name), 10) for s in config.sites]
    with Compute(torch.device("cpu"), "bf16").autocast():
        state, stats = server_step(previous, updates, config, pool, seed=0)
    assert np.isfinite(stats.loss) and all(v.dtype != torch.bfloat16 for v in state.values())


def test_device_and_precision_settings_are_checked(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    for kind, auto in {"amx": "bf16", "avx512": "bf16", "none": "fp32"}.items():
        monkeypatch.setattr(device, "cpu_bf16", lambda kind=kind: kind)
        assert resolve_precision("auto", torch.device("cpu")) == auto
        assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(ConfigError, match=r"runtime\.device 'tpu' unknown"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


FAULTS = """
import resource
import torch
from meduniverse.core.device import keep_freed_memory
def faults():  # page faults of five 64 MiB tensors, each written in full and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        x = torch.ones(16 << 20)
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
kept = keep_freed_memory()
faults()  # the heap grows once
print(default, kept, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_kept_for_reuse_instead_of_faulted_in_again():
    done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    default, kept, again = done.stdout.split()
    assert kept == "True"
    assert int(default) > 5 * 16_000 > 100 * int(again)  # 16k pages a tensor, then reused


def test_augmented_views_keep_the_originals_and_vary_the_copies():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    views = augmented_views(images, 3, torch.Generator().manual_seed(0))
    assert views.shape == (18, 3, 32, 32) and views.dtype == torch.uint8
    assert torch.equal(views[:6], images)
    assert not torch.equal(views[6:12], images) and not torch.equal(views[6:12], views[12:])


def test_teachers_trained_to_convergence_stop_early_on_the_site_validation(demo_config):
    data, model = site_and_model(demo_config, 2)
    method = replace(demo_config.method, local_training="early_stopping")
    schedule = replace(demo_config.finetune, max_epochs=3, patience=1)
    stats = train_site(model, data.name, data.splits, method, schedule, seed=0)
    per_epoch = steps_per_epoch(
        len(data.splits["train"]),
        method.batch_size,
        method.min_steps_per_epoch,
        schedule.max_steps_per_epoch,
    )
    assert stats.steps % per_epoch == 0 and per_epoch <= stats.steps <= 3 * per_epoch
    assert np.isfinite(stats.loss)


def test_best_teachers_keep_whichever_model_scores_higher_on_the_site_validation(demo_config):
    data, untrained = site_and_model(demo_config, 0)
    _, trained = site_and_model(demo_config, 0)
    method = replace(demo_config.method, local_epochs=3, min_steps_per_epoch=10, lr=3e-3)
    train_local(trained, data.name, data.splits["train"], method, seed=0)
    val = data.splits["val"]
    scores = [evaluate(m, data.name, val)["auc"] for m in (untrained, trained)]
    assert scores[1] > scores[0]
    good = {k: v.clone() for k, v in trained.state_dict().items()}
    assert keep_better(untrained, data.name, val, good)  # the kept teacher wins and is loaded
    assert evaluate(untrained, data.name, val)["auc"] == pytest.approx(scores[1])
    _, worse = site_and_model(demo_config, 0)
    assert not keep_better(trained, data.name, val, worse.state_dict())  # the new model stays
    assert evaluate(trained, data.name, val)["auc"] == pytest.approx(scores[1])
    assert not keep_better(trained, data.name, val, None)  # stage 1: nothing kept


def test_early_stopping_last_trains_teachers_to_convergence_only_in_the_last_stage(demo_config):
    method = replace(demo_config.method, local_training="early_stopping_last", stages=3)
    assert [stage_method(method, s).local_training for s in (1, 2, 3)] == [
        "epochs",
        "epochs",
        "early_stopping",
    ]
    plain = replace(method, local_training="epochs")
    assert stage_method(plain, 3) is plain
    data, model = site_and_model(demo_config, 0)
    with pytest.raises(ValueError, match="stage_method"):  # an unresolved setting is not guessed
        train_site(model, data.name, data.splits, method, demo_config.finetune, seed=0)


def test_adapters_start_as_nothing_and_belong_to_their_task(demo_config):
    plain = build_model(demo_config, seed=0)
    adapted = build_model(
        replace(demo_config, model=replace(demo_config.model, adapters=True)), seed=0
    )
    missing = adapted.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("adapters.") for k in missing)
    x = torch.randn(2, 3, 32, 32)
    site = demo_config.sites[0].name
    assert torch.allclose(plain.eval()(x, site), adapted.eval()(x, site))  # zero adapters: same
    own = part_of(adapted.state_dict(), site)
    assert any(k.startswith(f"adapters.{site}.") for k in own)
    assert not any(k.startswith("adapters.") and f".{site}." not in k for k in own)
    share = sum(v.numel() for k, v in own.items() if k.startswith("adapters.")) / sum(
        v.numel() for v in adapted.encoder.parameters()
    )
    assert share < 0.1


@pytest.mark.parametrize("index", [0, 3])  # a classification and a segmentation site
def test_dp_sgd_trains_and_spends_its_budget_stage_by_stage(demo_config, index):
    data, model = site_and_model(demo_config, index)
    small = data.splits["train"].subset(torch.arange(64))
    method = replace(
        demo_config.method, stages=2, local_epochs=1, min_steps_per_epoch=3, max_steps_per_epoch=3
    )
    privacy = PrivacyConfig(dp=True, epsilon=8.0, clip=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats, first = train_private(model, data.name, small, method, privacy, seed=0, stage=1)
    _, second = train_private(model, data.name, small, method, privacy, seed=1, stage=2)
    assert np.isfinite(stats.loss) and 0 < first < second <= 8.0 + 1e-6  # the whole run: at most 8
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(k.startswith("_module.") for k in model.state_dict())  # the model is unwrapped


def test_dp_sgd_computes_in_bf16_under_autocast_and_clips_and_noises_in_fp32(demo_config):
    data, model = site_and_model(demo_config, 3)  # a segmentation site: GroupNorm, a decoder
    small = data.splits["train"].subset(torch.arange(32))
    method = replace(
        demo_config.method, stages=1, local_epochs=1, min_steps_per_epoch=2, max_steps_per_epoch=2
    )
    privacy = PrivacyConfig(dp=True, epsilon=8.0, clip=1.0)
    start, ends, spent = copy.deepcopy(model.state_dict()), {}, {}
    for precision in ("fp32", "bf16"):
        model.load_state_dict(start)
        with Compute(torch.device("cpu"), precision).autocast():
            stats, spent[precision] = train_private(model, data.name, small, method, privacy, 0, 1)
        assert np.isfinite(stats.loss)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        ends[precision] = copy.deepcopy(model.state_dict())
    assert spent["bf16"] == spent["fp32"]  # the accountant does not depend on the precision
    changed = [k for k, v in ends["bf16"].items() if not torch.equal(v, start[k])]
    assert changed and any(not torch.equal(ends["bf16"][k], ends["fp32"][k]) for k in changed)


@pytest.mark.parametrize("trains", ["all", "head"])
def test_dp_sgd_trains_only_the_head_when_told(demo_config, trains):
    data, model = site_and_model(demo_config, 3)  # a segmentation site: a decoder head
    small = data.splits["train"].subset(torch.arange(32))
    method = replace(
        demo_config.method, stages=1, local_epochs=1, min_steps_per_epoch=2, max_steps_per_epoch=2
    )
    privacy = PrivacyConfig(dp=True, epsilon=8.0, clip=1.0, dp_trains=trains)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_private(model, data.name, small, method, privacy, seed=0, stage=1)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith(f"heads.{data.name}.") for k in changed)
    assert any(k.startswith("encoder.") for k in changed) == (trains == "all")
    assert all(k.startswith(("encoder.", f"heads.{data.name}.")) for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # the frozen parts are given back


def test_iterate_average_blends_each_step_in_and_releases_the_average(demo_config):
    weight = torch.nn.Parameter(torch.zeros(2))
    average = IterateAverage([weight], decay=0.5)
    for step, value in enumerate((4.0, 8.0), start=1):
        weight.data.fill_(value)
        average.update(step, 2)
    weight.data.fill_(100.0)
    average.release()  # step 1: decay min(0.5, 2/11) -> 3.27; step 2: decay 0.25 -> 6.82
    expected = 0.25 * (2 / 11 * 0 + 9 / 11 * 4.0) + 0.75 * 8.0
    assert torch.allclose(weight.data, torch.full((2,), expected))
    data, model = site_and_model(demo_config, 0)  # wired into DP-SGD: same seed, other weights
    small = data.splits["train"].subset(torch.arange(32))
    method = replace(
        demo_config.method, stages=1, local_epochs=1, min_steps_per_epoch=4, max_steps_per_epoch=4
    )
    start, ends = copy.deepcopy(model.state_dict()), []
    for ema in (0.0, 0.9):
        model.load_state_dict(start)
        privacy = PrivacyConfig(dp=True, epsilon=8.0, clip=1.0, ema=ema)
        train_private(model, data.name, small, method, privacy, seed=0, stage=1)
        ends.append(model.encoder.stem.conv.weight.detach().clone())
    assert not torch.equal(ends[0], ends[1]) and not torch.equal(
        ends[1], start["encoder.stem.conv.weight"]
    )


def test_dp_sgd_batch_scale_takes_fewer_larger_batches_over_the_same_passes(demo_config):
    data, model = site_and_model(demo_config, 0)
    small = data.splits["train"].subset(torch.arange(64))
    method = replace(demo_config.method, stages=1, local_epochs=2, batch_size=8)
    method = replace(method, min_steps_per_epoch=1, max_steps_per_epoch=0)  # every pass, no cap
    ran = {}
    for scale in (1, 4):
        privacy = PrivacyConfig(dp=True, epsilon=8.0, clip=1.0, batch_scale=scale)
        stats, spent = train_private(model, data.name, small, method, privacy, seed=0, stage=1)
        ran[scale] = stats
        assert 0 < spent <= 8.0 + 1e-6
    assert (ran[1].steps, ran[4].steps) == (16, 4)  # 2 passes of 64 in batches of 8, then of 32
    assert ran[4].images / ran[4].steps > 2 * ran[1].images / ran[1].steps  # Poisson: ~32 vs ~8
