import json
import subprocess
import sys

import pytest
import torch

from babybitnet.cli import main
from babybitnet.experiments import scale as scale_mod
from babybitnet.experiments.scale import SIZES, markdown_table, scale, size_overrides, task_devices
from babybitnet.gpt import GPT
from babybitnet.presets import get_preset

# Two sizes small enough for a CPU test; the study's own sizes are for GPUs.
TINY = {
    "a": dict(n_layer=1, n_head=2, n_embd=16, dropout=0.0),
    "b": dict(n_layer=1, n_head=2, n_embd=32, dropout=0.1),
}
ITERS = 12


def count_params(spec: dict, model: str, vocab: int = 65) -> int:
    mcfg, _ = get_preset("recipe", model, vocab, model_overrides=size_overrides(spec))
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return GPT(mcfg).num_params()


def test_sizes_span_the_seed_model_to_25m_parameters():
    names = list(SIZES)
    assert len(names) >= 5
    seed = SIZES[names[0]]
    assert (seed["n_layer"], seed["n_head"], seed["n_embd"], seed["dropout"]) == (4, 4, 64, 0.0)
    assert {k: SIZES["10.8M"][k] for k in ("n_layer", "n_head", "n_embd")} == dict(n_layer=6, n_head=6, n_embd=384)
    gpt = [count_params(SIZES[n], "gpt") for n in names]
    bitnet = [count_params(SIZES[n], "bitnet") for n in names]
    # the counts written in scale.py's comment
    assert gpt == [223_489, 840_129, 2_737_793, 10_783_937, 25_396_801]
    assert bitnet == [221_953, 837_057, 2_730_881, 10_770_113, 25_372_225]
    assert 150_000 < gpt[0] < 300_000 and gpt[-1] >= 25_000_000
    assert all(2 < b / a < 5 for a, b in zip(gpt, gpt[1:], strict=False))  # roughly x4 per step
    assert all(b < g for g, b in zip(gpt, bitnet, strict=True))  # BitLinear has no biases
    dropout = [SIZES[n]["dropout"] for n in names]
    assert dropout == sorted(dropout) and dropout[-1] >= 0.1


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale")
    results = scale(TINY, iters=ITERS, device="cpu", out=out, eval_iters=1, progress=False)
    return out, results


