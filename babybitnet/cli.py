"""The command line: ``python -m babybitnet <command> --help``.

compare   train babyGPT and babyBitNet side by side and compare them
train     train one model and save a checkpoint
sample    generate text from a checkpoint (``--packed``: from a packed model file)
pack      pack a babyBitNet checkpoint's ternary weights into 2 or 1.6 bits per weight (safetensors)
bench     time and measure things side by side (``bench train``, ``memory``, ``matmul``, ``kernel``, ``generate``)
check     grade your exercises of a lesson (``check 3``)
lessons   regenerate lessons/ from solutions/ (course authors; ``--check`` only compares)
ablate    train every variant of a study over several seeds and report mean +- std
ladder    train the rungs from a bigram to babyGPT under the same settings
finetune  babyGPT -> babyBitNet with gradual quantization, against the abrupt switch and from scratch
scale     train both models at sizes from 0.2M to 25M parameters: does the gap close as they grow?

The file reads top down: how numbers are checked, how paths are checked, the option groups that several
commands share, then one block per command (its parser, then what it runs), then ``main``.

A mistake of the user (a bad number, a missing file, an output that cannot be written) is one line on
stderr, ``babybitnet <command>: error: <what is wrong and what to do>``, and exit code 2; a traceback
only with ``--debug`` or ``BABYBITNET_DEBUG=1``. Options are checked when parsed; paths before any work
starts, so that a typo does not cost a training run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from babybitnet.packing import FORMATS
from babybitnet.presets import MODELS, PRESETS
from babybitnet.runtime import DEVICES

PROG = "python -m babybitnet"
SAMPLE_CHUNK = 32  # sample prints its text every this many new tokens
MAX_TOKENS = 100_000  # --max-new-tokens, --tokens: more is a typo, not a plan (and minutes of generation)
SEED_LIMIT = 2**63  # seeds below it: torch.manual_seed takes 64 bits, and int64 holds them everywhere


# ---------------------------------------------------------------- numbers, checked when parsed
def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number >= ``low`` (and <= ``high``), else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"from {low} to {high:,}"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


positive_int = int_at_least(1)
seed_int = int_at_least(0, SEED_LIMIT - 1)
token_count = int_at_least(1, MAX_TOKENS)


def finite_float(low: float, *, inclusive: bool) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number > ``low`` (>= with ``inclusive``); nan and inf are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            sign = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be a finite number {sign} {low:g}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def weight_shape(text: str) -> tuple[int, int]:
    """``4096x2560`` -> (4096, 2560): N outputs x K inputs, both >= 1."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a shape NxK of whole numbers >= 1 such as 4096x4096, got {text!r}")
    return int(parts[0]), int(parts[1])


# ---------------------------------------------------------------- paths, checked before any work
def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, flag: str) -> None:
    """Raise unless files can be created at ``path``: its nearest existing folder must be a folder we may write."""
    folder = _nearest_existing(path.parent if not path.is_dir() else path)
    if not folder.is_dir():
        raise NotADirectoryError(f"{flag} {path}: {folder} is a file, not a folder; choose another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: cannot write into {folder} (read-only?); choose another {flag}")


def file_kind(path: Path) -> str:
    """What an existing file holds, from its first bytes: checkpoint, packed model, a summary of ours, JSON, other."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "checkpoint"  # torch.save writes a zip archive
    if head.lstrip()[:1] in (b"{", b"[") and path.stat().st_size < 256 << 20:  # our summaries are small
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            data = None
        if isinstance(data, dict) and "packed_bytes" in data:
            return "pack summary"
        if isinstance(data, dict) and "train_config" in data:
            return "train summary"
        if data is not None:
            return "JSON file"
    if head[8:9] == b"{":
        return "packed model"  # safetensors: the header's length in 8 bytes, then the header, JSON
    return "file of another kind"


EXAMPLE_NAME = {"checkpoint": "model.pt", "packed model": "model.safetensors", "JSON file": "results.json"}


def check_output_file(path: str | Path, flag: str, kind: str) -> Path:
    """Raise unless ``path`` can be written and would replace nothing but an older file of the same ``kind``."""
    path = Path(path)
    if path.is_dir() and kind in EXAMPLE_NAME:
        example = path / EXAMPLE_NAME[kind]
        raise IsADirectoryError(f"{flag} {path} is a folder; give the path of the {kind} to write, e.g. {example}")
    if path.is_dir():  # a file written beside the output, such as train's OUT.json
        raise IsADirectoryError(f"{path} is a folder, where this command writes its {kind}; remove it or change {flag}")
    check_writable(path, flag)
    if path.exists() and (found := file_kind(path)) != kind:
        raise ValueError(
            f"{flag} {path} exists and is a {found}, not a {kind}: refusing to replace it; "
            f"remove it or choose another {flag}"
        )
    return path


def check_output_dir(path: str | Path, flag: str, writes: tuple[str, ...], resume: bool = False) -> Path:
    """Raise unless ``path`` is (or can become) a folder we may write ``writes`` into.

    ``resume``: the command carries on the study there (``--resume``), so its earlier files are kept.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file; give a folder (this command writes {', '.join(writes)})")
    for name in writes:
        if (path / name).is_dir():
            raise IsADirectoryError(f"{flag} {path}: {path / name} is a folder, where this command writes a file")
    check_writable(path, flag)
    earlier = [name for name in writes if (path / name).is_file()]
    if earlier and resume:
        print(f"note: {path} holds an earlier {', '.join(earlier)}; --resume keeps its finished runs", file=sys.stderr)
    elif earlier:  # not an error: rerunning a study into its folder is normal, but say what goes
        print(f"note: {path} holds an earlier {', '.join(earlier)}; this run replaces them", file=sys.stderr)
    return path


def check_not_same(output: Path, source: str | Path, what: str) -> None:
    """Refuse to write ``output`` over the input ``source``: the input would be gone, and the output half made."""
    if output.resolve() == Path(source).resolve():
        raise ValueError(f"{output} is the input {what} itself; write to another path")


