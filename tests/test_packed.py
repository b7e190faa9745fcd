import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from babybitnet.bitlinear import BitLinear
from babybitnet.cli import main
from babybitnet.data import CharTokenizer
from babybitnet.experiments.bench import memory_report
from babybitnet.files import METADATA_KEY, _packed_digest, load_packed, save_checkpoint, save_packed
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.packed import PackedBitLinear, pack_model
from babybitnet.packing import FORMATS

TINY = dict(linear="bitnet", n_layer=1, n_embd=32, n_head=2, block_size=16)
TOKENIZER = CharTokenizer([chr(c) for c in range(32, 32 + 65)])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def tiny_bitnet(seed: int = 0, **overrides) -> GPT:
    """A tiny babyBitNet trained a few steps on random tokens, so its logits are far from uniform."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randint(0, 65, (8, 17))
    for _ in range(10):
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---------------------------------------------------------------- PackedBitLinear
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("groups", [1, 12])
def test_packed_bitlinear_matches_eval_bitlinear(fmt, norm, groups):
    torch.manual_seed(groups + 2 * norm)
    layer = BitLinear(30, 48, norm=norm, weight_groups=groups)  # 30: not a multiple of 4 or 5, so rows are padded
    with torch.no_grad():
        layer.weight.mul_(torch.rand(48, 1) * 3)  # groups of rows with very different scales
        if norm:
            layer.norm.weight.uniform_(0.5, 2.0)
    layer.eval()
    packed = PackedBitLinear.from_bitlinear(layer, fmt)
    assert packed.packed.dtype == torch.uint8
    assert packed.packed.shape == ((48, 8) if fmt == "2bit" else (48 * 30 // 5,))
    w_t, s_w = layer.quantized_weight()
    assert torch.equal(packed.ternary_weight(), w_t) and torch.equal(packed.scale, s_w)
    assert packed.scale.shape == (groups,) and (packed.norm is not None) == norm
    x = torch.randn(2, 5, 30) * 3
    with torch.no_grad():
        want = layer(x)
        got = packed(x)
    assert got.shape == (2, 5, 48)
    assert rel_err(got, want) <= 1e-6


def test_packed_bitlinear_with_bias_and_shape_error():
    torch.manual_seed(0)
    layer = BitLinear(20, 8, bias=True).eval()
    with torch.no_grad():
        layer.bias.normal_()
    packed = PackedBitLinear.from_bitlinear(layer, "2bit")
    x = torch.randn(3, 20)
    with torch.no_grad():
        assert rel_err(packed(x), layer(x)) <= 1e-6
    with pytest.raises(ValueError, match="last dimension is 20"):
        packed(torch.randn(3, 21))
    with pytest.raises(ValueError, match="expects a BitLinear"):
        PackedBitLinear.from_bitlinear(torch.nn.Linear(4, 4))


class CallCounter:
    """Stands for the compiled extension: forwards every call and records its name."""

    def __init__(self, ext):
        self.ext, self.calls = ext, []

    def __getattr__(self, name):
        fn = getattr(self.ext, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)

        return call


def eval_and_packed(k: int, n: int, bias: bool, norm: bool, weight_groups: int = 1, seed: int = 0):
    """A BitLinear (k -> n) in eval mode with a norm weight and a bias that are not the defaults, and its 2-bit pack."""
    torch.manual_seed(seed)
    layer = BitLinear(k, n, bias=bias, norm=norm, weight_groups=weight_groups).eval()
    with torch.no_grad():
        if norm:
            layer.norm.weight.uniform_(0.5, 2.0)
        if bias:
            layer.bias.normal_()
    return layer, PackedBitLinear.from_bitlinear(layer, "2bit")


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_bitlinear_on_the_cpu_is_one_kernel_call_and_bit_exact(monkeypatch, bias, norm):
    """float32 on the CPU: (norm,) quantize, add-only sums, rescale and bias in one C++ call, the eval BitLinear's
    floats: bit for bit without a norm; with one, up to the float rounding of the norm (C++ and torch sum its
    squares in different orders)."""
    from babybitnet.kernels import cpu

    ext = cpu.load_extension()
    if ext is None:
        pytest.skip("C++ extension unavailable")
    layer, packed = eval_and_packed(130, 48, bias, norm, weight_groups=3, seed=1)
    counter = CallCounter(ext)
    monkeypatch.setattr(cpu, "_ext", counter)
    x = torch.randn(2, 7, 130) * 3
    with torch.no_grad():
        got, want = packed(x), layer(x)
    assert counter.calls == ["ternary_linear"]  # the norm too: no torch call of its own
    if norm:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, want)
    if bias:  # with gradients on, the bias is added by torch, so that it gets its gradient
        y = packed(x)
        y.sum().backward()
        assert torch.equal(y.detach(), got) and torch.equal(packed.bias.grad, torch.full((48,), 14.0))


@pytest.mark.parametrize(
    "activation, norm, bias, residual",
    [("", False, False, False), ("relu2", True, False, True), ("relu", True, True, False), ("", False, True, True)],
)
def test_the_decode_path_on_the_cpu_gives_the_general_paths_numbers(monkeypatch, activation, norm, bias, residual):
    """Without gradients a float32 layer takes PackedBitLinear._cpu_decode (the module's tensors read from its
    dicts, one C++ call); with them, the general path. Both call the same C++ layer: the same bits."""
    from babybitnet.kernels import cpu

    ext = cpu.load_extension()
    if ext is None:
        pytest.skip("C++ extension unavailable")
    _, packed = eval_and_packed(64, 40, bias, norm, seed=2)
    if bias:
        packed.bias.requires_grad_(False)  # so that the general path adds it in the C++ call too
    packed.activation = activation
    x, r = torch.randn(3, 5, 64), (torch.randn(3, 5, 40) if residual else None)
    counter = CallCounter(ext)
    monkeypatch.setattr(cpu, "_ext", counter)
    general = packed(x, residual=r)  # gradients on: not the decode path
    with torch.no_grad():
        decode_path = packed(x, residual=r)
    assert counter.calls == ["ternary_linear", "ternary_linear"]
    assert torch.equal(decode_path, general)
    # what the C++ layer cannot take goes the general way: gelu (torch's epilogue), a norm without weight
    packed.activation = "gelu"
    with torch.no_grad():
        assert torch.equal(packed(x), torch.nn.functional.gelu(_no_act(packed)(x)))
    if norm:
        packed.activation = ""
        packed.norm = torch.nn.RMSNorm(64, elementwise_affine=False)
        with torch.no_grad():
            want = torch.nn.functional.rms_norm(x, (64,))
            assert torch.equal(packed(x), _without_norm(packed)(want))


def _no_act(layer: PackedBitLinear) -> PackedBitLinear:
    view = copy.copy(layer)
    view.activation = ""
    return view


def _without_norm(layer: PackedBitLinear) -> PackedBitLinear:
    view = copy.copy(layer)
    view._modules = dict(layer._modules)
    view.norm = None
    return view


def test_packed_bitlinear_in_bfloat16_or_without_the_extension(monkeypatch):
    """Other dtypes take the torch steps around the kernel; without the extension, unpack + int_linear."""
    from babybitnet.kernels import cpu

    torch.manual_seed(2)
    layer = BitLinear(64, 24, bias=True).eval()
    packed = PackedBitLinear.from_bitlinear(layer, "2bit")
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = layer(x)
        half = copy.deepcopy(packed).to(torch.bfloat16)
        torch.testing.assert_close(half(x.bfloat16()).float(), want, rtol=0.05, atol=0.05)
        monkeypatch.setenv(cpu.NO_EXT_ENV, "1")
        assert torch.equal(packed(x), want)


def test_seed_sized_packed_model_generates_the_same_tokens_past_block_size():
    """The seed's shapes (K = 64 and 256, 32-token windows once past block_size): the same greedy tokens."""
    model = tiny_bitnet(n_layer=2, n_embd=64, n_head=4, block_size=32)
    packed = pack_model(model, "2bit")
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out = packed.generate(prompt, 40, temperature=0)
    assert out.shape == (1, 46) and torch.equal(out, model.generate(prompt, 40, temperature=0))


