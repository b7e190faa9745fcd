import json
import os
import re
import subprocess
import sys

import pytest
import torch

from babybitnet.cli import build_parser, main
from babybitnet.data import CharTokenizer
from babybitnet.files import load_checkpoint, save_checkpoint
from babybitnet.gpt import GPT, GPTConfig


@pytest.mark.slow
def test_compare_quick_writes_results_table_and_plot(tmp_path):
    out = tmp_path / "q"
    assert main(["compare", "--preset", "quick", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["preset"] == "quick" and r["device"] == "cpu" and r["torch"] == torch.__version__
    for name in ("gpt", "bitnet"):
        m = r["models"][name]
        for key in (
            "params",
            "lr",
            "iters",
            "final_val",
            "best_val",
            "final_train",
            "seconds",
            "ms_per_step",
            "history",
        ):
            assert key in m, key
        assert m["iters"] == 600 and m["final_val"] < 2.6 and len(m["history"]["val"]) == 7
    assert r["models"]["gpt"]["params"] == 209_153 and r["models"]["bitnet"]["params"] == 207_617
    table = (out / "table.md").read_text()
    assert "babyGPT" in table and "babyBitNet" in table and "209,153" in table
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_train_then_sample(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--preset", "quick", "--model", "bitnet", "--iters", "20", "--device", "cpu",
                 "--out", str(ckpt), "--quiet"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "m.pt.json").read_text())["iters"] == 20
    model, tok, meta = load_checkpoint(ckpt)
    assert model.config.linear == "bitnet" and tok.vocab_size == 65 and meta["preset"] == "quick"
    capsys.readouterr()
    assert main(["sample", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= 30
    main(["sample", str(ckpt), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"])
    assert capsys.readouterr().out == text  # same seed, same text


def test_checkpoint_errors(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable babybitnet checkpoint"):
        load_checkpoint(bad)
    path = save_checkpoint(tmp_path / "ok.pt", GPT(GPTConfig(n_layer=1)), CharTokenizer("abc"))
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(path)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a babybitnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "babybitnet-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "evil.pt")


def test_help_and_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "babybitnet", "compare", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--preset" in r.stdout and "--iters" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "babybitnet", "compare", "--preset", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr


# ---------------------------------------------------------------- every option means the same everywhere
def leaf_parsers(parser=None, name="") -> dict:
    """{"bench matmul": its parser, ...}: every command that runs something."""
    import argparse

    parser = parser or build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found |= leaf_parsers(sub, f"{name} {sub_name}".strip())
    return found or {name: parser}


REQUIRED = {  # the positional arguments and required options of the commands that have them
    "train": ["--model", "gpt", "--out", "m.pt"],
    "sample": ["m.pt"],
    "pack": ["m.pt", "m.safetensors"],
    "check": ["3"],
}
WHOLE_NUMBERS_FROM_1 = ("--iters", "--steps", "--repeats", "--threads", "--jobs", "--eval-iters", "--eval-interval",
                        "--s1", "--s2", "--tokens", "--max-new-tokens", "--batches")  # fmt: skip


def options_of(parser) -> dict:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_command_has_help_and_the_shared_options_agree():
    import argparse

    from babybitnet.runtime import DEVICES

    leaves = leaf_parsers()
    assert {"compare", "train", "sample", "pack", "bench train", "bench kernel", "finetune", "scale"} <= set(leaves)
    for name, parser in leaves.items():
        help_text = parser.format_help()
        assert help_text.startswith(f"usage: python -m babybitnet {name}"), name
        assert not re.search(r"\(default[^)]*\) \(default", " ".join(help_text.split())), f"{name}: a default twice"
        for option, action in options_of(parser).items():
            assert action.help, f"{name} {option} has no help"
            if option == "--device":
                assert action.default == "auto" and tuple(action.choices) == DEVICES, name
            if option == "--compile":
                assert isinstance(action, argparse.BooleanOptionalAction) and action.default is None, name
            if option == "--seed":
                assert action.type.__name__ == "int" and action.default in (None, 1337), name
    assert "--eval-iters" in options_of(leaves["train"]) and "--eval-interval" in options_of(leaves["train"])


@pytest.mark.parametrize("name", ["compare", "train", "sample", "bench train", "bench matmul", "bench generate",
                                  "ablate", "ladder", "finetune", "scale", "check"])  # fmt: skip
def test_whole_number_options_refuse_0_and_take_1(name, capsys):
    parser = leaf_parsers()[name]
    options = [o for o in WHOLE_NUMBERS_FROM_1 if o in options_of(parser)]
    assert options or name == "check", name
    argv = [*name.split(), *REQUIRED.get(name, [])]
    for option in options:
        assert getattr(build_parser().parse_args([*argv, option, "1"]), option[2:].replace("-", "_")) in (1, [1])
        usage_error([*argv, option, "0"], capsys, option)
    if name == "check":
        usage_error(["check", "0"], capsys, "lesson")


# ---------------------------------------------------------------- user errors: one line, exit 2, no traceback
def usage_error(argv, capsys, *words) -> str:
    """main(argv) must fail as a user error: exit code 2, one line on stderr naming the command, no traceback."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses an option while parsing
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("babybitnet") and ": error: " in err, err
    assert "Traceback" not in err and "weights_only" not in err
    for word in words:
        assert word in err, (word, err)
    return err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["bench", "matmul", "--sizes", "64", "0"], ["bench matmul", "--sizes", ">= 1"]),
        (["bench", "matmul", "--threads", "-1"], ["--threads"]),
        (["bench", "train", "--steps", "0"], ["bench train", "--steps"]),
        (["bench", "train", "--repeats", "0"], ["--repeats"]),
        (["bench", "train", "--steps", "ten"], ["whole number", "'ten'"]),
        (["bench", "kernel", "--sizes", "0x64"], ["NxK"]),
        (["bench", "kernel", "--sizes", "64"], ["NxK"]),
        (["sample", "m.pt", "--temperature", "nan"], ["--temperature", "finite"]),
        (["sample", "m.pt", "--temperature", "inf"], ["--temperature"]),
        (["sample", "m.pt", "--temperature", "-1"], ["--temperature", ">= 0"]),
        (["sample", "m.pt", "--max-new-tokens", "100001"], ["--max-new-tokens", "100,000"]),
        (["sample", "m.pt", "--seed", str(2**63)], ["--seed"]),
        (["sample", "m.pt", "--seed", "-1"], ["--seed"]),
        (["finetune", "--seeds", "1", "-2"], ["--seeds"]),
        (["finetune", "--lr", "nan"], ["--lr"]),
        (["finetune", "--lr", "0"], ["--lr", "> 0"]),
        (["scale", "--patience", "-1"], ["--patience"]),
        (["train", "--model", "gpt", "--out", "m.pt", "--fast"], ["babybitnet train:", "unrecognized", "--fast"]),
        (["bench"], ["babybitnet bench:", "required"]),
        ([], ["required"]),
    ],
)
def test_bad_options_are_one_line_errors(argv, words, capsys):
    usage_error(argv, capsys, *words)


def test_boundary_values_are_accepted():
    args = build_parser().parse_args(
        ["sample", "m.pt", "--temperature", "0", "--seed", str(2**63 - 1), "--max-new-tokens", "100000"]
    )
    assert (args.temperature, args.seed, args.max_new_tokens, args.device) == (0.0, 2**63 - 1, 100000, "auto")
    args = build_parser().parse_args(["bench", "kernel", "--sizes", "8192x4096", "16X32"])
    assert args.sizes == [(8192, 4096), (16, 32)]
    args = build_parser().parse_args(["finetune", "--warmup", "0", "--seeds", "0", "7"])
    assert args.warmup == 0 and args.seeds == [0, 7]


@pytest.fixture
def no_training(monkeypatch):
    """Make loading data, training and every study fail loudly: a refused command must not get that far."""
    import babybitnet.data
    import babybitnet.experiments.bench
    import babybitnet.experiments.compare

    def started(*args, **kwargs):
        raise AssertionError("the work started before the paths were checked")

    monkeypatch.setattr(babybitnet.data, "load_dataset", started)
    monkeypatch.setattr(babybitnet.experiments.compare, "compare", started)
    monkeypatch.setattr(babybitnet.experiments.bench, "bench_train", started)


def test_outputs_are_checked_before_any_work(tmp_path, capsys, no_training, monkeypatch):
    text = tmp_path / "notes.txt"
    text.write_text("some notes\n")
    train = ["train", "--model", "gpt", "--device", "cpu", "--out"]
    usage_error([*train, str(tmp_path)], capsys, "is a folder", "model.pt")
    usage_error([*train, str(text / "m.pt")], capsys, "is a file, not a folder")
    usage_error([*train, str(text)], capsys, "refusing to replace", "not a checkpoint")
    assert text.read_text() == "some notes\n"
    (tmp_path / "m.pt.json").mkdir()  # where train would write its summary
    usage_error([*train, str(tmp_path / "m.pt")], capsys, "m.pt.json is a folder")
    usage_error(["compare", "--out", str(text)], capsys, "babybitnet compare:", "is a file")
    usage_error(["bench", "train", "--out", str(tmp_path)], capsys, "babybitnet bench train:", "is a folder")
    usage_error(["bench", "train", "--out", str(text)], capsys, "not a JSON file")
    monkeypatch.setattr("babybitnet.cli.os.access", lambda path, mode: False)  # a read-only disk, even for root
    usage_error([*train, str(tmp_path / "new" / "m.pt")], capsys, "cannot write", "read-only")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_folder_is_refused_at_once(tmp_path, capsys, no_training):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        usage_error(["train", "--model", "gpt", "--out", str(folder / "m.pt")], capsys, "cannot write")
    finally:
        folder.chmod(0o755)


def test_a_missing_text_fails_before_the_study(tmp_path, capsys, monkeypatch):
    import babybitnet.experiments.ablation

    monkeypatch.setattr(babybitnet.experiments.ablation, "ablate", lambda **kw: pytest.fail("ablate ran"))
    usage_error(["ablate", "--text", str(tmp_path / "nope.txt"), "--out", str(tmp_path)], capsys, "text file not found")


def test_checkpoint_inputs_that_are_not_checkpoints(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    usage_error(["sample", str(tmp_path)], capsys, "babybitnet sample:", "directory")
    usage_error(["sample", str(text)], capsys, "not a readable babybitnet checkpoint")
    usage_error(["sample", "--packed", str(text)], capsys, "not a readable safetensors file")
    usage_error(["sample", "--packed", str(tmp_path)], capsys, "directory")
    usage_error(["pack", str(tmp_path), str(tmp_path / "x.safetensors")], capsys, "babybitnet pack:", "directory")
    usage_error(["finetune", str(text), "--out", str(tmp_path / "ft.pt")], capsys, "not a readable")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_an_unsafe_checkpoint_is_one_line_without_torch_advice(tmp_path):
    """In a fresh process: nothing (a warning, torch's advice to set weights_only=False) but our one line."""
    torch.save({"format": "babybitnet-checkpoint-v1", "x": Evil()}, tmp_path / "evil.pt")
    r = subprocess.run(
        [sys.executable, "-m", "babybitnet", "sample", str(tmp_path / "evil.pt")], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stdout == "" and "pwned" not in r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("babybitnet sample: error:"), r.stderr
    assert "weights_only" not in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny babyBitNet checkpoint at a path without a suffix, and the summary train wrote beside it."""
    ckpt = tmp_path_factory.mktemp("trained") / "m"
    argv = ["train", "--preset", "quick", "--model", "bitnet", "--iters", "3", "--eval-iters", "1", "--eval-interval",
            "2", "--device", "cpu", "--out", str(ckpt), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return ckpt, ckpt.parent / "m.json"


def test_train_takes_eval_overrides_and_writes_its_summary_beside(trained):
    ckpt, summary = trained
    meta = json.loads(summary.read_text())
    assert meta["train_config"]["eval_iters"] == 1 and meta["train_config"]["eval_interval"] == 2
    assert meta["iters"] == 3 and len(meta["history"]["val"]) == 3  # steps 0, 2 and the last
    assert load_checkpoint(ckpt)[2]["train_config"]["eval_iters"] == 1


def test_pack_refuses_its_input_and_train_summary(trained, tmp_path, capsys):
    ckpt, summary = trained
    before = summary.read_bytes(), ckpt.read_bytes()
    usage_error(["pack", str(ckpt), str(ckpt)], capsys, "is the input checkpoint itself")
    # the summary of runs/m.safetensors is runs/m.json: here train's summary of the checkpoint runs/m
    usage_error(["pack", str(ckpt), str(ckpt) + ".safetensors"], capsys, "is a train summary, not a pack summary")
    assert (summary.read_bytes(), ckpt.read_bytes()) == before
    assert not (ckpt.parent / "m.safetensors").exists()
    other = save_checkpoint(tmp_path / "other.pt", GPT(GPTConfig(n_layer=1)), CharTokenizer("abc"))
    usage_error(["pack", str(ckpt), str(other)], capsys, "is a checkpoint, not a packed model")
    # what pack wrote, pack may write again
    out = tmp_path / "m.safetensors"
    assert main(["pack", str(ckpt), str(out)]) == 0 and main(["pack", str(ckpt), str(out)]) == 0
    # and train refuses to write a checkpoint over the packed model, or its summary over pack's
    train = ["train", "--model", "gpt", "--iters", "1", "--out"]
    usage_error([*train, str(out)], capsys, "is a packed model, not a checkpoint")
    usage_error([*train, str(tmp_path / "m")], capsys, "is a pack summary")


def test_finetune_refuses_to_write_over_its_checkpoint(trained, capsys):
    ckpt, _ = trained
    copy = ckpt.parent / "gpt.pt"
    copy.write_bytes(ckpt.read_bytes())
    usage_error(["finetune", str(copy), "--out", str(copy)], capsys, "is the input checkpoint itself")
    usage_error(["finetune", str(copy), "--seeds", "1", "2"], capsys, "one seed")


def test_file_kind_tells_our_files_apart(trained, tmp_path):
    from babybitnet.cli import file_kind
    from babybitnet.files import save_packed

    ckpt, summary = trained
    model, tok, _ = load_checkpoint(ckpt)
    packed = save_packed(tmp_path / "p.safetensors", model, tok)
    (tmp_path / "p.json").write_text(json.dumps({"format": "2bit", "packed_bytes": 1}))
    (tmp_path / "r.json").write_text("[1, 2]")
    (tmp_path / "t.txt").write_text("{ not json at all")
    files = (ckpt, summary, packed, *(tmp_path / name for name in ("p.json", "r.json", "t.txt")))
    kinds = {p.name: file_kind(p) for p in files}
    assert kinds == {"m": "checkpoint", "m.json": "train summary", "p.safetensors": "packed model",
                     "p.json": "pack summary", "r.json": "JSON file", "t.txt": "file of another kind"}  # fmt: skip


# ---------------------------------------------------------------- interrupted, and --debug
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import babybitnet.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(babybitnet.cli, "cmd_sample", interrupted)
    assert main(["sample", "m.pt"]) == 130
    assert capsys.readouterr().err == "babybitnet sample: interrupted\n"


def test_debug_shows_the_exception(tmp_path, monkeypatch, capsys):
    for argv in (["--debug", "sample", str(tmp_path)], ["sample", str(tmp_path), "--debug"]):
        with pytest.raises(ValueError, match="directory"):
            main(argv)
    monkeypatch.setenv("BABYBITNET_DEBUG", "1")
    with pytest.raises(ValueError, match="directory"):
        main(["sample", str(tmp_path)])
    monkeypatch.setenv("BABYBITNET_DEBUG", "0")
    usage_error(["sample", str(tmp_path)], capsys, "directory")


def test_a_long_message_is_cut_to_its_first_line():
    from babybitnet.cli import one_line

    assert one_line(ValueError("what is wrong\ndetails")) == "what is wrong (the rest with --debug)"
    assert one_line(PermissionError(13, "Permission denied", "/x")) == "/x: Permission denied"
    assert one_line(ValueError()) == "ValueError"


def test_grpo_choices_agree_with_the_package():
    from babybitnet import cli
    from babybitnet.experiments.grpo import MODELS as GRPO_MODELS
    from babybitnet.grpo import TASKS

    assert cli.GRPO_MODELS == tuple(GRPO_MODELS) and set(cli.GRPO_TASKS) == set(TASKS)
    args = build_parser().parse_args(["grpo", "--model", "bitnet", "--seeds", "2", "--iters", "5"])
    assert (args.model, args.seeds, args.iters, args.task) == (["bitnet"], 2, 5, "reverse")


def test_bench_generate_and_compare_take_the_new_options():
    args = build_parser().parse_args(["bench", "generate", "--compile"])
    assert args.compile is True
    args = build_parser().parse_args(["compare", "--eval-iters", "3", "--eval-interval", "7"])
    assert (args.eval_iters, args.eval_interval) == (3, 7)


def test_ctrl_c_in_train_keeps_the_last_evaluated_model(tmp_path, monkeypatch, capsys):
    import babybitnet.train as T

    real_train = T.train

    def train_then_ctrl_c(*args, **kwargs):
        def stop(step: int) -> None:
            if step == 7:
                raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "on_step": stop})

    monkeypatch.setattr(T, "train", train_then_ctrl_c)
    out = tmp_path / "m.pt"
    argv = ["train", "--model", "gpt", "--preset", "quick", "--iters", "20", "--eval-iters", "2"]
    code = main([*argv, "--eval-interval", "5", "--out", str(out), "--quiet"])
    assert code == 130
    kept = tmp_path / "m.step5.interrupted.pt"
    assert kept.is_file() and not out.exists()
    _, _, meta = load_checkpoint(kept)
    assert meta["interrupted_at_step"] == 5
    err = capsys.readouterr().err
    assert "interrupted; kept the model of step 5" in err and "Traceback" not in err


def test_prepare_then_train_from_disk(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 200)
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "ds")]) == 0
    assert "char tokenizer" in capsys.readouterr().out
    out = tmp_path / "m.pt"
    argv = ["train", "--model", "gpt", "--preset", "quick", "--iters", "3", "--eval-iters", "1", "--quiet"]
    assert main([*argv, "--data", str(tmp_path / "ds"), "--out", str(out)]) == 0
    summary = json.loads(out.with_name(out.name + ".json").read_text())
    assert summary["data"]["data"] == str(tmp_path / "ds") and summary["data"]["corpus"]["files"] == 1
    with pytest.raises(SystemExit) as e:  # --text and --data are one or the other
        main([*argv, "--data", str(tmp_path / "ds"), "--text", str(corpus), "--out", str(out)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["prepare", str(corpus), "--tokenizer", "bpe", "--out", str(tmp_path / "x")])  # no --vocab-size
    assert "needs --vocab-size" in capsys.readouterr().err
