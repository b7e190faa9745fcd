"""Fast generation: a decode step with a static KV cache, replayed as one CUDA graph per token.

At batch 1 a decode step of a small model is a few hundred tiny kernels (two per norm, a handful
per linear layer, the attention, the sampling), each taking a few microseconds on the GPU. Launched
one by one from Python, the GPU spends most of the step waiting for the next launch: the model is
*launch-bound*, and a faster matmul (2-bit weights, lesson 13) changes almost nothing. A CUDA graph
records the whole step once and replays it with a single launch, so the GPU runs the kernels back to
back and the time per token becomes the kernels' own time.

A graph replays the very same kernels on the very same memory, so everything the step touches must
stay in place between tokens:

- :class:`StaticCache` preallocates every layer's keys and values for all ``block_size`` positions
  (``KVCache`` of :mod:`babybitnet.attention` grows with ``torch.cat`` instead: new memory each step);
- the position of the next token lives in a GPU tensor that the step itself advances;
- attention reads the whole cache and masks the positions not written yet, so its shapes never change;
- the next token is chosen on the GPU (argmax, or the Gumbel-max trick on noise drawn beforehand with
  the caller's generator) and written into the step's own input: no ``.item()``, no host sync.

:func:`decode_step` is that step in plain PyTorch; it runs anywhere (the CPU tests compare it with
``GPT.generate``). :func:`generate` runs it eagerly, or captured in a graph on CUDA.

For a packed babyBitNet, :func:`fold_prenorms` first moves each block's pre-norm into the packed
layers it feeds, whose GPU kernel then applies the norm as it reads its inputs: one kernel less
per norm, which babyGPT's step still launches. :func:`fold_activations` does the same for the
feed-forward's activation, and the step hands each block's residual to its last layers
(:func:`add_output`), which add it as they store their outputs: three kernels less per block.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from babybitnet.attention import CausalSelfAttention
from babybitnet.kernels.triton_attention import decode_attention_op, new_counts


class StaticCache:
    """Keys and values of every layer for all ``block_size`` positions, and the next position (a tensor)."""

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device, dtype: torch.dtype):
        cfg, attn = model.config, model.blocks[0].attn
        # n_kv_head heads: with grouped-query attention the cache holds only the shared key/value heads
        shape = (batch, attn.n_kv_head, cfg.block_size, attn.head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # where the next token goes
        self.positions = torch.arange(cfg.block_size, device=device)
        # on a GPU, one kernel per layer writes k and v and attends over the positions written so far
        # (kernels.triton_attention) in place of index_copy_, the mask and SDPA: both models use it
        self.fused_attention = fused_attention_available(device)
        self.counts = new_counts(batch, attn.n_head, device)  # the kernel's scratch: this cache's own

    def reset(self) -> None:
        self.pos.zero_()  # stale keys past pos are masked, so they need no clearing


def fused_attention_available(device: torch.device) -> bool:
    """Whether the decode step can use :mod:`babybitnet.kernels.triton_attention` on ``device`` (a GPU with
    Triton); ``BABYBITNET_FUSED_ATTENTION=0`` turns it off (SDPA then, to compare)."""
    if device.type != "cuda" or os.environ.get("BABYBITNET_FUSED_ATTENTION", "1") == "0":
        return False
    return importlib.util.find_spec("triton") is not None


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that shares its tensors but has its own dict of children, to swap some of them."""
    view = copy.copy(module)
    view._modules = dict(module._modules)
    return view