def test_bench_generate_sets_and_restores_threads():
    from babybitnet.experiments.bench import bench_generate
    from babybitnet.kernels import cpu

    old = torch.get_num_threads()
    r = bench_generate("quick", tokens=3, device="cpu", dtype=torch.float32, repeats=1, threads=1)
    assert r["threads"] == 1 and r["machine"]["torch_threads"] == 1 and torch.get_num_threads() == old
    assert r["same_tokens"] is True
    assert r["kernel"].startswith("C++ add-only kernel" if cpu.load_extension() is not None else "int_linear")
    with pytest.raises(ValueError, match="threads"):
        bench_generate("quick", tokens=3, device="cpu", threads=0)


# ---------------------------------------------------------------- a packed model
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bitlinear_norm", [False, True])
def test_packed_model_gives_the_same_logits_and_text(fmt, bitlinear_norm):
    model = tiny_bitnet(bitlinear_norm=bitlinear_norm)
    packed = pack_model(model, fmt)
    assert not any(isinstance(m, BitLinear) for m in packed.modules())
    assert sum(isinstance(m, PackedBitLinear) for m in packed.modules()) == 4
    assert sum(isinstance(m, BitLinear) for m in model.modules()) == 4  # the original is untouched
    idx = torch.randint(0, 65, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = model(idx)
        got, _ = packed(idx)
    assert want.std() > 0.1  # not a near-uniform model: the comparison means something
    assert rel_err(got, want) <= 1e-6
    prompt = idx[:1, :3]
    out_model = model.generate(prompt, 20, temperature=0)
    out_packed = packed.generate(prompt, 20, temperature=0)
    assert out_packed.shape == (1, 23) and torch.equal(out_packed, out_model)


def test_nan_latent_weights_refuse_to_pack():
    model = tiny_bitnet()
    with torch.no_grad():
        model.blocks[0].mlp.proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"cannot pack layer 'blocks.0.mlp.proj': the latent weights hold 1 NaN/inf"):
        pack_model(model)
    with torch.no_grad():
        model.blocks[0].mlp.proj.weight[3, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        PackedBitLinear.from_bitlinear(model.blocks[0].mlp.proj)


def test_babygpt_refuses_to_pack(tmp_path):
    gpt = GPT(GPTConfig(**{**TINY, "linear": "fp"}))
    with pytest.raises(ValueError, match=r"only babyBitNet \(linear='bitnet'\) can be packed"):
        pack_model(gpt)
    with pytest.raises(ValueError, match="only babyBitNet"):
        save_packed(tmp_path / "gpt.safetensors", gpt, TOKENIZER)
    with pytest.raises(ValueError, match="unknown packing format"):
        pack_model(tiny_bitnet(), "3bit")


# ---------------------------------------------------------------- the file
@pytest.mark.parametrize("fmt", FORMATS)
def test_save_load_round_trip(tmp_path, fmt):
    model = tiny_bitnet()
    path = save_packed(tmp_path / "m.safetensors", model, TOKENIZER, fmt, meta={"preset": "tiny", "n": 3})
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("blocks.0.attn.qkv.packed").dtype == torch.uint8
        assert f.get_tensor("blocks.0.attn.qkv.scale").shape == (6,)  # 3 * n_head groups
        header = json.loads(f.metadata()[METADATA_KEY])
    assert "blocks.0.attn.qkv.weight" not in keys and "tok_emb.weight" in keys and "lm_head.weight" in keys
    assert header["packing"] == fmt and header["version"] == 2 and header["tokenizer"] == TOKENIZER.to_dict()
    loaded, tok, meta = load_packed(path)
    assert meta == {"preset": "tiny", "n": 3} and tok.chars == TOKENIZER.chars
    assert loaded.config == model.config and not loaded.training
    idx = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], pack_model(model, fmt)(idx)[0])
    # saving a model that is packed already writes the same tensors
    again = save_packed(tmp_path / "again.safetensors", pack_model(model, fmt), TOKENIZER, fmt)
    assert load_file(str(again)).keys() == load_file(str(path)).keys()
    with pytest.raises(ValueError, match="already packed"):
        save_packed(tmp_path / "x.safetensors", pack_model(model, fmt), TOKENIZER, "base3" if fmt == "2bit" else "2bit")


