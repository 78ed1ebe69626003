"""Secure aggregation (`privacy.secure_aggregation`): the competitors that average weights sum
their encoder deltas through Flower's SecAgg+; the server learns the weighted mean and nothing
else, heads stay at the sites, and a site lost in phase B is recovered or named."""

from dataclasses import replace

from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
import numpy as np
import pytest
import torch

from loopback import LoopbackGrid
from meduniverse.core.arms import ARMS, computed_in_federation
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config_file import check_config
from meduniverse.core.errors import ConfigError, StageError
from meduniverse.core.progress import RunProgress
from meduniverse.federation import secure_site
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.competitors import competitor_strategy
from meduniverse.federation.evaluation import evaluate_arm
from meduniverse.federation.exchange import handshake
from meduniverse.federation.messages import ARRAYS, CONFIG, METRICS, SECURE_KEYS
from meduniverse.federation.server_app import run_federation, run_stages
from meduniverse.models.universal import build_model, encoder_part, is_task_key, norm_keys
from meduniverse.sites.pool import build_pool

pytestmark = pytest.mark.privacy
QUIET = RunProgress(enabled=False)
# SecAgg+ quantises each site's weighted delta in steps of 16 / 2**22 = 3.8e-6 (clipping range 8):
# the mean of five deltas lies within a few steps of the exact one (the deltas reach about 2e-3)
TOLERANCE = 2e-5


def secure(config, min_sites: int = 0):
    """`config` with secure aggregation on (and what it needs), FedAvg and FedBN competing."""
    return replace(
        config,
        privacy=replace(config.privacy, secure_aggregation=True, transfer="outputs"),
        competitors=replace(config.competitors, federated=("fedavg", "fedbn")),
        runtime=replace(config.runtime, min_sites=min_sites),
    )


def train(config, run_dir, arm: str = "fedavg"):
    """Stage 1 of competitor `arm` from one stage-0 model, through the real ClientApps."""
    grid = LoopbackGrid(make_client_app(lambda context: config), len(config.sites))
    roster = handshake(grid, config)
    ckpt = Checkpoints(run_dir)
    ckpt.save_stage(0, {"model": build_model(config, seed=0).state_dict()}, {})
    run_stages(grid, competitor_strategy(arm, roster, 0, config), ckpt, 0, config, QUIET)
    return grid, roster, ckpt


def site_deltas(grid, arm: str) -> dict[int, tuple[dict[str, torch.Tensor], int]]:
    """Per node, the encoder delta and num-examples its site kept in phase A."""
    out = {}
    for node, context in grid.contexts.items():
        delta = context.state.array_records[f"secure.{arm}.delta"].to_torch_state_dict()
        out[node] = delta, int(context.state.config_records[f"secure.{arm}.stage"]["num-examples"])
    return out


def weighted_mean(deltas: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    total = sum(n for _, n in deltas)
    return {k: sum(d[k].double() * n / total for d, n in deltas) for k in deltas[0][0]}


def mean_gap(ckpt, mean: dict[str, torch.Tensor]) -> float:
    """How far stage 1's FedAvg encoder is from stage 0's plus `mean` (the largest absolute gap)."""
    state, stage0 = ckpt.load_stage(1, "fedavg"), ckpt.load_stage(0)
    return max(float((state[k].double() - stage0[k] - d).abs().max()) for k, d in mean.items())


def phase_b(grid) -> list:
    """Every reply the server received to a SecAgg+ message."""
    return [
        r
        for q, r in zip(grid.requests, grid.replies, strict=True)
        if RECORD_KEY_CONFIGS in q.content.config_records
    ]


@pytest.mark.parametrize("arm", ["fedavg", "fedbn"])
def test_secure_averaging_equals_plain_averaging_and_heads_stay_at_the_sites(
    demo_config, tmp_path, arm
):
    # fp32 (bf16 is the default on CPUs with bf16 arithmetic): under bf16 the few-1e-6 quantisation
    # gap moves the synthetic sites' AUCs by a few 1e-3, more than the tolerance of the comparison
    # below
    demo_config = replace(demo_config, runtime=replace(demo_config.runtime, precision="fp32"))
    plain_grid, roster, plain = train(demo_config, tmp_path / "plain", arm)
    config = secure(demo_config)
    grid, _, ckpt = train(config, tmp_path / "secure", arm)
    stage0 = ckpt.load_stage(0)
    shared = set(encoder_part(stage0)) - (
        norm_keys(build_model(config)) if arm == "fedbn" else set()
    )
    ours, theirs = ckpt.load_stage(1, arm), plain.load_stage(1, arm)
    gap = max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in shared)
    moved = max(float((ours[k] - stage0[k]).abs().max()) for k in shared)
    print(f"{arm}: secure vs plain encoder, max abs difference {gap:.2e} (moved {moved:.2e})")
    assert gap < TOLERANCE < moved / 50
    for key, value in ours.items():  # heads and local layers never reached the server
        if is_task_key(key) or key not in shared:
            assert torch.equal(value, stage0[key]), key
    record, plain_record = ckpt.stage_record(1, arm), plain.stage_record(1, arm)
    assert record["rejected"] == {} and record["secure"]["summed"] == sorted(roster.values())
    assert record["sites"] == plain_record["sites"] or all(  # the same local training
        record["sites"][s][m] == v
        for s, metrics in plain_record["sites"].items()
        for m, v in metrics.items()
        if "seconds" not in m and "per-second" not in m
    )
    # the sites evaluate the secure model with the heads (and norms) they kept: as plain FedAvg's
    secure_scores = evaluate_arm(grid, roster, ARMS[arm], ckpt, 1, 0, config, QUIET)
    plain_scores = evaluate_arm(plain_grid, roster, ARMS[arm], plain, 1, 0, demo_config, QUIET)
    for site, scores in plain_scores.items():
        for name, value in scores.items():
            if name.startswith(("val-", "test-")):
                assert secure_scores[site][name] == pytest.approx(value, abs=2e-3), (site, name)


