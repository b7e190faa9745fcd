"""Checkpoints: a trained model with its config and tokenizer, loadable without unpickling code.

A checkpoint is a plain dict of tensors, numbers and strings saved with
``torch.save``; ``load_checkpoint`` reads it with ``weights_only=True``, which
refuses to run arbitrary pickled code, so a checkpoint from a stranger cannot
execute anything on your machine.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from babybitnet.data import CharTokenizer
from babybitnet.gpt import GPT, GPTConfig

FORMAT = "babybitnet-checkpoint-v1"


def save_checkpoint(path: str | Path, model: GPT, tokenizer: CharTokenizer, meta: dict | None = None) -> Path:
    """Write model weights, config, tokenizer and ``meta`` (plain JSON-like data) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # a JSON round trip keeps meta plain data (str subclasses such as torch.__version__ would not load)
    meta = json.loads(json.dumps(meta or {}))
    torch.save(
        {
            "format": FORMAT,
            "config": model.config.to_dict(),
            "tokenizer": tokenizer.to_dict(),
            "model": state,
            "meta": meta,
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, CharTokenizer, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: (model in eval mode, tokenizer, meta)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (make one with `python -m babybitnet train --out {path}`)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable babybitnet checkpoint (truncated, or not made by babybitnet): {e}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a babybitnet checkpoint (expected format {FORMAT!r})")
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), CharTokenizer.from_dict(ckpt["tokenizer"]), ckpt.get("meta", {})
