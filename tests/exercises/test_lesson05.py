"""Graders of lesson 5 (05_training): a training step, a loss estimate, a cosine learning-rate schedule.

``train_step`` is compared with the reference step of ``babybitnet.train.train``
on two identical small GPTs with identical AdamW optimizers; ``mean_loss`` with
``babybitnet.train.estimate_loss`` drawing the very same batches; ``cosine_lr``
with ``babybitnet.train.cosine_lr`` (what ``lr_at`` uses for ``schedule="cosine"``) on random settings.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from babybitnet.course.grading import as_float, assert_close
from babybitnet.data import get_batch
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.train import cosine_lr as ref_cosine_lr
from babybitnet.train import estimate_loss

pytestmark = pytest.mark.lesson05

V = 13


def small_gpt(seed: int = 0, dropout: float = 0.0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=8, n_embd=16, n_head=2, n_layer=2, dropout=dropout))


def tokens(n: int = 500, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def reference_step(model, optimizer, x, y) -> float:
    _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def assert_weights_moved(before: list[torch.Tensor], model, ref, what: str) -> None:
    """The step moved the weights about as far as the reference step did (from the same weights)."""
    moved = max((p.detach() - b).abs().max().item() for b, p in zip(before, model.parameters(), strict=True))
    wanted = max((p.detach() - b).abs().max().item() for b, p in zip(before, ref.parameters(), strict=True))
    if moved < 0.1 * wanted:
        raise AssertionError(
            f"{what}: train_step did not change the weights (they moved by at most {moved:.2g}, the reference "
            f"step's by {wanted:.2g}); call optimizer.step() after loss.backward(), and clear the old gradients "
            "before backward: optimizer.zero_grad() between backward and step throws the new ones away"
        )


# ---------------------------------------------------------------------------------------------
# Exercise 5.1: train_step


@pytest.mark.exercise("5.1")
@pytest.mark.parametrize("batch_size,T", [(4, 8), (1, 1), (1, 8), (3, 2)])
def test_train_step_matches_reference(lesson, batch_size, T):
    train_step = lesson.get("train_step")
    mine, ref = small_gpt(), small_gpt()
    opt_mine = torch.optim.AdamW(mine.parameters(), lr=1e-2)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    data, g = tokens(), torch.Generator().manual_seed(1)
    for step in range(3):
        x, y = get_batch(data, batch_size, T, g)
        before = [p.detach().clone() for p in mine.parameters()]
        got = as_float(train_step(mine, opt_mine, x, y), "train_step(model, optimizer, x, y)")
        want = reference_step(ref, opt_ref, x, y)
        assert_close(got, want, f"the loss train_step returned at step {step} (the loss before the update)", atol=1e-5)
        assert_weights_moved(before, mine, ref, f"AdamW step {step} (batch {batch_size}, T={T})")
    params = dict(mine.named_parameters())
    for name, p in ref.named_parameters():
        assert_close(params[name], p, f"parameter {name} after 3 train_steps (batch {batch_size}, T={T})", atol=1e-5)


@pytest.mark.exercise("5.1")
def test_train_step_clears_old_gradients(lesson):
    train_step = lesson.get("train_step")
    model = small_gpt()
    ref = copy.deepcopy(model)
    # Plain SGD makes a forgotten zero_grad show: the step would use the sum of all past gradients.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    x, y = get_batch(tokens(), 4, 8, torch.Generator().manual_seed(2))
    for step in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        train_step(model, opt, x, y)
        reference_step(ref, opt_ref, x, y)
        assert_weights_moved(before, model, ref, f"SGD step {step}")
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            assert_close(p, q, f"parameter {name} after {step + 1} SGD train_steps (do you clear the old gradients?)")


# ---------------------------------------------------------------------------------------------
# Exercise 5.2: mean_loss


class Spy(torch.nn.Module):
    """Wraps a model and records, at every forward, whether it ran in train mode and with gradients on."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x, y=None):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.model(x, y)


@pytest.mark.exercise("5.2")
@pytest.mark.parametrize("n_batches,batch_size,T", [(5, 4, 8), (1, 1, 1), (1, 3, 8), (12, 2, 5)])
def test_mean_loss_matches_estimate_loss(lesson, n_batches, batch_size, T):
    mean_loss = lesson.get("mean_loss")
    model = small_gpt(dropout=0.3)  # dropout: the result depends on eval mode
    data = tokens(seed=n_batches)
    g = torch.Generator().manual_seed(3)
    batches = [get_batch(data, batch_size, T, g) for _ in range(n_batches)]
    got = as_float(mean_loss(model, batches), "mean_loss(model, batches)")
    # estimate_loss draws the same windows from a generator with the same seed, one batch per chunk.
    same_g = torch.Generator().manual_seed(3)
    want = estimate_loss(model, data, batch_size, n_batches, T, same_g, torch.device("cpu"), chunk=batch_size)
    what = f"mean_loss(model, {n_batches} batches of shape ({batch_size}, {T})), a model with dropout"
    assert_close(got, want, what, atol=1e-5)


