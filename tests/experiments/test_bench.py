import json

import torch

from babybitnet.cli import main
from babybitnet.experiments.bench import bench_train, seed_style_gpt
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.runtime import describe, machine_info


def test_seed_style_gpt_has_the_same_parameters_and_computes_the_same_function():
    cfg = GPTConfig(attn_scale="embd")
    torch.manual_seed(0)
    ours = GPT(cfg)
    seed = seed_style_gpt(GPT(cfg))
    assert seed.num_params() == ours.num_params() == 209_153
    assert type(seed.blocks[0].attn).__name__ == "MultiHeadAttention"
    # copy our weights into the per-head layout: same logits
    for b_ours, b_seed in zip(ours.blocks, seed.blocks, strict=True):
        C, H = cfg.n_embd, cfg.n_head
        q, k, v = b_ours.attn.qkv.weight.detach().split(C)
        for h, head in enumerate(b_seed.attn.heads):
            rows = slice(h * C // H, (h + 1) * C // H)
            head.query.weight.data, head.key.weight.data, head.value.weight.data = q[rows], k[rows], v[rows]
        b_seed.attn.proj.load_state_dict(b_ours.attn.proj.state_dict())
    other = {k: v for k, v in ours.state_dict().items() if ".attn." not in k}
    seed.load_state_dict(other, strict=False)
    x = torch.randint(65, (2, 32))
    assert torch.allclose(seed(x)[0], ours(x)[0], atol=1e-5)


def test_bench_train_reports_all_three_and_their_ratios(tmp_path, capsys):
    r = bench_train("quick", steps=2, repeats=1, warmup=1)
    assert set(r["ms_per_step"]) == {"gpt", "bitnet", "seed_gpt"}
    assert r["ratio_bitnet_over_gpt"] == r["ms_per_step"]["bitnet"] / r["ms_per_step"]["gpt"]
    assert "cores" in describe(machine_info()) and r["machine"]["torch"] == torch.__version__
    out = tmp_path / "b.json"
    assert main(["bench", "train", "--preset", "quick", "--steps", "2", "--repeats", "1", "--out", str(out)]) == 0
    assert "babyBitNet / babyGPT" in capsys.readouterr().out
    assert json.loads(out.read_text())["preset"] == "quick"
