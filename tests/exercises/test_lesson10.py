"""Graders of lesson 10 (10_compare): the two-stage learning-rate and weight-decay schedule.

``two_stage_lr`` and ``two_stage_weight_decay`` are compared with the package's
``babybitnet.train.two_stage_lr`` and ``two_stage_weight_decay`` on random settings
(hypothesis) and on the landmarks: the first and last warm-up step, the last
step of stage 1, the first of stage 2, the last step and past it, a warm-up
longer than stage 1, ``lr_stage2`` and ``weight_decay_stage2`` left at None,
a stage 2 that starts at step 0 or never, a 1-step run.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet.course.grading import as_float, assert_close
from babybitnet.train import TrainConfig
from babybitnet.train import two_stage_lr as ref_two_stage_lr
from babybitnet.train import two_stage_weight_decay as ref_two_stage_weight_decay

pytestmark = pytest.mark.lesson10


def config(**kw) -> TrainConfig:
    base = dict(max_iters=5000, lr=6e-3, lr_stage2=3e-3, min_lr=1e-4, warmup_iters=100, schedule="two_stage")
    base.update(weight_decay=0.1, weight_decay_stage2=0.0)
    return TrainConfig(**{**base, **kw})


def describe(cfg: TrainConfig) -> str:
    keys = ("max_iters", "lr", "lr_stage2", "min_lr", "warmup_iters", "stage2_frac")
    return "TrainConfig(" + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in keys) + ")"


def check_lr(fn, step: int, cfg: TrainConfig, note: str = "") -> None:
    what = f"two_stage_lr({step}, {describe(cfg)}){note}"
    assert_close(as_float(fn(step, cfg), what), ref_two_stage_lr(step, cfg), what, atol=1e-12, rtol=1e-9)


def check_wd(fn, step: int, cfg: TrainConfig, note: str = "") -> None:
    what = (
        f"two_stage_weight_decay({step}, cfg with max_iters={cfg.max_iters}, stage2_frac={cfg.stage2_frac}, "
        f"weight_decay={cfg.weight_decay}, weight_decay_stage2={cfg.weight_decay_stage2}){note}"
    )
    got = fn(step, cfg)
    if isinstance(got, int) and not isinstance(got, bool):
        got = float(got)  # 0 for 0.0 is fine
    assert_close(as_float(got, what), ref_two_stage_weight_decay(step, cfg), what, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Exercise 10.1: two_stage_lr


@pytest.mark.exercise("10.1")
def test_two_stage_lr_landmarks(lesson):
    fn = lesson.get("two_stage_lr")
    cfg = config()
    for step, note in [
        (0, ", the first warm-up step"),
        (99, ", the last warm-up step"),
        (100, ", the first step at the peak"),
        (2499, ", the last step of stage 1"),
        (2500, ", the first step of stage 2 (the drop)"),
        (3750, ", half way through stage 2"),
        (4999, ", the last step"),
        (6000, ", past the end"),
    ]:
        check_lr(fn, step, cfg, note)


@pytest.mark.exercise("10.1")
def test_two_stage_lr_defaults_and_odd_settings(lesson):
    fn = lesson.get("two_stage_lr")
    check_lr(fn, 2500, config(lr_stage2=None), " (lr_stage2=None means half the peak)")
    check_lr(fn, 2600, config(lr_stage2=None, min_lr=0.0), " (lr_stage2=None, min_lr=0)")
    check_lr(fn, 3000, config(lr_stage2=0.0, min_lr=0.0), " (lr_stage2=0.0 is a rate of 0, not None: test `is None`)")
    check_lr(fn, 150, config(warmup_iters=300, max_iters=400), " (the warm-up runs into stage 2)")
    check_lr(fn, 0, config(stage2_frac=0.0, warmup_iters=0), " (stage 2 from step 0)")
    check_lr(fn, 4999, config(stage2_frac=1.0, warmup_iters=0), " (no stage 2)")
    check_lr(fn, 0, config(max_iters=1, warmup_iters=0), " (a 1-step run)")
    check_lr(fn, 1667, config(max_iters=3333), " (stage 2 starts at int(0.5 * 3333) = 1666)")
    check_lr(fn, 1666, config(max_iters=3333), " (stage 2 starts at int(0.5 * 3333) = 1666)")


@pytest.mark.exercise("10.1")
@settings(max_examples=200, deadline=None)
@given(
    max_iters=st.integers(1, 6000),
    warmup_frac=st.floats(0, 0.8),
    stage2_frac=st.floats(0, 1),
    step_frac=st.floats(0, 1.2),
    lr=st.floats(1e-5, 1e-1),
    stage2_ratio=st.one_of(st.none(), st.floats(0.05, 1.0)),
    min_frac=st.floats(0, 0.5),
)
@example(max_iters=5000, warmup_frac=0.02, stage2_frac=0.5, step_frac=0.5, lr=6e-3, stage2_ratio=0.5, min_frac=0.0)
def test_two_stage_lr_matches_the_package(
    lesson, max_iters, warmup_frac, stage2_frac, step_frac, lr, stage2_ratio, min_frac
):
    fn = lesson.get("two_stage_lr")
    lr2 = None if stage2_ratio is None else stage2_ratio * lr
    cfg = config(
        max_iters=max_iters,
        warmup_iters=int(warmup_frac * max_iters),
        stage2_frac=stage2_frac,
        lr=lr,
        lr_stage2=lr2,
        min_lr=min_frac * (lr / 2 if lr2 is None else lr2),
    )
    check_lr(fn, int(step_frac * max_iters), cfg)


# ---------------------------------------------------------------------------------------------
# Exercise 10.2: two_stage_weight_decay


@pytest.mark.exercise("10.2")
def test_two_stage_weight_decay_landmarks(lesson):
    fn = lesson.get("two_stage_weight_decay")
    cfg = config()
    for step, note in [(0, ""), (2499, ", the last step of stage 1"), (2500, ", the first of stage 2"), (4999, "")]:
        check_wd(fn, step, cfg, note)
    check_wd(fn, 4000, config(weight_decay_stage2=None), " (None: keep the weight decay)")
    check_wd(fn, 4000, config(weight_decay_stage2=0.05), "")
    check_wd(fn, 1666, config(max_iters=3333), " (stage 2 starts at int(0.5 * 3333) = 1666)")
    check_wd(fn, 1665, config(max_iters=3333), " (stage 2 starts at int(0.5 * 3333) = 1666)")
    check_wd(fn, 0, config(stage2_frac=0.0), " (stage 2 from step 0)")


@pytest.mark.exercise("10.2")
@settings(max_examples=100, deadline=None)
@given(
    max_iters=st.integers(1, 6000),
    stage2_frac=st.floats(0, 1),
    step_frac=st.floats(0, 1.2),
    wd=st.floats(0, 0.5),
    wd2=st.one_of(st.none(), st.floats(0, 0.5)),
)
def test_two_stage_weight_decay_matches(lesson, max_iters, stage2_frac, step_frac, wd, wd2):
    fn = lesson.get("two_stage_weight_decay")
    cfg = config(max_iters=max_iters, stage2_frac=stage2_frac, weight_decay=wd, weight_decay_stage2=wd2)
    check_wd(fn, int(step_frac * max_iters), cfg)