def check_text(text: str | None) -> None:
    """Read ``--text`` now (if given): a missing or non-UTF-8 file fails before the training, not inside it."""
    if text is not None:
        from babybitnet.data import load_text

        load_text(text)


def summary_path(checkpoint: Path) -> Path:
    """Where ``train`` (and ``finetune CHECKPOINT``) write the JSON summary of a checkpoint: beside it, + .json."""
    return Path(str(checkpoint) + ".json")


def check_results_file(path: str) -> None:
    """``--out`` of the benchmarks: a JSON file to write (or replace), or ``''`` for none."""
    if path:
        check_output_file(path, "--out", "JSON file")


def write_results(path: str, data: object) -> None:
    """Write ``data`` as JSON to ``path`` (atomically) and say so; ``''`` writes nothing."""
    from babybitnet.files import write_json

    if path:
        print(f"wrote {write_json(path, data)}")


# ---------------------------------------------------------------- option groups several commands share
class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Add "(default: X)" to an option's help unless the help says its default in words (always where it is None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool) or "default" in (action.help or "").lower():
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: ``babybitnet train: error: ...``, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog.replace(PROG, 'babybitnet', 1)}: error: {message} (see {self.prog} --help)\n")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto", help="where to run; auto: cuda, else mps, else cpu")


def _add_dtype(p: argparse.ArgumentParser, default: str, choices: tuple[str, ...] = ("float32", "bfloat16")) -> None:
    p.add_argument("--dtype", choices=choices, default=None, help=f"bfloat16: autocast (GPUs); default: {default}")


def _add_compile(p: argparse.ArgumentParser, default: str) -> None:
    what = f"torch.compile (GPUs); default: {default}"
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help=what)


def _preset_default(default: object, preset: str = "the preset's") -> str:
    """' (default: the preset's)' where the default is None; other defaults the help formatter shows itself."""
    return f" (default: {preset})" if default is None else ""


def _add_seed(p: argparse.ArgumentParser, default: int | None = 1337) -> None:
    what = "random seed, 0 to 2**63 - 1" + _preset_default(default, "the preset's, 1337")
    p.add_argument("--seed", type=seed_int, default=default, help=what)


def _add_preset(p: argparse.ArgumentParser, default: str = "seed") -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=default, help="model size and training recipe")


def _add_iters(p: argparse.ArgumentParser, default: int | None = None) -> None:
    what = "training steps per run" + _preset_default(default)
    p.add_argument("--iters", type=positive_int, default=default, help=what)


def _add_eval_iters(p: argparse.ArgumentParser, default: int | None = None) -> None:
    what = "batches per split per loss estimate" + _preset_default(default)
    p.add_argument("--eval-iters", type=positive_int, default=default, help=what)


def _add_eval_interval(p: argparse.ArgumentParser, default: int | None = None) -> None:
    what = "steps between loss estimates" + _preset_default(default)
    p.add_argument("--eval-interval", type=positive_int, default=default, help=what)


