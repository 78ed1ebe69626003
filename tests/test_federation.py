"""The real ServerApp flow and ClientApp handlers, driven through a loopback grid; privacy of every
message."""

from dataclasses import replace
import hashlib

import numpy as np
import pytest
import torch

from loopback import LoopbackGrid
from meduniverse.core.arms import METHOD_ARMS, computed_in_federation
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import PrivacyConfig
from meduniverse.core.errors import StageError
from meduniverse.core.progress import RunProgress
from meduniverse.federation import client_app as client_module
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.messages import ARRAYS, CONFIG, METRICS
from meduniverse.federation.server_app import run_federation
from meduniverse.models.universal import (
    PERSONAL_PREFIX,
    as_personal,
    build_model,
    local_key,
    norm_keys,
    part_of,
)
from meduniverse.results.document import privacy_spent
from meduniverse.results.model_card import privacy_text
from meduniverse.sites.pool import build_pool
from meduniverse.sites.sources import private_raw

MESSAGE_TYPES = {"query", "train", "evaluate"}


def federate(config, run_dir, seed=0, competitors=False):
    grid = LoopbackGrid(make_client_app(lambda context: config), len(config.sites))
    run_federation(
        grid, config, run_dir, seed, build_pool(config), RunProgress(enabled=False), competitors
    )
    return grid


def private_fingerprints(config) -> set[str]:
    """SHA-256 of every private split array and every private example (images, labels, masks)."""
    out = set()
    for site in config.sites:
        for split in private_raw(site, config.pool, config.seed).values():
            for array in (split.images, split.targets):
                out.add(hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest())
                out.update(
                    hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in array
                )
    return out


@pytest.mark.privacy
def test_nothing_but_weights_and_scalars_leaves_a_site(shared8_config, tmp_path):
    config = replace(
        shared8_config,
        method=replace(shared8_config.method, stages=2),
        finetune=replace(shared8_config.finetune, max_epochs=1, max_steps_per_epoch=2),
    )  # what leaves is checked, not how well it learns: the shortest fine-tunes
    grid = federate(config, tmp_path / "run", competitors=True)
    assert {
        r.metadata.message_type for r in grid.replies
    } == MESSAGE_TYPES  # every message type was checked
    arms = {
        (q.metadata.message_type, q.content[CONFIG]["arm"])
        for q in grid.requests
        if "arm" in q.content[CONFIG]
    }
    assert {a for t, a in arms if t == "train"} == {
        "universal",
        *config.competitors.federated,
    }  # every arm's training
    assert {a for t, a in arms if t == "evaluate"} == {
        a.name for a in filter(computed_in_federation, config.arms(True))
    }
    shapes = {k: v.shape for k, v in build_model(config).state_dict().items()}
    fingerprints = private_fingerprints(config)
    sites = {s.name: s for s in config.sites}
    for reply in grid.replies:
        assert not reply.has_error(), reply.error
        assert set(reply.content.keys()) <= {ARRAYS, METRICS, CONFIG}
        for value in reply.content[METRICS].values():
            assert isinstance(value, (int, float)), f"non-scalar metric {value!r}"
        if CONFIG in reply.content:
            info = dict(reply.content[CONFIG])
            assert (
                set(info) == {"site", "task"}
                and info["site"] in sites
                and info["task"] == sites[info["site"]].task
            )
        if ARRAYS in reply.content:
            assert reply.metadata.message_type == "train"
            state = reply.content[ARRAYS].to_torch_state_dict()
            site = next(s for s in sites if any(k.startswith(f"heads.{s}.") for k in state))
            own = part_of(shapes, site)
            if any(
                k.startswith(PERSONAL_PREFIX) for k in state
            ):  # Ditto: the personal site model too
                own = {**own, **as_personal(own)}
            assert set(state) == set(own), "only the site model's own parameters may leave"
            for key, tensor in state.items():
                assert tensor.shape == own[key]
                assert hashlib.sha256(tensor.numpy().tobytes()).hexdigest() not in fingerprints


