"""The kernels: the ternary matmul in C++ for the CPU and in Triton for the GPU.

- :mod:`babybitnet.kernels.cpu`: the add-only AVX2 GEMV, a C++ extension built on first use.
- :mod:`babybitnet.kernels.triton_gemv`: a Triton GEMV over 2-bit packed weights (any K).
- :mod:`babybitnet.kernels.triton_dp4a`: four weights per ``dp4a`` instruction (K a multiple of 16).
- :mod:`babybitnet.kernels.triton_bitlinear`: quantizer, dp4a GEMV and rescale in one launch (decode).
- :mod:`babybitnet.kernels.triton_attention`: one new token's cache write and attention in one launch (decode).
- :mod:`babybitnet.kernels.triton_mma`: an int8 tensor-core GEMM for batches past 4 (K split where tiles are few).
- :mod:`babybitnet.kernels.tuning`: the per-shape choice of kernel, timed once and cached.
- :mod:`babybitnet.kernels.dispatch`: all of them as one torch operator, ``torch.ops.babybitnet.packed_linear``.
- :mod:`babybitnet.kernels.triton_common`: what the Triton kernels share.

Kernels import only :mod:`babybitnet.quant`, :mod:`babybitnet.packing` and :mod:`babybitnet.atomic`
(and each other).
"""