def _add_text_or_data(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text", default=None, help="a UTF-8 text file to train on instead of Tiny Shakespeare")
    g.add_argument("--data", default=None, metavar="DIR", help="a dataset written by `prepare` (read from disk)")


def check_data(text: str | None, data: str | None) -> None:
    """Read --text, or open --data, now: a bad corpus fails before the training, not inside it."""
    check_text(text)
    if data is not None:
        from babybitnet.prepare import load_prepared

        load_prepared(data)


def _add_text(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", default=None, help="a UTF-8 text file to train on instead of Tiny Shakespeare")


def _add_out(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    p.add_argument("--out", default=default, required=default is None, help=what)


def _add_json_out(p: argparse.ArgumentParser, default: str) -> None:
    _add_out(p, default, "JSON results file; '' writes none")


def _add_jobs(p: argparse.ArgumentParser, default: int | None, what: str) -> None:
    p.add_argument("--jobs", type=positive_int, default=default, help=f"worker processes, >= 1; {what}")


def _add_repeats(p: argparse.ArgumentParser, default: int, what: str) -> None:
    p.add_argument("--repeats", type=positive_int, default=default, help=what)


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _command(sub: argparse._SubParsersAction, name: str, func: Callable | None, help: str, **kw) -> _Parser:
    """A parser for ``name`` that runs ``func``; also takes ``--debug`` (a traceback on an error)."""
    p = sub.add_parser(name, help=help, formatter_class=_Help, **kw)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, show the traceback")
    if func is not None:  # parser: for main to report unknown options as this command's
        p.set_defaults(func=func, command=p.prog.replace(PROG + " ", "", 1), parser=p)
    return p


# ---------------------------------------------------------------- compare
COMPARE_FILES = ("results.json", "table.md", "loss_curves.png")


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "compare", cmd_compare, "train babyGPT and babyBitNet side by side")
    _add_preset(p)
    _add_iters(p)
    _add_eval_iters(p)
    _add_eval_interval(p)
    _add_device(p)
    _add_seed(p, default=None)
    _add_text_or_data(p)
    _add_quiet(p)
    _add_dtype(p, "the preset's, float32")
    _add_compile(p, "the preset's, off")
    _add_out(p, "runs/compare", "folder for results.json, table.md, loss_curves.png")


def cmd_compare(args: argparse.Namespace) -> int:
    from babybitnet.experiments.compare import compare, markdown_table
    from babybitnet.runtime import describe

    out = check_output_dir(args.out, "--out", COMPARE_FILES)
    check_data(args.text, args.data)
    results = compare(
        preset=args.preset,
        iters=args.iters,
        device=args.device,
        seed=args.seed,
        out=out,
        text=args.text,
        data=args.data,
        progress=not args.quiet,
        dtype=args.dtype,
        compile=args.compile,
        eval_iters=args.eval_iters,
        eval_interval=args.eval_interval,
    )
    print(f"\npreset {args.preset!r} on {describe(results['machine'])}\n")
    print(markdown_table(results))
    print(f"wrote {out / 'results.json'}, table.md and loss_curves.png")
    return 0


# ---------------------------------------------------------------- train
def add_train(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "train", cmd_train, "train one model and save a checkpoint")
    p.add_argument("--model", choices=MODELS, required=True, help="gpt = babyGPT, bitnet = babyBitNet")
    _add_preset(p)
    _add_iters(p)
    _add_eval_iters(p)
    _add_eval_interval(p)
    _add_device(p)
    _add_seed(p, default=None)
    _add_text_or_data(p)
    _add_quiet(p)
    _add_dtype(p, "the preset's, float32")
    _add_compile(p, "the preset's, off")
    _add_out(p, None, "checkpoint path to write (a .json summary is written beside it: OUT.json)")


def cmd_train(args: argparse.Namespace) -> int:
    from babybitnet import runtime
    from babybitnet.files import save_checkpoint, write_json
    from babybitnet.prepare import data_record, load_corpus
    from babybitnet.presets import build_model
    from babybitnet.train import TrainingInterrupted, train

    out = check_output_file(args.out, "--out", "checkpoint")
    check_output_file(summary_path(out), "--out", "train summary")
    check_data(args.text, args.data)
    dev = runtime.init_distributed(runtime.resolve_device(args.device))  # under torchrun: join the others
    tok, train_data, val_data = load_corpus(args.text, args.data)
    model, tcfg = build_model(
        args.preset,
        args.model,
        tok.vocab_size,
        max_iters=args.iters,
        eval_iters=args.eval_iters,
        eval_interval=args.eval_interval,
        seed=args.seed,
        dtype=args.dtype,
        compile=args.compile,
    )
    try:
        r = train(model, train_data, val_data, tcfg, dev, progress=not args.quiet, desc=args.model, keep_last=True)
    except TrainingInterrupted as stop:  # Ctrl-C: keep the model as it was at the last evaluation, named as such
        if runtime.is_main():
            model.load_state_dict(stop.state)
            kept = out.with_name(f"{out.stem}.step{stop.step}.interrupted{out.suffix}")
            meta = {"preset": args.preset, "train_config": tcfg.to_dict(), "interrupted_at_step": stop.step}
            save_checkpoint(kept, model, tok, {**meta, "val_loss": stop.val})
            print(f"babybitnet train: interrupted; kept the model of step {stop.step} (val loss {stop.val:.4f}) "
                  f"in {kept}", file=sys.stderr)  # fmt: skip
        runtime.cleanup_distributed()
        return 130
    if not runtime.is_main():  # every process holds the same model: rank 0 writes it
        runtime.cleanup_distributed()
        return 0
    meta = {"preset": args.preset, "train_config": tcfg.to_dict(), "device": str(dev), "torch": torch.__version__}
    meta["processes"] = r["processes"]
    meta["data"] = data_record(args.text, args.data)
    meta.update({k: r[k] for k in ("final_val", "best_val", "final_train", "iters", "ms_per_step")})
    meta["ms_per_step_steady"] = r["ms_per_step_steady"]
    path = save_checkpoint(out, model, tok, meta)
    write_json(summary_path(path), {**meta, "params": r["params"], "history": r["history"]})
    steady = "" if r["ms_per_step_steady"] is None else f", {r['ms_per_step_steady']:.1f} ms per step"
    print(f"{args.model}: {r['params']:,} parameters, val loss {r['final_val']:.4f} (best {r['best_val']:.4f}){steady}")
    print(f"wrote {path} and {summary_path(path)}")
    runtime.cleanup_distributed()
    return 0


# ---------------------------------------------------------------- sample
def add_sample(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "sample", cmd_sample, "generate text from a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by `train` (with --packed: a file written by `pack`)")
    p.add_argument("--packed", action="store_true", help="CHECKPOINT is a packed model written by `pack`")
    p.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=token_count, default=500, help=f"tokens to generate, 1 to {MAX_TOKENS:,}")
    p.add_argument("--temperature", type=finite_float(0, inclusive=True), default=1.0, help=">= 0; 0 = greedy")
    _add_seed(p)
    _add_device(p)


def cmd_sample(args: argparse.Namespace) -> int:
    from babybitnet.files import load_checkpoint, load_packed
    from babybitnet.runtime import resolve_device

    dev = resolve_device(args.device)
    model, tok, _ = (load_packed if args.packed else load_checkpoint)(args.checkpoint, device=dev)
    idx = torch.tensor([tok.encode(args.prompt or "\n")], dtype=torch.long, device=dev)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    print(tok.decode(idx[0].tolist()), end="", flush=True)
    # Stream: generate a chunk at a time and print it at once, so a long sample shows as it grows
    # (and Ctrl-C keeps what was printed). Each chunk continues from everything generated so far.
    left = args.max_new_tokens
    while left > 0:
        step = min(left, SAMPLE_CHUNK)
        out = model.generate(idx, max_new_tokens=step, temperature=args.temperature, generator=g)
        print(tok.decode(out[0, idx.shape[1] :].tolist()), end="", flush=True)
        idx, left = out[:, -model.config.block_size :], left - step
    print()
    return 0


# ---------------------------------------------------------------- pack
def add_pack(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "pack",
        cmd_pack,
        "pack a babyBitNet checkpoint's ternary weights into 2 or 1.6 bits per weight",
        description="Load a babyBitNet checkpoint written by `train`, store every BitLinear's ternary weights "
        "packed (2bit: 4 per byte; base3: 5 per byte) with their scales, and write it as a safetensors file. "
        "Prints checkpoint and packed sizes and writes a JSON summary to OUT with suffix .json.",
    )
    p.add_argument("checkpoint", help="a babyBitNet checkpoint written by `train --model bitnet`")
    p.add_argument("out", help="packed model file to write (safetensors), e.g. runs/bitnet.safetensors")
    p.add_argument("--format", choices=FORMATS, default="2bit", help="2bit: 2 bits per weight; base3: 1.6")


def cmd_pack(args: argparse.Namespace) -> int:
    from babybitnet.files import load_checkpoint, save_packed, write_json

    out = Path(args.out)
    summary = out.with_suffix(".json")
    if summary == out:
        raise ValueError(f"OUT must not end in .json (the summary goes to OUT with suffix .json): {out}")
    for path in (out, summary):
        check_not_same(path, args.checkpoint, "checkpoint")
    check_output_file(out, "OUT", "packed model")
    # e.g. `pack runs/m runs/m.safetensors`: the summary runs/m.json would replace train's summary of runs/m
    check_output_file(summary, "OUT", "pack summary")
    model, tok, meta = load_checkpoint(args.checkpoint)
    save_packed(out, model, tok, fmt=args.format, meta={**meta, "source": str(args.checkpoint)})
    ckpt_bytes, packed_bytes = Path(args.checkpoint).stat().st_size, out.stat().st_size
    r = {
        "checkpoint": str(args.checkpoint),
        "out": str(out),
        "format": args.format,
        "checkpoint_bytes": ckpt_bytes,
        "packed_bytes": packed_bytes,
        "ratio": ckpt_bytes / packed_bytes,
        "params": model.num_params(),
    }
    write_json(summary, r)
    print(f"checkpoint {args.checkpoint}: {ckpt_bytes:,} bytes")
    print(f"packed ({args.format}) {out}: {packed_bytes:,} bytes, {r['ratio']:.2f}x smaller")
    print(f"wrote {out} and {summary}")
    return 0


# ---------------------------------------------------------------- bench train | memory | matmul | kernel | generate
def add_bench(sub: argparse._SubParsersAction) -> None:
    bench = _command(sub, "bench", None, "time or measure things side by side in one run")
    what = bench.add_subparsers(dest="what", required=True, metavar="what", parser_class=_Parser)

    p = _command(what, "train", cmd_bench_train, "ms per training step, babyGPT vs babyBitNet")
    _add_preset(p)
    p.add_argument("--steps", type=positive_int, default=100, help="steps per timed round")
    _add_repeats(p, 5, "interleaved rounds per model")
    _add_device(p)
    _add_json_out(p, "runs/bench_train.json")

    p = _command(what, "memory", cmd_bench_memory, "bytes of a babyBitNet in fp32, fp16, 2-bit and base-3 files")
    p.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["seed", "nanogpt"], help="model sizes")
    _add_json_out(p, "runs/bench_memory.json")

    # CPU only (the add-only C++ kernel), so no --device
    p = _command(what, "matmul", cmd_bench_matmul, "time the add-only ternary matmul against a float matmul (N x N)")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[1024, 4096], help="square weight sizes N")
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8], help="rows of the input")
    _add_repeats(p, 20, "timed calls per case")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads, >= 1 (default: torch's)")
    _add_json_out(p, "runs/bench_matmul.json")

    # CUDA only (the Triton kernels), so no --device
    p = _command(
        what,
        "kernel",
        cmd_bench_kernel,
        "the packed layer (tuned per shape) vs cuBLAS bf16 / int8 on a CUDA GPU, batch 1 to 256, in one run",
    )
    p.add_argument(
        "--shapes",
        "--sizes",
        dest="sizes",
        type=weight_shape,
        nargs="+",
        default=None,
        help="weight shapes NxK (N outputs, K inputs), e.g. 8192x8192 (default: 2560x2560 to 28672x8192, 5 shapes; "
        "with --variants: lesson 13's)",
    )
    p.add_argument(
        "--batches",
        type=positive_int,
        nargs="+",
        default=None,
        help="tokens M (default: 1 8 32 128 256; --variants: 1 8)",
    )
    _add_repeats(p, 20, "timed graph replays per contender")
    _add_json_out(p, "runs/bench_kernel.json")
    p.add_argument(
        "--peers", action="store_true", help="also time gemlite's ternary layers (if `import gemlite` works)"
    )
    p.add_argument("--retune", action="store_true", help="forget the stored kernel choices and tune every shape again")
    p.add_argument(
        "--variants",
        action="store_true",
        help="lesson 13's study instead: every Triton kernel on its own, each trying every tile config",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="no timing: run each kernel and the tuned layer 3 times at the first size and batch, for a "
        'profiler (ncu --clock-control none -k regex:"dp4a|ternary|quantize" python -m babybitnet bench kernel '
        "--once --sizes 8192x8192 --batches 1; tune first: the same command without --once)",
    )

    p = _command(
        what,
        "generate",
        cmd_bench_generate,
        "tokens/s of greedy generation (KV cache, batch 1): babyGPT vs babyBitNet vs packed babyBitNet",
        description="Time greedy generation with the KV cache, batch 1, the same prompt, of babyGPT, babyBitNet "
        "and the 2-bit packed babyBitNet (on a CUDA GPU: the Triton kernel) of a preset, freshly initialised "
        "(seeded; speed does not depend on the weights). Prints a table and writes JSON.",
    )
    _add_preset(p, "nanogpt")
    p.add_argument("--tokens", type=token_count, default=200, help=f"new tokens per generation, 1 to {MAX_TOKENS:,}")
    p.add_argument("--prompt", default="ROMEO:", help="text to continue")
    _add_device(p)
    p.add_argument(  # inference only: float16 needs no loss scaling here, unlike in training
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="the models' dtype; default: bfloat16 on CUDA, else float32",
    )
    _add_repeats(p, 3, "interleaved timed rounds per model (median reported)")
    _add_compile(p, "off; on CUDA it fuses the graph-captured decode step, about a minute to compile")
    p.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads for both models (default: torch's, all cores)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="where a token's time goes, after the timed rounds: on the CPU ms per token by kind of module "
        "(forward hooks, --repeats more interleaved rounds); on CUDA GPU ms per token by kind of kernel "
        "(torch.profiler over the graph-captured generation: each kernel's share of the critical path)",
    )
    _add_json_out(p, "runs/bench_generate.json")


def cmd_bench_train(args: argparse.Namespace) -> int:
    from babybitnet.experiments.bench import bench_train
    from babybitnet.runtime import describe

    check_results_file(args.out)
    r = bench_train(preset=args.preset, steps=args.steps, repeats=args.repeats, device=args.device)
    ms = r["ms_per_step"]
    print(f"preset {args.preset!r} on {describe(r['machine'])}")
    print(f"babyGPT                      {ms['gpt']:.2f} ms per training step")
    print(f"babyBitNet                   {ms['bitnet']:.2f} ms per training step")
    print(f"seed-style babyGPT           {ms['seed_gpt']:.2f} ms per training step (a module per head, default AdamW)")
    print(f"babyBitNet / babyGPT            = {r['ratio_bitnet_over_gpt']:.2f}x")
    print(f"babyBitNet / seed-style babyGPT = {r['ratio_bitnet_over_seed_gpt']:.2f}x")
    print(f"(median of {args.repeats} interleaved rounds of {args.steps} steps)")
    write_results(args.out, r)
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from babybitnet.experiments.bench import memory_report, memory_table

    check_results_file(args.out)
    reports = [memory_report(preset=p) for p in args.presets]
    print(memory_table(reports))
    print("(bytes: real file sizes; fp32/fp16: torch.save of the state dict; 2bit/base3: save_packed)")
    write_results(args.out, reports)
    return 0


def cmd_bench_matmul(args: argparse.Namespace) -> int:
    from babybitnet.experiments.bench_kernels import bench_matmul, matmul_table

    check_results_file(args.out)
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    results = bench_matmul(sizes=tuple(args.sizes), batches=tuple(args.batches), repeats=args.repeats, threads=threads)
    print(matmul_table(results))
    write_results(args.out, results)
    return 0


def cmd_bench_kernel(args: argparse.Namespace) -> int:
    import inspect

    from babybitnet.experiments.bench_kernels import bench_kernel, bench_kernel_variants, kernel_table, run_once

    if not args.once:
        check_results_file(args.out)
    bench = bench_kernel_variants if args.variants or args.once else bench_kernel
    # no --sizes / --batches: the benchmark's own defaults (one list, there)
    defaults = inspect.signature(bench).parameters
    sizes = tuple(args.sizes or defaults["sizes"].default)
    batches = tuple(args.batches or defaults["batches"].default)
    (n, k), m = sizes[0], batches[0]
    try:
        if args.once:
            labels = run_once(n=n, k=k, m=m)
            print(f"ran {', '.join(labels)} 3 times each at {n}x{k}, M={m}")
            return 0
        if args.variants:
            results = bench_kernel_variants(sizes=sizes, batches=batches, repeats=args.repeats)
        else:
            results = bench_kernel(
                sizes=sizes, batches=batches, repeats=args.repeats, peers=args.peers, retune=args.retune
            )
    except RuntimeError as e:  # no CUDA GPU or no Triton: say so in one line
        raise ValueError(str(e)) from None
    print(kernel_table(results))
    write_results(args.out, results)
    return 0


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from babybitnet.experiments.bench import bench_generate, generate_table, profile_table
    from babybitnet.runtime import resolve_device

    check_results_file(args.out)
    dev = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    r = bench_generate(
        preset=args.preset,
        tokens=args.tokens,
        prompt=args.prompt,
        device=str(dev),
        dtype=dtype,
        repeats=args.repeats,
        compile=bool(args.compile),
        threads=args.threads,
        profile=args.profile,
    )
    print(generate_table(r))
    if args.profile:
        print(f"\n{profile_table(r)}")
        for name, top in r.get("top_kernels", {}).items():
            print(f"\n{name}: the longest kernels (ms per token on the critical path, calls per token)")
            for kernel, ms, calls in top:
                print(f"  {ms:8.4f}  {calls:6.1f}  {kernel}")
    write_results(args.out, r)
    return 0


# ---------------------------------------------------------------- check, lessons (the course)
def add_check(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "check", cmd_check, "grade your exercises of a lesson, one line per exercise")
    p.add_argument("lesson", type=positive_int, help="lesson number, e.g. 3 for lessons/03_*.py")
    p.add_argument("--lessons-dir", default=None, help="folder of the lessons to grade (default: lessons/)")
    p.add_argument("--timeout", type=finite_float(0, inclusive=False), default=None, metavar="S",
                   help="seconds each exercise may run (default: $BABYBITNET_CHECK_TIMEOUT, or 20)")  # fmt: skip


def cmd_check(args: argparse.Namespace) -> int:
    from babybitnet.course.check import check_lesson

    return check_lesson(args.lesson, lessons_dir=args.lessons_dir, timeout=args.timeout)


def add_lessons(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "lessons", cmd_lessons, "regenerate lessons/ from solutions/ (course authors)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if lessons/ is out of date")


def cmd_lessons(args: argparse.Namespace) -> int:
    from babybitnet.course.lessons import repo_root, sync_lessons

    root = repo_root("solutions")
    problems = sync_lessons(root / "solutions", root / "lessons", write=not args.check)
    for p in problems:
        print(p if args.check or p.what == "orphan" else f"wrote {p.path.relative_to(root)}")
    if args.check and problems:
        print("lessons/ is out of date: run `make lessons` (python -m babybitnet lessons)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- ablate
ABLATE_FILES = ("results.json", "table.md")


def add_ablate(sub: argparse._SubParsersAction) -> None:
    from babybitnet.experiments.ablation import STUDIES

    p = _command(
        sub,
        "ablate",
        cmd_ablate,
        "which change of the recipe gives how much: every variant over several seeds, CPU",
        description="Train every variant of a study (see babybitnet/experiments/ablation.py) once per seed on the "
        "CPU, in parallel worker processes of one thread each, and report mean +- std of the final val loss. "
        "The full 'ablation' study is 33 runs of 5000 steps, 2 to 4 minutes each on one core.",
    )
    p.add_argument("--study", choices=list(STUDIES), default="ablation", help="the recipe's changes, or peak LRs")
    # a count here (the seeds are 1337, 1338, ...), where finetune's --seeds lists the seeds themselves
    p.add_argument("--seeds", type=positive_int, default=3, help="how many seeds per variant: 1337, 1338, ...")
    _add_jobs(p, None, "default: one per CPU core")
    _add_iters(p, None)
    _add_eval_interval(p, 250)
    _add_text_or_data(p)
    _add_out(p, "runs/ablation", "folder for results.json and table.md")
    p.add_argument("--resume", action="store_true", help="keep the finished runs in OUT, train only the rest")
    _add_quiet(p)


def cmd_ablate(args: argparse.Namespace) -> int:
    from babybitnet.experiments.ablation import ablate, markdown_table
    from babybitnet.runtime import describe

    out = check_output_dir(args.out, "--out", ABLATE_FILES, resume=args.resume)
    check_data(args.text, args.data)
    results = ablate(
        study=args.study,
        seeds=args.seeds,
        jobs=args.jobs,
        iters=args.iters,
        eval_interval=args.eval_interval,
        out=out,
        text=args.text,
        data=args.data,
        progress=not args.quiet,
        resume=args.resume,
    )
    print(f"\nstudy {args.study!r}, {args.seeds} seeds, {results['jobs']} jobs on {describe(results['machine'])}\n")
    print(markdown_table(results["summary"]))
    print(f"wrote {out / 'results.json'} and table.md")
    return 0


# ---------------------------------------------------------------- ladder
def add_ladder(sub: argparse._SubParsersAction) -> None:
    from babybitnet.experiments.ladder import INITS

    p = _command(sub, "ladder", cmd_ladder, "from a bigram to babyGPT: train each rung the same way")
    _add_iters(p, 5000)
    _add_eval_iters(p, 200)
    _add_device(p)
    _add_seed(p)
    p.add_argument("--init", choices=INITS, default="torch", help="PyTorch's default init or N(0, 0.02)")
    _add_text_or_data(p)
    _add_out(p, "runs/ladder", "folder for ladder.json")
    _add_quiet(p)


def cmd_ladder(args: argparse.Namespace) -> int:
    from babybitnet.experiments.ladder import ladder, markdown_table
    from babybitnet.runtime import describe

    out = check_output_dir(args.out, "--out", ("ladder.json",))
    check_data(args.text, args.data)
    r = ladder(
        iters=args.iters,
        device=args.device,
        seed=args.seed,
        out=out,
        text=args.text,
        data=args.data,
        init=args.init,
        progress=not args.quiet,
        eval_iters=args.eval_iters,
    )
    print(f"\nladder on {describe(r['machine'])}, init {args.init!r}\n")
    print(markdown_table(r))
    print(f"wrote {out / 'ladder.json'}")
    return 0


# ---------------------------------------------------------------- finetune
FINETUNE_FILES = ("results.json", "table.md", "val_loss.png")


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "finetune",
        cmd_finetune,
        "babyGPT -> babyBitNet: gradual quantization vs the abrupt switch vs from scratch",
        description="Train babyGPT (recipe preset, bias=False) for S1 steps, convert it to babyBitNet and "
        "fine-tune S2 steps with the quantization strength ramped over --warmup steps (and, to compare, "
        "switched on at once), against babyBitNet trained from scratch for S1 + S2 steps; once per seed, "
        "with the mean +- std over seeds in the table.",
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="a trained babyGPT checkpoint (from `train --model gpt`, bias=False or --drop-biases): fine-tune "
        "it alone for S2 steps and write a babyBitNet checkpoint to OUT (a .pt path, or OUT/finetuned.pt); "
        "without it, run the whole comparison",
    )
    p.add_argument("--drop-biases", action="store_true", help="with CHECKPOINT: drop biases BitLinear has no room for")
    p.add_argument("--s1", type=positive_int, default=2500, help="babyGPT (full-precision) steps")
    p.add_argument("--s2", type=positive_int, default=2500, help="fine-tuning steps after the conversion")
    p.add_argument("--warmup", type=int_at_least(0), default=1000, help="steps over which lambda goes from 0 to 1")
    _add_device(p)
    p.add_argument(
        "--seeds", type=seed_int, nargs="+", default=[1337], help="random seeds, one run each (1337 is the preset's)"
    )
    p.add_argument(
        "--lr",
        type=finite_float(0, inclusive=False),
        default=None,
        help="the fine-tunes' peak LR; stage 2 uses half. Default: babyBitNet's recipe peak 3e-3 (stage 2 1.5e-3). "
        "The run from scratch always keeps the recipe's LR",
    )
    _add_eval_iters(p)
    _add_jobs(p, 1, "each seed is 2 tasks")
    _add_text_or_data(p)
    _add_out(p, "runs/finetune", "folder for results.json, table.md, val_loss.png (with CHECKPOINT: see there)")
    _add_quiet(p)


def cmd_finetune(args: argparse.Namespace) -> int:
    from babybitnet.experiments.finetune import compare_finetune, finetune_checkpoint, markdown_table
    from babybitnet.runtime import describe

    if args.checkpoint:  # fine-tune the learner's own babyGPT
        if len(args.seeds) > 1:
            raise ValueError(f"with CHECKPOINT, give one seed in --seeds (one fine-tune), got {args.seeds}")
        out = Path(args.out) if args.out.endswith(".pt") else Path(args.out) / "finetuned.pt"
        check_not_same(out, args.checkpoint, "checkpoint")
        check_output_file(out, "--out", "checkpoint")
        check_output_file(summary_path(out), "--out", "train summary")
        check_data(args.text, args.data)
        r = finetune_checkpoint(
            path=args.checkpoint,
            out=out,
            s2=args.s2,
            warmup=args.warmup,
            lr=args.lr,
            device=args.device,
            text=args.text,
            data=args.data,
            drop_biases=args.drop_biases,
            eval_iters=args.eval_iters,
            seed=args.seeds[0],
            progress=not args.quiet,
        )
        b, a = r["before"], r["after"]
        print(f"babyGPT {b['gpt']:.4f} -> converted at lambda=1 {b['converted, lam=1']:.4f} -> fine-tuned ", end="")
        print(f"{a['final_val']:.4f} (best {a['best_val']:.4f}) val loss; wrote {out} and {summary_path(out)}")
        return 0

    out = check_output_dir(args.out, "--out", FINETUNE_FILES)
    check_data(args.text, args.data)
    r = compare_finetune(
        s1=args.s1,
        s2=args.s2,
        warmup=args.warmup,
        device=args.device,
        seeds=args.seeds,
        out=out,
        text=args.text,
        data=args.data,
        progress=not args.quiet,
        eval_iters=args.eval_iters,
        jobs=args.jobs,
        lr=args.lr,
    )
    seeds = ", ".join(str(s) for s in r["seeds"])
    print(f"\nfine-tune (peak LR {r['lr']:g}), seeds {seeds}, {args.jobs} jobs on {describe(r['machine'])}\n")
    print(markdown_table(r))
    print(f"wrote {out / 'results.json'}, table.md and val_loss.png")
    return 0


# ---------------------------------------------------------------- scale
SCALE_FILES = ("results.json", "table.md", "scale.png")


def add_scale(sub: argparse._SubParsersAction) -> None:
    from babybitnet.experiments.scale import BATCH_SIZE, ITERS, OVERFIT_MARGIN, SIZES

    p = _command(
        sub,
        "scale",
        cmd_scale,
        "train both models at sizes from 0.2M to 25M parameters: does the gap close as they grow?",
        description="Train babyGPT and babyBitNet (the recipe preset's settings) at every size of "
        "babybitnet/experiments/scale.py with the same tokens per run (block 256, --batch-size windows, --iters "
        "steps or --epochs passes over the training split), and report each run's best and final val loss and "
        "the gap babyBitNet - babyGPT (mean +- std over --seeds). Tiny Shakespeare is small enough for the large "
        "sizes to overfit it: they get dropout and stop early (--patience). A prepared corpus (--data, from "
        "`prepare`, e.g. `prepare stdlib --tokenizer bpe --vocab-size 2048`) with --epochs 1 to 2 measures them "
        f"without that caveat; a run whose final val loss ends over {OVERFIT_MARGIN:g} above its best is flagged "
        "as overfit. Meant for GPUs (bfloat16 and torch.compile by default there; --jobs N trains N runs at once, "
        "one GPU each, round-robin). results.json, table.md and scale.png are rewritten after every run; --resume "
        "carries on.",
    )
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="sizes to train")
    p.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="gpt = babyGPT, bitnet = babyBitNet"
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=positive_int, default=None, help=f"training steps per run (default: {ITERS})")
    budget.add_argument(
        "--epochs",
        type=finite_float(0, inclusive=False),
        default=None,
        help="the step budget as passes over the training split: iters = ceil(E x train tokens / (batch x 256))",
    )
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help="windows of 256 tokens per step")
    p.add_argument("--seeds", type=positive_int, default=1, help="runs per size and model, seeds SEED, SEED + 1, ...")
    _add_eval_iters(p, 100)
    p.add_argument(
        "--patience",
        type=int_at_least(0),
        default=4,
        help="stop a run after this many evaluations without a new best (0: off)",
    )
    p.add_argument(
        "--dropout",
        type=finite_float(0, inclusive=True),
        default=None,
        help="dropout for every size, e.g. 0 on a corpus read once or twice (default: each size's own, 0 to 0.2)",
    )
    _add_text_or_data(p)
    _add_device(p)
    _add_jobs(p, 1, "runs at once (CUDA: one GPU each, round-robin)")
    _add_out(p, "runs/scale", "folder for results.json, table.md, scale.png")
    p.add_argument("--resume", action="store_true", help="keep the finished runs in OUT, train only the rest")
    _add_seed(p)
    _add_dtype(p, "bfloat16 on CUDA, else float32")
    _add_compile(p, "on for CUDA, off elsewhere")
    _add_quiet(p)


