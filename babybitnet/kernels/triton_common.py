"""What the Triton kernels share: the optional import, the interpreter test, configs, input checks,
and the pieces of a GEMV kernel that are the same in all (:func:`program_tile`, :func:`store_outputs`,
:func:`finish_tile`: the epilogue, what a layer's kernel may do to its outputs before it stores them),
and programmatic dependent launch (:func:`use_pdl`, :func:`pdl_wait`, :func:`pdl_ready`).

Triton is optional (``pip install triton``; a GPU build of torch ships it): without it these modules
still import, and calling a kernel raises :func:`require_triton`'s error. With ``TRITON_INTERPRET=1``
set before the import, kernels run in Triton's interpreter on CPU tensors (slow, for tests).
"""

from __future__ import annotations

import functools
import os

import torch

from babybitnet.packing import check_packed_2bit

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; using a kernel raises require_triton's error
    triton = None
    tl = None

Config = tuple[int, int, int]  # (BLOCK_N rows, BLOCK_K inputs or BLOCK_W words, num_warps)

# The activations a kernel can apply to its outputs (finish_tile's ACT): the names of gpt.ACTIVATIONS
EPILOGUE_ACTS = {"": 0, "relu": 1, "relu2": 2, "gelu": 3}

if triton is not None:

    @triton.jit
    def _probe(x_ptr):  # a kernel that does nothing: its type tells whether triton.jit interprets
        pass

    @triton.jit
    def program_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """This program's tile of a GEMV: its BLOCK_M tokens and BLOCK_N output rows, and which of them are real.

        Program (p0, p1) of the grid owns rows p0 * BLOCK_N + 0..BLOCK_N-1 and tokens p1 * BLOCK_M + 0..BLOCK_M-1;
        near the edges some are past N or M, and the masks ``m_ok``, ``n_ok`` switch them off.
        """
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        return offs_m, offs_n, offs_m < M, offs_n < N

    @triton.jit
    def mul_rn(a, b, USE_ASM: tl.constexpr):
        """``a * b`` in float32, rounded on its own: the GPU's compiler may not fuse it with a later add into
        one fused multiply-add (one rounding instead of torch's two)."""
        if USE_ASM:
            out = tl.inline_asm_elementwise(
                "mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True, pack=1
            )
        else:  # the interpreter (numpy) rounds every operation
            out = a * b
        return out

    @triton.jit
    def finish_tile(
        y, y_ptr, stride_ym, offs_m, offs_n, m_ok, n_ok, r_ptr, stride_rm,
        ACT: tl.constexpr, RESIDUAL: tl.constexpr, USE_ASM: tl.constexpr,
    ):  # fmt: skip
        """Store the float32 tile ``y`` of the layer's outputs, after the epilogue the layer took on:
        ACT (see :data:`EPILOGUE_ACTS`) applies the activation that follows the layer, RESIDUAL adds
        ``r`` (the block's residual stream, (M, N) in y's dtype). Each step first rounds to the output's
        dtype, as the separate torch ops would see their inputs, so the numbers are theirs; the kernels
        they would cost (one each, a few microseconds at decode) are not launched."""
        if ACT != 0 or RESIDUAL:
            y = y.to(y_ptr.dtype.element_ty).to(tl.float32)  # the layer's own output, rounded
        if ACT == 1:  # relu
            y = tl.maximum(y, 0.0)
        if ACT == 2:  # relu2: relu(y).square(), one product in float32
            y = tl.maximum(y, 0.0)
            y = mul_rn(y, y, USE_ASM)
        if ACT == 3:  # gelu, torch's exact form: y / 2 * (1 + erf(y / sqrt 2))
            y = mul_rn(0.5 * y, 1.0 + tl.math.erf(y * 0.7071067811865476), USE_ASM)
        ok = m_ok[:, None] & n_ok[None, :]
        if RESIDUAL:
            if ACT != 0:
                y = y.to(y_ptr.dtype.element_ty).to(tl.float32)
            r = tl.load(r_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=ok, other=0.0)
            y = r.to(tl.float32) + y
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y, mask=ok)

    @triton.jit
    def pdl_wait(USE_PDL: tl.constexpr):
        """With programmatic dependent launch (:func:`use_pdl`): wait here until the kernel before this one
        has finished and its writes are visible. Everything before it may only read what no earlier kernel
        writes (the packed weights); every read of an activation and every store comes after it."""
        if USE_PDL:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def pdl_ready(USE_PDL: tl.constexpr):
        """With programmatic dependent launch: the next kernel may be launched now (it will wait for this one
        to finish in its own :func:`pdl_wait`), so its launch and its first weight reads overlap this one."""
        if USE_PDL:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def store_outputs(
        y, y_ptr, stride_ym, offs_m, offs_n, m_ok, n_ok, sx_ptr, sw_ptr, ROWS, RESCALE: tl.constexpr,
        r_ptr, stride_rm, ACT: tl.constexpr, RESIDUAL: tl.constexpr, USE_ASM: tl.constexpr,
    ):  # fmt: skip
        """Store the (BLOCK_M, BLOCK_N) tile of sums ``y``; with RESCALE, ``y / (s_x[m] * s_w[n // ROWS])``:
        one multiplication per output, never per weight. ``s_w`` holds one scale per group of ROWS rows
        (ROWS = 1: one per row), in any float dtype: read as it is, no expanded float32 copy per call
        (at decode that copy was two more kernels per layer). Then :func:`finish_tile` (the epilogue:
        ACT, RESIDUAL, only with RESCALE). The store is masked: nothing past M or N is written."""
        if RESCALE:
            s_x = tl.load(sx_ptr + offs_m, mask=m_ok, other=1.0)
            s_w = tl.load(sw_ptr + offs_n // ROWS, mask=n_ok, other=1.0).to(tl.float32)
            y = y.to(tl.float32) / (s_x[:, None] * s_w[None, :])
            finish_tile(y, y_ptr, stride_ym, offs_m, offs_n, m_ok, n_ok, r_ptr, stride_rm, ACT, RESIDUAL, USE_ASM)
        else:
            tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], y, mask=m_ok[:, None] & n_ok[None, :])

