"""Strict transfer (`privacy.transfer = 'outputs'`): sites send only their model's logits on the
public pool images the server sent them, never weights; the server distils the same model it would
have distilled from the weights, and refuses a reply that carries anything else."""

from dataclasses import replace

from flwr.app import Message
import pytest
import torch

from loopback import LoopbackGrid
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config_file import check_config
from meduniverse.core.errors import ConfigError
from meduniverse.core.progress import RunProgress
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.messages import ARRAYS, OUTPUTS, POOL, outputs_received, to_arrays
from meduniverse.federation.server_app import run_federation
from meduniverse.sites.pool import build_pool

pytestmark = pytest.mark.privacy


def strict(config, transfer: str = "outputs", min_sites: int = 0):
    return replace(
        config,
        privacy=replace(config.privacy, transfer=transfer),
        method=replace(config.method, distill_views=2),
        runtime=replace(config.runtime, min_sites=min_sites),
    )


def federate(config, run_dir, app=None) -> LoopbackGrid:
    grid = LoopbackGrid(app or make_client_app(lambda context: config), len(config.sites))
    run_federation(grid, config, run_dir, 0, build_pool(config), RunProgress(enabled=False))
    return grid


def test_sites_send_outputs_on_the_pool_and_never_weights(demo_config, tmp_path):
    config = strict(demo_config)
    grid = federate(config, tmp_path / "outputs")
    trains = [
        (q, r)
        for q, r in zip(grid.requests, grid.replies, strict=True)
        if q.metadata.message_type == "train"
    ]
    assert len(trains) == len(config.sites)
    for request, reply in trains:
        assert ARRAYS not in reply.content and OUTPUTS in reply.content
        images = request.content[POOL].to_torch_state_dict()["images"]
        logits = outputs_received(reply)
        assert logits.dtype == torch.float16 and len(logits) == len(images)
        assert images.dtype == torch.uint8  # public pool images, not a private split
    record = Checkpoints(tmp_path / "outputs").stage_record(1)
    assert record["rejected"] == {} and len(record["sites"]) == len(config.sites)


def test_strict_transfer_distils_the_model_the_weights_would_have_given(demo_config, tmp_path):
    federate(strict(demo_config), tmp_path / "outputs")
    federate(strict(demo_config, "weights"), tmp_path / "weights")
    a = Checkpoints(tmp_path / "outputs").load_stage(1)
    b = Checkpoints(tmp_path / "weights").load_stage(1)
    before = Checkpoints(tmp_path / "weights").load_stage(0)
    moved = sum(float((b[k] - before[k]).abs().sum()) for k in b)
    differ = sum(float((a[k] - b[k]).abs().sum()) for k in b)
    assert moved > 0 and differ < 0.05 * moved  # the same up to float rounding at the sites


def weights_too(msg: Message, out: Message) -> Message:
    """A site that sends its weights beside the outputs."""
    if msg.metadata.message_type == "train" and not out.has_error():
        out.content[ARRAYS] = to_arrays({"heads.x.bias": torch.zeros(2)})
    return out


def one_row_short(msg: Message, out: Message) -> Message:
    """A site whose outputs skip an image (so they cannot line up with the pool)."""
    if msg.metadata.message_type == "train" and not out.has_error():
        out.content[OUTPUTS] = to_arrays({"logits": outputs_received(out)[1:]})
    return out


def not_finite(msg: Message, out: Message) -> Message:
    if msg.metadata.message_type == "train" and not out.has_error():
        logits = outputs_received(out).clone()
        logits[0] = float("nan")
        out.content[OUTPUTS] = to_arrays({"logits": logits})
    return out


@pytest.mark.parametrize("leak", [weights_too, one_row_short, not_finite])
def test_a_strict_reply_off_the_protocol_is_refused(demo_config, tmp_path, leak):
    config = strict(demo_config, min_sites=1)
    real = make_client_app(lambda context: config)

    def app(msg, context):
        out = real(msg, context)
        return leak(msg, out) if context.node_config["partition-id"] == 0 else out

    federate(config, tmp_path / "run", app)
    refused = Checkpoints(tmp_path / "run").stage_record(1)["rejected"]
    assert list(refused) == [config.sites[0].name] and "refused" in refused[config.sites[0].name]


def test_strict_transfer_refuses_the_variant_that_averages_weights(demo_config):
    config = replace(
        strict(demo_config), method=replace(demo_config.method, variant="average_then_distil")
    )
    with pytest.raises(ConfigError, match=r"privacy\.transfer"):
        check_config(config)
