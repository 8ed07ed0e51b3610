import math
from types import SimpleNamespace

import pytest

from uniemox.errors import UserError
from uniemox.train.schedule import lr_at, plan_steps


def _optim(**kw):
    base = dict(lr=None, blr=1e-3, grad_accum=2, max_steps=0, warmup_steps=0, warmup_epochs=40.0, epochs=200.0)
    return SimpleNamespace(**dict(base, **kw))


def test_warmup_then_half_cosine():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110, min_lr=0.0) == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, 110, min_lr=0.1) == pytest.approx(0.1)


def test_plan_from_epochs_as_the_paper():
    # EmoSet train + val, 8 GPUs x 64 per GPU x accumulation 2 = 1024 per step
    plan = plan_steps(_optim(), micro_batch=64, world_size=8, epoch_samples=lambda: 100_386)
    assert plan.global_batch == 1024 and plan.base_lr == pytest.approx(1e-3 * 1024 / 256)
    assert plan.total_steps == math.ceil(200 * (100_386 // 1024)) and plan.warmup_steps == 40 * 98


def test_plan_from_steps_never_counts_the_data():
    def no_count():
        raise AssertionError("counted")
    plan = plan_steps(_optim(max_steps=300, warmup_steps=30, lr=5e-4), 32, 1, no_count)
    assert plan == (64, 5e-4, 300, 30, None)


def test_plan_needs_a_count_or_steps():
    with pytest.raises(UserError, match="set optim.max_steps"):
        plan_steps(_optim(), 32, 1, lambda: None)


def test_warmup_epochs_apply_to_a_step_counted_run_when_the_epoch_is_known():
    plan = plan_steps(_optim(max_steps=300, warmup_epochs=2.0), 32, 1, lambda: 640)
    assert plan.total_steps == 300 and plan.steps_per_epoch == 10 and plan.warmup_steps == 20
    assert plan_steps(_optim(max_steps=300), 32, 1, lambda: None).warmup_steps == 0  # not counted: none
