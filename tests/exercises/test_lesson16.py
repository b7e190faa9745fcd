"""Graders of lesson 16 (16_bitnet_2b4t): RoPE and the SubLN gated feed-forward of BitNet b1.58 2B4T.

``rope`` is compared with the package's ``babybitnet.attention.rope`` on random shapes, positions
(starting at 0 or past it, as with a KV cache), thetas, float32 and float64, and on its landmarks:
position 0 leaves x unchanged, norms are kept, and q . k depends only on the offset.
``GatedMLP`` (the lesson's ``__init__``, the learner's ``forward``) is loaded with the weights of the
package's ``babybitnet.gpt.GatedMLP`` and compared with it, with and without SubLN, for babyGPT's
and babyBitNet's linear layers.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet.attention import rope as ref_rope
from babybitnet.course.grading import assert_close
from babybitnet.gpt import GatedMLP as RefGatedMLP
from babybitnet.gpt import make_linear
from babybitnet.presets import get_preset

pytestmark = pytest.mark.lesson16


# ---------------------------------------------------------------------------------------------
# Exercise 16.1: rope


@pytest.mark.exercise("16.1")
@settings(max_examples=25)
@given(
    d=st.sampled_from([2, 4, 8, 16, 32]),
    t=st.integers(1, 9),
    start=st.integers(0, 40),
    theta=st.sampled_from([100.0, 10000.0, 500000.0]),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rope_matches_the_package(lesson, d, t, start, theta, double, seed):
    fn = lesson.get("rope")
    dtype = torch.float64 if double else torch.float32
    x = torch.randn(2, 3, t, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    pos = torch.arange(start, start + t)
    what = f"rope(x of shape {tuple(x.shape)} {dtype}, positions {start}..{start + t - 1}, theta={theta})"
    assert_close(fn(x, pos, theta), ref_rope(x, pos, theta), what, atol=1e-5, rtol=1e-5)


@pytest.mark.exercise("16.1")
def test_rope_landmarks(lesson):
    fn = lesson.get("rope")
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0))
    y = fn(x, torch.zeros(6, dtype=torch.long), 10000.0)
    assert_close(y, x, "rope at position 0 (no rotation)")
    y = fn(x, torch.arange(6), 10000.0)
    assert_close(y.norm(dim=-1), x.norm(dim=-1), "the norms of rope(x) (a rotation keeps lengths)", atol=1e-4)
    q, k = x[:1, :1], x[1:2, :1]

    def score(m: int, n: int) -> torch.Tensor:
        return fn(q, torch.tensor([m]), 100.0) @ fn(k, torch.tensor([n]), 100.0).transpose(-2, -1)

    assert_close(score(9, 4), score(5, 0), "q . k of q at 9, k at 4 against q at 5, k at 0", atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Exercise 16.2: GatedMLP with SubLN


@pytest.mark.exercise("16.2")
@pytest.mark.parametrize("model", ["gpt", "bitnet"])
@pytest.mark.parametrize("subln", [True, False])
def test_gated_mlp_matches_the_package(lesson, model, subln):
    cls = lesson.get("GatedMLP")
    config, _ = get_preset("b2b4t_block", model)
    config = replace(config, subln=subln, norm_eps=1e-5)
    torch.manual_seed(0)
    ref = RefGatedMLP(config, make_linear(config)).eval()
    with torch.no_grad():
        if ref.sub_norm is not None:  # not all ones, so that a skipped norm weight shows
            ref.sub_norm.weight.uniform_(0.5, 1.5)
    mine = cls(config, make_linear(config)).eval()
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, 7, config.n_embd, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        assert_close(mine(x), ref(x), f"GatedMLP(subln={subln}, {model}) on x of shape {tuple(x.shape)}", atol=1e-5)
