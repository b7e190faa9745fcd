"""The packed layer's GPU kernels as ONE opaque torch operator: ``torch.ops.babybitnet.packed_linear``.

``torch.compile`` traces Python into graphs it can fuse; a Triton kernel launched by hand (with inline
PTX, constexpr switches, launch-time checks) is not something it can trace into. Registered as a custom
operator with a "fake" implementation that only says the output's shape and dtype, the kernel becomes
one call that compile leaves alone while it fuses everything around it (norms, residual adds,
activations), and that a CUDA graph records like any other kernel.

Which kernel runs (the choice :class:`babybitnet.packed.PackedBitLinear` documents):

- K % 16 != 0: the first kernel (:mod:`babybitnet.kernels.triton_gemv`), any K;
- at most 16 tokens and K <= 2048: one launch (:mod:`babybitnet.kernels.triton_bitlinear`);
- otherwise the quantizer kernel and the dp4a GEMV (:mod:`babybitnet.kernels.triton_dp4a`).
"""

from __future__ import annotations

import torch

from babybitnet.kernels.triton_bitlinear import MAX_BLOCK_M, bitlinear_dp4a
from babybitnet.kernels.triton_dp4a import dp4a_linear
from babybitnet.kernels.triton_gemv import triton_packed_linear

ONE_LAUNCH_MAX_K = 2048  # past this, re-quantizing the inputs in every program costs more than a second launch


@torch.library.custom_op("babybitnet::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    """float (M, k), uint8 (N, ceil(k/4)) 2-bit weights, s_w (G,) -> (M, N) in x's dtype, on the GPU."""
    if k % 16:
        return triton_packed_linear(x, packed, scale, k)
    if x.shape[0] <= MAX_BLOCK_M and k <= ONE_LAUNCH_MAX_K:
        return bitlinear_dp4a(x, packed, scale, k)
    return dp4a_linear(x, packed, scale, k)


@packed_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, k: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], packed.shape[0])
