"""Distillation backpropagates head by head (`backward_by_head`): the gradients of the summed loss,
with one head's activations alive at a time, so the server's memory stays flat in the number of
sites."""

from dataclasses import replace
import weakref

import pytest
import torch

from meduniverse.core.tasks import task_type
from meduniverse.method.distill import distill, pool_logits
from meduniverse.method.loop import backward_by_head
from meduniverse.models.universal import build_model
from meduniverse.sites.pool import build_pool


def head_losses(model):
    """Each head's loss from its pyramid: a plain function of its output, so that every parameter
    gets a gradient."""
    return lambda t, pyramid: model.heads[t](pyramid).square().mean()


@pytest.mark.parametrize("adapters", [False, True])  # one shared pyramid, one per head
def test_backward_by_head_gives_the_gradients_of_the_summed_loss(demo_config, adapters):
    config = replace(demo_config, model=replace(demo_config.model, adapters=adapters))
    model = build_model(config, seed=0).eval()  # no dropout: both passes compute the same
    heads = [s.name for s in config.sites if task_type(s.task).group == "classification"]
    x = torch.randn(4, 3, 32, 32)
    loss_of = head_losses(model)

    pyramids = model.pyramids(x, heads)
    summed = sum(loss_of(t, pyramids[t]) for t in heads)
    summed.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    total = backward_by_head(model.pyramids(x, heads), loss_of)
    got = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert not total.requires_grad
    assert float(total) == pytest.approx(float(summed.detach()), rel=1e-5)
    assert set(got) == set(expected) and any(k.startswith("encoder.") for k in got)
    for k, g in expected.items():
        assert torch.allclose(got[k], g, rtol=1e-4, atol=1e-6), k


class SavedBytes:
    """Bytes of the tensors autograd keeps for backward, now and at most (a saved tensor counts
    until its graph is freed)."""

    def __init__(self):
        self.now = self.peak = 0

    def pack(self, tensor: torch.Tensor):
        size = tensor.numel() * tensor.element_size()
        self.now += size
        self.peak = max(self.peak, self.now)
        holder = _Holder(tensor)
        weakref.finalize(holder, self._freed, size)
        return holder

    def _freed(self, size: int) -> None:
        self.now -= size

    @staticmethod
    def unpack(holder) -> torch.Tensor:
        return holder.tensor


class _Holder:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def peak_saved_bytes(demo_config, n: int) -> int:
    """Peak bytes autograd holds during two distillation steps of a federation with every demo
    site n times (the heads' teachers are the student itself)."""
    sites = tuple(replace(s, name=f"{s.name}_{k}") for s in demo_config.sites for k in range(n))
    config = replace(
        demo_config,
        sites=sites,
        method=replace(demo_config.method, distill_epochs=1),
    )
    pool = {g: x[:32] for g, x in build_pool(demo_config).images.items()}
    group_of = {s.name: task_type(s.task).group for s in config.sites}
    student = build_model(config, seed=0)
    logits = pool_logits(student, list(group_of), pool, group_of)
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        distill(student, logits, logits, pool, group_of, config.method, seed=0)
    return saved.peak


def test_distillation_memory_stays_flat_in_the_number_of_sites(demo_config):
    one, four = peak_saved_bytes(demo_config, 1), peak_saved_bytes(demo_config, 4)
    assert four < 1.2 * one, (one, four)