@pytest.fixture
def packed_file(tmp_path):
    return save_packed(tmp_path / "m.safetensors", tiny_bitnet(), TOKENIZER, "2bit")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"packed model not found: .*nope.safetensors.*babybitnet pack"):
        load_packed(tmp_path / "nope.safetensors")


def test_tampered_file(packed_file):
    raw = bytearray(packed_file.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 8):
        raw[i] ^= 0xFF
    packed_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"m\.safetensors.*(checksum|corrupt)"):
        load_packed(packed_file)


def test_tampered_header(packed_file):
    raw = bytearray(packed_file.read_bytes())
    raw[20] ^= 0xFF  # inside the JSON header
    packed_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"m\.safetensors"):
        load_packed(packed_file)


def test_truncated_file(packed_file):
    packed_file.write_bytes(packed_file.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"m\.safetensors is not a readable safetensors file \(truncated"):
        load_packed(packed_file)
    packed_file.write_bytes(b"\x01")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_packed(packed_file)


def test_torch_checkpoint_is_not_a_packed_file(tmp_path):
    ckpt = save_checkpoint(tmp_path / "m.pt", tiny_bitnet(), TOKENIZER)
    with pytest.raises(ValueError, match=r"m\.pt looks like a torch checkpoint .*babybitnet pack"):
        load_packed(ckpt)


