"""The packed layer's GPU kernels as ONE opaque torch operator: ``torch.ops.babybitnet.packed_linear``.

``torch.compile`` traces Python into graphs it can fuse; a Triton kernel launched by hand (with inline
PTX, constexpr switches, launch-time checks) is not something it can trace into. Registered as a custom
operator with a "fake" implementation that only says the output's shape and dtype, the kernel becomes
one call that compile leaves alone while it fuses everything around it (norms, residual adds,
activations), and that a CUDA graph records like any other kernel.

Which kernel runs is chosen per shape by :mod:`babybitnet.kernels.tuning`: on a CUDA GPU the first
call of a (N, K, bucket of M) times the candidates (:func:`candidates`) and keeps the fastest, stored
in ``~/.cache/babybitnet/tuning.json`` for later processes. The candidates:

- ``gemv``: the first kernel (:mod:`babybitnet.kernels.triton_gemv`), any K (the only one for K % 16 != 0);
- ``bitlinear:<config>``: quantizer, dp4a GEMV and rescale in one launch, at most 16 tokens
  (:mod:`babybitnet.kernels.triton_bitlinear`);
- ``dp4a:<config>``: the quantizer kernel, then the dp4a GEMV (:mod:`babybitnet.kernels.triton_dp4a`), up
  to 32 tokens (past that it reads the weights again for every 16 tokens);
- ``mma:<config>``: the quantizer kernel, then the int8 tensor-core GEMM (:mod:`babybitnet.kernels.triton_mma`),
  from 5 tokens (a config's 6th number splits K over that many programs, and a third kernel adds their
  sums); ``mma1:<config>``, the same in one launch (each program quantizes its tokens), runs but is not
  tuned: on the H200 it was 1.8x to 5x slower than ``mma`` at every shape and batch timed (tuning_h200*.json);
- ``bf16`` / ``int_mm``: fallbacks that unpack the weights on the fly (never stored unpacked) and call
  cuBLAS, in bf16 or int8 (``torch._int_mm``: more than 16 tokens, N and K multiples of 8).

With an RMSNorm before the layer (``norm_weight``), the one-launch kernel and the quantizer kernel of the
dp4a and ``mma`` paths apply it themselves; every other candidate runs ``F.rms_norm`` first, and the tuner
times them that way (a key of its own).
Likewise the epilogue, ``residual + act(layer(x))`` (``activation``, ``residual``): the dp4a and tensor-core
kernels do it in their store (split K: in its second kernel), ``gemv`` and the cuBLAS fallbacks in torch after
them; each combination is tuned under its own key.

Without tuning (Triton's interpreter, CPU tensors, ``BABYBITNET_TUNE=0``) a fixed default
(:func:`default_candidate`): K % 16 != 0 -> gemv; at most 16 tokens -> one launch if K <= 2048
(with or without a norm to fuse), else dp4a; more tokens -> mma. While a CUDA graph is captured, nothing
is timed: the stored choice, else the default.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from babybitnet.kernels import tuning
from babybitnet.kernels.triton_bitlinear import DEFAULT_CONFIG as BITLINEAR_DEFAULT
from babybitnet.kernels.triton_bitlinear import MAX_BLOCK_M, bitlinear_dp4a
from babybitnet.kernels.triton_common import act_code, epilogue, interpreted
from babybitnet.kernels.triton_dp4a import DEFAULT_CONFIG as DP4A_DEFAULT
from babybitnet.kernels.triton_dp4a import dp4a_linear
from babybitnet.kernels.triton_gemv import triton_packed_linear
from babybitnet.kernels.triton_mma import CONFIGS as MMA_CONFIGS
from babybitnet.kernels.triton_mma import DEFAULT_CONFIG as MMA_DEFAULT
from babybitnet.kernels.triton_mma import mma_linear
from babybitnet.packing import unpack_2bit
from babybitnet.quant import quantize_activations, row_scales

KERNEL = "packed_linear"  # the tuning key's kernel name (+norm, +<activation>, +residual: what the layer fuses)
ONE_LAUNCH_MAX_K = 2048  # default: past this, re-quantizing the inputs in every program costs more than a second launch
DP4A_MAX_M = 32  # candidates: the dp4a GEMV up to this many tokens
MMA_MIN_M = 5  # candidates: the tensor-core GEMM from this many tokens

# The configs the tuner times, a subset of each kernel's CONFIGS (which `bench kernel --variants` explores
# in full): those that won at some shape and batch on an H200 (`bench kernel --peers --retune`; the
# choices and every time are in babybitnet/results/tuning_h200.json; the 16-token and split-K MMA tiles' in
# tuning_h200_layer.json). Most others came within a few
# percent of these, and each candidate costs a Triton compile (about a second) the first time a shape is
# seen, so timing all 20 made a learner's first generation wait half a minute per layer shape.
# The one-launch configs below each won at some 2B4T or nanoGPT shape at batch 1 once the kernel read all of x
# at once and each step's inputs in one contiguous block (a throwaway A/B of every config side by side on the
# H200, session 8). The two-launch dp4a path is tried in all of TUNE_DP4A at any batch: once its quantizer
# fused the norm and its two kernels overlapped (PDL), it beat the one-launch kernel at three of the four
# 2B4T shapes at batch 1, timed back to back as in a decode step (session 11's A/B on the H200).
TUNE_BITLINEAR = ((4, 32, 1), (8, 64, 2), (16, 32, 4), (16, 64, 4), (8, 256, 8), (32, 32, 8))
TUNE_DP4A = ((4, 64, 2), (8, 32, 1), (8, 64, 2), (4, 128, 4), (16, 64, 4))
TUNE_MMA = MMA_CONFIGS  # from 33 tokens few tiles fit each bucket (all timed at 8 to 256 tokens, session 14)

TUNER = tuning.Tuner()  # the process's choices; tests swap it for one with a temporary file and a fake timer
_memo: dict[tuple, str] = {}  # (device index, N, K, M bucket) -> candidate: the fast path of every call


def _name(kind: str, config: tuple[int, ...]) -> str:
    return f"{kind}:{','.join(map(str, config))}"


def default_candidate(m: int, k: int) -> str:
    """The candidate that runs without tuning, for ``m`` tokens and ``k`` inputs (with or without an RMSNorm
    first: the one-launch kernel and the dp4a path's quantizer both apply it)."""
    if k % 16:
        return "gemv"
    if m <= MAX_BLOCK_M:
        return _name("bitlinear", BITLINEAR_DEFAULT) if k <= ONE_LAUNCH_MAX_K else _name("dp4a", DP4A_DEFAULT)
    return _name("mma", MMA_DEFAULT)


def candidates(m: int, n: int, k: int) -> list[str]:
    """The names of the candidates the tuner times for ``m`` tokens (a bucket's edge) and W (n, k); the same
    with a norm to fuse (each candidate applies it, in its kernel or in torch first)."""
    names = [default_candidate(m, k)]
    if k % 16 == 0:
        if m <= MAX_BLOCK_M:
            names += [_name("bitlinear", c) for c in TUNE_BITLINEAR]
        if m <= DP4A_MAX_M:
            names += [_name("dp4a", c) for c in TUNE_DP4A]
        if m >= MMA_MIN_M:  # tiles of m/4 to m tokens (at least 16, the smallest tensor-core tile); split K
            # only where K has a step for a second program (else the config is its unsplit twin)
            mma = [c for c in TUNE_MMA if m // 4 <= c[0] <= max(16, m) and (len(c) < 6 or k >= 2 * c[2])]
            names += [_name("mma", c) for c in mma]
    else:
        names.append("gemv")
    names.append("bf16")
    if m > 16 and n % 8 == 0 and k % 8 == 0:  # what torch._int_mm accepts
        names.append("int_mm")
    return list(dict.fromkeys(names))  # in order, once each


def unpacked_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, k: int, int8: bool) -> torch.Tensor:
    """The fallback: unpack W on the fly, cuBLAS on the quantized activations, one rescale. (M, k) -> (M, N).

    bf16: the int8 activation values and the ternary weights are exact in bf16 and cuBLAS sums in
    float32; only the bf16 output rounds (about 3 digits, like the kernels' bf16 outputs).
    int8 (``torch._int_mm``): exact int32 sums. Costs a (N, k) temporary per call.
    """
    n = packed.shape[0]
    x_i, s_x = quantize_activations(x.float())  # integers in [-127, 127] as floats, (M, 1) scales
    w = unpack_2bit(packed, k, check=False)  # int8 (N, k); no value check: it would synchronize
    if int8:
        y = torch._int_mm(x_i.to(torch.int8), w.T)
    else:
        y = F.linear(x_i.to(torch.bfloat16), w.to(torch.bfloat16))
    return (y.float() / (s_x * row_scales(scale, n, torch.float32))).to(x.dtype)


def run_candidate(
    name: str,
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run candidate ``name`` (see :func:`candidates`): float (M, k) -> (M, N) in x's dtype.

    With ``norm_weight``: the layer of ``F.rms_norm(x, (k,), norm_weight, norm_eps)``; then the
    epilogue ``residual + act(y)`` (``residual`` (M, N) in x's dtype).
    """
    kind, _, config = name.partition(":")
    cfg = tuple(int(v) for v in config.split(",")) if config else None
    if kind == "bitlinear":
        return bitlinear_dp4a(x, packed, scale, k, cfg, norm_weight, norm_eps, activation, residual)
    if kind == "dp4a":  # the norm in the quantizer kernel, the epilogue in the GEMV's store
        return dp4a_linear(x, packed, scale, k, cfg, norm_weight, norm_eps, activation, residual)
    if kind == "mma":  # the same: the norm in the quantizer kernel, the epilogue in the GEMM's store
        return mma_linear(x, packed, scale, k, cfg, False, norm_weight, norm_eps, activation, residual)
    if norm_weight is not None:  # the other kernels take the normalised activations
        x = F.rms_norm(x, (k,), norm_weight, norm_eps)
    if kind == "mma1":  # one launch: no quantizer kernel to apply the norm; the epilogue in the store
        return mma_linear(x, packed, scale, k, cfg, fused=True, activation=activation, residual=residual)
    if kind == "gemv":
        y = triton_packed_linear(x, packed, scale, k, cfg)
    elif kind in ("bf16", "int_mm"):
        y = unpacked_linear(x, packed, scale, k, int8=kind == "int_mm")
    else:
        raise ValueError(f"unknown packed_linear candidate {name!r}; the candidates are listed by dispatch.candidates")
    return y if not activation and residual is None else epilogue(y, activation, residual)


def kernel_name(norm: bool, activation: str, residual: bool) -> str:
    """The tuning key's kernel name for a layer with these fusions: 'packed_linear+norm+relu2+residual'."""
    fused = ("+norm" if norm else "") + (f"+{activation}" if activation else "") + ("+residual" if residual else "")
    return KERNEL + fused


def _memo_key(
    x: torch.Tensor, packed: torch.Tensor, k: int, norm: bool, activation: str, residual: torch.Tensor | None
) -> tuple:
    """The in-memory key of a choice: device, shape, bucket of tokens and what the layer fuses."""
    return (x.device.index, packed.shape[0], k, tuning.m_bucket(x.shape[0]), (norm, activation, residual is not None))


def choice(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> str:
    """The candidate :func:`packed_linear` runs for these inputs, tuning its shape first where it may."""
    norm = norm_weight is not None
    if x.shape[0] == 0 or not x.is_cuda or interpreted():
        return default_candidate(max(x.shape[0], 1), k)
    name = _memo.get(_memo_key(x, packed, k, norm, activation, residual))
    if name is not None:  # the fast path of every call after the first
        return name
    capturing = torch.cuda.is_current_stream_capturing()  # no timing inside a capture: it would synchronize
    device = torch.cuda.get_device_name(x.device)
    return tuned_choice(x, packed, scale, k, device, capturing, norm_weight, norm_eps, activation, residual)


def tuned_choice(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    device: str,
    capturing: bool,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> str:
    """:func:`choice` on a GPU named ``device``: the memo, else the tuner (which times nothing while ``capturing``)."""
    m, n, norm = x.shape[0], packed.shape[0], norm_weight is not None
    memo_key = _memo_key(x, packed, k, norm, activation, residual)
    name = _memo.get(memo_key)
    if name is not None:
        return name
    m_t = tuning.bucket_m(m)
    key = tuning.tuning_key(kernel_name(norm, activation, residual is not None), n, k, m_t, device)
    default = default_candidate(m_t, k)
    tune = tuning.tuning_enabled() and not capturing
    x_t = torch.randn(m_t, k, device=x.device, dtype=x.dtype) if tune else x  # each bucket timed at its edge
    r_t = residual
    if tune and residual is not None:
        r_t = torch.randn(m_t, n, device=x.device, dtype=x.dtype)
    packs: list[torch.Tensor] = []  # copies of the weights that together overflow the L2 cache: timed cold,
    # as in a model; made by the first call of a candidate, so only when the tuner times them

    def copies() -> Iterator[torch.Tensor]:
        if not packs:
            n = tuning.weight_copies(packed.numel(), tuning.l2_bytes(x.device))
            packs.extend([packed] + [packed.clone() for _ in range(n - 1)])
        return itertools.cycle(packs)

    def candidate(nm: str) -> Callable[[], torch.Tensor]:
        turn: Iterator[torch.Tensor] | None = None

        def call() -> torch.Tensor:  # each call of the candidate reads the next copy
            nonlocal turn
            if turn is None:
                turn = copies()
            return run_candidate(nm, x_t, next(turn), scale, k, norm_weight, norm_eps, activation, r_t)

        return call

    fns = {nm: candidate(nm) for nm in candidates(m_t, n, k)}
    name = TUNER.choose(key, fns, default, tune=tune)
    if not capturing or name != default:
        _memo[memo_key] = name  # settled (a default taken during a capture may still be tuned after it)
    return name


def forget() -> None:
    """Forget every choice (memory and the tuning file): the next calls tune again."""
    _memo.clear()
    TUNER.forget(KERNEL)  # every packed_linear key, with or without fusions


@torch.library.custom_op("babybitnet::packed_linear", mutates_args=())
def packed_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """float (M, k), uint8 (N, ceil(k/4)) 2-bit weights, s_w (G,) -> (M, N) in x's dtype, on the GPU.

    ``norm_weight`` (k,): the layer of ``F.rms_norm(x, (k,), norm_weight, norm_eps)`` (fused where it can be);
    ``activation`` (a name of ``EPILOGUE_ACTS``, '' for none) and ``residual`` (M, N) in x's dtype: the
    output is ``residual + act(layer)``, done in the kernel's store where it can be.
    """
    act_code(activation)  # a clear error for an unknown name, before any kernel is chosen
    name = choice(x, packed, scale, k, norm_weight, norm_eps, activation, residual)
    return run_candidate(name, x, packed, scale, k, norm_weight, norm_eps, activation, residual)


@packed_linear.register_fake
def _(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    k: int,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 0.0,
    activation: str = "",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    return x.new_empty(x.shape[0], packed.shape[0])
