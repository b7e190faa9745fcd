# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 13: A GPU kernel for 2-bit weights
#
# Lesson 12 computed the ternary matmul with additions only and ran it on a
# CPU core, with a small C++ kernel. Language models mostly run on GPUs, so
# this lesson takes the same idea there. It uses **Triton**, a Python
# language for GPU kernels: you write what one program does to one tile of
# the data, and Triton compiles it for the GPU.
#
# 1. what a GPU kernel is, and why the speed of a GEMV is set by the bytes per weight;
# 2. the Triton kernel of `babybitnet/kernels/triton_gemv.py`, piece by piece;
# 3. your own Triton kernel that unpacks the 2-bit weights (exercise 13.1);
# 4. running the package's kernel and checking it, to the last bit;
# 5. how fast it is on an H100, and why not as fast as it could be;
# 6. a faster kernel that decodes four weights per instruction, and what stops it; generating
#    text with it, and attention over the KV cache in chunks side by side (exercise 13.2);
# 7. babyBitNet at nanoGPT's size, trained on one H100.
#
# No GPU? Then Triton's **interpreter** runs every kernel on the CPU, in
# Python, one program after the other: very slow, but the very same kernel
# code and the very same answers. The imports cell switches it on when
# PyTorch sees no CUDA GPU, so this lesson runs anywhere (on tiny shapes).

# %% tags=["imports"]
import os

import torch

if not torch.cuda.is_available():
    # No GPU here: run Triton kernels in Triton's interpreter, on CPU tensors. Triton reads
    # TRITON_INTERPRET when @triton.jit decorates a kernel, so set it before importing triton
    # (or babybitnet.kernels.triton_gemv, whose kernel is decorated when the module is imported).
    os.environ["TRITON_INTERPRET"] = "1"

import triton
import triton.language as tl

torch.set_num_threads(1)  # small problems: one thread is as fast, and never fights other programs for the cores
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %% [markdown]
# ## 1. What a GPU kernel is, and what limits it
#
# A GPU runs one function, the **kernel**, as thousands of **programs** at
# once. In Triton each program gets its numbers from `tl.program_id(axis)`
# and works on one **tile**: a small block of the data, say 4 rows of a
# weight matrix times 1,024 of its columns. The launcher chooses the **grid**,
# how many programs there are along each axis, so that the tiles cover the
# whole problem. Inside a program, a line such as `tl.load(ptrs, mask=...)`
# works on the whole tile at once; Triton spreads it over the GPU's threads.
#
# When a model generates text it handles one token at a time, and every
# linear layer is a matrix-vector product (a **GEMV**): $y = W x$, with $W$ of
# shape $(N, K)$. Count what it needs:
#
# - **arithmetic**: each weight is used once, for one multiply and one add: $2NK$ operations;
# - **memory**: each weight is read once from the GPU's memory: $NK \cdot b$ bytes
#   for $b$ bytes per weight (the vector $x$ and the output are tiny beside it).
#
# So a GEMV does about $2 / b$ operations per byte it reads: 1 for bf16
# ($b = 2$). A GPU can do far more arithmetic than that in the time the byte
# takes to arrive, so the kernel spends its time waiting for memory: it is
# **memory-bound**, and its best possible time is
#
# $$t \;\ge\; \frac{N K \, b}{\text{memory bandwidth}} .$$
#
# An H100 SXM's memory (HBM3) peaks at 3.35 TB/s. With 2-bit weights,
# $b = 1/4$ where bf16 has $b = 2$: **8 times fewer bytes, so up to 8 times
# faster**, if the kernel keeps up with the memory. (A kernel that is limited
# by its arithmetic instead is **compute-bound**; section 5 meets one.)

# %%
import matplotlib.pyplot as plt

HBM_BYTES_PER_S = 3.35e12  # H100 SXM peak memory bandwidth (NVIDIA's H100 datasheet)
FORMATS = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "2-bit packed": 0.25}  # bytes per weight
SHAPES = [(4096, 4096), (8192, 8192)]

for n, k in SHAPES:
    bounds = ", ".join(f"{name} {n * k * b / HBM_BYTES_PER_S * 1e6:.1f} µs" for name, b in FORMATS.items())
    print(f"{n} x {k} GEMV, at least: {bounds}")

fig, ax = plt.subplots(figsize=(8, 3.4))
width = 0.38
for i, (n, k) in enumerate(SHAPES):
    us = [n * k * b / HBM_BYTES_PER_S * 1e6 for b in FORMATS.values()]
    xs = [j + (i - 0.5) * width for j in range(len(FORMATS))]
    bars = ax.bar(xs, us, width, label=f"{n} x {k}", color=f"C{i}")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
ax.set_xticks(range(len(FORMATS)), [f"{name}\n({b:g} bytes/weight)" for name, b in FORMATS.items()])
ax.set(ylabel="µs (lower bound)", title="A GEMV's best time at 3.35 TB/s: only the bytes per weight count")
ax.grid(alpha=0.3, axis="y")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The kernel of `babybitnet/kernels/triton_gemv.py`, piece by piece
#
# `ternary_gemv_kernel` computes $y = x W_t^\top$ for $M$ tokens (1 to 16 at
# decode time) straight from the 2-bit bytes of lesson 11 (`pack_2bit`: the
# code of weight $4i + j$ sits in bits $2j$ and $2j + 1$ of byte $i$; code
# `0b00` is $-1$, `0b01` is $0$, `0b10` is $+1$). It is short, because each
# of its pieces is a small `@triton.jit` function of its own (Triton inlines
# them into the kernel when it compiles it). The kernel first, as written in
# the package, then its pieces in the order it calls them.

# %%
import inspect
import textwrap

import babybitnet.kernels.triton_common as TC
import babybitnet.kernels.triton_gemv as TG


def show(fn) -> None:
    """Print the source of a `@triton.jit` function (its Python function is `.fn`)."""
    print(textwrap.dedent(inspect.getsource(fn.fn)))


print("running in Triton's interpreter:", TC.interpreted())
show(TG.ternary_gemv_kernel)

# %% [markdown]
# **The arguments.** Pointers to the activations `x` $(M, K)$, the packed
# weights $(N, \lceil K/4 \rceil)$ (`KB` bytes per row), the output, and the
# scales; the sizes; the **strides** (how many elements apart two rows are);
# and `tl.constexpr` parameters, fixed at compile time: the tile sizes, and
# switches (`INT_ACC`, `ADD_ONLY`, `RESCALE`) for which Triton compiles a
# separate kernel each, with the unused branches removed.
#
# **The body.** Find this program's tile, then walk along the row in steps
# of `BLOCK_KB` bytes: load the bytes and the activations they multiply, and
# add the four bit pairs of every byte into the accumulator. The accumulator
# `acc` has one entry per token, row and byte of a step, so that each thread
# adds into its own registers; after the loop one sum over the byte axis
# gives the outputs, and `store_outputs` writes them.
#
# **Which tile is mine?** Program $(p_0, p_1)$ owns `BLOCK_N` output rows and
# `BLOCK_M` tokens. `tl.arange(0, BLOCK_N)` is the vector $0, 1, \dots$, so
# `offs_n` holds the row numbers of the tile. Near the edge some of them are
# past $N$: `n_ok` remembers which are real. (The dp4a kernel of section 6
# shares this piece, and the last one.)

