import json
import math
import statistics
import subprocess
import sys

import pytest
import torch
from helpers import small_bpe_dataset

from babybitnet.cli import main
from babybitnet.experiments import scale as scale_mod
from babybitnet.experiments.scale import (
    OVERFIT_MARGIN,
    SIZES,
    iters_for_epochs,
    markdown_table,
    plot_scale,
    scale,
    size_overrides,
    summarize,
    task_devices,
)
from babybitnet.gpt import GPT
from babybitnet.prepare import data_record, load_prepared
from babybitnet.presets import get_preset
from babybitnet.runtime import machine_info

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
    assert r["data"] == {"text": "tinyshakespeare"} and r["iters"] == ITERS and r["seeds"] == 1
    assert r["torch"] == torch.__version__
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
        assert run["seed"] == 1337 and run["epochs"] == pytest.approx(run["tokens_seen"] / r["train_tokens"])
        assert run["overfit"] == (run["final_val"] > run["best_val"] + OVERFIT_MARGIN)
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
    def run_one(size, model, seed, device, iters, text, dtype, compile, eval_iters, patience, sizes, progress=False,
                data=None, batch_size=64):  # fmt: skip
        calls.append((size, model) if seed == 1337 else (size, model, seed))
        val = 2.0 - 0.1 * list(sizes).index(size) + (0.05 if model == "bitnet" else 0.0) + 0.01 * (seed - 1337)
        return {"size": size, "model": model, "seed": seed, "params": 1000 * (1 + len(calls)), "best_val": val,
                "final_val": val, "best_step": iters, "stopped_early": False, "epochs": 1.0,
                "overfit": False}  # fmt: skip

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
    r = scale(TINY, resume=True, seeds=2, **kw)  # a second seed: only its runs are trained
    assert calls[8:] == [("a", "gpt", 1338), ("a", "bitnet", 1338), ("b", "gpt", 1338), ("b", "bitnet", 1338)]
    assert r["seeds"] == 2 and len(r["runs"]) == 8
    assert r["summary"][0]["gap_seeds"] == 2 and r["summary"][0]["gap_std"] == pytest.approx(0.0, abs=1e-12)
    assert r["summary"][0]["best_val_gpt"] == pytest.approx(2.005)  # the mean of 2.00 and 2.01


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
    options = ("--sizes", "--iters", "--text", "--jobs", "--resume", "--patience", "--no-compile", "25M", "--data",
               "--epochs", "--seeds", "--batch-size", "--dropout")  # fmt: skip
    for option in options:
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


