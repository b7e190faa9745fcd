import json

from helpers import small_bpe_dataset

from babybitnet.experiments import ablation
from babybitnet.experiments.ablation import Variant, ablate, markdown_table


def test_ablate_runs_every_variant_per_seed_and_reports_deltas(monkeypatch, tmp_path):
    tiny = dict(eval_iters=2)
    study = [
        Variant("recipe preset", "bitnet", train_overrides=tiny),
        Variant("recipe, plain ReLU", "bitnet", model_overrides=dict(activation="relu"), train_overrides=tiny),
        Variant("seed preset", "gpt", preset="seed", train_overrides=tiny),
    ]
    monkeypatch.setitem(ablation.STUDIES, "tiny", study)
    r = ablate("tiny", seeds=2, jobs=1, iters=3, eval_interval=3, out=tmp_path, progress=False)
    assert [(x["variant"], x["seed"]) for x in r["runs"]] == [(v.name, s) for v in study for s in (1337, 1338)]
    rows = {(x["model"], x["variant"]): x for x in r["summary"]}
    assert rows[("bitnet", "recipe preset")]["delta_vs_recipe"] == 0.0
    relu = rows[("bitnet", "recipe, plain ReLU")]
    assert (
        relu["seeds"] == 2
        and relu["delta_vs_recipe"] == relu["final_val_mean"] - rows[("bitnet", "recipe preset")]["final_val_mean"]
    )
    assert rows[("gpt", "seed preset")]["delta_vs_recipe"] is None  # no babyGPT recipe in this study
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == r["summary"]
    assert (tmp_path / "table.md").read_text() == markdown_table(r["summary"])


def test_ablate_on_a_prepared_dataset_in_workers_and_through_the_cli(monkeypatch, tmp_path, capsys):
    from babybitnet.cli import main
    from babybitnet.gpt import GPT
    from babybitnet.prepare import data_record
    from babybitnet.presets import get_preset

    ds = small_bpe_dataset(tmp_path)
    study = [Variant("recipe preset", "bitnet", train_overrides=dict(eval_iters=1, batch_size=4))]
    monkeypatch.setitem(ablation.STUDIES, "tiny", study)
    r = ablate("tiny", seeds=2, jobs=2, iters=2, eval_interval=2, out=tmp_path / "a", data=ds, progress=False)
    assert r["data"] == data_record(None, ds) and r["data"]["vocab_size"] == 300
    mcfg, _ = get_preset("recipe", "bitnet", 300)
    assert [run["params"] for run in r["runs"]] == [GPT(mcfg).num_params()] * 2  # the BPE vocabulary's model
    assert [run["seed"] for run in r["runs"]] == [1337, 1338] and r["runs"][0]["history"] != r["runs"][1]["history"]
    argv = ["ablate", "--study", "tiny", "--seeds", "1", "--jobs", "1", "--iters", "2", "--eval-interval", "2"]
    assert main([*argv, "--data", str(ds), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "recipe preset" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "results.json").read_text())["data"]["data"] == str(ds)
    assert main([*argv, "--data", str(tmp_path / "none"), "--out", str(tmp_path / "c")]) == 2
    assert "prepared dataset not found" in capsys.readouterr().err


def test_resume_trains_only_the_missing_runs_and_refuses_other_settings(monkeypatch, tmp_path):
    import pytest

    calls = []

    def fake_run_one(variant, seed, overrides, text=None, data=None):
        calls.append((variant.name, seed))
        run = {"variant": variant.name, "model": variant.model, "seed": seed, "params": 10, "final_val": 2.0}
        return {**run, "best_val": 2.0, "ms_per_step": 1.0, "train_config": dict(overrides), "machine": {}}

    study = [Variant("recipe preset", "bitnet"), Variant("other", "bitnet")]
    monkeypatch.setitem(ablation.STUDIES, "tiny", study)
    monkeypatch.setattr(ablation, "run_one", fake_run_one)
    ablate("tiny", seeds=1, jobs=1, eval_interval=7, out=tmp_path, progress=False)
    assert calls == [("recipe preset", 1337), ("other", 1337)]
    calls.clear()
    r = ablate("tiny", seeds=2, jobs=1, eval_interval=7, out=tmp_path, progress=False, resume=True)
    assert calls == [("recipe preset", 1338), ("other", 1338)]  # the first seed's runs were kept
    assert [(x["variant"], x["seed"]) for x in r["runs"]] == [(v.name, s) for v in study for s in (1337, 1338)]
    assert all(row["seeds"] == 2 for row in r["summary"])
    with pytest.raises(ValueError, match="eval_interval"):  # other settings: mixing the runs would mislead
        ablate("tiny", seeds=2, jobs=1, eval_interval=8, out=tmp_path, progress=False, resume=True)