# %%
show(TC.program_tile)

# %% [markdown]
# **The bytes of a step.** Each step loads a tile of packed bytes,
# $(\text{BLOCK\_N}, \text{BLOCK\_KB})$, contiguous along each row. The
# pointer arithmetic `w_ptr + offs_n[:, None] * stride_wn + b[None, :]`
# broadcasts a column of row starts against a row of byte numbers: a whole
# 2-D tile of addresses. The **mask** switches off the loads past the edge of
# the matrix (rows past $N$, bytes past `KB`), and `other` says what they read
# instead: `0b01010101`, four codes `0b01`, four zero weights. They add
# nothing, so $K$ need not be a multiple of 4 or of the tile.

# %%
show(TG.load_packed_bytes)

# %% [markdown]
# **Four planes.** Byte $i$ holds weights $4i, \dots, 4i + 3$, so the step
# loads the $4\,\text{BLOCK\_KB}$ activations they multiply, masked the same
# way (inputs past $K$ and tokens past $M$ read as 0), with shape
# $(\text{BLOCK\_M}, \text{BLOCK\_KB}, 4)$. `tl.split` takes the last axis
# apart into 4 **planes**, plane $j$ holding the inputs $4i + j$: exactly the
# partners of bit pair $j$ of every byte of the tile. (`tl.split` only splits
# an axis of size 2, hence the reshape to $(2, 2)$ and two rounds.)

# %%
show(TG.load_planes)

# %% [markdown]
# **Decode and add.** For plane $j$, a shift and a mask give the codes of the
# whole tile; then the add-only select of lesson 12: $+x$ where the code is
# `0b10`, $-x$ where it is `0b00`, $0$ otherwise. `ADD_ONLY=False` compiles
# the other form, `(code - 1) * x`, a multiplication, so the two can be timed
# against each other. The kernel calls it four times per step, $j = 0, 1, 2, 3$.

# %%
show(TG.add_plane)

# %% [markdown]
# **Finish.** After the loop, the **one rescale per output**, $y / (s_x s_w)$
# (lesson 9), fused into the kernel so the integer sums never go to memory;
# and a masked store of the tile, which leaves the memory past $M$ and $N$ alone.

# %%
show(TC.store_outputs)

# %% [markdown]
# The launcher `ternary_matmul` checks its inputs and chooses the grid: one
# program per `BLOCK_N` rows and per 16 tokens,
# `grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))`
# (`cdiv` rounds up, so a last, partly empty tile covers the edge). Then
# `ternary_gemv_kernel[grid](...)` launches them all.
#
# ## 3. Your kernel: unpack 2-bit weights
#
# The smallest useful kernel on this format: turn packed bytes back into int8
# weights, as `babybitnet.packing.unpack_2bit` does with torch operations.
# Program $(p_0, p_1)$ takes a tile of `BLOCK_N` rows $\times$ `BLOCK_KB`
# bytes and writes its $4 \cdot \text{BLOCK\_KB}$ weights per row:
#
# $$\text{out}[r, 4i + j] = \big((\text{packed}[r, i] \gg 2j) \mathbin{\&} 3\big) - 1 .$$
#
# With both tensors' rows contiguous, element $[r, c]$ of a tensor with $C$
# columns sits at `ptr + r * C + c`. Hints:
#
# - the row numbers of the tile are `tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)`,
#   the byte numbers likewise with axis 1 and `BLOCK_KB`; a mask
#   `(rows < N)[:, None] & (b < KB)[None, :]` says which are real;
# - `tl.load(ptrs, mask=...)` of a 2-D tile of addresses gives the bytes; shift
#   and mask them (uint8), convert with `.to(tl.int8)` *before* subtracting 1
#   (a uint8 has no $-1$);
# - either a `for j in tl.static_range(4):` loop with one `tl.store` per
#   plane $j$ at columns `4 * b + j`, or one store of a 3-D tile
#   $(\text{BLOCK\_N}, \text{BLOCK\_KB}, 4)$, broadcasting
#   `2 * tl.arange(0, 4)` as the shifts;
# - mask the store the same way: programs at the edge must not write past the tensor.
#
# Then the launcher: allocate the output on the input's device, compute the
# grid, launch. Inside a `@triton.jit` function only Triton's subset of
# Python works (no `print`, no `raise`, no torch), and the block sizes must be
# powers of 2.


# %% tags=["exercise"]
@triton.jit
def unpack_2bit_kernel(packed_ptr, out_ptr, N, KB, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr):
    """Exercise 13.1: decode one (BLOCK_N rows, BLOCK_KB bytes) tile of 2-bit packed weights to int8.

    packed_ptr: uint8 (N, KB), rows contiguous. out_ptr: int8 (N, 4 * KB), rows contiguous.
    Program (p0, p1) handles rows p0 * BLOCK_N + 0..BLOCK_N-1 and bytes p1 * BLOCK_KB + 0..BLOCK_KB-1.
    Weight 4 * i + j of a row is ((byte i >> 2 * j) & 0b11) - 1. Mask rows >= N and bytes >= KB.
    """
    ### BEGIN SOLUTION
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    b = tl.program_id(1) * BLOCK_KB + tl.arange(0, BLOCK_KB)
    ok = (rows < N)[:, None] & (b < KB)[None, :]  # (BLOCK_N, BLOCK_KB): which bytes are real
    byte = tl.load(packed_ptr + rows[:, None] * KB + b[None, :], mask=ok, other=0)
    j = tl.arange(0, 4)[None, None, :]  # the 4 bit pairs of every byte
    w = ((byte[:, :, None] >> (2 * j)) & 0b11).to(tl.int8) - 1  # (BLOCK_N, BLOCK_KB, 4)
    cols = 4 * b[None, :, None] + j  # weight 4i + j of the row
    tl.store(out_ptr + rows[:, None, None] * (4 * KB) + cols, w, mask=ok[:, :, None])
    ### END SOLUTION


def unpack_2bit_triton(packed: torch.Tensor, block_n: int = 4, block_kb: int = 8) -> torch.Tensor:
    """Exercise 13.1: launch unpack_2bit_kernel: uint8 (N, KB) -> int8 (N, 4 * KB), values in {-1, 0, 1}.

    One program per tile of block_n rows x block_kb bytes (powers of 2): a grid of
    (ceil(N / block_n), ceil(KB / block_kb)) programs. The output is on packed's device, and
    equals babybitnet.packing.unpack_2bit(packed, 4 * KB) (the padding weights are kept).
    """
    ### BEGIN SOLUTION
    n, kb = packed.shape
    out = torch.empty(n, 4 * kb, dtype=torch.int8, device=packed.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(kb, block_kb))
    unpack_2bit_kernel[grid](packed.contiguous(), out, n, kb, BLOCK_N=block_n, BLOCK_KB=block_kb)
    return out
    ### END SOLUTION


