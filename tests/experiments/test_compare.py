"""compare: Ctrl-C keeps the runs that finished."""

from __future__ import annotations

import json

import pytest

from babybitnet.experiments import compare as C


def test_ctrl_c_keeps_the_finished_model(tmp_path, monkeypatch):
    real_train, calls = C.train, []

    def second_is_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(C, "train", second_is_interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.compare(preset="quick", iters=3, device="cpu", out=tmp_path, progress=False, eval_iters=1)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["interrupted"] is True and list(results["models"]) == ["gpt"]
    assert (tmp_path / "table.md").read_text().count("babyGPT") == 1 and (tmp_path / "loss_curves.png").is_file()