def cmd_scale(args: argparse.Namespace) -> int:
    from babybitnet.experiments.scale import markdown_table, scale
    from babybitnet.runtime import describe

    out = check_output_dir(args.out, "--out", SCALE_FILES, resume=args.resume)
    check_data(args.text, args.data)
    r = scale(
        sizes=args.sizes,
        models=args.models,
        iters=args.iters,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=args.seeds,
        dropout=args.dropout,
        text=args.text,
        data=args.data,
        device=args.device,
        jobs=args.jobs,
        out=out,
        resume=args.resume,
        dtype=args.dtype,
        compile=args.compile,
        seed=args.seed,
        eval_iters=args.eval_iters,
        patience=args.patience,
        progress=not args.quiet,
    )
    budget = f"{r['iters']:,} steps, {r['tokens_per_run']:,} tokens ({r['epochs_per_run']:.3g} epochs) per run"
    print(f"\nscale study, {budget}, {r['seeds']} seed(s), on {describe(r['machine'])}\n")
    print(markdown_table(r))
    print(f"wrote {out / 'results.json'}, table.md and scale.png")
    return 0


# ---------------------------------------------------------------- prepare
PREPARE_FILES = ("train.bin", "val.bin", "meta.json")


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "prepare",
        cmd_prepare,
        "tokenize a text file or folder into token files that train reads from disk (--data)",
        description="Train a tokenizer on a corpus (a UTF-8 text file, a folder of them, or 'stdlib': the Python "
        "standard library's source, about 12.6 MB) and write OUT/train.bin and OUT/val.bin (the first 90% and the "
        "rest, by bytes; uint16 ids, uint32 past 65,536 tokens) and OUT/meta.json (the tokenizer, the token counts "
        "and which files, their size and sha256). Then: `python -m babybitnet train --data OUT ...`.",
    )
    p.add_argument("corpus", metavar="TEXT_FILE_OR_DIR", help="a UTF-8 text file, a folder of them, or 'stdlib'")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char", help="characters, or a byte-level BPE")
    p.add_argument(
        "--vocab-size", type=int_at_least(257), default=None, help="bpe: tokens in the vocabulary, >= 257 (e.g. 4096)"
    )
    p.add_argument("--out", required=True, help="folder to write train.bin, val.bin and meta.json into")