# %% [markdown]
# Yours against `unpack_2bit`, on a shape that is no multiple of the tile
# (7 rows, 37 weights per row: 10 bytes, the last one half padding):

# %%
from babybitnet.packing import pack_2bit, unpack_2bit

torch.manual_seed(0)
w_t = torch.randint(-1, 2, (7, 37), dtype=torch.int8)
packed = pack_2bit(w_t).to(DEVICE)
mine = unpack_2bit_triton(packed)
print("packed:", packed.dtype, tuple(packed.shape), "-> unpacked:", mine.dtype, tuple(mine.shape))
print("equals unpack_2bit(packed, 4 * KB):", torch.equal(mine.cpu(), unpack_2bit(packed.cpu(), 4 * packed.shape[1])))
print("first 37 columns are w_t:", torch.equal(mine[:, :37].cpu(), w_t), "; padding:", mine[0, 37:].tolist())
grid = (triton.cdiv(7, 4), triton.cdiv(packed.shape[1], 8))
print(f"grid {grid}: {grid[0] * grid[1]} programs for tiles of 4 rows x 8 bytes")

# %% [markdown]
# A picture of the tiling: each program's tile of bytes in its own colour
# (the grid covers a little more than the matrix; the masks switch off what is
# outside), and the weights that came out.

# %%
from matplotlib.patches import Rectangle

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, 2]})
owner = torch.zeros(grid[0] * 4, grid[1] * 8)  # the bytes the grid's tiles cover, by program
for p0 in range(grid[0]):
    for p1 in range(grid[1]):
        owner[p0 * 4 : (p0 + 1) * 4, p1 * 8 : (p1 + 1) * 8] = p0 * grid[1] + p1
ax1.imshow(owner.numpy(), cmap="Pastel1", vmin=0, vmax=8)
ax1.add_patch(Rectangle((-0.5, -0.5), packed.shape[1], 7, fill=False, edgecolor="black", linewidth=2))
ax1.set_title(f"{grid[0] * grid[1]} tiles of 4 x 8 bytes;\nblack: the {tuple(packed.shape)} bytes, masked outside")
ax1.set(xlabel="byte", ylabel="row")
ax2.imshow(mine.cpu().numpy(), cmap="coolwarm", vmin=-1, vmax=1)
ax2.axvline(36.5, color="black", linewidth=1)
ax2.set_title("unpacked: -1 blue, 0 white, +1 red; right of the line: padding")
ax2.set(xlabel="weight", ylabel="row")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Running the package's kernel
#
# `TG.ternary_matmul(x_q, packed, k)` launches `ternary_gemv_kernel` on int8
# activations and returns the int32 sums, which must equal the product
# computed in int64, where nothing can round or overflow. A few small shapes
# with $K$ off every multiple, and small tiles (`config` = BLOCK_N, BLOCK_K,
# warps) so that there are several programs and several steps along $K$:

# %%
import time

from babybitnet.quant import quantize_activations, ternarize

gen = torch.Generator().manual_seed(1)
for m, n, k, config in [(1, 24, 300, (4, 64, 2)), (3, 40, 301, (8, 128, 4)), (2, 17, 1001, None)]:
    x_q = quantize_activations(torch.randn(m, k, generator=gen))[0].to(torch.int8)
    w_t = ternarize(torch.randn(n, k, generator=gen))[0].to(torch.int8)
    t0 = time.perf_counter()
    y = TG.ternary_matmul(x_q.to(DEVICE), pack_2bit(w_t).to(DEVICE), k, config=config)
    seconds = time.perf_counter() - t0
    same = torch.equal(y.cpu().long(), x_q.long() @ w_t.long().T)
    print(f"M={m} N={n:>2} K={k:>4} config={config}: {y.dtype} {tuple(y.shape)}, == int64 product: {same}", end="")
    print(f"  ({seconds * 1e3:.0f} ms)")

# %% [markdown]
# Exact, to the last bit. And the whole layer, `TG.triton_packed_linear`
# (quantize the activations, the kernel, the fused rescale), against lesson
# 9's `int_linear`, which computes the same with a float matmul:

# %%
from babybitnet.bitlinear import int_linear

x = torch.randn(2, 95, generator=gen)
w_t, s_w = ternarize(torch.randn(24, 95, generator=gen))
w_t = w_t.to(torch.int8)
y = TG.triton_packed_linear(x.to(DEVICE), pack_2bit(w_t).to(DEVICE), s_w.reshape(1).to(DEVICE), 95).cpu()
print("triton_packed_linear vs int_linear, largest difference:", f"{(y - int_linear(x, w_t, s_w)).abs().max():.2e}")

# %% [markdown]
# Without a GPU those milliseconds are the **interpreter's**: it runs the
# kernel as Python (with numpy for the tile operations), one program after
# the other, so it is only good for checking that a kernel is right, never
# for timing it. On a GPU the same calls take microseconds. Timing needs the
# real thing.
#
# ## 5. How fast is it on an H100?
#
# `python -m babybitnet bench kernel --variants` times $y = x W^\top$ on one H100 at
# five weight shapes (from 2,560 x 2,560 to 20,480 x 3,200, the sizes of
# BitNet models' layers) and batches 1 and 8: torch's bf16 and fp16 matmuls
# against six Triton contenders, each with the fastest of a few tile
# configurations. Weights are cycled through more copies than the L2 cache
# holds, so they come from memory as in a real model; CUDA graphs keep launch
# overheads out. The result ships with the package. One line per shape and
# batch: torch bf16's time, then every contender's speed relative to it
# (> 1: faster). Section 6 explains the two `dp4a` contenders.

# %%
from babybitnet.experiments.study import measured
from babybitnet.runtime import describe

bench = measured("bench_kernel")
print(f"`{bench['command']}` on {describe(bench['machine'])}, triton {bench['triton']}\n")
labels = [name for name in bench["rows"][0]["us"] if name != "torch bf16"]
print("| N x K | M | torch bf16 µs | " + " | ".join(labels) + " |")
print("|---|---:|---:|" + "---:|" * len(labels))
for row in bench["rows"]:
    speeds = " | ".join(f"{row['speedup_vs_bf16'][name]:.2f}x" for name in labels)
    print(f"| {row['n']} x {row['k']} | {row['m']} | {row['us']['torch bf16']:.1f} | {speeds} |")
print()
for name, what in bench["variants"].items():
    print(f"{name:24} {what}")
print("\nThe full table (µs, GB/s, tile configs): babybitnet.experiments.bench_kernels.kernel_table(bench)")

