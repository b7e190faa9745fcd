"""``bench kernel``'s table and CLI options, without a GPU (the benchmark itself needs one: it is a command)."""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from babybitnet.cli import build_parser  # noqa: E402
from babybitnet.experiments import bench_kernels as B  # noqa: E402


def fake_results() -> dict:
    us = {B.BF16: 40.0, B.OURS: 20.0, B.INT8: 30.0}
    row = {"n": 8192, "k": 8192, "m": 32, "us": us, "speedup_vs_bf16": {n: 40.0 / t for n, t in us.items()}}
    row["choice"] = "mma:32,64,256,4,4"
    one = {"n": 8192, "k": 8192, "m": 1, "us": {B.BF16: 30.0, B.OURS: 15.0}, "choice": "dp4a:8,128,4"}
    one["speedup_vs_bf16"] = {B.BF16: 1.0, B.OURS: 2.0}
    return {
        "kind": "layer",
        "machine": {"device": "cuda:0", "name": "Fake GPU"},
        "triton": "0",
        "repeats": 3,
        "peers": {B.BF16: B.PEERS[B.BF16], B.OURS: B.PEERS[B.OURS]},
        "notes": ["gemlite skipped: ModuleNotFoundError"],
        "rows": [one, row],
    }


def test_layer_table_shows_ratios_choices_and_notes(monkeypatch):
    monkeypatch.setattr(B, "describe", lambda machine: machine["name"])
    table = B.kernel_table(fake_results())  # kernel_table hands layer results to layer_table
    assert "Fake GPU" in table
    assert "20.0 µs, 2.00x" in table and "30.0 µs, 1.33x" in table and "15.0 µs, 2.00x" in table
    assert "mma:32,64,256,4,4" in table and "dp4a:8,128,4" in table
    assert "gemlite skipped" in table
    one = next(line for line in table.splitlines() if line.startswith("| 8192 x 8192 | 1 |"))
    assert one.count("|") == table.splitlines()[2].count("|")  # a missing contender is an empty cell


def test_cli_options():
    args = build_parser().parse_args(["bench", "kernel"])
    assert (args.sizes, args.batches, args.peers, args.retune, args.variants) == (None, None, False, False, False)
    args = build_parser().parse_args(["bench", "kernel", "--shapes", "2560x6912", "--batches", "1", "256", "--peers"])
    assert args.sizes == [(2560, 6912)] and args.batches == [1, 256] and args.peers
    assert B.SHAPES == ((2560, 2560), (6912, 2560), (2560, 6912), (8192, 8192), (28672, 8192))
    assert B.BATCHES == (1, 8, 32, 128, 256)