# ---------------------------------------------------------------- a prepared corpus, several seeds, epochs
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small BPE dataset (300 tokens) of the start of Tiny Shakespeare: about 26k train tokens."""
    return small_bpe_dataset(tmp_path_factory.mktemp("data"))


def test_epochs_set_the_step_budget():
    assert iters_for_epochs(1.0, 64 * 256 * 10) == 10
    assert iters_for_epochs(1.5, 64 * 256 * 10 + 1) == 16  # rounded up: at least E passes
    assert iters_for_epochs(2.0, 1000, batch_size=4) == math.ceil(2000 / 1024)
    with pytest.raises(ValueError, match="epochs must be"):
        iters_for_epochs(0.0, 1000)


def test_prepared_data_two_seeds_in_worker_processes(prepared, tmp_path):
    train_tokens = len(load_prepared(prepared).train)
    r = scale(
        {"a": TINY["a"]}, data=prepared, seeds=2, jobs=2, epochs=0.3, batch_size=4, eval_iters=1, patience=0,
        device="cpu", out=tmp_path, progress=False,
    )  # fmt: skip
    assert r == json.loads((tmp_path / "results.json").read_text())
    assert r["data"] == data_record(None, prepared) and r["data"]["tokenizer"] == "bpe"
    assert r["vocab_size"] == 300 and r["train_tokens"] == train_tokens and "data_chars" not in r
    assert r["iters"] == math.ceil(0.3 * train_tokens / (4 * 256)) and r["epochs"] == 0.3 and r["batch_size"] == 4
    assert r["epochs_per_run"] == pytest.approx(r["iters"] * 4 * 256 / train_tokens)
    keys = [(run["size"], run["model"], run["seed"]) for run in r["runs"]]
    assert keys == [("a", m, sd) for m in ("gpt", "bitnet") for sd in (1337, 1338)]
    for run in r["runs"]:
        assert run["params"] == count_params(TINY[run["size"]], run["model"], vocab=300)  # the BPE vocabulary
        assert run["train_config"]["batch_size"] == 4 and run["train_config"]["seed"] == run["seed"]
        assert run["stopped_step"] == r["iters"]  # patience 0: no early stop
        assert run["epochs"] == pytest.approx(run["stopped_step"] * 4 * 256 / train_tokens)
        assert run["overfit"] == (run["final_val"] > run["best_val"] + OVERFIT_MARGIN)
    gpt_a = [run for run in r["runs"] if run["size"] == "a" and run["model"] == "gpt"]
    assert gpt_a[0]["history"] != gpt_a[1]["history"]  # two seeds: two different runs
    for row in r["summary"]:
        runs = {(run["model"], run["seed"]): run for run in r["runs"] if run["size"] == row["size"]}
        gaps = [runs["bitnet", s]["best_val"] - runs["gpt", s]["best_val"] for s in (1337, 1338)]
        assert row["gap"] == pytest.approx(statistics.fmean(gaps)) and row["gap_seeds"] == 2
        assert row["gap_std"] == pytest.approx(statistics.stdev(gaps))
        best = [runs["gpt", s]["best_val"] for s in (1337, 1338)]
        assert row["best_val_gpt"] == pytest.approx(statistics.fmean(best))
        assert row["best_val_std_gpt"] == pytest.approx(statistics.stdev(best))
        assert row["epochs_gpt"] == pytest.approx(r["epochs_per_run"]) and row["seeds_bitnet"] == 2
    table = (tmp_path / "table.md").read_text()
    assert "| epochs |" in table and " +- " in table
    with pytest.raises(ValueError, match="other settings.*data"):  # the same folder, another corpus
        scale(TINY, iters=r["iters"], batch_size=4, eval_iters=1, patience=0, device="cpu", out=tmp_path,
              resume=True, progress=False)  # fmt: skip


def fake_run(size: str, model: str, seed: int, best: float, final: float) -> dict:
    return {"size": size, "model": model, "seed": seed, "params": 100 if model == "gpt" else 90, "best_val": best,
            "final_val": final, "best_step": 10, "stopped_early": False, "epochs": 1.5,
            "overfit": final > best + OVERFIT_MARGIN}  # fmt: skip


def test_overfit_runs_are_counted_and_flagged(tmp_path):
    runs = [
        fake_run("a", "gpt", 1337, 2.0, 2.0),
        fake_run("a", "gpt", 1338, 2.2, 2.25),  # overfit: final is 0.05 above best
        fake_run("a", "bitnet", 1337, 2.1, 2.105),  # within the margin
        fake_run("a", "bitnet", 1338, 2.4, 2.4),
    ]
    (row,) = summarize(runs, {"a": TINY["a"]})
    assert (row["overfit_gpt"], row["overfit_bitnet"]) == (1, 0)
    assert row["gap"] == pytest.approx(0.15) and row["gap_std"] == pytest.approx(statistics.stdev([0.1, 0.2]))
    assert row["final_val_gpt"] == pytest.approx(2.125) and row["epochs_bitnet"] == 1.5
    results = {"summary": [row], "seeds": 2, "tokens_per_run": 1000, "epochs_per_run": 1.5,
               "data": {"data": "x", "tokenizer": "bpe"}, "machine": machine_info(torch.device("cpu"))}  # fmt: skip
    table = markdown_table(results)
    assert "2.1250 +- 0.1768 **overfit 1/2**" in table and "+0.1500 +- 0.0707" in table and "| 1.5 |" in table
    png = plot_scale(results, tmp_path / "scale.png").read_bytes()  # error bars and the overfit circle draw
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_old_results_keep_their_table():
    """Results written before seeds and epochs (babybitnet/results/scale.json) give the table they always gave."""
    old_row = {"size": "0.2M", **SIZES["0.2M"], "params_gpt": 223489, "best_val_gpt": 1.63744, "best_step_gpt": 2500,
               "stopped_early_gpt": False, "params_bitnet": 221953, "best_val_bitnet": 1.75138,
               "best_step_bitnet": 2250, "stopped_early_bitnet": True, "gap": 0.11394,
               "relative_gap": 0.06958}  # fmt: skip
    lines = markdown_table({"summary": [old_row]}).splitlines()
    assert lines[0] == (
        "| size | layers x heads x width | dropout | params babyGPT | params babyBitNet "
        "| best val babyGPT | best val babyBitNet | gap | relative gap |"
    )
    assert lines[2] == (
        "| 0.2M | 4 x 4 x 64 | 0 | 223,489 | 221,953 | 1.6374 (step 2500) | 1.7514 (step 2250, stopped early) "
        "| +0.1139 | +7.0% |"
    )


def test_budget_and_seed_errors(tmp_path):
    with pytest.raises(ValueError, match="iters or in epochs, not both"):
        scale(TINY, iters=10, epochs=1.0, device="cpu", out=tmp_path)
    with pytest.raises(ValueError, match="seeds and batch_size must be >= 1"):
        scale(TINY, seeds=0, device="cpu", out=tmp_path)
    with pytest.raises(ValueError, match="dropout must be"):
        scale(TINY, dropout=1.0, device="cpu", out=tmp_path)
    with pytest.raises(FileNotFoundError, match="prepared dataset not found"):
        scale(TINY, data=tmp_path / "nothing", device="cpu", out=tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_cli_data_seeds_and_epochs(prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(SIZES, "tiny", TINY["a"])
    argv = ["scale", "--sizes", "tiny", "--models", "gpt", "--data", str(prepared), "--seeds", "2", "--epochs", "0.2",
            "--batch-size", "4", "--eval-iters", "1", "--dropout", "0", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| tiny |" in printed and "2 seed(s)" in printed and "epochs" in printed
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["data"]["data"] == str(prepared) and r["seeds"] == 2 and r["epochs"] == 0.2 and r["batch_size"] == 4
    assert len(r["runs"]) == 2 and r["sizes"]["tiny"]["dropout"] == 0.0
    assert r["iters"] == math.ceil(0.2 * r["train_tokens"] / (4 * 256))
    with pytest.raises(SystemExit):  # one budget, not two
        main(["scale", "--iters", "5", "--epochs", "1", "--out", str(tmp_path / "x")])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one corpus, not two
        main(["scale", "--text", "t.txt", "--data", str(prepared), "--out", str(tmp_path / "x")])
    assert main(["scale", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert "prepared dataset not found" in capsys.readouterr().err


def test_overfit_needs_an_early_best_and_a_rise():
    from babybitnet.experiments.scale import overfit

    run = {"iters": 1461, "stopped_step": 1461, "best_val": 4.014, "final_val": 4.036}
    # the best one step before the end, the final estimate 0.02 above it: two noisy estimates, not overfitting
    assert not overfit({**run, "best_step": 1460})
    assert overfit({**run, "best_step": 700})  # the val loss rose for the last half of the run
    assert not overfit({**run, "best_step": 700, "final_val": 4.02})  # within the margin