# %%
rows = [row for row in bench["rows"] if row["m"] == 1]
names = [name for name in labels if name != "torch fp16"]
fig, (ax, ax_bw) = plt.subplots(1, 2, figsize=(13, 4))
width = 0.8 / len(names)
for i, name in enumerate(names):
    xs = [r + (i - (len(names) - 1) / 2) * width for r in range(len(rows))]
    ax.bar(xs, [row["speedup_vs_bf16"][name] for row in rows], width, label=name, color=f"C{i}")
ax.axhline(1, color="black", linewidth=0.8)
ax.axhline(8, color="gray", linestyle="--", linewidth=0.8)
ax.text(-0.4, 7.7, "8x: the bytes-per-weight limit (2 bits vs bf16)", color="gray", va="top", fontsize=8)
ax.set_xticks(range(len(rows)), [f"{row['n']} x {row['k']}" for row in rows], fontsize=8)
ax.set(ylabel="speed vs torch bf16 (> 1: faster)", title="Batch 1 on one H100", ylim=(0, 8.5))
ax.grid(alpha=0.3, axis="y")
ax.legend(fontsize=7)
for name, color in [("torch bf16", "gray"), ("triton int8 add-only", "C0"), ("triton dp4a int8", "C4")]:
    ax_bw.plot(range(len(rows)), [row["gb_per_s"][name] for row in rows], "o-", color=color, label=name)
ax_bw.axhline(HBM_BYTES_PER_S / 1e9, color="black", linestyle="--", linewidth=0.8, label="HBM3 peak, 3.35 TB/s")
ax_bw.set_xticks(range(len(rows)), [f"{row['n']} x {row['k']}" for row in rows], fontsize=8)
ax_bw.set(ylabel="weight bytes read per second (GB/s)", title="How close to the memory's speed?", ylim=(0, 3600))
ax_bw.grid(alpha=0.3)
ax_bw.legend(fontsize=7)
fig.tight_layout()
plt.show()

for label in ("triton int8 add-only", "triton int8 (code-1)*x", "triton_packed_linear"):
    speed = [row["speedup_vs_bf16"][label] for row in rows]
    gbs = [row["gb_per_s"][label] for row in rows]
    print(f"{label:24} {min(speed):.2f}x to {max(speed):.2f}x bf16's speed, {min(gbs):,.0f} to {max(gbs):,.0f} GB/s")
bf16_gbs = [row["gb_per_s"]["torch bf16"] for row in rows]
print(f"{'torch bf16':24} reads its weights at {min(bf16_gbs):,.0f} to {max(bf16_gbs):,.0f} GB/s")

# %% [markdown]
# First, the kernel of section 2 (`triton int8 add-only` and its twin):
#
# - **It is faster than bf16, but far from 8x.** The add-only form gains at
#   most about 1.4x, the `(code - 1) * x` form about 2x (the ranges are
#   printed above). The right-hand plot says why: torch's bf16 GEMV reads
#   its weights at a good part of the memory's peak, while this kernel reads
#   its own at a small fraction of it. It is not waiting for memory any more.
# - **It is compute-bound, by the decoding.** Per weight, the kernel shifts,
#   masks, compares and selects (or subtracts 1 and multiplies), converts,
#   and adds: several instructions where bf16 needs one fused multiply-add.
#   A 2-bit weight costs 8 times fewer bytes but more instructions, and at
#   0.25 bytes per weight the instructions, not the bytes, set the time.
#   NVIDIA's profiler says so too (`ncu --clock-control none -k
#   regex:"dp4a|ternary_gemv" python -m babybitnet bench kernel --once
#   --sizes 8192x8192` on the H100, batch 1, shows that the SMs' compute
#   units are about 78% busy while the memory delivers about 12% of its peak
#   throughput.
# - **"Add-only" is slower than multiplying, on a GPU.** In the source the
#   add-only form takes two comparisons and two selects per weight, the other
#   one subtraction and one multiply-add, which a GPU does in a single
#   instruction. A GPU has its multipliers anyway: what ternary weights save
#   there is memory traffic, not multiplications.
# - **Its whole layer is slower than bf16.** `triton_packed_linear` first
#   quantizes the activations with a few separate torch kernels (absmax,
#   scale, round, clamp), each a launch and a round trip through memory. At
#   batch 1 those cost more than the GEMV saves.
#
# ## 6. Four weights per instruction: the `dp4a` kernel
#
# If decoding is the bottleneck, decode several weights per instruction.
# `babybitnet/kernels/triton_dp4a.py` reads the same packed bytes, but 4 at a time,
# as one 32-bit **word** holding 16 weights, and uses two facts:
#
# - `(word >> 2j) & 0x03030303` keeps the low two bits of each of the 4
#   bytes: **one shift and one and give four codes**, one per byte (the
#   codes of inputs $16q + j$, $16q + 4 + j$, $16q + 8 + j$, $16q + 12 + j$).
# - GPUs have an instruction for 4-byte dot products, `dp4a(a, b, acc)` =
#   `acc` $+ a_0 b_0 + a_1 b_1 + a_2 b_2 + a_3 b_3$, with int8 bytes and an
#   int32 sum. Given the four codes and the four matching int8 activations it
#   does **four weights in one instruction**.
#
# Two details make it fit. The codes are $w + 1 \in \{0, 1, 2\}$, so the sum
# is $\sum (w + 1) x = \sum w x + \sum x$: the kernel also sums the
# activations (one more `dp4a` per word of activations, shared by all the
# rows of the tile) and subtracts. And the activations must line up with
# the codes, so `prepare_activations` stores them as 4 **planes** of words:
# plane $j$, word $q$ holds $x_{16q + j}, x_{16q + 4 + j}, x_{16q + 8 + j},
# x_{16q + 12 + j}$. Here is one step of the loop, from the source:

# %%
import babybitnet.kernels.triton_dp4a as D

show(D.dp4a_step)

# %% [markdown]
# `dp4a` is a few lines of inline PTX (the GPU's assembly); the interpreter
# cannot run PTX, so there it is the same sum written with shifts and
# multiplications, and the kernel can be checked on a CPU like the first one:

# %%
show(D.dp4a)
for m, n, k in [(1, 24, 320), (3, 40, 64)]:
    x_q = quantize_activations(torch.randn(m, k, generator=gen))[0].to(torch.int8)
    w_t = ternarize(torch.randn(n, k, generator=gen))[0].to(torch.int8)
    words = D.prepare_activations(x_q.to(DEVICE))
    y = D.dp4a_matmul(words, pack_2bit(w_t).to(DEVICE), k, config=(4, 8, 1))
    print(f"dp4a_matmul M={m} N={n} K={k}: == int64 product: {torch.equal(y.cpu().long(), x_q.long() @ w_t.long().T)}")