def _rewrite(path, edit_header=None, edit_tensors=None, fix_checksum=True):
    """Re-save a packed file with its header and/or tensors edited (as a careless tool might)."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()[METADATA_KEY])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_header:
        edit_header(header)
    if fix_checksum:
        header["sha256"] = _packed_digest(tensors, header)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(header)})


def test_wrong_version(packed_file):
    _rewrite(packed_file, edit_header=lambda h: h.update(version=99))
    with pytest.raises(ValueError, match="version 99, this babybitnet reads version 2; re-pack"):
        load_packed(packed_file)
    # version 1 (its checksum covered the tensors only) is refused the same way, not as "damaged"
    _rewrite(packed_file, edit_header=lambda h: h.update(version=1))
    with pytest.raises(ValueError, match="version 1, this babybitnet reads version 2; re-pack"):
        load_packed(packed_file)


def _set_layer(name, **values):
    return lambda h: h["layers"][name].update(values)


METADATA_EDITS = {
    "activation": lambda h: h["config"].update(activation="gelu"),  # same tensors, other outputs
    "attn_scale": lambda h: h["config"].update(attn_scale="embd"),
    "dropout": lambda h: h["config"].update(dropout=0.1),
    "tokenizer": lambda h: h["tokenizer"].update(chars=h["tokenizer"]["chars"][::-1]),
    "act_bits": _set_layer("blocks.0.mlp.fc", act_bits=4),
    "weight_groups": _set_layer("blocks.0.mlp.fc", weight_groups=2),
    "packing": lambda h: h.update(packing="base3"),
    "meta": lambda h: h["meta"].update(note="edited"),
}


@pytest.mark.parametrize("edit", METADATA_EDITS.values(), ids=METADATA_EDITS.keys())
def test_edited_metadata_is_refused(packed_file, edit):
    """The checksum covers the header too: the tensors alone do not decide what the model outputs."""
    _rewrite(packed_file, edit_header=edit, fix_checksum=False)
    with pytest.raises(ValueError, match=r"m\.safetensors: the packed model does not match its checksum: the file was "
                       r"modified or damaged") as e:  # fmt: skip
        load_packed(packed_file)
    assert "\n" not in str(e.value)


RECHECKED_EDITS = {  # a tool that rewrites the header and its checksum: the structure is still checked
    "layer shape": (_set_layer("blocks.0.mlp.fc", in_features=31), r"packed layer 'blocks.0.mlp.fc' is .*its config"),
    "act_bits 1": (_set_layer("blocks.0.mlp.fc", act_bits=1), r"activation bits must be an int from 2 to 8, got 1"),
    "groups": (_set_layer("blocks.0.mlp.fc", weight_groups=7), r"must split into weight_groups=7"),
    "layer key": (_set_layer("blocks.0.mlp.fc", rope=1), r"packed layer 'blocks.0.mlp.fc' is"),
    "huge": (lambda h: h["config"].update(n_layer=100_000), r"invalid config in the file: n_layer must be at most"),
    "unknown key": (lambda h: h["config"].update(rope=True), r"the config has unknown keys \['rope'\]"),
    "missing key": (lambda h: h["config"].pop("bias"), r"lacks \['bias'\]"),
    "packing": (lambda h: h.update(packing="3bit"), r"unknown packing format '3bit'"),
    "tokenizer": (lambda h: h.update(tokenizer={"chars": ""}), r"invalid tokenizer in the file"),
}


@pytest.mark.parametrize("edit, pattern", RECHECKED_EDITS.values(), ids=RECHECKED_EDITS.keys())
def test_bad_metadata_with_a_valid_checksum_is_one_clear_line(packed_file, edit, pattern):
    _rewrite(packed_file, edit_header=edit)
    with pytest.raises(ValueError, match=pattern) as e:
        load_packed(packed_file)
    assert "\n" not in str(e.value) and str(packed_file) in str(e.value)


def test_missing_and_extra_tensors(packed_file):
    _rewrite(packed_file, edit_tensors=lambda t: t.pop("blocks.0.mlp.fc.scale"))
    with pytest.raises(ValueError, match=r"tensors missing \['blocks.0.mlp.fc.scale'\], unexpected \[\]"):
        load_packed(packed_file)
    _rewrite(packed_file, edit_tensors=lambda t: t.update({"blocks.0.mlp.fc.scale": torch.ones(1), "x": torch.ones(2)}))
    with pytest.raises(ValueError, match=r"tensors missing \[\], unexpected \['x'\]"):
        load_packed(packed_file)


def test_wrong_shape_and_silently_changed_weights(packed_file):
    _rewrite(packed_file, edit_tensors=lambda t: t.update({"lm_head.bias": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"'lm_head.bias' is torch.float32 \(3,\), its config needs"):
        load_packed(packed_file)
    _rewrite(packed_file, edit_tensors=lambda t: t["tok_emb.weight"].add_(1), fix_checksum=False)
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_packed(packed_file)


def test_other_safetensors_file(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="safetensors file but not a packed babyBitNet"):
        load_packed(tmp_path / "other.safetensors")


# ---------------------------------------------------------------- memory
def test_memory_report_seed():
    r = memory_report("seed")
    f = r["formats"]
    assert r["params"] == 207_617 and r["ternary_weights"] == 4 * (64 * 192 + 64 * 64 + 2 * 64 * 256)
    assert f["2bit"]["bits_per_weight"] == 2.0
    # base 3 packs each matrix flattened: ceil(weights / 5) bytes, e.g. qkv 192 * 64 / 5 = 2457.6 -> 2458
    assert f["base3"]["bits_per_weight"] == 8 * 4 * (2458 + 820 + 3277 + 3277) / r["ternary_weights"]
    assert f["base3"]["bytes"] < f["2bit"]["bytes"] < f["fp16"]["bytes"] < f["fp32"]["bytes"]
    # the packed weights are 1/16 of their fp32 form; the fp32 embeddings and head are all that remain
    assert f["2bit"]["packed_weight_bytes"] == r["ternary_weights"] // 4
    assert f["2bit"]["bytes"] < r["ternary_weights"] // 4 + 4 * r["full_precision_params"] + 20_000


def test_memory_report_nanogpt_is_ten_times_smaller():
    r = memory_report("nanogpt")
    f = r["formats"]
    assert 10_600_000 < r["params"] < 10_800_000
    assert f["fp32"]["bytes"] / f["2bit"]["bytes"] >= 10
    assert f["2bit"]["bits_per_weight"] == 2.0 and 1.6 < f["base3"]["bits_per_weight"] < 1.61


# ---------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def bitnet_checkpoint(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("cli") / "bitnet.pt"
    assert main(["train", "--preset", "quick", "--model", "bitnet", "--iters", "20", "--device", "cpu",
                 "--out", str(ckpt), "--quiet"]) == 0  # fmt: skip
    return ckpt


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_pack_then_sample_packed(bitnet_checkpoint, tmp_path, capsys, fmt):
    out = tmp_path / "bitnet.safetensors"
    capsys.readouterr()
    assert main(["pack", str(bitnet_checkpoint), str(out), "--format", fmt]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "bitnet.json").read_text())
    assert summary["format"] == fmt and summary["packed_bytes"] == out.stat().st_size
    assert summary["checkpoint_bytes"] == bitnet_checkpoint.stat().st_size and summary["ratio"] > 3
    assert f"{summary['packed_bytes']:,} bytes" in printed and "smaller" in printed
    _, _, meta = load_packed(out)
    assert meta["preset"] == "quick" and meta["source"] == str(bitnet_checkpoint)

    sample = ["--prompt", "ROMEO:", "--max-new-tokens", "30", "--temperature", "0"]
    assert main(["sample", str(bitnet_checkpoint), *sample]) == 0
    want = capsys.readouterr().out
    assert main(["sample", "--packed", str(out), *sample]) == 0
    got = capsys.readouterr().out
    assert got.startswith("ROMEO:") and len(got.rstrip("\n")) == 36 and got == want
    assert main(["sample", "--packed", "--seed", "3", str(out), "--prompt", "A", "--max-new-tokens", "10"]) == 0


def test_cli_pack_errors(bitnet_checkpoint, tmp_path, capsys):
    gpt_ckpt = save_checkpoint(tmp_path / "gpt.pt", GPT(GPTConfig(n_layer=1)), TOKENIZER)
    assert main(["pack", str(gpt_ckpt), str(tmp_path / "gpt.safetensors")]) == 2
    assert "only babyBitNet" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "missing.pt"), str(tmp_path / "x.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["pack", str(bitnet_checkpoint), str(tmp_path / "x.json")]) == 2
    assert "must not end in .json" in capsys.readouterr().err
    assert main(["sample", "--packed", str(bitnet_checkpoint)]) == 2  # a checkpoint is not a packed file
    assert "looks like a torch checkpoint" in capsys.readouterr().err


def test_cli_bench_memory(tmp_path, capsys):
    out = tmp_path / "mem.json"
    assert main(["bench", "memory", "--presets", "seed", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| preset | format | bytes | MiB | ratio vs fp32 | bits per BitLinear weight |" in table
    assert "| seed | 2bit |" in table and "| seed | base3 |" in table and "| 2.000 |" in table
    reports = json.loads(out.read_text())
    assert [r["preset"] for r in reports] == ["seed"] and reports[0]["formats"]["2bit"]["bits_per_weight"] == 2.0


def test_cli_bench_matmul_parses():
    from babybitnet.cli import build_parser

    args = build_parser().parse_args(["bench", "matmul"])
    assert args.sizes == [1024, 4096] and args.batches == [1, 8] and args.repeats == 20 and args.threads is None
    assert args.out == "runs/bench_matmul.json" and args.func.__name__ == "cmd_bench_matmul"
    args = build_parser().parse_args(["bench", "matmul", "--sizes", "64", "--batches", "2", "--threads", "1"])
    assert args.sizes == [64] and args.batches == [2] and args.threads == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton path of PackedBitLinear runs on CUDA tensors")
@pytest.mark.parametrize("groups", [1, 3])
def test_packed_bitlinear_on_cuda_uses_the_kernel_and_matches_the_torch_path(groups):
    torch.manual_seed(0)
    layer = BitLinear(96, 48, weight_groups=groups).eval()
    packed = PackedBitLinear.from_bitlinear(layer, "2bit")
    x = torch.randn(2, 5, 96)
    with torch.no_grad():
        want = packed(x)  # CPU: unpack + int_linear
        got = packed.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton path of PackedBitLinear runs on CUDA tensors")
@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_packed_bitlinear_with_a_norm_on_cuda_matches_the_torch_path(tokens):
    # the norm runs inside the one-launch kernel (few tokens) or in torch before the others (more)
    torch.manual_seed(1)
    layer = BitLinear(128, 64, norm=True).eval()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
    packed = PackedBitLinear.from_bitlinear(layer, "2bit")
    x = torch.randn(tokens, 128) * 3
    with torch.no_grad():
        want = packed(x)
        got = packed.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