def cmd_prepare(args: argparse.Namespace) -> int:
    from babybitnet.prepare import prepare

    if args.tokenizer == "bpe" and args.vocab_size is None:
        args.parser.error("--tokenizer bpe needs --vocab-size N (>= 257, e.g. 4096)")
    if args.tokenizer == "char" and args.vocab_size is not None:
        args.parser.error(
            "--vocab-size is for --tokenizer bpe (a char tokenizer's vocabulary is the corpus's characters)"
        )
    out = check_output_dir(args.out, "--out", PREPARE_FILES)
    meta = prepare(args.corpus, out, args.tokenizer, args.vocab_size)
    c, n = meta["corpus"], meta["tokens"]
    print(f"{args.corpus}: {len(c['files']):,} files, {c['bytes']:,} bytes (sha256 {c['sha256'][:12]})")
    kind, size, dtype = meta["tokenizer_kind"], meta["vocab_size"], meta["dtype"]
    print(f"{kind} tokenizer, {size:,} tokens: {n['train']:,} train and {n['val']:,} val {dtype} ids")
    print(f"wrote {out / 'train.bin'}, val.bin and meta.json; train with `python -m babybitnet train --data {out} ...`")
    return 0


# ---------------------------------------------------------------- convert-hf
def add_convert_hf(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "convert-hf",
        cmd_convert_hf,
        "convert a Hugging Face BitNet checkpoint folder (config.json + *.safetensors) into a packed babyBitNet",
        description="Read a transformers BitNet checkpoint (the packed uint8 weights with weight_scale of "
        "microsoft/bitnet-b1.58-2B-4T, or the bf16 master weights of its -bf16 variant) into babyBitNet's 2B4T "
        "block, pack it and write it as our safetensors file; a tokenizer.json is copied beside it "
        "(OUT.tokenizer.json). Nothing is downloaded: DIR must hold the files.",
    )
    p.add_argument("dir", help="checkpoint folder, e.g. a download of microsoft/bitnet-b1.58-2B-4T")
    p.add_argument("out", help="packed model file to write, e.g. runs/bitnet2b.safetensors")
    p.add_argument("--format", choices=FORMATS, default="2bit", help="2bit: 2 bits per weight; base3: 1.6")