def test_stages_are_checkpointed_and_every_arm_is_evaluated(demo_config, tmp_path):
    run_dir = tmp_path / "run"
    grid = federate(demo_config, run_dir)
    ckpt = Checkpoints(run_dir)
    assert ckpt.last_stage() == 1
    assert ckpt.weights_path(0).is_file() and ckpt.weights_path(1).is_file()
    record = ckpt.stage_record(1)
    assert set(record["sites"]) == {s.name for s in demo_config.sites} and record["rejected"] == {}
    evaluation = ckpt.evaluation(1)
    assert set(evaluation) == set(METHOD_ARMS)
    for arm in evaluation.values():
        for site in demo_config.sites:
            key = "test-dice" if site.task == "segmentation" else "test-auc"
            assert 0 <= arm[site.name][key] <= 1
    trained = sum(r.metadata.message_type == "train" for r in grid.replies)
    assert trained == len(demo_config.sites)
    again = federate(demo_config, run_dir)  # everything done: nothing trains again
    assert {r.metadata.message_type for r in again.replies} == {"query"}


def test_a_failing_site_stops_the_stage_and_a_rerun_resumes_from_the_last_checkpoint(
    demo_config, tmp_path, monkeypatch
):
    config = replace(demo_config, method=replace(demo_config.method, stages=2))
    run_dir = tmp_path / "run"
    real_train = client_module.train_site
    victim = config.sites[1].name

    def failing(model, name, splits, method, schedule, seed, *args):
        if name == victim and seed % 1000 == 2:
            raise RuntimeError("disk on fire")
        return real_train(model, name, splits, method, schedule, seed, *args)

    monkeypatch.setattr(client_module, "train_site", failing)
    with pytest.raises(StageError, match=f"stage 2.*{victim}.*internal error"):
        federate(config, run_dir)
    ckpt = Checkpoints(run_dir)
    assert ckpt.last_stage() == 1
    stage1 = ckpt.load_stage(1)
    monkeypatch.setattr(client_module, "train_site", real_train)
    grid = federate(config, run_dir)
    assert sum(r.metadata.message_type == "train" for r in grid.replies) == len(
        config.sites
    )  # stage 2 only
    assert ckpt.last_stage() == 2
    assert all(torch.equal(stage1[k], v) for k, v in ckpt.load_stage(1).items())


def test_poisoned_update_is_rejected_and_logged(demo_config, tmp_path, monkeypatch, caplog):
    config = replace(demo_config, runtime=replace(demo_config.runtime, min_sites=1))
    victim = config.sites[0].name
    real_handle = client_module.handle_train

    def poisoned(msg, cfg, data, context):
        out = real_handle(msg, cfg, data, context)
        if data.name == victim:
            arrays = out.content[ARRAYS]
            state = {
                k: torch.full_like(v, float("nan")) for k, v in arrays.to_torch_state_dict().items()
            }
            from meduniverse.federation.messages import to_arrays

            out.content[ARRAYS] = to_arrays(state)
        return out

    monkeypatch.setattr(client_module, "handle_train", poisoned)
    caplog.set_level("WARNING", logger="meduniverse")
    federate(config, tmp_path / "run")
    record = Checkpoints(tmp_path / "run").stage_record(1)
    assert "NaN or inf" in record["rejected"][victim]
    assert victim in caplog.text and "reply refused" in caplog.text
    state = Checkpoints(tmp_path / "run").load_stage(1)
    assert all(torch.isfinite(v).all() for v in state.values())


def train_exchanges(grid, arm):
    """(site, request state, reply state, num-examples) of every training message of one arm."""
    out = []
    for request, reply in zip(grid.requests, grid.replies, strict=True):
        if request.metadata.message_type == "train" and request.content[CONFIG]["arm"] == arm:
            state = reply.content[ARRAYS].to_torch_state_dict()
            site = next(k.split(".")[1] for k in state if k.startswith("heads."))
            out.append((site, request, state, int(reply.content[METRICS]["num-examples"])))
    return out


