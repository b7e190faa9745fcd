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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from babybitnet.presets import MODELS, PRESETS

DEVICES = ("auto", "cpu", "cuda", "mps")


def write_json(path: str, results: object) -> None:
    """Write ``results`` as JSON to ``path`` (folders made as needed) and say so; ``''`` writes nothing."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2))
        print(f"wrote {path}")


def cmd_compare(args: argparse.Namespace) -> int:
    from babybitnet.bench import describe
    from babybitnet.compare import compare, markdown_table

    results = compare(
        args.preset,
        args.iters,
        args.device,
        args.seed,
        args.out,
        args.text,
        progress=not args.quiet,
        dtype=args.dtype,
        compile=args.compile,
    )
    print(f"\npreset {args.preset!r} on {describe(results['machine'])}\n")
    print(markdown_table(results))
    print(f"wrote {Path(args.out) / 'results.json'}, table.md and loss_curves.png")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from babybitnet import distributed
    from babybitnet.checkpoint import save_checkpoint
    from babybitnet.data import load_dataset
    from babybitnet.presets import build_model
    from babybitnet.train import resolve_device, train

    dev = distributed.init(resolve_device(args.device))  # under torchrun: join the others, take a GPU each
    tok, train_data, val_data = load_dataset(args.text)
    model, tcfg = build_model(
        args.preset,
        args.model,
        tok.vocab_size,
        max_iters=args.iters,
        seed=args.seed,
        dtype=args.dtype,
        compile=args.compile,
    )
    r = train(model, train_data, val_data, tcfg, dev, progress=not args.quiet, desc=args.model)
    if not distributed.is_main():  # every process holds the same model: rank 0 writes it
        distributed.cleanup()
        return 0
    meta = {"preset": args.preset, "train_config": tcfg.to_dict(), "device": str(dev), "torch": torch.__version__}
    meta["processes"] = r["processes"]
    meta.update({k: r[k] for k in ("final_val", "best_val", "final_train", "iters", "ms_per_step")})
    path = save_checkpoint(args.out, model, tok, meta)
    Path(str(path) + ".json").write_text(json.dumps({**meta, "params": r["params"], "history": r["history"]}, indent=2))
    print(f"{args.model}: {r['params']:,} parameters, val loss {r['final_val']:.4f} (best {r['best_val']:.4f})")
    print(f"wrote {path} and {path}.json")
    distributed.cleanup()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from babybitnet.checkpoint import load_checkpoint
    from babybitnet.packed import load_packed
    from babybitnet.train import resolve_device

    dev = resolve_device(args.device)
    model, tok, _ = (load_packed if args.packed else load_checkpoint)(args.checkpoint, dev)
    prompt = args.prompt if args.prompt else "\n"
    idx = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=dev)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, generator=g)
    print(tok.decode(out[0]))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from babybitnet.bench import bench_train, describe

    r = bench_train(args.preset, args.steps, args.repeats, device=args.device)
    ms = r["ms_per_step"]
    print(f"preset {args.preset!r} on {describe(r['machine'])}")
    print(f"babyGPT                      {ms['gpt']:.2f} ms per training step")
    print(f"babyBitNet                   {ms['bitnet']:.2f} ms per training step")
    print(f"seed-style babyGPT           {ms['seed_gpt']:.2f} ms per training step (a module per head, default AdamW)")
    print(f"babyBitNet / babyGPT            = {r['ratio_bitnet_over_gpt']:.2f}x")
    print(f"babyBitNet / seed-style babyGPT = {r['ratio_bitnet_over_seed_gpt']:.2f}x")
    print(f"(median of {args.repeats} interleaved rounds of {args.steps} steps)")
    write_json(args.out, r)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from babybitnet.checkpoint import load_checkpoint
    from babybitnet.packed import save_packed

    out = Path(args.out)
    summary_path = out.with_suffix(".json")
    if summary_path == out:
        raise ValueError(f"OUT must not end in .json (the summary goes to OUT with suffix .json): {out}")
    model, tok, meta = load_checkpoint(args.checkpoint)
    save_packed(out, model, tok, args.format, meta={**meta, "source": str(args.checkpoint)})
    ckpt_bytes, packed_bytes = Path(args.checkpoint).stat().st_size, out.stat().st_size
    summary = {
        "checkpoint": str(args.checkpoint),
        "out": str(out),
        "format": args.format,
        "checkpoint_bytes": ckpt_bytes,
        "packed_bytes": packed_bytes,
        "ratio": ckpt_bytes / packed_bytes,
        "params": model.num_params(),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    print(f"checkpoint {args.checkpoint}: {ckpt_bytes:,} bytes")
    print(f"packed ({args.format}) {out}: {packed_bytes:,} bytes, {summary['ratio']:.2f}x smaller")
    print(f"wrote {out} and {summary_path}")
    return 0


def cmd_bench_memory(args: argparse.Namespace) -> int:
    from babybitnet.packed import memory_report, memory_table

    reports = [memory_report(p) for p in args.presets]
    print(memory_table(reports))
    print("(bytes: real file sizes; fp32/fp16: torch.save of the state dict; 2bit/base3: save_packed)")
    write_json(args.out, reports)
    return 0


def cmd_bench_matmul(args: argparse.Namespace) -> int:
    import torch

    from babybitnet.addonly import bench_matmul, matmul_table

    threads = args.threads if args.threads is not None else torch.get_num_threads()
    results = bench_matmul(args.sizes, args.batches, args.repeats, threads)
    print(matmul_table(results))
    write_json(args.out, results)
    return 0


def cmd_bench_kernel(args: argparse.Namespace) -> int:
    from babybitnet.triton_gemv import bench_kernel, kernel_table, run_once

    try:
        sizes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.sizes)
    except ValueError:
        raise ValueError(f"--sizes takes shapes like 4096x4096 (N outputs x K inputs), got {args.sizes}") from None
    try:
        if args.once:
            labels = run_once(*sizes[0], args.batches[0])
            print(f"ran {', '.join(labels)} 3 times each at {sizes[0][0]}x{sizes[0][1]}, M={args.batches[0]}")
            return 0
        results = bench_kernel(sizes, tuple(args.batches), args.repeats)
    except RuntimeError as e:  # no CUDA GPU: one line, not a traceback
        raise ValueError(str(e)) from None
    print(kernel_table(results))
    write_json(args.out, results)
    return 0


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from babybitnet.bench import bench_generate, generate_table
    from babybitnet.train import resolve_device

    dev = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    r = bench_generate(args.preset, args.tokens, args.prompt, str(dev), dtype, args.repeats)
    print(generate_table(r))
    write_json(args.out, r)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from babybitnet.ablation import ablate, markdown_table
    from babybitnet.bench import describe

    results = ablate(
        args.study, args.seeds, args.jobs, args.iters, args.eval_interval, args.out, args.text, not args.quiet
    )
    print(f"\nstudy {args.study!r}, {args.seeds} seeds, {results['jobs']} jobs on {describe(results['machine'])}\n")
    print(markdown_table(results["summary"]))
    print(f"wrote {Path(args.out) / 'results.json'} and table.md")
    return 0


def cmd_ladder(args: argparse.Namespace) -> int:
    from babybitnet.bench import describe
    from babybitnet.ladder import ladder, markdown_table

    r = ladder(
        args.iters,
        args.device,
        args.seed,
        args.out,
        args.text,
        init=args.init,
        progress=not args.quiet,
        eval_iters=args.eval_iters,
    )

    print(f"\nladder on {describe(r['machine'])}, init {args.init!r}\n")
    print(markdown_table(r))
    print(f"wrote {Path(args.out) / 'ladder.json'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from babybitnet.bench import describe
    from babybitnet.finetune import compare_finetune, finetune_checkpoint, markdown_table

    if args.checkpoint:  # fine-tune the learner's own babyGPT
        out = args.out if args.out.endswith(".pt") else str(Path(args.out) / "finetuned.pt")
        r = finetune_checkpoint(
            args.checkpoint, out, args.s2, args.warmup, args.lr, args.device, args.text,
            args.drop_biases, args.eval_iters, args.seeds[0], not args.quiet,
        )  # fmt: skip
        b, a = r["before"], r["after"]
        print(f"babyGPT {b['gpt']:.4f} -> converted at lambda=1 {b['converted, lam=1']:.4f} -> fine-tuned ", end="")
        print(f"{a['final_val']:.4f} (best {a['best_val']:.4f}) val loss; wrote {out} and {out}.json")
        return 0

    r = compare_finetune(
        args.s1,
        args.s2,
        args.warmup,
        args.device,
        seeds=args.seeds,
        out=args.out,
        text=args.text,
        progress=not args.quiet,
        eval_iters=args.eval_iters,
        jobs=args.jobs,
        lr=args.lr,
    )
    seeds = ", ".join(str(s) for s in r["seeds"])
    print(f"\nfine-tune (peak LR {r['lr']:g}), seeds {seeds}, {args.jobs} jobs on {describe(r['machine'])}\n")
    print(markdown_table(r))
    print(f"wrote {Path(args.out) / 'results.json'}, table.md and val_loss.png")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from babybitnet.bench import describe
    from babybitnet.scale import markdown_table, scale

    r = scale(
        args.sizes,
        args.models,
        args.iters,
        args.text,
        args.device,
        args.jobs,
        args.out,
        args.resume,
        dtype=args.dtype,
        compile=args.compile,
        seed=args.seed,
        eval_iters=args.eval_iters,
        patience=args.patience,
        progress=not args.quiet,
    )
    print(f"\nscale study, {r['tokens_per_run']:,} tokens per run, on {describe(r['machine'])}\n")
    print(markdown_table(r))
    print(f"wrote {Path(args.out) / 'results.json'}, table.md and scale.png")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from babybitnet.course import CourseError, check_lesson

    try:
        return check_lesson(args.lesson, args.lessons_dir)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_lessons(args: argparse.Namespace) -> int:
    from babybitnet.course import CourseError, repo_root, sync_lessons

    try:
        root = repo_root("solutions")
        problems = sync_lessons(root / "solutions", root / "lessons", write=not args.check)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p if args.check or p.what == "orphan" else f"wrote {p.path.relative_to(root)}")
    if args.check and problems:
        print("lessons/ is out of date: run `make lessons` (python -m babybitnet lessons)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m babybitnet", description="BitNet b1.58 from scratch: babyGPT vs babyBitNet."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def common(sp: argparse.ArgumentParser, iters_help: str = "training steps (default: the preset's)") -> None:
        sp.add_argument("--preset", choices=sorted(PRESETS), default="seed", help="model size and training recipe")
        sp.add_argument("--iters", type=int, default=None, help=iters_help)
        sp.add_argument("--device", choices=DEVICES, default="auto", help="where to train; auto picks cuda, mps, cpu")
        sp.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's, 1337)")
        sp.add_argument("--text", default=None, help="a UTF-8 text file to train on instead of Tiny Shakespeare")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        sp.add_argument(
            "--dtype", choices=("float32", "bfloat16"), default=None, help="bfloat16: autocast (GPUs; default float32)"
        )
        sp.add_argument(
            "--compile", action="store_const", const=True, default=None, help="torch.compile the model (GPUs)"
        )

    sp = sub.add_parser("compare", help="train babyGPT and babyBitNet side by side", formatter_class=fmt)
    common(sp)
    sp.add_argument("--out", default="runs/compare", help="folder for results.json, table.md, loss_curves.png")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("train", help="train one model and save a checkpoint", formatter_class=fmt)
    common(sp)
    sp.add_argument("--model", choices=MODELS, required=True, help="gpt = babyGPT, bitnet = babyBitNet")
    sp.add_argument("--out", required=True, help="checkpoint path to write (a .json summary is written beside it)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("sample", help="generate text from a checkpoint", formatter_class=fmt)
    sp.add_argument("checkpoint", help="a checkpoint written by `train` (with --packed: a file written by `pack`)")
    sp.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    sp.add_argument("--max-new-tokens", type=int, default=500)
    sp.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    sp.add_argument("--seed", type=int, default=1337)
    sp.add_argument("--device", choices=DEVICES, default="cpu")
    sp.add_argument("--packed", action="store_true", help="CHECKPOINT is a packed model written by `pack`")
    sp.set_defaults(func=cmd_sample)

    sp = sub.add_parser(
        "pack",
        help="pack a babyBitNet checkpoint's ternary weights into 2 or 1.6 bits per weight",
        description="Load a babyBitNet checkpoint written by `train`, store every BitLinear's ternary weights "
        "packed (2bit: 4 per byte; base3: 5 per byte) with their scales, and write it as a safetensors file. "
        "Prints checkpoint and packed sizes and writes a JSON summary to OUT with suffix .json.",
        formatter_class=fmt,
    )
    sp.add_argument("checkpoint", help="a babyBitNet checkpoint written by `train --model bitnet`")
    sp.add_argument("out", help="packed model file to write (safetensors), e.g. runs/bitnet.safetensors")
    sp.add_argument("--format", choices=("2bit", "base3"), default="2bit", help="2 or 1.6 bits per weight")
    sp.set_defaults(func=cmd_pack)

    sp = sub.add_parser("bench", help="time or measure things side by side in one run", formatter_class=fmt)
    bsub = sp.add_subparsers(dest="what", required=True, metavar="what")
    bt = bsub.add_parser("train", help="ms per training step, babyGPT vs babyBitNet", formatter_class=fmt)
    bt.add_argument("--preset", choices=sorted(PRESETS), default="seed")
    bt.add_argument("--steps", type=int, default=100, help="steps per timed round")
    bt.add_argument("--repeats", type=int, default=5, help="interleaved rounds per model")
    bt.add_argument("--device", choices=DEVICES, default="cpu")
    bt.add_argument("--out", default="runs/bench_train.json", help="JSON results file ('' for none)")
    bt.set_defaults(func=cmd_bench)
    bm = bsub.add_parser(
        "memory", help="bytes of a babyBitNet in fp32, fp16, 2-bit and base-3 packed files", formatter_class=fmt
    )
    bm.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["seed", "nanogpt"])
    bm.add_argument("--out", default="runs/bench_memory.json", help="JSON results file ('' for none)")
    bm.set_defaults(func=cmd_bench_memory)
    bx = bsub.add_parser(
        "matmul", help="time the add-only ternary matmul against a float matmul (N x N)", formatter_class=fmt
    )
    bx.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="square weight sizes N")
    bx.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="rows of the input")
    bx.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    bx.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    bx.add_argument("--out", default="runs/bench_matmul.json", help="JSON results file ('' for none)")
    bx.set_defaults(func=cmd_bench_matmul)

    sp = sub.add_parser("check", help="grade your exercises of a lesson, one line per exercise", formatter_class=fmt)
    sp.add_argument("lesson", type=int, help="lesson number, e.g. 3 for lessons/03_*.py")
    sp.add_argument("--lessons-dir", default=None, help="folder of the lessons to grade (default: lessons/)")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("lessons", help="regenerate lessons/ from solutions/ (course authors)", formatter_class=fmt)
    sp.add_argument("--check", action="store_true", help="change nothing; exit 1 if lessons/ is out of date")
    sp.set_defaults(func=cmd_lessons)

    bk = bsub.add_parser(
        "kernel", help="the Triton 2-bit GEMV vs torch bf16/fp16 on a CUDA GPU, in one run", formatter_class=fmt
    )
    bk.add_argument(
        "--sizes",
        nargs="+",
        default=["2560x2560", "4096x4096", "8192x8192", "13824x2560", "20480x3200"],
        help="weight shapes NxK (N outputs, K inputs)",
    )
    bk.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="tokens M")
    bk.add_argument("--repeats", type=int, default=30, help="timed graph replays per contender")
    bk.add_argument("--out", default="runs/bench_kernel.json", help="JSON results file ('' for none)")
    bk.add_argument(
        "--once",
        action="store_true",
        help="no timing: run each kernel 3 times at the first size and batch, for a profiler "
        '(ncu --clock-control none -k regex:"dp4a|ternary_gemv" python -m babybitnet bench kernel --once '
        "--sizes 8192x8192)",
    )
    bk.set_defaults(func=cmd_bench_kernel)
    bg = bsub.add_parser(
        "generate",
        help="tokens/s of greedy generation (KV cache, batch 1): babyGPT vs babyBitNet vs packed babyBitNet",
        description="Time greedy generation with the KV cache, batch 1, the same prompt, of babyGPT, babyBitNet "
        "and the 2-bit packed babyBitNet (on a CUDA GPU: the Triton kernel) of a preset, freshly initialised "
        "(seeded; speed does not depend on the weights). Prints a table and writes JSON.",
        formatter_class=fmt,
    )
    bg.add_argument("--preset", choices=sorted(PRESETS), default="nanogpt", help="model size")
    bg.add_argument("--tokens", type=int, default=200, help="new tokens per generation")
    bg.add_argument("--prompt", default="ROMEO:", help="text to continue")
    bg.add_argument("--device", choices=DEVICES, default="auto", help="auto picks cuda, mps, cpu")
    bg.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="the models' dtype (default: bfloat16 on CUDA, else float32)",
    )
    bg.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per model (median reported)")
    bg.add_argument("--out", default="runs/bench_generate.json", help="JSON results file ('' for none)")
    bg.set_defaults(func=cmd_bench_generate)

    sp = sub.add_parser(
        "ablate",
        help="which change of the recipe gives how much: every variant over several seeds, CPU",
        description="Train every variant of a study (see babybitnet/ablation.py) once per seed on the CPU, "
        "in parallel worker processes of one thread each, and report mean +- std of the final val loss. "
        "The full 'ablation' study is 33 runs of 5000 steps, 2 to 4 minutes each on one core.",
        formatter_class=fmt,
    )
    sp.add_argument("--study", choices=("ablation", "lr_sweep"), default="ablation")
    sp.add_argument("--seeds", type=int, default=3, help="seeds per variant (1337, 1338, ...)")
    sp.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per CPU core)")
    sp.add_argument("--iters", type=int, default=None, help="training steps per run (default: the preset's, 5000)")
    sp.add_argument("--eval-interval", type=int, default=250, help="steps between loss estimates")
    sp.add_argument("--text", default=None, help="a UTF-8 text file to train on instead of Tiny Shakespeare")
    sp.add_argument("--out", default="runs/ablation", help="folder for results.json and table.md")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_ablate)

    sp = sub.add_parser("ladder", help="from a bigram to babyGPT: train each rung the same way", formatter_class=fmt)
    sp.add_argument("--iters", type=int, default=5000, help="training steps per rung")
    sp.add_argument("--device", choices=DEVICES, default="auto", help="where to train; auto picks cuda, mps, cpu")
    sp.add_argument("--seed", type=int, default=1337, help="random seed (model weights and batches)")
    sp.add_argument("--init", choices=("torch", "gpt"), default="torch", help="PyTorch's default init or N(0, 0.02)")
    sp.add_argument("--eval-iters", type=int, default=200, help="batches per split in each loss estimate")
    sp.add_argument("--text", default=None, help="a UTF-8 text file to train on instead of Tiny Shakespeare")
    sp.add_argument("--out", default="runs/ladder", help="folder for ladder.json")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_ladder)

    sp = sub.add_parser(
        "finetune",
        help="babyGPT -> babyBitNet: gradual quantization vs the abrupt switch vs from scratch",
        description="Train babyGPT (recipe preset, bias=False) for S1 steps, convert it to babyBitNet and "
        "fine-tune S2 steps with the quantization strength ramped over --warmup steps (and, to compare, "
        "switched on at once), against babyBitNet trained from scratch for S1 + S2 steps; once per seed, "
        "with the mean +- std over seeds in the table.",
        formatter_class=fmt,
    )
    sp.add_argument(
        "checkpoint",
        nargs="?",
        help="a trained babyGPT checkpoint (from `train --model gpt`, bias=False or --drop-biases): fine-tune "
        "it alone for S2 steps and write a babyBitNet checkpoint to OUT (a .pt path, or OUT/finetuned.pt); "
        "without it, run the whole comparison",
    )
    sp.add_argument("--drop-biases", action="store_true", help="with CHECKPOINT: drop biases BitLinear has no room for")
    sp.add_argument("--s1", type=int, default=2500, help="babyGPT (full-precision) steps")
    sp.add_argument("--s2", type=int, default=2500, help="fine-tuning steps after the conversion")
    sp.add_argument("--warmup", type=int, default=1000, help="steps over which lambda goes from 0 to 1")
    sp.add_argument("--device", choices=DEVICES, default="auto", help="where to train; auto picks cuda, mps, cpu")
    sp.add_argument(
        "--seeds", type=int, nargs="+", default=[1337], help="random seeds, one run each (1337 is the preset's)"
    )
    sp.add_argument(
        "--lr",
        type=float,
        default=None,
        help="the fine-tunes' peak LR; stage 2 uses half. None: babyBitNet's recipe peak 3e-3 (stage 2 1.5e-3). "
        "The run from scratch always keeps the recipe's LR",
    )
    sp.add_argument("--eval-iters", type=int, default=None, help="batches per split per loss estimate (default 200)")
    sp.add_argument("--jobs", type=int, default=1, help="worker processes (any number >= 1); each seed is 2 tasks")
    sp.add_argument("--text", default=None, help="a UTF-8 text file to train on instead of Tiny Shakespeare")
    sp.add_argument("--out", default="runs/finetune", help="folder for results.json, table.md, val_loss.png")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_finetune)

    from babybitnet.scale import SIZES

    sp = sub.add_parser(
        "scale",
        help="train both models at sizes from 0.2M to 25M parameters: does the gap close as they grow?",
        description="Train babyGPT and babyBitNet (the recipe preset's settings) at every size of "
        "babybitnet/scale.py with the same tokens per run (block 256, batch 64, ITERS steps), and report "
        "each run's best val loss and the gap babyBitNet - babyGPT. Tiny Shakespeare is small enough for the "
        "large sizes to overfit it: they get dropout and stop early (--patience); --text takes a larger corpus. "
        "Meant for GPUs (bfloat16 and torch.compile by default there; --jobs N trains N runs at once, one GPU "
        "each). results.json, table.md and scale.png are rewritten after every run; --resume carries on.",
        formatter_class=fmt,
    )
    sp.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES), help="sizes to train")
    sp.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="gpt = babyGPT, bitnet = babyBitNet"
    )
    sp.add_argument("--iters", type=int, default=2500, help="training steps per run (the same for every size)")
    sp.add_argument("--text", default=None, help="a UTF-8 text file to train on instead of Tiny Shakespeare")
    sp.add_argument("--device", choices=DEVICES, default="auto", help="where to train; auto picks cuda, mps, cpu")
    sp.add_argument("--jobs", type=int, default=1, help="runs at once in worker processes (CUDA: one GPU each)")
    sp.add_argument("--out", default="runs/scale", help="folder for results.json, table.md, scale.png")
    sp.add_argument("--resume", action="store_true", help="keep the finished runs in OUT, train only the rest")
    sp.add_argument("--seed", type=int, default=1337, help="random seed (model weights and batches)")
    sp.add_argument("--eval-iters", type=int, default=100, help="batches per split in each loss estimate")
    sp.add_argument(
        "--patience", type=int, default=4, help="stop a run after this many evaluations without a new best (0: off)"
    )
    sp.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default=None, help="None: bfloat16 on CUDA, else float32"
    )
    sp.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the models (None: on for CUDA, off elsewhere)",
    )
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_scale)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        # Errors we raise on purpose carry a message that says what to do; no traceback needed.
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
