"""Fine-tune a trained babyGPT into a babyBitNet, with gradual quantization.

Training a BitNet from scratch is one way to get ternary weights; the other is
to start from a full-precision model that is already trained. Switching such a
model to ternary weights and 8-bit activations at once mostly destroys it:
every weight moves to one of three values in one step, the errors of all the
layers add up, and the loss jumps back towards that of an untrained model. The
Hugging Face blog "Fine-tuning LLMs to 1.58bit"
(huggingface.co/blog/1_58_llm_extreme_quantization) quantizes gradually instead::

    x' = x + lam * (quant(x) - x).detach(),      lam = min(step / warmup, 1)

At ``lam = 0`` the model is the full-precision one it was converted from; as
``lam`` rises the quantization error grows a little at a time and the latent
weights adapt to it, until at ``lam = 1`` the model is a plain babyBitNet.
``warmup = 0`` is the abrupt switch, for comparison.

* :func:`to_bitnet` copies a trained babyGPT into a babyBitNet of the same size;
* :func:`lambda_at` is the schedule and :func:`babybitnet.bitlinear.gradual_quant` the blend;
  :func:`finetune` is :func:`babybitnet.train.train` with ``lam`` set before every step;
* :func:`babybitnet.experiments.finetune.compare_finetune` is the experiment: babyGPT then
  gradual fine-tuning, babyGPT then the abrupt switch, and babyBitNet from scratch, for the
  same total number of steps on the same data, over several seeds.
"""

from __future__ import annotations

import torch
from torch import nn

from babybitnet.bitlinear import BitLinear, set_quant_strength
from babybitnet.gpt import GPT, GPTConfig
from babybitnet.train import TrainConfig, estimate_loss, train


def to_bitnet(model: GPT, drop_biases: bool = False) -> GPT:
    """A babyBitNet (``linear="bitnet"``) with the weights of the trained babyGPT ``model``.

    Every ``nn.Linear`` inside the blocks becomes a BitLinear with the same weight matrix
    (the fused q/k/v matrix keeps its row order; BitLinear's ``weight_groups`` only gives
    each head's q, k and v their own scale). Embeddings, norms and ``lm_head`` (with its
    bias, if any) are copied as they are. The new model's BitLinear layers start at
    ``lam = 1``; :func:`finetune` sets ``lam`` itself.

    BitLinear has no bias, so the biases of babyGPT's ``attn.proj``, ``mlp.fc`` and
    ``mlp.proj`` have nowhere to go. Rather than lose them silently this raises unless
    ``drop_biases=True``; train the babyGPT with ``bias=False`` (as :func:`compare_finetune`
    does) and nothing is lost: at ``lam = 0`` the copy then computes exactly what
    ``model`` computes. ``bitlinear_norm`` is set to False: the copy keeps babyGPT's
    norms in the blocks (an RMSNorm inside every BitLinear would add norms babyGPT never had).
    """
    if not isinstance(model, GPT):
        raise TypeError(f"to_bitnet converts a babyGPT (babybitnet.gpt.GPT), got {type(model).__name__}")
    if model.config.linear == "bitnet":
        raise ValueError("this model is already a babyBitNet (config.linear='bitnet'); to_bitnet converts a babyGPT")
    linears = {name: m for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError("this babyGPT has no nn.Linear inside its blocks: there is nothing to convert")
    biases = [f"blocks.{name}.bias" for name, m in linears.items() if m.bias is not None]
    if biases and not drop_biases:
        raise ValueError(
            f"the babyGPT has biases in {len(biases)} linear layers (e.g. {biases[0]}) and BitLinear has none: "
            "train it with bias=False, or pass drop_biases=True to drop them (the loss at lam=0 shows the cost)"
        )
    config = GPTConfig(**{**model.config.to_dict(), "linear": "bitnet", "bitlinear_norm": False})
    with torch.random.fork_rng(devices=[]):  # building the model draws random weights: leave the global RNG alone
        bitnet = GPT(config)
    state = {k: v for k, v in model.state_dict().items() if k not in biases}
    bitnet.load_state_dict(state)  # strict: every other tensor must find its place, with the same shape
    return bitnet.to(model.lm_head.weight.device).train(model.training)


def lambda_at(step: int, warmup: int) -> float:
    """Quantization strength at step ``step``: ``min(step / warmup, 1)``; ``warmup=0`` is 1 from the start."""
    if step < 0 or warmup < 0:
        raise ValueError(f"step and warmup must be >= 0, got step={step}, warmup={warmup}")
    return 1.0 if warmup == 0 else min(step / warmup, 1.0)


def finetune(
    model: GPT,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    cfg: TrainConfig,
    warmup: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "finetune",
) -> dict:
    """Train a babyBitNet with ``lam = lambda_at(step, warmup)`` set before every step and evaluation.

    Returns :func:`babybitnet.train.train`'s summary with ``warmup`` and the ``lam`` of every
    evaluation in ``history["lam"]``. The model ends at ``lam = 1`` once ``warmup <= cfg.max_iters``.
    """
    if not any(isinstance(m, BitLinear) for m in model.modules()):
        raise ValueError("finetune needs a model with BitLinear layers: convert a babyGPT with to_bitnet first")
    lambda_at(0, warmup)  # check warmup before training starts

    def set_lam(step: int) -> None:
        set_quant_strength(model, lambda_at(step, warmup))

    r = train(model, train_data, val_data, cfg, device, progress=progress, desc=desc, on_step=set_lam)
    r["history"]["lam"] = [lambda_at(s, warmup) for s in r["history"]["step"]]
    return {**r, "warmup": warmup}


def val_loss(model: GPT, val_data: torch.Tensor, cfg: TrainConfig, device: str | torch.device = "cpu") -> float:
    """Validation loss on the windows every run's first evaluation uses (eval generator seeded ``cfg.seed + 1``)."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    return estimate_loss(model, val_data, cfg.batch_size, cfg.eval_iters, model.config.block_size, g, device)