def test_competitors_average_the_encoder_and_keep_heads_and_norms_at_their_site(
    demo_config, tmp_path
):
    grid = federate(demo_config, tmp_path / "run", competitors=True)
    ckpt = Checkpoints(tmp_path / "run")
    assert set(ckpt.evaluation(1)) == {
        a.name for a in filter(computed_in_federation, demo_config.arms(True))
    }
    stage0 = ckpt.load_stage(0)
    norms = norm_keys(build_model(demo_config))
    conv = "encoder.stem.conv.weight"
    for arm in ("fedavg", "fedprox", "fedbn"):
        state, sent = ckpt.load_stage(1, arm), train_exchanges(grid, arm)
        assert len(sent) == len(demo_config.sites)
        weights = torch.tensor([n for *_, n in sent], dtype=torch.float64)
        average = sum(
            w / weights.sum() * s[conv].double()
            for w, (_, _, s, _) in zip(weights, sent, strict=True)
        )
        assert torch.allclose(
            state[conv].double(), average, atol=1e-6
        )  # Flower's weighted average of the encoders
        for _site, _, reply, _ in sent:
            head = {k: v for k, v in reply.items() if k.startswith("heads.")}
            assert all(
                torch.equal(state[k], v) for k, v in head.items()
            )  # each head stays its site's own
        norm = next(iter(norms))
        if arm == "fedbn":
            assert torch.equal(
                state[norm], stage0[norm]
            )  # normalisation layers are never averaged...
            for site, _, reply, _ in sent:
                assert torch.equal(
                    state[local_key(site, norm)], reply[norm]
                )  # ...but kept per site
        else:
            assert not torch.equal(state[norm], stage0[norm])
    mu = {
        float(r.content[CONFIG]["proximal-mu"]) for _, r, _, _ in train_exchanges(grid, "fedprox")
    }
    assert mu == {demo_config.competitors.proximal_mu}
    fedavg, fedprox = ckpt.load_stage(1, "fedavg"), ckpt.load_stage(1, "fedprox")
    assert not torch.equal(
        fedavg[conv], fedprox[conv]
    )  # the proximal term changed the local training


def test_dp_sgd_sites_report_what_they_spent_and_the_card_says_so(demo_config, tmp_path):
    config = replace(demo_config, privacy=PrivacyConfig(dp=True, epsilon=4.0, clip=1.0))
    federate(config, tmp_path / "run")
    records = Checkpoints(tmp_path / "run").records()
    privacy = privacy_spent(config, records)
    assert set(privacy["epsilon"]) == {s.name for s in config.sites}
    assert all(0 < eps <= 4.0 + 1e-6 for eps in privacy["epsilon"].values())
    assert "DP-SGD" in privacy_text(privacy) and "target epsilon 4.0" in privacy_text(privacy)
    assert privacy_spent(demo_config, records) == {"dp": False}  # no DP: no claim of any


def test_best_teachers_never_send_a_worse_teacher_than_the_stage_before(demo_config, tmp_path):
    method = replace(demo_config.method, stages=3, teachers="best", lr=3e-2)
    config = replace(demo_config, method=method)
    federate(config, tmp_path / "run")
    records = [Checkpoints(tmp_path / "run").stage_record(s)["sites"] for s in (1, 2, 3)]
    for site in config.sites:
        key = next(k for k in records[0][site.name] if k.startswith("val-"))
        scores = [r[site.name][key] for r in records]
        kept = [r[site.name]["kept-teacher"] for r in records]
        assert kept[0] == 0 and scores[1] >= scores[0] - 1e-6 and scores[2] >= scores[1] - 1e-6
        # a kept teacher is the one sent the stage before: the same validation score
        for stage in (1, 2):
            if kept[stage]:
                assert scores[stage] == pytest.approx(scores[stage - 1])