def cmd_convert_hf(args: argparse.Namespace) -> int:
    from babybitnet.hf import convert_hf

    if not Path(args.dir).is_dir():
        raise FileNotFoundError(f"no checkpoint folder {args.dir} (it must hold config.json and *.safetensors)")
    out = check_output_file(args.out, "out", "packed model")
    path = convert_hf(args.dir, out, args.format)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- grpo
GRPO_FILES = ("results.json", "table.md", "reward.png")
GRPO_MODELS = ("gpt", "bitnet", "finetuned")  # babybitnet.experiments.grpo.MODELS, without importing it for --help
GRPO_TASKS = ("reverse", "sort")  # babybitnet.grpo.TASKS (tests/test_cli.py checks that both lists agree)


def add_grpo(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "grpo",
        cmd_grpo,
        "reinforcement learning with GRPO: babyGPT vs babyBitNet vs a fine-tuned babyBitNet, CPU",
        description="Per model and seed: a short supervised warm-up on the task (the same number of steps for "
        "all; 'finetuned' spends half as babyGPT, then converts it and fine-tunes with lesson 14's gradual "
        "quantization), then GRPO for ITERS steps: a group of samples per prompt, the reward of each against "
        "its group's, the clipped ratio and a KL penalty to the warmed-up model. Writes the mean reward per "
        "step, the reward before and after on held-out prompts, mean +- std over the seeds, and a plot.",
    )
    p.add_argument("--model", nargs="+", choices=GRPO_MODELS, default=list(GRPO_MODELS), help="the policies to train")
    p.add_argument("--task", choices=GRPO_TASKS, default="reverse", help="what the model must do with the letters")
    # a count (the seeds are 1337, 1338, ...), as in ablate
    p.add_argument("--seeds", type=positive_int, default=3, help="HOW MANY seeds per model (1337, 1338, ...)")
    p.add_argument("--iters", type=positive_int, default=150, help="GRPO steps")
    p.add_argument("--warmup-steps", type=int_at_least(2), default=60, help="supervised steps before GRPO")
    p.add_argument("--group-size", type=positive_int, default=8, help="samples per prompt (G)")
    _add_jobs(p, 1, "one run (model and seed) each")
    _add_out(p, "runs/grpo", "folder for results.json, table.md, reward.png")
    _add_quiet(p)


