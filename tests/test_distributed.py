"""DistributedDataParallel through torchrun, on the CPU with the gloo backend (CI has no GPU)."""

import json
import os
import subprocess
import sys

import pytest

from babybitnet.data import load_dataset
from babybitnet.presets import build_model
from babybitnet.runtime import is_main, rank_and_world
from babybitnet.train import train


def test_one_process_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert rank_and_world() == (0, 1) and is_main()


def test_the_batch_must_split_evenly_over_the_processes(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    tok, train_data, val_data = load_dataset()
    model, cfg = build_model("quick", "gpt", tok.vocab_size, max_iters=2)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        train(model, train_data, val_data, cfg, progress=False)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_and_rank_zero_saves(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "babybitnet", "train", "--preset", "quick", "--model", "bitnet", "--iters", "20"]
    cmd += ["--device", "cpu", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 only
    meta = json.loads((tmp_path / "ddp.pt.json").read_text())
    assert meta["processes"] == 2
    assert meta["history"]["val"][-1] < meta["history"]["val"][0]
