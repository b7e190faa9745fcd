"""babyGPT and babyBitNet: one GPT class, two kinds of linear layers.

A decoder-only transformer in the style of nanoGPT's ``model.py``: token and
position embeddings, ``n_layer`` pre-norm blocks (attention, then a
feed-forward network, each with a residual connection), a final norm and a
linear head that scores the next character.

``GPTConfig.linear`` picks the factory every linear layer inside the blocks
comes from: ``"fp"`` builds babyGPT with ``nn.Linear``, ``"bitnet"`` builds
babyBitNet with ``BitLinear``. The embeddings and ``lm_head`` stay full
precision in both, as in the paper and the seed project.

``GPT.generate`` keeps a KV cache (``babybitnet.attention.KVCache``, one per
block): the prompt runs through the model once, then each step feeds only
the newest token, so every linear layer multiplies a single row (a GEMV),
the case the packed kernels of lessons 12 and 13 are built for.

BitNet b1.58 2B4T's block (lesson 16), one switch per change, each off by default so that
today's models are unchanged: ``pos="rope"`` (rotary embeddings in the attention instead of a
learned position table), ``subln`` (an RMSNorm before the attention's output projection and
before the feed-forward's down projection), ``ffn="gated"`` (``down(act(gate(x)) * up(x))``),
``n_kv_head`` (grouped-query attention), plus ``tie_embeddings`` and ``norm_eps`` for the
checkpoints of ``babybitnet.hf``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from babybitnet import decode
from babybitnet.attention import CausalSelfAttention, KVCache, LinearFactory, full_precision_linear
from babybitnet.bitlinear import BitLinear

LINEAR_KINDS = ("fp", "bitnet")
MAX_LAYERS = 1000  # far beyond any model of this course; building more blocks would take minutes
MAX_FLOAT32_GIB = 64  # GPTConfig refuses a model whose float32 parameters would take more than this
MAX_NEW_TOKENS = 100_000  # generate() concatenates every step: the cost grows with the square of the length
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "relu2": lambda x: F.relu(x).square()}
POSITIONS = ("learned", "rope")
FFNS = ("mlp", "gated")


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 32  # context length
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 4
    dropout: float = 0.0
    linear: str = "fp"  # "fp": babyGPT (nn.Linear); "bitnet": babyBitNet (BitLinear)
    bitlinear_norm: bool = False  # RMSNorm inside BitLinear (official recipe), replacing the blocks' pre-norm
    attn_scale: str = "head"  # "head": 1/sqrt(head_size); "embd": 1/sqrt(n_embd), what the seed used
    activation: str = "relu"  # feed-forward non-linearity: relu, gelu or relu2 (squared ReLU)
    bias: bool = True  # biases of the nn.Linear layers and lm_head (q, k, v never have one; BitLinear never has one)
    # BitNet b1.58 2B4T's block (lesson 16); the defaults are babyGPT's block
    pos: str = "learned"  # "learned": a position embedding table; "rope": rotary embeddings on q and k
    rope_theta: float = 10000.0  # RoPE's base (2B4T: 500000); unused with pos="learned"
    subln: bool = False  # RMSNorm before attn.proj and before the feed-forward's down projection
    ffn: str = "mlp"  # "mlp": proj(act(fc(x))); "gated": down(act(gate(x)) * up(x))
    ffn_hidden: int | None = None  # feed-forward width; None: 4 n_embd (mlp), 8/3 n_embd up to a multiple of 16 (gated)
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head
    tie_embeddings: bool = False  # lm_head shares the token embedding's matrix
    norm_eps: float | None = None  # eps of every RMSNorm; None: torch's default (the float's machine epsilon)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError, saying what is allowed, for a config GPT cannot build (or could not afford to).

        Runs before anything is allocated, so a file claiming ``n_layer=100000`` fails at once.
        """
        for name in ("vocab_size", "block_size", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.n_layer > MAX_LAYERS:
            raise ValueError(f"n_layer must be at most {MAX_LAYERS}, got {self.n_layer}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("bitlinear_norm", "bias", "subln", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.linear not in LINEAR_KINDS:
            raise ValueError(f"linear must be one of {LINEAR_KINDS}, got {self.linear!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.attn_scale not in ("head", "embd"):
            raise ValueError(f"attn_scale must be 'head' or 'embd', got {self.attn_scale!r}")
        self._validate_2b4t()
        gib = 4 * self.max_params() / 2**30
        if gib > MAX_FLOAT32_GIB:
            raise ValueError(
                f"this config needs about {gib:,.0f} GiB of float32 parameters, more than the {MAX_FLOAT32_GIB} GiB "
                f"allowed; use smaller n_layer, n_embd, vocab_size or block_size"
            )

    def _validate_2b4t(self) -> None:
        """The switches of the 2B4T block (lesson 16)."""
        if self.pos not in POSITIONS:
            raise ValueError(f"pos must be one of {POSITIONS}, got {self.pos!r}")
        if self.ffn not in FFNS:
            raise ValueError(f"ffn must be one of {FFNS}, got {self.ffn!r}")
        theta = self.rope_theta
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not (math.isfinite(theta) and theta > 1):
            raise ValueError(f"rope_theta must be a finite number > 1, got {theta!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos='rope' needs an even head size, got n_embd // n_head = {self.n_embd // self.n_head}")
        for name in ("ffn_hidden", "n_kv_head"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (each shared by a group)")
        eps = self.norm_eps
        if eps is not None and (
            isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps > 0)
        ):
            raise ValueError(f"norm_eps must be None or a finite number > 0, got {eps!r}")

    @property
    def hidden_size(self) -> int:
        """The feed-forward width: ``ffn_hidden``, else 4 n_embd (mlp) or 8/3 n_embd up to a multiple of 16 (gated).

        8/3 keeps a gated layer (three matrices) at the parameter count of a 4x MLP (two); the multiple of 16
        keeps every row a whole number of the GPU kernel's 16-weight words.
        """
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return 4 * self.n_embd if self.ffn == "mlp" else -(-8 * self.n_embd // (3 * 16)) * 16

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def max_params(self) -> int:
        """An upper bound on the parameter count, from the config alone (exact for babyGPT with biases)."""
        e, v, h = self.n_embd, self.vocab_size, self.hidden_size
        # qkv + proj (at most 4e^2 with GQA), the feed-forward's 2 or 3 matrices, biases (e + h + e) and
        # norms (2e, and e + h with SubLN): 12e^2 + 8e for babyGPT
        per_block = 4 * e * e + (3 if self.ffn == "gated" else 2) * e * h + 4 * e + h + (e + h) * self.subln
        return self.n_layer * per_block + (2 * v + self.block_size + 1) * e + v  # embeddings, ln_f, lm_head

    @property
    def norm_in_linear(self) -> bool:
        return self.linear == "bitnet" and self.bitlinear_norm

    def to_dict(self) -> dict:
        return asdict(self)


def make_linear(config: GPTConfig) -> LinearFactory:
    """The factory every linear layer of the blocks comes from."""
    if config.linear == "fp":
        return lambda i, o, bias=True, weight_groups=1: full_precision_linear(i, o, bias=bias and config.bias)

    def bit_linear(i: int, o: int, bias: bool = True, weight_groups: int = 1) -> BitLinear:
        return BitLinear(i, o, bias=False, norm=config.bitlinear_norm, weight_groups=weight_groups)

    return bit_linear


def sub_norm(config: GPTConfig, size: int) -> nn.RMSNorm | None:
    """SubLN's RMSNorm in front of a block's output projection, or None without ``subln``."""
    return nn.RMSNorm(size, eps=config.norm_eps) if config.subln else None


class MLP(nn.Module):
    """Position-wise feed-forward network: n_embd -> 4 n_embd (``hidden_size``) -> n_embd."""

    def __init__(self, config: GPTConfig, linear: LinearFactory):
        super().__init__()
        hidden = config.hidden_size
        self.fc = linear(config.n_embd, hidden)
        self.activation = config.activation  # its name: decode.fold_activations hands it to a packed fc
        self.act = ACTIVATIONS[config.activation]
        self.sub_norm = sub_norm(config, hidden)
        self.proj = linear(hidden, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer: everything before ``proj``, (..., n_embd) -> (..., hidden_size)."""
        h = self.act(self.fc(x))
        return h if self.sub_norm is None else self.sub_norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.hidden(x)))


class GatedMLP(nn.Module):
    """2B4T's feed-forward: ``down(act(gate(x)) * up(x))`` (with ReLU² there), n_embd -> hidden -> n_embd.

    The gate decides, per hidden unit and token, how much of ``up(x)`` passes: a multiplicative
    interaction a plain MLP lacks. With ``subln`` an RMSNorm sits before ``down``.
    """

    def __init__(self, config: GPTConfig, linear: LinearFactory):
        super().__init__()
        hidden = config.hidden_size
        self.gate = linear(config.n_embd, hidden)
        self.up = linear(config.n_embd, hidden)
        self.activation = config.activation  # its name: decode.fold_activations hands it to a packed gate
        self.act = ACTIVATIONS[config.activation]
        self.sub_norm = sub_norm(config, hidden)
        self.down = linear(hidden, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer: everything before ``down``, (..., n_embd) -> (..., hidden_size)."""
        h = self.act(self.gate(x)) * self.up(x)
        return h if self.sub_norm is None else self.sub_norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.hidden(x)))


class TiedHead(nn.Module):
    """``lm_head`` that multiplies by the token embedding's matrix (``tie_embeddings``).

    It owns no copy of the matrix (only an optional bias), so the state dict and the files hold it once.
    The embedding is kept in a list, not as a sub-module, for the same reason.
    """

    def __init__(self, embedding: nn.Embedding, bias: bool):
        super().__init__()
        self._embedding = [embedding]
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings)) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each as x + f(norm(x))."""

    def __init__(self, config: GPTConfig, linear: LinearFactory):
        super().__init__()
        scale = config.n_embd**-0.5 if config.attn_scale == "embd" else None
        # With the norm inside every BitLinear, a second norm in front would be redundant.
        eps = config.norm_eps
        norm = (lambda: nn.Identity()) if config.norm_in_linear else (lambda: nn.RMSNorm(config.n_embd, eps=eps))
        self.ln1 = norm()
        theta = float(config.rope_theta) if config.pos == "rope" else None
        self.attn = CausalSelfAttention(
            config.n_embd, config.n_head, config.dropout, scale, linear, config.n_kv_head, theta, config.subln, eps
        )
        self.ln2 = norm()
        self.mlp = (GatedMLP if config.ffn == "gated" else MLP)(config, linear)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        # without a cache, call attn(x) exactly as before: a swapped-in attention (lessons) needs no cache argument
        h = self.ln1(x)
        x = x + (self.attn(h) if cache is None else self.attn(h, cache=cache))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        linear = make_linear(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        # with RoPE the positions enter inside the attention: no table (None keeps the attribute for callers)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, linear) for _ in range(config.n_layer)])
        self.ln_f = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        if config.tie_embeddings:
            self.lm_head = TiedHead(self.tok_emb, bias=config.bias)
        else:  # full precision in both variants
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Small normal init (GPT-2, nanoGPT, the seed): keeps the first logits near uniform.
        if isinstance(m, (nn.Linear, BitLinear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, (nn.Linear, BitLinear, TiedHead)) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> list[KVCache]:
        """An empty KV cache for ``forward(..., cache=)``: one ``KVCache`` per block."""
        return [KVCache() for _ in self.blocks]

    def supports_cache(self) -> bool:
        """Whether every block is our ``Block`` with our ``CausalSelfAttention`` (lessons swap in their own)."""
        return all(isinstance(b, Block) and isinstance(b.attn, CausalSelfAttention) for b in self.blocks)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) int64 token ids, T <= block_size. Returns logits (B, T, vocab) and the mean
        cross-entropy against ``targets`` (B, T), or None without targets.

        ``cache`` (from ``new_cache()``, for generation): idx holds only the tokens after the cached
        ones, so their positions start at the cache's length, and their keys and values are added to
        it. Several tokens at once only into an empty cache (the prompt); then one at a time.

        ``last_only``: run the final norm and ``lm_head`` on the last position only, logits (B, 1, vocab):
        all that sampling the next token needs (``generate``), and 1/T of the head's work.
        """
        if last_only and targets is not None:
            raise ValueError("last_only gives the logits of the last position only, the loss needs all: drop one")
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        # On the CPU the check is nearly free; on a GPU it would wait for the GPU every step (and break
        # torch.compile's graphs), so there an id out of range is left to the embedding's own device-side error.
        if idx.numel() and idx.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = (int(v) for v in torch.aminmax(idx))
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"token id {bad} is out of range: this model's vocabulary has ids 0..{self.config.vocab_size - 1}"
                )
        B, T = idx.shape
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.blocks)}: use model.new_cache()")
        past = 0 if cache is None else len(cache[0])
        if past + T > self.config.block_size:
            cached = f" on top of {past} cached ones" if past else ""
            raise ValueError(
                f"sequence of length {T}{cached} is longer than block_size={self.config.block_size}"
                + (": the position embedding has no room for more" if past else "")
            )
        x = self.tok_emb(idx)
        if self.pos_emb is not None:  # with RoPE each attention rotates q and k at positions past..past+T-1
            x = x + self.pos_emb(torch.arange(past, past + T, device=idx.device))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x) if cache is None else block(x, cache=cache[i])
        if last_only:
            x = x[:, -1:]  # the blocks needed every position (attention); the head needs only the last
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        compile: bool = False,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to idx (B, T); ``temperature=0`` is greedy.

        ``use_cache``: keep a KV cache, so that each step runs only the newest token through
        the model. It gives the same tokens as ``use_cache=False`` (up to float rounding) as long
        as the sequence fits in ``block_size``. Past that, the model sees only the last
        ``block_size`` tokens, at positions 0..block_size-1: every step shifts every token's
        position, so every cached key and value (computed at the old positions) is stale. We then
        drop the cache and rerun the last ``block_size`` tokens each step, as without a cache.
        On CUDA, with ``use_cache``, the steps up to ``block_size`` run :func:`babybitnet.decode.generate`:
        a static cache and a CUDA graph per token (sampling then draws other samples of the same law);
        ``compile=True`` also fuses that step with ``torch.compile`` (a minute to compile, once).
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] == 0:
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a (batch, time) tensor of token ids with time >= 1 (a prompt), got {got}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
        if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be in 0..{MAX_NEW_TOKENS}, got {max_new_tokens}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise ValueError(f"temperature must be a number (0 is greedy), got {temperature!r}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None (no limit) or an int >= 1, got {top_k!r}")
        was_training = self.training
        self.eval()  # dropout off
        block_size = self.config.block_size
        use_cache = use_cache and self.supports_cache()
        if use_cache and idx.is_cuda and idx.shape[1] < block_size and max_new_tokens > 0:
            # on a GPU: the static-cache decode step, one CUDA graph per token (babybitnet.decode), up to
            # block_size; the loop below goes on past it with its sliding window
            start = idx.shape[1]
            idx = decode.generate(self, idx, max_new_tokens, temperature, top_k, generator, compile=compile)
            max_new_tokens -= idx.shape[1] - start
        cache = None
        # a packed model with each block's pre-norm and activation moved into the packed layers next to
        # them, whose kernels apply them themselves (decode.fold_layers; any other model is itself)
        model = decode.fold_layers(self)
        for _ in range(max_new_tokens):
            if use_cache and idx.shape[1] <= block_size:
                if cache is None:  # prefill: the whole prompt at once
                    cache = self.new_cache()
                    logits, _ = model(idx, cache=cache, last_only=True)
                else:  # the cache holds every token but the newest
                    logits, _ = model(idx[:, -1:], cache=cache)
            else:
                cache = None  # past block_size (or no cache asked for): the sliding window, no cache
                logits, _ = model(idx[:, -block_size:], last_only=True)  # the model sees at most block_size tokens
            logits = logits[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                # shifted so that the largest logit is 0: a tiny temperature then gives -inf, never inf - inf = NaN
                logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return idx