def cmd_grpo(args: argparse.Namespace) -> int:
    from babybitnet.experiments.grpo import grpo_study, markdown_table
    from babybitnet.runtime import describe

    out = check_output_dir(args.out, "--out", GRPO_FILES)
    torch.set_num_threads(1)  # tiny models: one thread each, the runs side by side with --jobs
    r = grpo_study(
        models=args.model,
        seeds=[1337 + i for i in range(args.seeds)],
        iters=args.iters,
        out=out,
        warmup_steps=args.warmup_steps,
        task=args.task,
        group_size=args.group_size,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    seeds = f"{args.seeds} seed{'s' * (args.seeds > 1)}"
    print(f"\ngrpo on '{args.task}', {seeds}, {args.jobs} jobs on {describe(r['machine'])}\n")
    print(markdown_table(r))
    print(f"wrote {out / 'results.json'}, table.md and reward.png")
    return 0


# ---------------------------------------------------------------- the parser and main
COMMANDS = (add_compare, add_train, add_sample, add_pack, add_bench, add_check, add_lessons,
            add_ablate, add_ladder, add_finetune, add_scale, add_grpo, add_convert_hf, add_prepare)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="BitNet b1.58 from scratch: babyGPT vs babyBitNet.")
    p.add_argument("--debug", action="store_true", help="on an error, show the traceback (or BABYBITNET_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a mistake of the user's or a problem of the machine, said in words: no traceback."""
    from babybitnet.course.lessons import CourseError

    # OSError: missing files, folders, permissions, a full disk; ModuleNotFoundError: an optional package missing
    return (ValueError, OSError, CourseError, ModuleNotFoundError, torch.OutOfMemoryError)


def one_line(e: BaseException) -> str:
    """The first line of the error's message (the system's own OSErrors as 'path: reason')."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e).strip() or type(e).__name__
    lines = text.splitlines()
    return lines[0] + (" (the rest with --debug)" if len(lines) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # said by the command's parser: `babybitnet train: error: unrecognized arguments: --fast`
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = args.debug or os.environ.get("BABYBITNET_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"babybitnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        if debug:
            raise
        print(f"babybitnet {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
