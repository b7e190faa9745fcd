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


@pytest.mark.parametrize(
    "kw, pattern",
    [
        (dict(n_layer=0), r"n_layer must be an int >= 1, got 0"),
        (dict(n_head=-1), r"n_head must be an int >= 1"),
        (dict(n_embd=64.0), r"n_embd must be an int >= 1, got 64.0"),
        (dict(block_size=True), r"block_size must be an int >= 1, got True"),
        (dict(vocab_size=0), r"vocab_size must be an int >= 1"),
        (dict(n_embd=64, n_head=5), r"n_embd=64 must be divisible by n_head=5"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), r"dropout must be a number in \[0, 1\)"),
        (dict(dropout=float("nan")), r"dropout must be a number in \[0, 1\)"),
        (dict(bias="yes"), r"bias must be True or False"),
        (dict(activation="tanh"), r"activation must be one of"),
        (dict(attn_scale="none"), r"attn_scale must be 'head' or 'embd'"),
        (dict(n_layer=100_000), r"n_layer must be at most 1000, got 100000"),
        (dict(n_embd=65536, n_head=1), r"needs about 768 GiB of float32 parameters, more than the 64 GiB allowed"),
        (dict(vocab_size=10**9, n_embd=64), r"GiB of float32 parameters"),
    ],
)
def test_bad_config_values_are_refused_before_allocating(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        GPTConfig(**kw)


def test_config_limits_sit_where_they_say():
    ok = GPTConfig(n_layer=1000, n_embd=8, n_head=1)  # at the cap: a config, not a model, so nothing is allocated
    assert ok.n_layer == 1000
    for linear in ("fp", "bitnet"):
        for bias in (True, False):
            config = GPTConfig(linear=linear, bias=bias, n_layer=2, n_embd=24, n_head=3, vocab_size=50, block_size=9)
            n = GPT(config).num_params()
            assert n <= config.max_params()
            assert n == config.max_params() or linear == "bitnet" or not bias  # exact for babyGPT with biases
    with pytest.raises(ValueError, match="188 GiB"):  # 1000 * 12 * 2048^2 parameters
        GPTConfig(n_layer=1000, n_embd=2048, n_head=8)
    with pytest.raises(ValueError, match="act_bits|activation bits"):
        BitLinear(8, 8, act_bits=1)
    with pytest.raises(ValueError, match="weight_groups=3"):
        BitLinear(8, 8, weight_groups=3)
    with pytest.raises(ValueError, match="in_features must be an int >= 1"):
        BitLinear(0, 8)


def test_generate_arguments_are_checked():
    m = GPT(seed_config())
    prompt = torch.zeros(1, 1, dtype=torch.long)
    for kw, pattern in [
        (dict(temperature=-1.0), r"temperature must be a finite number >= 0 \(0 is greedy\), got -1.0"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(temperature=float("inf")), "temperature must be a finite number"),
        (dict(temperature="hot"), "temperature must be a number"),
        (dict(max_new_tokens=-1), r"max_new_tokens must be in 0..100000, got -1"),
        (dict(max_new_tokens=10**9), r"max_new_tokens must be in 0..100000"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be an int"),
        (dict(top_k=0), r"top_k must be None \(no limit\) or an int >= 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            m.generate(prompt, **{"max_new_tokens": 3, **kw})
    with pytest.raises(ValueError, match="time >= 1"):
        m.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    assert torch.equal(m.generate(prompt, 0), prompt)
    # a tiny temperature is greedy in the limit, and must not turn into inf - inf = NaN
    greedy = m.generate(prompt, 8, temperature=0)
    assert torch.equal(m.generate(prompt, 8, temperature=1e-45, generator=torch.Generator().manual_seed(0)), greedy)


def test_token_ids_out_of_the_vocabulary_are_a_clear_error():
    m = GPT(seed_config())
    with pytest.raises(ValueError, match=r"token id 65 is out of range: this model's vocabulary has ids 0..64"):
        m(torch.tensor([[1, 65]]))
    with pytest.raises(ValueError, match=r"token id -3 is out of range"):
        m(torch.tensor([[-3, 2]]))
    with pytest.raises(ValueError, match=r"integer token ids \(torch.long\), got dtype torch.float32"):
        m(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="token id 70"):
        m.generate(torch.tensor([[70]]), 2)
    logits, _ = m(torch.tensor([[0, 64]]))  # both ends of the range are fine
    assert logits.shape == (1, 2, 65)


@pytest.mark.parametrize("linear", ["fp", "bitnet"])
def test_last_only_runs_the_head_on_the_last_position(linear):
    torch.manual_seed(0)
    m = GPT(seed_config(linear=linear)).eval()
    idx = torch.randint(65, (2, 32))
    with torch.no_grad():
        full, _ = m(idx)
        last, loss = m(idx, last_only=True)
    assert last.shape == (2, 1, 65) and loss is None
    # the same numbers as the last row of the full logits (the head multiplies 1 row instead of 32: MKL may
    # sum in another order, so up to rounding)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="last_only"):
        m(idx, torch.zeros_like(idx), last_only=True)