else:
    program_tile = mul_rn = finish_tile = store_outputs = pdl_wait = pdl_ready = None


def require_triton() -> None:
    """Raise ImportError with the fix if Triton is not installed."""
    if triton is None:
        raise ImportError(
            "babybitnet's GPU kernels need Triton: pip install triton (it comes with torch's CUDA builds on Linux)"
        )


def interpreted() -> bool:
    """True if kernels run in Triton's interpreter (TRITON_INTERPRET=1 was set before the import)."""
    require_triton()
    return type(_probe).__name__ == "InterpretedFunction"


def use_pdl(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with *programmatic dependent launch* (Hopper and newer GPUs).

    At decode a layer is a chain of short kernels, each waiting for the one before: normally a kernel
    starts only once the previous one has ended, and then spends its first microsecond or two being
    launched and asking memory for its weights. With PDL (``launch_pdl=True``, a CUDA 12 launch attribute
    a CUDA graph keeps) the next kernel may start as soon as the previous one says so
    (:func:`pdl_ready`), issue the reads that do not depend on it (its weights), and wait only where it
    needs the previous kernel's outputs (:func:`pdl_wait`). ``BABYBITNET_PDL=0`` turns it off (to compare).
    """
    if device.type != "cuda" or interpreted() or os.environ.get("BABYBITNET_PDL", "1") == "0":
        return False
    return _pdl_capable(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _pdl_capable(index: int) -> bool:
    import triton.language.extra.cuda as cuda_extra  # only where a GPU is

    return torch.cuda.get_device_capability(index)[0] >= 9 and hasattr(cuda_extra, "gdc_wait")


def check_config(config: Config) -> Config:
    """A launch config (BLOCK_N, BLOCK_K, num_warps): each a power of 2, BLOCK_K at least 8."""
    block_n, block_k, num_warps = config
    for name, v in (("BLOCK_N", block_n), ("BLOCK_K", block_k), ("num_warps", num_warps)):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of 2, got {v!r} in config {config}")
    if block_k < 8:
        raise ValueError(f"BLOCK_K must be at least 8 (2 bytes per row), got {block_k}")
    return config


def check_packed_on(packed: torch.Tensor, k: int, device: torch.device) -> None:
    """packed must hold the 2-bit codes of k weights per row, on ``device`` (the activations'), where Triton runs."""
    check_packed_2bit(packed, k)
    if device != packed.device:
        raise ValueError(f"x and packed must be on the same device, got {device} and {packed.device}")
    if device.type != "cuda" and not interpreted():
        raise ValueError(
            f"the Triton kernels run on a CUDA GPU but the tensors are on {device}; to run them on CPU in "
            "Triton's interpreter, set TRITON_INTERPRET=1 before importing babybitnet"
        )


def epilogue(y: torch.Tensor, activation: str = "", residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + act(y)`` in torch, op by op: what :func:`finish_tile` does inside a kernel (the reference,
    and the path of every kernel without an epilogue). ``activation`` is one of :data:`EPILOGUE_ACTS`."""
    act_code(activation)
    if activation == "relu":
        y = torch.relu(y)
    elif activation == "relu2":
        y = torch.relu(y).square()
    elif activation == "gelu":
        y = torch.nn.functional.gelu(y)
    return y if residual is None else residual + y


def act_code(activation: str) -> int:
    """The kernels' ACT constant for ``activation``; a clear error for a name they do not know."""
    if activation not in EPILOGUE_ACTS:
        raise ValueError(f"activation must be one of {sorted(EPILOGUE_ACTS)} ('' for none), got {activation!r}")
    return EPILOGUE_ACTS[activation]


def check_epilogue(
    activation: str, residual: torch.Tensor | None, y: torch.Tensor, rescale: bool
) -> tuple[int, torch.Tensor | None]:
    """A matmul's epilogue arguments, checked: (the kernel's ACT code, the residual with rows of unit stride).
    The epilogue works on the rescaled outputs ``y``: without scales (the raw int32 sums) it is refused."""
    act = act_code(activation)
    if (act or residual is not None) and not rescale:
        raise ValueError("an activation or residual needs the scales: the raw int32 sums take no epilogue")
    check_residual(residual, y)
    return act, None if residual is None else residual.contiguous()


def check_residual(residual: torch.Tensor | None, y: torch.Tensor) -> None:
    """The residual a kernel adds to its output y (M, N): the same shape, dtype and device."""
    if residual is not None and (residual.shape != y.shape or residual.dtype != y.dtype or residual.device != y.device):
        raise ValueError(
            f"residual must match the layer's output: {y.dtype} {tuple(y.shape)} on {y.device}, "
            f"got {residual.dtype} {tuple(residual.shape)} on {residual.device}"
        )
