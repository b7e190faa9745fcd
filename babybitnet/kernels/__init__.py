"""The kernels: the ternary matmul in C++ for the CPU and in Triton for the GPU.

- :mod:`babybitnet.kernels.cpu`: the add-only AVX2 GEMV, a C++ extension built on first use.
- :mod:`babybitnet.kernels.triton_gemv`: a Triton GEMV over 2-bit packed weights (any K).
- :mod:`babybitnet.kernels.triton_dp4a`: four weights per ``dp4a`` instruction (K a multiple of 16).
- :mod:`babybitnet.kernels.triton_common`: what the Triton kernels share.

Kernels import only :mod:`babybitnet.quant` and :mod:`babybitnet.packing` (and each other).
"""