def _with_blocks(model: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    """``model`` itself if ``blocks`` are its own blocks, else a shallow view of it with these blocks instead."""
    if all(a is b for a, b in zip(blocks, getattr(model, "blocks", []), strict=True)):
        return model
    folded = _shallow(model)
    folded.blocks = nn.ModuleList(blocks)
    return folded


def fold_prenorms(model: nn.Module) -> nn.Module:
    """A view of a packed model in which each block's pre-norm sits inside the packed layers it feeds.

    In ``x + attn(ln1(x))`` the output of ``ln1`` feeds only ``attn.qkv``; that of ``ln2`` only the
    feed-forward's first layer (``fc``, or both ``gate`` and ``up``). A PackedBitLinear with a
    ``norm`` applies it first, so giving it the block's norm and leaving an Identity in the norm's
    place computes the same function. Its kernels apply the norm as they read x (the GPU's one-launch
    kernel, the CPU's C++ layer): a norm costs no kernel or torch call of its own. The numbers are the
    same up to the float rounding of the norm (the kernels sum the squares in their own order).

    The view's modules are shallow copies: every tensor is shared with ``model``, which is unchanged.
    A model with nothing to fold (babyGPT, an unpacked babyBitNet, norms inside every BitLinear
    already, a block swapped for another module) comes back as it is.
    """

    def takes_norm(layer: nn.Module) -> bool:  # a PackedBitLinear (its class says so) without a norm yet
        return getattr(layer, "applies_its_norm", False) and getattr(layer, "norm", 0) is None

    blocks = []
    for block in getattr(model, "blocks", []):
        view = block
        if not isinstance(getattr(block, "attn", None), CausalSelfAttention) or not hasattr(block, "mlp"):
            blocks.append(block)  # not our block (a lesson's swapped-in attention): left as it is
            continue
        if isinstance(block.ln1, nn.RMSNorm) and takes_norm(block.attn.qkv):
            view, attn = _shallow(block), _shallow(block.attn)
            attn.qkv = _shallow(block.attn.qkv)
            attn.qkv.norm, view.attn, view.ln1 = block.ln1, attn, nn.Identity()
        firsts = [name for name in ("fc", "gate", "up") if hasattr(block.mlp, name)]
        if isinstance(block.ln2, nn.RMSNorm) and all(takes_norm(getattr(block.mlp, f)) for f in firsts):
            view = _shallow(block) if view is block else view
            mlp = _shallow(block.mlp)
            for name in firsts:
                layer = _shallow(getattr(block.mlp, name))
                layer.norm = block.ln2
                setattr(mlp, name, layer)
            view.mlp, view.ln2 = mlp, nn.Identity()
        blocks.append(view)
    return _with_blocks(model, blocks)


def fold_activations(model: nn.Module) -> nn.Module:
    """A view of a packed model in which each feed-forward's activation is applied by the layer before it.

    ``act(fc(x))`` (``act(gate(x)) * up(x)`` when gated): a PackedBitLinear with an ``activation``
    applies it to its outputs as its kernel stores them (the GPU's dp4a kernels, the CPU's C++ layer
    for relu and relu2), so the activation costs no kernel of its own; an identity takes its place in
    the MLP. The numbers are the same: the kernels round the layer's output to its dtype first, as
    the activation would see it. Shallow copies share every tensor; ``model`` is unchanged, and a
    model with nothing to fold comes back as it is.
    """

    def takes_act(layer: nn.Module, name: str) -> bool:  # a PackedBitLinear (its class says so) without one yet
        return name in getattr(layer, "epilogue_activations", ()) and getattr(layer, "activation", None) == ""

    blocks = []
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        name = getattr(mlp, "activation", None)
        first = "gate" if hasattr(mlp, "gate") else "fc"
        if not isinstance(name, str) or not takes_act(getattr(mlp, first, None), name):
            blocks.append(block)
            continue
        view, mlp_view, layer = _shallow(block), _shallow(mlp), _shallow(getattr(mlp, first))
        layer.activation, mlp_view.act = name, _identity
        setattr(mlp_view, first, layer)
        view.mlp = mlp_view
        blocks.append(view)
    return _with_blocks(model, blocks)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def fold_layers(model: nn.Module) -> nn.Module:
    """:func:`fold_prenorms` then :func:`fold_activations`: what the packed layers can take on before decoding."""
    return fold_activations(fold_prenorms(model))


def add_output(residual: torch.Tensor, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``residual + layer(h)``: the block's residual add, inside the layer's kernel where it can do it
    (a PackedBitLinear, ``adds_residual``: one kernel less per add), else the add of ``Block.forward``."""
    if getattr(layer, "adds_residual", False):
        return layer(h, residual=residual)
    return residual + layer(h)


def _attend(
    attn: CausalSelfAttention,
    h: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache: StaticCache,
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """One new token per sequence through ``attn`` up to ``proj``'s input, k and v written into the static
    cache at ``cache.pos``.

    The same pieces as ``CausalSelfAttention.forward`` (heads, RoPE at ``cache.pos``, shared heads, SubLN);
    the caller applies ``proj`` (with the residual add, :func:`add_output`).
    ``seen`` (1, 1, 1, block_size) bool: the cached positions the new token attends to (None with
    ``cache.fused_attention``: the GPU kernel reads only those).
    """
    q, k, v = attn.split_heads(h)
    q, k = attn.rotate(q, k, cache.pos)
    if cache.fused_attention:  # cache write and attention in one kernel; y (B, 1, H, hs)
        y = decode_attention_op(q, k, v, k_cache, v_cache, cache.pos, attn.scale, cache.counts)
        return attn.concat_heads(y.transpose(1, 2))
    k_cache.index_copy_(2, cache.pos, k.to(k_cache.dtype))
    v_cache.index_copy_(2, cache.pos, v.to(v_cache.dtype))
    keys, values = attn.expand_kv(k_cache.to(q.dtype), v_cache.to(q.dtype))
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=seen, scale=attn.scale)
    return attn.concat_heads(y)


def decode_step(model: torch.nn.Module, cache: StaticCache, tok: torch.Tensor) -> torch.Tensor:
    """Logits (B, vocab) of the token after ``tok`` (B, 1), which sits at position ``cache.pos``; advances pos.

    The same computation as ``GPT.forward(tok, cache=...)`` in eval mode (no dropout), with the
    static cache in place of the growing one.
    """
    x = model.tok_emb(tok)
    if model.pos_emb is not None:  # with RoPE the attention rotates q and k at cache.pos instead
        x = x + model.pos_emb(cache.pos)
    # the new token sees itself and every earlier one: one mask for all layers (a kernel, not one per layer)
    seen = None if cache.fused_attention else (cache.positions <= cache.pos).view(1, 1, 1, -1)
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        x = add_output(x, attn.proj, _attend(attn, block.ln1(x), cache.k[i], cache.v[i], cache, seen))
        if hasattr(mlp, "hidden"):  # our MLP or GatedMLP: the last layer adds the residual itself
            x = add_output(x, getattr(mlp, "down", None) or mlp.proj, mlp.hidden(block.ln2(x)))
        else:  # a feed-forward swapped in by a lesson
            x = x + mlp(block.ln2(x))
    cache.pos.add_(1)
    return model.lm_head(model.ln_f(x))[:, -1, :]


def choose(logits: torch.Tensor, temperature: float, top_k: int | None, noise: torch.Tensor | None) -> torch.Tensor:
    """The next token (B, 1): argmax when ``temperature == 0``, else a sample by the Gumbel-max trick.

    argmax(logits / T + g) with g = -log(-log(u)), u uniform, is a sample of softmax(logits / T): the
    same distribution as ``torch.multinomial`` (not the same draws), with no host synchronisation.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return (logits - torch.log(-torch.log(noise))).argmax(dim=-1, keepdim=True)


class Decoder:
    """Generation state for one model, batch size and sampling setting; the step captured in a CUDA graph.

    ``seq`` (B, block_size) holds the tokens; one call of :meth:`step` reads the token at ``pos``,
    writes the chosen next one at ``pos + 1`` and advances ``pos``: prefill and decode are the same step
    (the prompt's own next-token choices are overwritten by the prompt).
    """

    def __init__(
        self, model: torch.nn.Module, batch: int, temperature: float, top_k: int | None, graph: bool, compile: bool
    ):
        self.model, self.temperature, self.top_k = fold_layers(model), temperature, top_k
        # torch.compile fuses the small ops between the matmuls (norms, adds, activations, the mask): at
        # batch 1 they are most of the kernels of a step; the packed layers stay one opaque op each
        self.decode_step = torch.compile(decode_step, dynamic=False) if compile else decode_step
        weight = model.tok_emb.weight
        self.device, T = weight.device, model.config.block_size
        self.cache = StaticCache(model, batch, self.device, weight.dtype)
        self.seq = torch.zeros(batch, T + 1, dtype=torch.long, device=self.device)
        # uniform noise per (position, sequence, token) for sampling, drawn before each generation
        self.noise = torch.rand(T, batch, model.config.vocab_size, device=self.device) if temperature else None
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph:
            self._capture()

    def _eager_step(self) -> None:
        pos = self.cache.pos
        tok = self.seq.index_select(1, pos)
        noise = None if self.noise is None else self.noise.index_select(0, pos)[0]
        nxt = choose(self.decode_step(self.model, self.cache, tok), self.temperature, self.top_k, noise)
        self.seq.index_copy_(1, self.cache.pos, nxt)  # pos was advanced: the token after tok

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up outside the graph: Triton compiles, cuBLAS picks its kernels
            for _ in range(3):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(side)
        self.cache.reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._eager_step()
        self.cache.reset()

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager_step()

    @torch.no_grad()
    def run(self, idx: torch.Tensor, steps: int, generator: torch.Generator | None) -> torch.Tensor:
        """idx (B, T0) followed by ``steps`` new tokens: (B, T0 + steps), T0 + steps <= block_size."""
        t0 = idx.shape[1]
        self.cache.reset()
        self.seq[:, :t0].copy_(idx)
        if self.noise is not None:  # the caller's generator draws the noise: reproducible samples
            where = generator.device if generator is not None else "cpu"
            self.noise.copy_(torch.rand(self.noise.shape, generator=generator, device=where).clamp_(min=1e-20))
        for i in range(t0 - 1):  # the prompt: fill the cache, then put the prompt's next token back
            self.step()
            self.seq[:, i + 1].copy_(idx[:, i + 1])
        for _ in range(steps):
            self.step()
        return self.seq[:, : t0 + steps].clone()


def _decoder(
    model: torch.nn.Module, batch: int, temperature: float, top_k: int | None, graph: bool, compile: bool
) -> Decoder:
    """The model's Decoder for these settings, built (and captured) once and reused by later calls."""
    weight = model.tok_emb.weight
    key = (batch, float(temperature), top_k, graph, compile, weight.device, weight.dtype, weight.data_ptr())
    decoders = model.__dict__.setdefault("_decoders", {})  # not a module attribute: not in the state dict
    if key not in decoders:
        decoders.clear()  # weights moved or settings changed: the old graphs point at the old memory
        decoders[key] = Decoder(model, batch, temperature, top_k, graph, compile)
    return decoders[key]


def usable(model: torch.nn.Module) -> bool:
    """Whether :func:`generate` can run ``model``: our GPT blocks (``supports_cache``), nothing swapped in."""
    return getattr(model, "supports_cache", lambda: False)()


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    graph: bool | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Append up to ``block_size - T0`` new tokens to idx (B, T0) with the static-cache decode step.

    ``graph=None`` captures the step in a CUDA graph on CUDA and runs it eagerly elsewhere;
    ``compile=True`` fuses the step with ``torch.compile`` first (slow to compile, faster to run). Greedy
    (``temperature=0``) gives the tokens of ``GPT.generate`` (up to float rounding); sampling draws
    the same distribution but other samples. Returns (B, T0 + n) with n = min(max_new_tokens,
    block_size - T0); ``GPT.generate`` continues past block_size with its sliding window.
    """
    if not usable(model):
        raise ValueError("decode.generate needs a babybitnet GPT with its own blocks (model.supports_cache())")
    was_training = model.training
    model.eval()
    try:
        steps = min(max_new_tokens, model.config.block_size - idx.shape[1])
        if steps <= 0:
            return idx
        on_cuda = idx.device.type == "cuda"
        dec = _decoder(model, idx.shape[0], temperature, top_k, on_cuda if graph is None else graph, compile)
        return dec.run(idx, steps, generator)
    finally:
        model.train(was_training)