def test_the_server_receives_only_the_masked_sum(demo_config, tmp_path):
    config = secure(demo_config)
    grid, _, ckpt = train(config, tmp_path / "run")
    phase_a = [
        r
        for q, r in zip(grid.requests, grid.replies, strict=True)
        if q.metadata.message_type == "train" and SECURE_KEYS in q.content.get(CONFIG, {})
    ]
    assert len(phase_a) == len(config.sites)
    for reply in phase_a:  # phase A: the stage's scalar metrics, no weights
        assert set(reply.content.keys()) == {METRICS}
    deltas = site_deltas(grid, "fedavg")
    flat = [torch.cat([v.flatten() for v in d.values()]).double() for d, _ in deltas.values()]
    masked = 0
    for reply in phase_b(grid):
        assert not reply.has_error()
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS not in configs:
            continue
        masked += 1
        vector = np.concatenate(
            [bytes_to_ndarray(b).ravel() for b in configs[Key.MASKED_PARAMETERS]][1:]
        )  # the first array is the weight factor
        values = torch.from_numpy(vector.astype(np.float64))
        for delta in flat:
            assert values.shape == delta.shape
            correlation = torch.corrcoef(torch.stack([values, delta]))[0, 1]
            assert abs(float(correlation)) < 0.05  # a uniform mask, nothing of the delta
    assert masked == len(config.sites)
    # what the server added to the encoder is the sites' weighted mean delta
    assert mean_gap(ckpt, weighted_mean(list(deltas.values()))) < TOLERANCE


@pytest.mark.parametrize("min_sites", [4, 0])
def test_a_site_lost_in_phase_b_is_recovered_or_named(
    demo_config, tmp_path, monkeypatch, min_sites
):
    config = secure(demo_config, min_sites)
    victim = config.sites[1].name
    real = secure_site.delta_reply

    def refusing(msg, context):
        if context.node_config["partition-id"] == 1:
            raise RuntimeError("refuses to send its delta")
        return real(msg, context)

    monkeypatch.setattr(secure_site, "delta_reply", refusing)
    if not min_sites:
        with pytest.raises(StageError, match=f"stage 1: fedavg's secure aggregation.*'{victim}'"):
            train(config, tmp_path / "run")
        return
    grid, roster, ckpt = train(config, tmp_path / "run")
    record = ckpt.stage_record(1, "fedavg")
    assert "phase B" in record["rejected"][victim] and victim not in record["sites"]
    assert record["secure"]["summed"] == sorted(set(roster.values()) - {victim})
    deltas = site_deltas(grid, "fedavg")
    mean = weighted_mean([d for node, d in deltas.items() if roster[node] != victim])
    assert mean_gap(ckpt, mean) < TOLERANCE  # the others' mean, the victim's pairwise masks removed


def test_secure_aggregation_is_refused_where_it_cannot_protect(demo_config):
    on = replace(demo_config, privacy=replace(demo_config.privacy, secure_aggregation=True))
    with pytest.raises(ConfigError, match=r"privacy\.transfer = 'outputs'.*distils each site"):
        check_config(on)
    strict = replace(on, privacy=replace(on.privacy, transfer="outputs"))
    with pytest.raises(ConfigError, match=r"covers fedavg, fedprox, fedbn only.*'ditto', 'fedrep'"):
        check_config(strict)
    check_config(secure(demo_config))


def test_a_secure_experiment_trains_and_evaluates_every_arm(demo_config, tmp_path):
    config = secure(demo_config)
    config = replace(
        config,
        competitors=replace(
            config.competitors, probes=("fedbn",), finetuned=("fedavg",), centralized=False
        ),
    )
    grid = LoopbackGrid(make_client_app(lambda context: config), len(config.sites))
    run_federation(grid, config, tmp_path / "run", 0, build_pool(config), QUIET, competitors=True)
    evaluation = Checkpoints(tmp_path / "run").evaluation(1)
    arms = {a.name for a in filter(computed_in_federation, config.arms(True))}
    assert {"fedavg", "fedbn", "fedavg_finetuned", "fedbn_probe"} <= arms == set(evaluation)
    assert all(set(scores) == {s.name for s in config.sites} for scores in evaluation.values())
    for request, reply in zip(grid.requests, grid.replies, strict=True):
        if request.metadata.message_type == "train":  # no site weights reach the server
            assert ARRAYS not in reply.content and not reply.has_error()
