"""A privacy check that can fail: canary sites leak on purpose, one pattern each, and the server
must refuse every leak before it lands in a checkpoint, a log line or results. The same schema stops
an honest site's code from sending anything but the protocol's fields."""

from dataclasses import replace

from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
import pytest
import torch

from loopback import LoopbackGrid
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.errors import PrivacyError, StageError
from meduniverse.core.progress import RunProgress
from meduniverse.federation import client_app as client_module
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.messages import ARRAYS, METRICS, error_text, reply, to_arrays
from meduniverse.federation.server_app import run_federation
from meduniverse.federation.strategy import outlying
from meduniverse.method.server import SiteUpdate
from meduniverse.models.universal import build_model, part_of
from meduniverse.sites.pool import build_pool

pytestmark = pytest.mark.privacy
MARKER = 123456.789  # a value no honest metric takes


def leaky(app, site_index: int, leak):
    """A ClientApp that runs the real one, then rewrites its reply (past the send-path check)."""

    def call(msg: Message, context):
        out = app(msg, context)
        return leak(msg, out) if context.node_config["partition-id"] == site_index else out

    return call


def federate(config, run_dir, app):
    grid = LoopbackGrid(app, len(config.sites))
    run_federation(grid, config, run_dir, 0, build_pool(config), RunProgress(enabled=False))
    return grid


def with_metrics(out: Message, extra: dict) -> Message:
    out.content[METRICS] = MetricRecord({**dict(out.content[METRICS]), **extra})
    return out


def per_example_outputs(msg, out):
    if msg.metadata.message_type != "train":
        return out
    return with_metrics(out, {f"pool-output-{i}": MARKER + i for i in range(50)})


def label_histogram(msg, out):
    if msg.metadata.message_type != "evaluate":
        return out
    return with_metrics(out, {"labels-class-0": MARKER, "labels-class-1": MARKER + 1})


def image_as_scalars(msg, out):
    if msg.metadata.message_type != "evaluate":
        return out
    return with_metrics(out, {f"px-{i}": float(MARKER) for i in range(64)})


def image_in_head(msg, out):
    if msg.metadata.message_type != "train":
        return out
    state = out.content[ARRAYS].to_torch_state_dict()
    head = next(k for k in state if k.startswith("heads.") and k.endswith("bias"))
    state[head] = torch.full_like(state[head], MARKER)  # pixel values where a bias should be
    out.content[ARRAYS] = to_arrays(state)
    return out


def data_in_error_text(msg, out):
    if msg.metadata.message_type != "train":
        return out
    return Message(
        Error(code=1001, reason=f"labels 0,1,1 at /private/site.npz {MARKER}"), reply_to=msg
    )


@pytest.mark.parametrize(
    "leak",
    [per_example_outputs, label_histogram, image_as_scalars, image_in_head, data_in_error_text],
)
def test_a_canary_site_is_refused_and_nothing_it_leaked_is_kept(
    demo_config, tmp_path, leak, caplog
):
    config = replace(demo_config, runtime=replace(demo_config.runtime, min_sites=1))
    caplog.set_level("INFO", logger="meduniverse")
    app = leaky(make_client_app(lambda context: config), 0, leak)
    grid = federate(config, tmp_path / "run", app)
    victim = config.sites[0].name
    progress = (tmp_path / "run" / "checkpoints" / "progress.json").read_text()
    assert str(MARKER)[:6] not in progress and str(MARKER)[:6] not in caplog.text
    assert "/private" not in progress and "/private" not in caplog.text
    ckpt = Checkpoints(tmp_path / "run")
    refused = ckpt.stage_record(1)["rejected"].get(victim, "")
    if leak in (label_histogram, image_as_scalars):  # evaluation replies
        assert all(victim not in sites for sites in ckpt.evaluation(1).values())
    else:
        assert "refused" in refused
    assert any(r.metadata.message_type == "train" for r in grid.replies)


def test_an_honest_site_cannot_send_more_than_the_protocol(demo_config, tmp_path, monkeypatch):
    config = replace(demo_config, runtime=replace(demo_config.runtime, min_sites=1))
    real = client_module.reply

    def chatty(to, task, metrics, *args, **kwargs):  # a developer adds a metric by mistake
        return real(to, task, {**metrics, "label-of-first-example": 1}, *args, **kwargs)

    monkeypatch.setattr(client_module, "reply", chatty)
    grid = LoopbackGrid(make_client_app(lambda context: config), len(config.sites))
    with pytest.raises(StageError, match=r"handshake: .* privacy error \(code 1004\)"):
        run_federation(grid, config, tmp_path / "run", 0, build_pool(config), RunProgress(False))
    assert grid.replies and not any(not r.has_error() for r in grid.replies)  # nothing went out
    reasons = {r.error.reason for r in grid.replies}
    assert all(" privacy error (code 1004)" in why for why in reasons)


def test_the_send_path_refuses_a_reply_off_the_protocol(demo_config):
    request = Message(content=RecordDict(), message_type="evaluate", dst_node_id=1)
    metrics = {
        "num-examples": 3,
        "seconds": 1.0,
        "val-auc": 0.5,
        "val-acc": 0.5,
        "test-auc": 0.5,
        "test-acc": 0.5,
    }
    request.metadata.__dict__["_message_id"] = "m"
    reply(request, "binary", metrics)  # conforms
    with pytest.raises(PrivacyError, match="1 metric"):
        reply(request, "binary", {**metrics, "label-0": 1})


def honest(state: dict, site: str, scale: float) -> SiteUpdate:
    generator = torch.Generator().manual_seed(hash(site) % 1000)
    moved = {
        k: v + scale * torch.randn(v.shape, generator=generator)
        for k, v in part_of(state, site).items()
    }
    return SiteUpdate(site, moved, 10)


@pytest.mark.parametrize("attack", ["scaled", "sign-flipped", "random"])
def test_outlying_updates_are_rejected_and_honest_ones_kept(demo_config, attack):
    state = build_model(demo_config, seed=0).state_dict()
    sites = [s.name for s in demo_config.sites]
    updates = [honest(state, s, 1e-3 * (1 + i % 3)) for i, s in enumerate(sites)]  # sizes differ 3x
    bad = updates[-1]
    sent = part_of(state, bad.site)
    if attack == "scaled":
        bad.state = {k: sent[k] + 999 * (v - sent[k]) for k, v in bad.state.items()}
    elif attack == "sign-flipped":
        bad.state = {k: -v for k, v in bad.state.items()}
    else:
        bad.state = {
            k: torch.randn_like(v) * (v.std() if v.numel() > 1 else 1) for k, v in bad.state.items()
        }
    flagged = outlying([(u, None) for u in updates], state, band=10.0)
    assert set(flagged) == {bad.site}
    assert not outlying([(u, None) for u in updates[:-1]], state, band=10.0)  # honest ones pass
    assert "moved" in flagged[bad.site]


def test_a_runtime_error_keeps_flowers_code_name_not_its_text():
    request = Message(content=RecordDict(), message_type="train", dst_node_id=1)
    request.metadata.__dict__["_message_id"] = "m"
    killed = Error(code=ErrorCode.UNKNOWN, reason=f"OutOfMemoryError at /private/site.npz {MARKER}")
    text = error_text(Message(killed, reply_to=request))
    assert "refused" in text and "0, UNKNOWN" in text
    assert "/private" not in text and str(MARKER)[:6] not in text