# %% [markdown]
# Two more changes keep the memory busy. Once decoding is cheap, each step
# of the loop mostly **waits**: it asks for its weights and gets them about a
# microsecond later. So the loop asks for the *next* step's weights before it
# works on the current ones (a prefetch, software pipelining by hand), and
# the tiles are small (4 to 8 rows, 32 to 128 words): many programs, many
# loads in flight. For the whole layer, `quantize_words_kernel` replaces the
# torch quantizer: one program per token computes the scale, rounds (half to
# even, bit for bit as `torch.round`), transposes and packs the words, so the
# layer is two launches (`dp4a_linear`). `PackedBitLinear` uses it on a GPU.
#
# The whole GEMV kernel: `load_words` asks for a step's words, `dp4a_step`
# works on the step before; the tile and the store are the first kernel's
# (`program_tile`, `store_outputs`).

# %%
show(D.load_words)
show(D.ternary_gemv_dp4a_kernel)

# %% [markdown]
# Its timings, against the goals we set ourselves:

# %%
goals = {(4096, 4096): 3.0, (8192, 8192): 5.0}  # the goals we set ourselves, batch 1
for row in bench["rows"]:
    kernel, layer = row["speedup_vs_bf16"]["triton dp4a int8"], row["speedup_vs_bf16"]["triton dp4a layer"]
    goal = goals.get((row["n"], row["k"])) if row["m"] == 1 else None
    verdict = f"  goal >= {goal:.0f}x: {'met' if kernel >= goal else 'NOT met'}" if goal else ""
    print(
        f"{row['n']:>5} x {row['k']:<5} M={row['m']}: dp4a kernel {row['us']['triton dp4a int8']:5.1f} µs "
        f"= {kernel:.2f}x bf16 ({row['gb_per_s']['triton dp4a int8']:,.0f} GB/s), with its quantizer "
        f"{layer:.2f}x{verdict}"
    )

# %% [markdown]
# What this says:
#
# - **Decoding four weights per instruction is most of the way.** At batch
#   1 the dp4a kernel is about 1.8x to 5.4x bf16, against 1.0x to 1.5x for
#   the first kernel on the same bytes: above 3x at 4,096 x 4,096 and above
#   5x at 20,480 x 3,200, but **4.5x at 8,192 x 8,192, short of the 5x we
#   aimed for** (the limit is 8x).
# - **What stops it now is latency, not instructions.** The profiler (same
#   command as above) on the dp4a kernel at 8,192 x 8,192: compute about 23%
#   busy, memory at 37% to 40% of its peak throughput, and on average 24% of
#   the warps an SM can hold are resident. That last number is the grid
#   itself: 1,024 programs of 2 warps are about 16 warps per SM, of the 64 it
#   could hold (registers would allow 32). Compute is mostly idle and the
#   memory is not saturated: too few loads are in flight to cover the
#   memory's latency. (Under the profiler, which empties the caches and runs
#   one kernel at a time, it takes about 13 µs instead of 10.5.) On top of
#   that, a kernel this short (about 10 µs) pays a fixed cost to start and
#   to drain, which a 47 µs bf16 GEMV spreads over more bytes. The small
#   2,560 x 2,560 matrix (1.6 MB packed) is mostly fixed cost: 1.8x.
# - **Batch 8 is harder**: each weight word now feeds 8 `dp4a`s, one per
#   token, and the kernel is 0.9x to 2.6x bf16, which costs the same at batch
#   8 as at batch 1.
# - **The quantizer costs about 3 to 5 µs** (one program per token reads the
#   row twice): the layer is 1.0x to 3.7x bf16. Fusing it into the GEMV, or
#   into the layer before, is the next step.
#
# **Generating text.** With the KV cache of `GPT.generate` each new token
# is one row through the model, so every packed layer is this batch-1 GEMV.
# A decode step of a small model is a few hundred tiny kernels; launched one
# by one from Python the GPU mostly waits for the next launch. So on a GPU,
# `GPT.generate` runs `babybitnet.decode`: a static KV cache (preallocated for
# all `block_size` positions, the position of the next token kept on the GPU)
# and the whole step recorded once as a **CUDA graph** and replayed with one
# launch per token. `python -m babybitnet bench generate --device cuda` times
# greedy generation, batch 1, the same prompt for the three models, all
# through that same graph-captured step (random weights: speed does not
# depend on them), on one H200, at nanoGPT's size:

# %%
from babybitnet.course import show_markdown
from babybitnet.experiments.bench import generate_table

show_markdown(generate_table(measured("bench_generate")))

# %% [markdown]
# and at the width and depth of BitNet b1.58 2B4T (2,560 wide, 30 layers,
# 2.4 billion parameters; `--preset 2b4t_size`):

# %%
show_markdown(generate_table(measured("bench_generate_2b4t_size")))

# %% [markdown]
# The packed babyBitNet is much faster than the unpacked one (which
# quantizes all its weights in every step) and faster than babyGPT: 1.81x at
# nanoGPT's size, 2.68x at 2B4T's. Five changes got it there, each found by
# asking where a token's GPU time goes (`bench generate --device cuda --profile`
# adds up the kernels of the replayed graphs with `torch.profiler`; Nsight
# Compute looks inside one kernel):
#
# - the kernels read the weight scales as they are stored; before, every call
#   first expanded them to one float32 scale per row, two tiny copy kernels per
#   layer, 48 per token at nanoGPT's size, which cost as much as the GEMVs;
# - the packed layers do the small operations next to them: the one-launch
#   kernel applies the RMSNorm in front of its layer while it reads x
#   (`decode.fold_prenorms` moves every block's pre-norm into the packed layers
#   it feeds), and the activation after the layer and the block's residual add
#   while it stores its outputs (`decode.fold_activations`, `decode.add_output`):
#   five or six kernels fewer per block than babyGPT launches (past a few tokens,
#   the tensor-core GEMM below does the same: the norm in its quantizer, the
#   activation and the residual add in its store);
# - the one-launch kernel reads x once to find its scale and each step's inputs
#   as one contiguous block; reading them plane by plane (every fourth input),
#   in every program, had kept the L1 cache busier than memory;
# - attention at decode is one kernel (`babybitnet.kernels.triton_attention`,
#   used by both models): it writes the new key and value into the cache and
#   attends over the positions written so far, in place of two `index_copy_`,
#   a mask and `scaled_dot_product_attention` over all 256 positions. One
#   program per head would leave most of the GPU idle at batch 1, so the cached
#   positions are split into chunks side by side, each with its own online
#   softmax (running maximum, sum, weighted values), and the head's last chunk
#   to finish combines them ("flash-decoding"). And on Hopper our Triton
#   kernels launch with *programmatic dependent launch* (PDL): a kernel may
#   start while the one before it finishes, read what does not depend on it
#   (its weights; the cached keys and values) and wait only where it needs the
#   previous kernel's outputs;
# - with PDL the *two*-launch layer (`dp4a_linear`: the quantizer kernel, which
#   applies the RMSNorm too, then the dp4a GEMV) became the faster one at three
#   of 2B4T's four shapes: the GEMV asks for its weights while the quantizer
#   runs, and each token is normalised and quantized once, where the one-launch
#   kernel does it again in every program. The tuner had timed each candidate
#   alone after flushing the L2 cache, which hides any overlap; it now times
#   many calls back to back, each on its own copy of the weights, as a decode
#   step runs them (every time it took at 2B4T's shapes is in
#   `babybitnet/results/tuning_h200_2b4t_decode.json`).
#
# Why chunks can be combined at all: softmax attention over positions is
# $y = \sum_t e^{s_t} v_t / \sum_t e^{s_t}$. A chunk keeps its largest score
# $m$, $l = \sum e^{s_t - m}$ and $acc = \sum e^{s_t - m} v_t$ over its own
# positions (subtracting its maximum keeps every exponential at most 1: $e^{s}$
# itself overflows float32 past $s = 88$). Rescaling each chunk's $l$ and $acc$ by
# $e^{m - m_{max}}$ puts them all under one maximum, and then
# $y = \sum acc / \sum l$. Write that merge in torch:


# %% tags=["exercise"]
def merge_chunks(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Exercise 13.2: one query's attention from its chunks' partial sums (flash-decoding's last step).

    m: float (C,), chunk c's largest score (-inf for a chunk without positions); l: float (C,),
    sum of exp(s - m[c]) over the chunk's scores s; acc: float (C, D), sum of exp(s - m[c]) * v.
    Returns (D,) in acc's dtype: sum_c acc[c] * exp(m[c] - M) / sum_c l[c] * exp(m[c] - M), M = max(m).
    """
    ### BEGIN SOLUTION
    w = torch.exp(m - m.max())  # every chunk under the common maximum; an empty chunk gets weight 0
    return (acc * w[:, None]).sum(0) / (l * w).sum()
    ### END SOLUTION


# %% [markdown]
# Yours on one query's scores over 200 cached positions, in chunks of 64 as the
# kernel splits them, against softmax over all 200 at once:

# %%
gen = torch.Generator().manual_seed(0)
scores = torch.randn(200, dtype=torch.float64, generator=gen) * 4  # one query's scores over 200 positions
values = torch.randn(200, 16, dtype=torch.float64, generator=gen)
parts = []
for chunk in range(0, 200, 64):  # what each chunk's program leaves behind: (m, l, acc)
    s, v = scores[chunk : chunk + 64], values[chunk : chunk + 64]
    parts.append((s.max(), torch.exp(s - s.max()).sum(), torch.exp(s - s.max()) @ v))
m, l, acc = (torch.stack(t) for t in zip(*parts, strict=True))
y = merge_chunks(m, l, acc)
print("chunks merged == softmax over all 200 positions:", torch.allclose(y, torch.softmax(scores, 0) @ values))

# %% [markdown]
# With the attention kernel and PDL turned off (`BABYBITNET_FUSED_ATTENTION=0
# BABYBITNET_PDL=0`, on the same machine in the same session, the commit before
# the attention kernel's last change) the ratios were 1.26x and 1.88x, and on
# the same code with both on 1.74x and 2.15x (before the two-launch layer won).
# The attention kernel speeds up babyGPT too; PDL only the packed model, whose
# layers are our kernels too:

# %%
show_markdown(generate_table(measured("bench_generate_sdpa")))
show_markdown(generate_table(measured("bench_generate_2b4t_size_sdpa")))

# the runs as bars: ms per token of each model, one step after another
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
sizes = [("nanoGPT size", "bench_generate"), ("2B4T size", "bench_generate_2b4t_size")]
for ax, (size, name) in zip(axes, sizes, strict=True):
    runs = {
        "SDPA, no PDL": measured(f"{name}_sdpa"),
        "attention kernel + PDL": measured(f"{name}_before_two_launch"),
        "+ two-launch layer, tuned back to back": measured(name),
    }
    for i, (label, run) in enumerate(runs.items()):
        ms = [run["models"][m]["ms_per_token"] for m in ("gpt", "bitnet_packed")]
        bars = ax.bar([j + (i - 1) * 0.27 for j in range(2)], ms, 0.27, label=label, color=f"C{i}")
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(2), ["babyGPT", "packed babyBitNet"])
    ax.set(ylabel="ms per token (lower is faster)", title=f"{size}, one H200, bf16, batch 1")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# At batch 1 every layer's matmul is short: at nanoGPT's size ours and cuBLAS's
# both take a few µs, mostly fixed cost (the weights sit in the 60 MB L2 cache
# between tokens). And the step has more than matmuls: residual adds, norms,
# the activation, each a kernel of a few microseconds in babyGPT. `--compile`
# fuses those with `torch.compile` (our layers and attention stay one opaque
# operator each): it helps babyGPT, and not the packed model, which has no
# such kernels left to fuse (these two were measured on the commit before the
# attention kernel's last change):

# %%
show_markdown(generate_table(measured("bench_generate_compile")))
show_markdown(generate_table(measured("bench_generate_2b4t_size_compile")))

# %% [markdown]
# What limits the packed model at 2B4T's size is the chain of our kernels.
# The profile (`--preset 2b4t_size --profile --tokens 100`) traces the
# replayed graphs with `torch.profiler` and counts each kernel by how much it
# extends the GPU's busy time: under PDL a kernel starts before the one before
# it ends, and their durations overlap, so adding them up would count the
# overlap twice. Per step, in ms:

# %%
from babybitnet.experiments.bench import profile_table

show_markdown(profile_table(measured("bench_generate_2b4t_size_profile")))

# %% [markdown]
# 2.4 billion weights are 590 MB at 2 bits: the packed layers' 0.65 ms read
# them at 0.9 TB/s, where cuBLAS reads the 4.7 GB of bf16 weights at 3.1 TB/s.
# But a packed block is a chain of eight kernels of a few µs each (a dp4a GEMV
# about 4 µs, a quantizer about 2 µs: the top kernels' times over their 90 calls
# per step, `bench_generate_2b4t_size_profile.json`), mostly the wait for the
# kernel before and memory's latency, not bandwidth: in trials on the H200 (not
# shipped), prefetching up to all of a program's weights before its PDL wait,
# and many other tile shapes, were no faster than the tuner's choices. The
# next steps are fewer kernels in the chain (the quantizer's work done by the
# kernel that produces its input) or one persistent kernel per layer. A first
# persistent kernel (a few programs per SM, each holding the whole normalised
# token in registers while it loops over its rows) was many times slower: a
# thread has at most 255 registers, and what did not fit was *spilled* to
# local memory (per-thread scratch that lives in the caches and DRAM, as the
# weights do), so the kernel spent its time on its own spills. A
# block-sized array of a Triton program lives in registers, so a kernel that
# keeps a whole vector must keep it small or put it in shared memory.
#
# The packed and unpacked models may pick different tokens in bf16: with
# random weights the logits are nearly tied, and the kernel rounds the rescale
# in a different order (in float32 they agree: `tests/test_decode.py`).
#
# The one-launch kernel, `babybitnet.kernels.triton_bitlinear`, quantizes the
# activations inside the GEMV (every program redoes it for its rows, and with a
# norm normalises them too): one launch per layer instead of two. Timed alone,
# it wins at every shape of the tables here at batch 1, long rows included;
# in a decode step, where the two launches overlap, the two-launch layer wins
# at 2B4T's wider shapes. The tuner below times both, back to back.
#
# Two obvious next steps were tried on the H100 and were *slower*, so they are
# not in the package: prefetching two or three steps ahead instead of one, and
# splitting K over more programs that add their parts with integer atomics
# (exact, but the atomics cost more than the extra programs gained; the
# tensor-core kernel below splits K for 8 tokens and more, with a second small
# kernel that adds the parts instead of atomics, and there it pays). What
# could still go further: a CUDA C++ kernel with explicit asynchronous copies
# (the BitNet team's W2A8 kernel reports 1.27x to 3.63x bf16 on an A100), or a
# Triton one with Hopper's TMA loads, so that each SM keeps many more bytes of
# weights in flight.
#
# **Past batch 1.** A GEMV reads every weight once per block of tokens, so at
# batch 32 or 256 it re-reads the matrix many times and loses to cuBLAS,
# which uses the tensor cores. `babybitnet.kernels.triton_mma` is the tensor-
# core version of the same idea: it loads a tile of packed bytes, unpacks it
# in registers to int8 $\{-1, 0, +1\}$ (shifts and masks, as in your
# exercise), and hands int8 tiles to `tl.dot`, which Triton compiles to the
# GPU's int8 matrix instructions, exact int32 sums. Which kernel is fastest
# depends on the shape and the batch, and the crossover moves with the GPU,
# so the package does not guess: `babybitnet.kernels.tuning` times the
# candidates (each kernel with the tile configs that won somewhere on an H200 or an H100)
# the first time a shape is seen, as a decode step runs them (many calls back
# to back in a CUDA graph, each reading its own copy of the weights, together
# twice the L2 cache), and stores the winner
# (`~/.cache/babybitnet/tuning.json`). `python -m babybitnet bench kernel`
# times the layer exactly as `PackedBitLinear` runs it against cuBLAS bf16,
# `torch._int_mm` and, with `--peers`, the ternary layers of gemlite (a pip
# package of Triton low-bit kernels), the peers a user would pick instead.
# `bench kernel --peers --shapes 2560x2560 2560x10240 8192x8192 --batches 1 8 32` on one H200:

# %%
from babybitnet.experiments.bench_kernels import layer_table

show_markdown(layer_table(measured("bench_kernel_layer_h200")))

# %% [markdown]
# gemlite 0.6 was installed on the same machine and timed in the same run.
#
# What the tables say:
#
# - At 8,192 x 8,192 our layer is 2x to 3.3x cuBLAS bf16 at every batch, and ahead of
#   both gemlite layers. At batch 8 and 32 the tensor-core kernel keeps the speed that the
#   GEMV lost (the GEMV alone was 0.5x bf16 at batch 8).
# - At batch 1 it is still far from the 8x that 2 bits against 16 allow: 10.3 µs for 16.8 MB
#   of packed weights is 1.6 TB/s, a third of the memory's speed.
# - 2,560 x 10,240 (the feed-forward's down projection at 2B4T's size) has few tiles of
#   outputs and a long K: at 8 tokens, tiles of 16 tokens by 64 outputs are 40 programs for
#   the H200's 132 SMs, each walking K = 10,240 in 20 steps while most of the GPU waits. The
#   "split K" configs (a 6th number, `mma:16,64,512,4,3,4`) give every tile 4 programs,
#   each summing a quarter of K into an int32 plane of its own, and a small second kernel
#   adds the planes and rescales: still exact, 4x the programs, one more launch. The
#   tuner picks split K for this shape at every batch from 8 tokens, and for 8,192 x 8,192
#   from 8 to 128.
# - At 2,560 x 2,560 (1.6 MB of packed weights) the whole matrix is read in less time than
#   two kernels (quantizer, GEMM) take to start and finish one after the other. Our layer
#   passes bf16 at batch 8 and 32 (1.2x) because the GEMM is not launched after the
#   quantizer but while it runs: its programs are in place, waiting, when the quantized
#   words land (programmatic dependent launch, as the dp4a GEMV above).
#   gemlite's layers are slower than bf16 there.

# %% [markdown]
# Why split K may change who adds what without changing a single bit: the sums are
# integers. Four programs' shares of K, added afterwards, give the int32 sums exactly;
# the same split in float32 rounds after each share instead of once, in another order,
# and outputs change in their last bits. Here in torch on the CPU, one 2B4T
# down-projection's K = 10,240 in 4 shares of 2,560:

# %%
g = torch.Generator().manual_seed(0)
x_int = torch.randint(-127, 128, (8, 10240), generator=g, dtype=torch.int32)  # 8 tokens, int8 values
w_int = torch.randint(-1, 2, (64, 10240), generator=g, dtype=torch.int32)  # 64 rows of ternary weights
shares = range(0, 10240, 2560)
whole = x_int @ w_int.T
split = sum(x_int[:, s : s + 2560] @ w_int[:, s : s + 2560].T for s in shares)
print("int32: split K equals one pass:", torch.equal(split, whole))
x_f = x_int.float() / 127 * torch.rand(8, 1, generator=g)  # the same layer on float activations
whole_f = x_f @ w_int.float().T
split_f = sum(x_f[:, s : s + 2560] @ w_int[:, s : s + 2560].float().T for s in shares)
print(f"float32: {int((split_f != whole_f).sum())} of {whole_f.numel()} outputs differ in their last bits")

# %% [markdown]
# From 1 to 256 tokens, with the default run's largest shape (`bench kernel --shapes
# 2560x2560 2560x10240 8192x8192 28672x8192 --batches 1 8 32 64 128 256`, the same H200):

# %%
wide = measured("bench_kernel_wide_h200")
show_markdown(layer_table(wide))

# %%
# the same run as a picture: our layer's speed over cuBLAS bf16 against the number of tokens
ours = "ours (packed_linear, tuned)"
fig, ax = plt.subplots(figsize=(8, 3.6))
for shape in dict.fromkeys((r["n"], r["k"]) for r in wide["rows"]):
    rows = [r for r in wide["rows"] if (r["n"], r["k"]) == shape]
    ax.plot([r["m"] for r in rows], [r["speedup_vs_bf16"][ours] for r in rows], "o-", label=f"{shape[0]} x {shape[1]}")
ax.axhline(1.0, color="gray", ls="--", lw=1)
ax.text(1.05, 1.05, "as fast as bf16", color="gray", fontsize=8)
ax.set_xscale("log", base=2)
ms = sorted({r["m"] for r in wide["rows"]})
ax.set_xticks(ms, [str(m) for m in ms])
ax.set_xlabel("tokens M")
ax.set_ylabel("speed vs cuBLAS bf16")
ax.set_title("The packed layer on one H200, 1 to 256 tokens")
ax.legend(title="N x K", fontsize=8)
plt.show()

# %% [markdown]
# Faster than bf16 everywhere but at 2,560 x 2,560 with 128 and 256 tokens. There the
# layer's time is fixed costs and arithmetic, not weight bytes, so 2 bits buy little and
# the quantizer's launch is a cost cuBLAS does not pay. 28,672 x 8,192 at one token is
# 4.1x bf16: 58.7 MB of packed weights at 2.2 TB/s, still half of what the memory gives.
#
# Nsight Compute (on the H200, at 128 tokens: `bench kernel --once` runs the tuned layer
# for a profiler) says what holds back the GEMM at 2,560 x 2,560 with many tokens: not
# memory, not the tensor cores, but latency. About one program per SM, and each step's
# four dots (one per bit plane) waiting for the one before. Fewer, longer steps (512 or
# 1,024 inputs) help, and the tuner has tried them since. The same command on one H100,
# with those configs (its memory is slower than the H200's, which slows bf16 more than
# our layer, so the ratios are larger there):

# %%
show_markdown(layer_table(measured("bench_kernel_wide_h100")))

# %% [markdown]
# ## 7. babyBitNet at nanoGPT's size, on one H100
#
# The models of this course so far were the seed project's size, trained on
# a CPU. nanoGPT's `train_shakespeare_char` configuration is the standard
# character-level benchmark on the same text: 6 layers of 6 heads, width
# 384, context 256, batch 64, dropout 0.2, a cosine learning rate from 1e-3
# to 1e-4 over 5,000 steps. The `nanogpt` preset copies it for both models
# (babyBitNet with the RMSNorm inside BitLinear on), one seed, and trains in
# bf16 autocast with `torch.compile`:

# %%
from babybitnet.experiments.compare import markdown_table
from babybitnet.experiments.study import NAMES

nano = measured("compare_nanogpt")
print(f"`{nano['command']}` on {describe(nano['machine'])}\n")
show_markdown(markdown_table(nano))
for key, r in nano["models"].items():
    print(
        f"{NAMES[key]:10} {r['params']:,} parameters, {r['seconds']:.0f} s in all including compilation "
        f"({r['train_seconds']:.0f} s of training steps); best val {r['best_val']:.4f} at step {r['best_step']}, "
        f"final val {r['final_val']:.4f}, final train {r['final_train']:.4f} "
        f"(a gap of {r['final_val'] - r['final_train']:.2f})"
    )

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for j, (key, r) in enumerate(nano["models"].items()):
    h = r["history"]
    ax.plot(h["step"], h["val"], "o-", markersize=3, color=f"C{j}", label=f"{NAMES[key]} val")
    ax.plot(h["step"], h["train"], "--", color=f"C{j}", alpha=0.6, label=f"{NAMES[key]} train")
    ax.plot(r["best_step"], r["best_val"], "*", markersize=12, color=f"C{j}")
ax.set(xlabel="step", ylabel="loss (nats per character)", ylim=(0.6, 2.6))
ax.set_title("nanoGPT's Shakespeare configuration, one H100 (stars: best val)")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The story of the two curves:
#
# - **babyGPT learns fast, then overfits.** Its val loss bottoms out near
#   1.47 at step 1,750 (nanoGPT's own run reports a best of 1.4697), then
#   climbs while its train loss keeps falling: 10.8 million parameters start
#   to memorize a 1 MB text.
# - **babyBitNet learns more slowly and does not overfit** within 5,000
#   steps: its val loss falls until the last thousand steps and stays there,
#   and the gap to its train loss grows far more slowly. Its best val loss
#   ends up where babyGPT's was. Ternary weights plausibly act as a
#   **regularizer**: a latent weight has to cross a rounding threshold
#   before the model changes at all, so the model cannot fit every detail of
#   the training text.
# - **Same cost.** The ternary model is trained in full precision with the
#   straight-through estimator (lesson 8), so a step costs about the same
#   (the ms per step above); each run took under two minutes on one H100,
#   `torch.compile` included.
#
# One seed, and nanoGPT's learning rate for both: babyBitNet is not tuned
# here. Lesson 10's recipe is where to start: the `nanogpt_recipe` preset
# keeps nanoGPT's size, data and budget and takes the recipe's two-stage
# schedule and squared ReLU, with each model's peak from lesson 10's sweep
# (1e-3 babyGPT, 3e-3 babyBitNet; not tuned at this size). Same H100, same
# command with `--preset nanogpt_recipe`:

# %%
recipe = measured("compare_nanogpt_recipe")
print(f"`{recipe['command']}` on {describe(recipe['machine'])}\n")
show_markdown(markdown_table(recipe))
gap = recipe["models"]["bitnet"]["best_val"] - recipe["models"]["gpt"]["best_val"]
print(
    f"babyBitNet - babyGPT, best val: {gap:+.4f} (nanogpt preset: "
    f"{nano['models']['bitnet']['best_val'] - nano['models']['gpt']['best_val']:+.4f})"
)

# %% [markdown]
# With the recipe babyBitNet improves (its best val drops below nanoGPT's
# 1.4697), while babyGPT gets worse: the recipe's high peak and its weight
# decay switched off in stage 2 make it overfit even sooner. At this size,
# with this text, the ternary model is ahead. One seed each: lesson 14 asks
# the question properly, with five sizes.
#
# ## What we have
#
# - A GEMV at batch 1 is **memory-bound**: its best time is the weight bytes
#   over the bandwidth, so 2-bit weights allow up to 8x over bf16.
# - A **Triton kernel** is what one program does to one tile: program ids,
#   tiles of addresses, masks at the edges, tile-wide loads, arithmetic and
#   stores; the launcher picks the grid.
# - Your **unpack kernel**, and the package's **ternary GEMV**, decode the
#   codes with shifts and masks, select and add, rescale once per output:
#   exact int32 sums, checked in the interpreter without a GPU.
# - On an H100 that kernel is about 1.0x to 2x bf16, **compute-bound by the
#   decoding**. Decoding **four weights per instruction** (`dp4a`) makes it
#   about 3.5x faster than bf16 at 4,096 x 4,096 and 4.5x at 8,192 x 8,192 at
#   batch 1, where memory latency, not arithmetic, is what is left.
# - At nanoGPT's size babyBitNet reaches babyGPT's best val loss and does not
#   overfit; with the recipe it is ahead.
#
# The references are `babybitnet/kernels/triton_gemv.py`, `babybitnet/kernels/triton_dp4a.py`,
# `babybitnet/kernels/triton_common.py` and, for `merge_chunks`, `babybitnet/kernels/triton_attention.py`.
# Check your exercises with:
#
# ```
# python -m babybitnet check 13
# ```