def test_study_writes_results_table_and_plot(study):
    out, results = study
    r = json.loads((out / "results.json").read_text())
    assert r == json.loads(json.dumps(results))  # the file is the returned results
    assert r["data"] == "tinyshakespeare" and r["iters"] == ITERS and r["torch"] == torch.__version__
    assert r["tokens_per_run"] == ITERS * 64 * 256 and r["machine"]["device"] == "cpu"
    assert (r["dtype"], r["compile"]) == ("float32", False)  # CPU defaults
    assert [(run["size"], run["model"]) for run in r["runs"]] == [
        ("a", "gpt"),
        ("a", "bitnet"),
        ("b", "gpt"),
        ("b", "bitnet"),
    ]
    for run in r["runs"]:
        spec, mc, tc = TINY[run["size"]], run["model_config"], run["train_config"]
        assert (mc["n_embd"], mc["dropout"], mc["block_size"]) == (spec["n_embd"], spec["dropout"], 256)
        assert mc["linear"] == ("fp" if run["model"] == "gpt" else "bitnet") and mc["activation"] == "relu2"
        assert (tc["batch_size"], tc["max_iters"], tc["schedule"], tc["grad_clip"], tc["decay_all"]) == (
            64,
            ITERS,
            "two_stage",
            1.0,
            False,
        )
        assert tc["lr"] == (1e-3 if run["model"] == "gpt" else 3e-3) and tc["patience"] == 4
        assert run["params"] == count_params(spec, run["model"])
        assert run["best_val"] == min(run["history"]["val"]) and run["stopped_step"] <= ITERS
        assert run["best_val"] < run["history"]["val"][0]  # it learned something
    rows = r["summary"]
    assert [row["size"] for row in rows] == ["a", "b"]
    for row in rows:
        assert row["gap"] == pytest.approx(row["best_val_bitnet"] - row["best_val_gpt"])
        assert row["relative_gap"] == pytest.approx(row["gap"] / row["best_val_gpt"])
    table = (out / "table.md").read_text()
    assert table == markdown_table(r) and "babyBitNet" in table and f"{rows[1]['params_gpt']:,}" in table
    png = (out / "scale.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def fake_run_one(calls: list):
    def run_one(size, model, device, iters, text, dtype, compile, seed, eval_iters, patience, sizes, progress=False):
        calls.append((size, model))
        val = 2.0 - 0.1 * list(sizes).index(size) + (0.05 if model == "bitnet" else 0.0)
        return {"size": size, "model": model, "params": 1000 * (1 + len(calls)), "best_val": val,
                "best_step": iters, "stopped_early": False}  # fmt: skip

    return run_one


def test_resume_trains_only_what_is_missing(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(scale_mod, "run_one", fake_run_one(calls))
    kw = dict(iters=ITERS, device="cpu", out=tmp_path, progress=False)
    scale(TINY, models=["gpt"], **kw)
    assert calls == [("a", "gpt"), ("b", "gpt")]
    r = scale(TINY, resume=True, **kw)
    assert calls[2:] == [("a", "bitnet"), ("b", "bitnet")]  # babyGPT's runs were not trained again
    assert len(r["runs"]) == 4 and r["summary"][0]["gap"] == pytest.approx(0.05)
    scale(TINY, resume=True, **kw)
    assert len(calls) == 4  # everything done: nothing to train
    scale(TINY, **kw)
    assert len(calls) == 8  # without resume, everything again
    with pytest.raises(ValueError, match="other settings.*iters 12 there, 30 now"):
        scale(TINY, resume=True, **{**kw, "iters": 30})
    with pytest.raises(ValueError, match="size 'a'"):
        scale({**TINY, "a": {**TINY["a"], "n_embd": 8}}, resume=True, **kw)


def test_bad_sizes_models_and_text_fail_in_words(tmp_path):
    with pytest.raises(ValueError, match="unknown size 'huge'; choose from"):
        scale(["0.2M", "huge"], device="cpu", out=tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        scale(TINY, models=["llama"], device="cpu", out=tmp_path)
    with pytest.raises(FileNotFoundError, match="text file not found"):
        scale(TINY, text=tmp_path / "missing.txt", device="cpu", out=tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café, naïve\n".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        scale(TINY, text=bad, device="cpu", out=tmp_path)
    assert not (tmp_path / "results.json").exists()  # failed before writing anything


def test_gpus_are_assigned_round_robin():
    assert task_devices(torch.device("cuda"), 5, n_gpus=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert task_devices(torch.device("cuda:1"), 2, n_gpus=4) == ["cuda:1", "cuda:1"]  # an index given: that GPU
    assert task_devices(torch.device("cpu"), 3) == ["cpu"] * 3


def test_two_jobs_in_worker_processes(tmp_path):
    sizes = {"a": TINY["a"]}
    r = scale(sizes, iters=4, device="cpu", jobs=2, out=tmp_path, eval_iters=1, progress=False)
    assert sorted(run["model"] for run in r["runs"]) == ["bitnet", "gpt"]
    assert json.loads((tmp_path / "results.json").read_text())["summary"][0]["gap"] is not None


def test_cli_help_and_a_tiny_run(tmp_path, capsys, monkeypatch):
    p = subprocess.run([sys.executable, "-m", "babybitnet", "scale", "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for option in ("--sizes", "--iters", "--text", "--jobs", "--resume", "--patience", "--no-compile", "25M"):
        assert option in p.stdout, option
    monkeypatch.setitem(SIZES, "tiny", TINY["a"])  # a size the CLI accepts, cheap enough for a test
    argv = ["scale", "--sizes", "tiny", "--models", "bitnet", "--iters", "4", "--eval-iters", "1"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "babyBitNet" in printed and "scale.png" in printed
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["model"] == "bitnet"
    assert main(["scale", "--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "text file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["scale", "--sizes", "huge"])
    assert "invalid choice" in capsys.readouterr().err
