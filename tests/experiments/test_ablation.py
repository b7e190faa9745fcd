import json

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
