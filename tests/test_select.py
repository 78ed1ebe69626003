"""Keeping the best student of a distillation, chosen on held-out pool images without labels."""

from dataclasses import replace

import pytest
import torch

from meduniverse.core.config_file import check_config
from meduniverse.core.errors import ConfigError
from meduniverse.core.tasks import task_type
from meduniverse.method import distill as distill_module
from meduniverse.method.distill import pool_logits
from meduniverse.method.select import BestStudent, holdout_rows
from meduniverse.method.server import SiteUpdate, server_step
from meduniverse.models.universal import build_model, part_of
from meduniverse.sites.pool import build_pool


def test_holdout_rows_hold_out_every_view_of_an_image():
    held = holdout_rows({"a": 3 * 20, "b": 5}, {"a": 3, "b": 1}, 0.1, seed=0)
    a = held["a"].reshape(3, 20)  # view by view
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], a[2])
    assert int(a[0].sum()) == 2
    assert int(held["b"].sum()) == 1  # at least one image


def test_best_student_restores_the_state_closest_to_the_teachers(demo_config):
    pool = build_pool(demo_config).images
    group_of = {s.name: task_type(s.task).group for s in demo_config.sites}
    teacher = build_model(demo_config, seed=1)
    logits = pool_logits(teacher, list(group_of), pool, group_of)
    held = holdout_rows({g: len(x) for g, x in pool.items()}, dict.fromkeys(pool, 1), 0.5, 0)
    student = build_model(demo_config, seed=1)  # the teachers themselves: the best possible
    best = BestStudent(student, logits, pool, held, group_of, demo_config.method)
    best.check()
    first = best.best
    student.load_state_dict(build_model(demo_config, seed=2).state_dict())
    best.check()
    assert best.best == first and best.best_check == 1
    best.restore()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in student.state_dict().items())


@pytest.mark.parametrize("place", ["memory", "disk"])
def test_agreement_selection_returns_the_checked_student_closest_to_the_teachers(
    demo_config, place, monkeypatch
):
    seen: list[float] = []

    class Recording(BestStudent):
        def check(self) -> None:
            super().check()
            seen.append(self.loss())

    monkeypatch.setattr(distill_module, "BestStudent", Recording)
    pool = build_pool(demo_config).images
    previous = build_model(demo_config, seed=0).state_dict()
    teacher = build_model(demo_config, seed=1)
    updates = [
        SiteUpdate(s.name, part_of(teacher.state_dict(), s.name), 10) for s in demo_config.sites
    ]
    method = replace(
        demo_config.method,
        distill_epochs=4,
        lr=0.05,  # large enough that a later epoch can be worse than an earlier one
        distill_select="agreement",
        distill_holdout=0.25,
    )
    runtime = replace(demo_config.runtime, teacher_outputs=place)
    config = replace(demo_config, method=method, runtime=runtime)
    state, _ = server_step(previous, updates, config, pool, seed=0)
    student = build_model(config)
    student.load_state_dict(state)
    group_of = {s.name: task_type(s.task).group for s in config.sites}
    held = holdout_rows({g: len(x) for g, x in pool.items()}, dict.fromkeys(pool, 1), 0.25, 0)
    logits = pool_logits(teacher, list(group_of), pool, group_of)
    kept = BestStudent(student, logits, pool, held, group_of, method).loss()
    assert len(seen) == 4
    assert min(seen) < seen[-1]  # the last student is not the best here
    assert kept == pytest.approx(min(seen), rel=1e-4)


@pytest.mark.parametrize("setting", [{"distill_select": "first"}, {"distill_holdout": 0.0}])
def test_bad_selection_settings_are_refused(demo_config, setting):
    config = replace(demo_config, method=replace(demo_config.method, **setting))
    with pytest.raises(ConfigError, match=r"method\.distill_"):
        check_config(config)
