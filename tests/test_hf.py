"""Loading transformers BitNet checkpoints (issue 16), proven on tiny random models: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (a test-only dependency: pip install -e '.[dev]')"
)

from transformers import BitNetConfig, BitNetForCausalLM  # noqa: E402
from transformers.integrations import bitnet as hf_bitnet  # noqa: E402
from transformers.utils.quantization_config import BitNetQuantConfig  # noqa: E402

from babybitnet import hf  # noqa: E402
from babybitnet.files import load_packed, save_packed  # noqa: E402
from babybitnet.packed import pack_model  # noqa: E402

VOCAB = 97


@pytest.fixture(autouse=True)
def no_compile():
    # transformers' BitLinear wraps its helpers in torch.compile: minutes of compiling on a CPU for nothing
    with torch.compiler.set_stance("force_eager"):
        yield


def tiny_config(**kw) -> BitNetConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=48,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    return BitNetConfig(**{**settings, **kw})


def random_model(seed: int = 0, **kw) -> BitNetForCausalLM:
    """transformers' model with random weights large enough that greedy choices are not near-ties."""
    torch.manual_seed(seed)
    model = BitNetForCausalLM(tiny_config(**kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
    return model


def to_packed_transformers(model: BitNetForCausalLM) -> BitNetForCausalLM:
    """Swap every linear layer (not lm_head) for transformers' own packed BitLinear, "bitlinear" offline mode."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    for name, lin in linears.items():
        w = lin.weight.detach()
        s = 1.0 / w.abs().mean().clamp(min=1e-5)
        new = hf_bitnet.BitLinear(lin.in_features, lin.out_features, bias=False, dtype=torch.float32)
        new.weight = hf_bitnet.pack_weights((w * s).round().clamp(-1, 1))
        new.weight_scale = s.reshape(1)
        model.set_submodule(name, new)
    model.config.quantization_config = BitNetQuantConfig(linear_class="bitlinear", quantization_mode="offline")
    return model


def to_online_transformers(model: BitNetForCausalLM) -> BitNetForCausalLM:
    """transformers' AutoBitLinear in "online" mode: float master weights, ternarized per matrix each call."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    for name, lin in linears.items():
        new = hf_bitnet.AutoBitLinear(lin.in_features, lin.out_features, bias=False, online_quant=True)
        new.weight = lin.weight
        model.set_submodule(name, new)
    return model


def greedy_hf(model: BitNetForCausalLM, idx: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):  # no cache: the plainest use of transformers' forward
        nxt = model(idx).logits[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory) -> tuple[Path, BitNetForCausalLM]:
    with torch.compiler.set_stance("force_eager"):
        model = to_packed_transformers(random_model(0))
        path = tmp_path_factory.mktemp("bitnet_packed")
        model.save_pretrained(path)
    return path, model


def test_saved_checkpoint_is_the_packed_layout(packed_dir):
    path, _ = packed_dir
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "bitnet" and config["quantization_config"]["linear_class"] == "bitlinear"
    tensors = hf.read_tensors(path)
    q = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == torch.uint8 and q.shape == (64 // 4, 64)  # 4 values per byte along the output dimension


def test_unpacking_matches_transformers():
    w = torch.randint(-1, 2, (24, 10)).float()
    packed = hf_bitnet.pack_weights(w.clone())
    theirs = hf_bitnet.unpack_weights(packed, dtype=torch.float32)
    assert torch.equal(hf.unpack_weights(packed).float(), theirs)
    assert torch.equal(hf.unpack_weights(packed).float(), w)
    assert torch.equal(hf.pack_weights(w.to(torch.int8)), packed)


def test_packed_layout_logits_and_greedy_tokens_match_transformers(packed_dir, tmp_path):
    path, reference = packed_dir
    model, tokenizer = hf.from_pretrained(path)
    assert tokenizer is None  # no tokenizer.json in the folder
    idx = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(idx).logits
        got, _ = model(idx)
    assert got.shape == (2, 9, VOCAB)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        tokens = greedy_hf(reference, idx, 12)
    assert torch.equal(model.generate(idx, 12, temperature=0), tokens)
    # our format: pack, save, load, same tokens
    packed = pack_model(model)
    assert torch.equal(packed.generate(idx, 12, temperature=0), tokens)
    out = tmp_path / "bitnet.safetensors"
    from babybitnet.data import CharTokenizer

    save_packed(out, packed, CharTokenizer("?"))
    loaded, _, _ = load_packed(out)
    assert torch.equal(loaded.generate(idx, 12, temperature=0), tokens)


def test_bf16_layout_matches_transformers_online_quantization(tmp_path):
    reference = random_model(1)
    with torch.no_grad():  # the master weights as bf16 stores them, so both sides read the same numbers
        for p in reference.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    reference.to(torch.bfloat16).save_pretrained(tmp_path)  # the -bf16 variant: bf16 masters, no quantization config
    reference.float()
    assert hf.read_tensors(tmp_path)["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    reference = to_online_transformers(reference)
    model, _ = hf.from_pretrained(tmp_path)
    idx = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(idx).logits
        got, _ = model(idx)
        tokens = greedy_hf(reference, idx, 12)
    # every linear layer, on the same input, computes what transformers' online AutoBitLinear computes
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
    theirs, ours = reference.model.layers[1], model.blocks[1]
    with torch.no_grad():
        qkv = ours.attn.qkv(x)
        torch.testing.assert_close(qkv[..., :64], theirs.self_attn.q_proj(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(qkv[..., 64:96], theirs.self_attn.k_proj(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(qkv[..., 96:], theirs.self_attn.v_proj(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.attn.proj(x), theirs.self_attn.o_proj(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.mlp.up(x), theirs.mlp.up_proj(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.mlp.gate(x), theirs.mlp.gate_proj(x), atol=1e-5, rtol=1e-5)
        h = torch.randn(2, 5, 96, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(ours.mlp.down(h), theirs.mlp.down_proj(h), atol=1e-5, rtol=1e-5)
    # End to end the online path sums non-integer floats (x_q @ (W_t / s)^T) where ours sums integers, so
    # outputs differ by float rounding, which now and then moves an 8-bit activation of the next layer by one
    # level: a few percent of the largest logit, not 1e-4 (the packed layout, integer sums on both sides, is
    # checked at 1e-4 above). The greedy tokens are the same.
    assert (got - want).abs().max() <= 0.05 * want.abs().max()
    assert torch.equal(model.generate(idx, 12, temperature=0), tokens)
    assert torch.equal(pack_model(model).generate(idx, 12, temperature=0), tokens)


def test_convert_hf_writes_our_packed_file(packed_dir, tmp_path):
    path, reference = packed_dir
    out = hf.convert_hf(path, tmp_path / "out.safetensors")
    loaded, _, meta = load_packed(out)
    assert meta["model_type"] == "bitnet"
    idx = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = greedy_hf(reference, idx, 8)
    assert torch.equal(loaded.generate(idx, 8, temperature=0), tokens)


# ---------------------------------------------------------------- bad input
def copy_checkpoint(src: Path, dst: Path, edit_config=None, drop: str | None = None) -> Path:
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(config)
    dst.mkdir(exist_ok=True)
    (dst / "config.json").write_text(json.dumps(config))
    tensors = {k: v for k, v in hf.read_tensors(src).items() if k != drop}
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_another_architecture_is_refused(packed_dir, tmp_path):
    bad = copy_checkpoint(packed_dir[0], tmp_path / "llama", lambda c: c.update(model_type="llama"))
    with pytest.raises(ValueError, match="'llama' checkpoint, not 'bitnet'"):
        hf.from_pretrained(bad)


def test_missing_tensors_are_named(packed_dir, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = copy_checkpoint(packed_dir[0], tmp_path / "missing", drop=name)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        hf.from_pretrained(bad)


@pytest.mark.parametrize(
    "key, value",
    [("hidden_act", "silu"), ("attention_bias", True), ("rope_parameters", {"rope_type": "yarn", "factor": 2.0})],
)
def test_unsupported_config_values_name_the_key(packed_dir, tmp_path, key, value):
    bad = copy_checkpoint(packed_dir[0], tmp_path / key, lambda c: c.update({key: value}))
    with pytest.raises(ValueError, match=key):
        hf.from_pretrained(bad)


def test_vocabulary_mismatch(packed_dir, tmp_path):
    bad = copy_checkpoint(packed_dir[0], tmp_path / "vocab", lambda c: c.update(vocab_size=VOCAB + 3))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        hf.from_pretrained(bad)


def test_tokenizer_json_is_wrapped(packed_dir, tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers package is not installed")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    folder = copy_checkpoint(packed_dir[0], tmp_path / "with_tok")
    tok = tokenizers.Tokenizer(WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    _, wrapper = hf.from_pretrained(folder)
    assert wrapper.encode("hello world") == [0, 1]
    assert wrapper.decode([1, 0]) == "world hello"