@pytest.mark.exercise("5.2")
@pytest.mark.parametrize("start_training", [True, False])
def test_mean_loss_uses_eval_mode_and_no_grad_and_restores_the_mode(lesson, start_training):
    mean_loss = lesson.get("mean_loss")
    spy = Spy(small_gpt())
    spy.train(start_training)
    batches = [get_batch(tokens(), 2, 8, torch.Generator().manual_seed(i)) for i in range(3)]
    mean_loss(spy, batches)
    mode = "train" if start_training else "eval"
    assert len(spy.calls) == 3, f"mean_loss with 3 batches should run the model 3 times, it ran {len(spy.calls)}"
    assert not any(training for training, _ in spy.calls), "mean_loss should run the model in eval mode (model.eval())"
    assert not any(grad for _, grad in spy.calls), "mean_loss should run the model under torch.no_grad()"
    assert spy.training == start_training, (
        f"the model was in {mode} mode before mean_loss and should be again after it, "
        f"but it is in {'train' if spy.training else 'eval'} mode"
    )


@pytest.mark.exercise("5.2")
def test_mean_loss_is_the_plain_mean_of_batch_losses(lesson):
    mean_loss = lesson.get("mean_loss")
    model = small_gpt()
    data = tokens()
    g = torch.Generator().manual_seed(4)
    batches = [get_batch(data, 1, 8, g), get_batch(data, 6, 8, g)]  # different sizes: each batch counts once
    with torch.no_grad():
        want = sum(model(x, y)[1].item() for x, y in batches) / 2
    assert_close(mean_loss(model, batches), want, "mean_loss of a batch of 1 and a batch of 6 windows", atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Exercise 5.3: cosine_lr


@pytest.mark.exercise("5.3")
@settings(max_examples=200, deadline=None)
@given(
    max_iters=st.integers(1, 6000),
    warmup_frac=st.floats(0, 1.2),
    step_frac=st.floats(0, 1.3),
    lr=st.floats(1e-5, 1e-1),
    min_frac=st.floats(0, 1),
)
@example(max_iters=5000, warmup_frac=0.02, step_frac=0.0, lr=1e-3, min_frac=0.1)
@example(max_iters=5000, warmup_frac=0.0, step_frac=0.5, lr=1e-3, min_frac=0.0)
@example(max_iters=1, warmup_frac=0.0, step_frac=0.0, lr=1e-3, min_frac=0.0)
@example(max_iters=100, warmup_frac=1.0, step_frac=1.0, lr=1e-3, min_frac=0.5)
def test_cosine_lr_matches_the_package(lesson, max_iters, warmup_frac, step_frac, lr, min_frac):
    cosine_lr = lesson.get("cosine_lr")
    warmup = int(warmup_frac * max_iters)
    step = int(step_frac * max_iters)
    min_lr = min_frac * lr
    got = cosine_lr(step, max_iters, lr, min_lr, warmup)
    want = ref_cosine_lr(step, max_iters, lr, min_lr, warmup)
    what = f"cosine_lr(step={step}, max_iters={max_iters}, lr={lr:g}, min_lr={min_lr:g}, warmup_iters={warmup})"
    assert_close(got, want, what, atol=1e-12, rtol=1e-9)


@pytest.mark.exercise("5.3")
def test_cosine_lr_landmarks_and_defaults(lesson):
    cosine_lr = lesson.get("cosine_lr")
    assert_close(as_float(cosine_lr(0, 100, 1e-3), "cosine_lr(0, 100, 1e-3)"), 1e-3, "cosine_lr(0, 100, 1e-3)")
    assert_close(cosine_lr(50, 100, 1e-3), 5e-4, "cosine_lr(50, 100, 1e-3), half-way", atol=1e-12)
    assert_close(cosine_lr(100, 100, 1e-3, 1e-4), 1e-4, "cosine_lr(100, 100, 1e-3, 1e-4), at the end", atol=1e-12)
    assert_close(cosine_lr(250, 100, 1e-3, 1e-4), 1e-4, "cosine_lr(250, 100, 1e-3, 1e-4), past the end", atol=1e-12)
    assert_close(cosine_lr(0, 100, 1e-3, 0.0, 10), 1e-4, "cosine_lr(0, 100, 1e-3, 0.0, 10), first warm-up step")
    assert_close(cosine_lr(9, 100, 1e-3, 0.0, 10), 1e-3, "cosine_lr(9, 100, 1e-3, 0.0, 10), last warm-up step")
    want = 0.5 * (1 + math.cos(math.pi * 0.5)) * 1e-3
    assert_close(cosine_lr(55, 100, 1e-3, 0.0, 10), want, "cosine_lr(55, 100, 1e-3, 0.0, 10)", atol=1e-12)
