import pytest
import torch

from babybitnet.bitlinear import BitLinear
from babybitnet.gpt import GPT, GPTConfig


def seed_config(**kw):
    return GPTConfig(vocab_size=65, block_size=32, n_embd=64, n_head=4, n_layer=4, attn_scale="embd", **kw)


def test_parameter_counts_match_the_seed():
    assert GPT(seed_config(linear="fp")).num_params() == 209_153
    assert GPT(seed_config(linear="bitnet")).num_params() == 207_617  # BitLinear has no bias


def test_factory_builds_both_variants():
    gpt, bit = GPT(seed_config(linear="fp")), GPT(seed_config(linear="bitnet"))
    assert not any(isinstance(m, BitLinear) for m in gpt.modules())
    bits = [m for m in bit.modules() if isinstance(m, BitLinear)]
    assert len(bits) == 4 * 4  # qkv, proj, fc, proj per block
    # embeddings and the head stay full precision
    assert type(bit.lm_head) is torch.nn.Linear and type(bit.tok_emb) is torch.nn.Embedding


def test_norm_inside_bitlinear_replaces_the_block_norms():
    m = GPT(seed_config(linear="bitnet", bitlinear_norm=True))
    assert isinstance(m.blocks[0].ln1, torch.nn.Identity)
    assert all(b.norm is not None for b in m.modules() if isinstance(b, BitLinear))


@pytest.mark.parametrize("linear", ["fp", "bitnet"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(linear):
    torch.manual_seed(0)
    m = GPT(seed_config(linear=linear))
    x, y = torch.randint(65, (4, 32)), torch.randint(65, (4, 32))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    _, first = m(x, y)
    assert first.item() == pytest.approx(torch.log(torch.tensor(65.0)).item(), abs=0.1)  # near-uniform at init
    for _ in range(30):
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first.item() - 0.5


def test_forward_errors_and_generation():
    m = GPT(seed_config())
    with pytest.raises(ValueError, match="longer than block_size"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, time"):
        m(torch.zeros(33, dtype=torch.long))
    out = m.generate(torch.zeros(2, 1, dtype=torch.long), 40, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 41)  # longer than block_size: the context is cropped
    g1 = m.generate(torch.zeros(1, 1, dtype=torch.long), 10, temperature=0)
    assert torch.equal(g1, m.generate(torch.zeros(1, 1, dtype=torch.long), 10, temperature=0))


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="linear must be"):
        GPTConfig(linear="int4")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
