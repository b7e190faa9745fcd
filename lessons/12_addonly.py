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
# # Lesson 12: A matmul that only adds and subtracts
#
# Lesson 9 wrote BitLinear's inference path as $y = x_i W_t^\top / (s_x s_w)$
# with int8 activations $x_i$ and ternary weights $W_t$, but it still computed
# $x_i W_t^\top$ with an ordinary float matmul. Lesson 11 packed $W_t$ into 2
# bits per weight. This lesson computes the product the way ternary weights
# allow, **without a single multiplication**, and asks whether that is faster.
#
# 1. why a ternary matmul needs only additions and subtractions, and why that matters;
# 2. one dot product, then a whole matmul with masks (the exercises), exact to the last bit;
# 3. the same straight from the 2-bit packed bytes (the third exercise);
# 4. the look-up-table trick of T-MAC and bitnet.cpp;
# 5. a small C++ kernel with AVX2 instructions, built on first use;
# 6. timings: the add-only versions against PyTorch's float32 and int8 matmuls.

# %% tags=["imports"]
import torch
import torch.nn.functional as F

from babybitnet.quant import quantize_activations, ternarize

torch.set_num_threads(1)  # small problems: one thread is as fast, and never fights other programs for the cores

# %% [markdown]
# ## 1. Why no multiplication is needed
#
# One output of the integer matmul is a dot product of a token's activations
# $x \in \{-127, \dots, 127\}^K$ with a row $w \in \{-1, 0, 1\}^K$ of the
# ternary weights:
#
# $$y = \sum_{j=1}^{K} x_j w_j .$$
#
# Each "product" $x_j w_j$ is $x_j$ (when $w_j = +1$), $-x_j$ (when
# $w_j = -1$) or nothing at all (when $w_j = 0$). So
#
# $$y = \sum_{j:\, w_j = +1} x_j \;-\; \sum_{j:\, w_j = -1} x_j ,$$
#
# a sum of selected activations minus another sum: additions, subtractions and
# a choice of which ones, in exact integer arithmetic. The only multiplication
# left is the rescale of each finished sum by $1 / (s_x s_w)$, one per output
# value instead of one per weight (lesson 9's `int_linear` does it at the end).
#
# Why care?
#
# - **Arithmetic.** In silicon an integer adder is a much smaller and cheaper
#   circuit than a multiplier, and a floating-point multiply costs far more
#   energy than an 8-bit integer addition. The BitNet b1.58 paper makes exactly
#   this argument: the matmul of a full-precision LLM is mostly float
#   multiplications and additions, BitNet's is mostly int8 additions, so its
#   arithmetic energy is many times smaller. Hardware built for ternary weights
#   would not need multipliers in the matmul at all.
# - **Memory.** When a model generates text, it produces one token at a time:
#   each weight is read from memory to be used *once* per token (a
#   matrix-vector product, a GEMV). The processor then waits for memory far
#   more than it computes, so the number of bytes to read sets the speed. A
#   2-bit weight is 16 times fewer bytes than a float32 one:

# %%
n = 4096
for name, bits in [("float32", 32), ("bfloat16", 16), ("int8", 8), ("2-bit packed (lesson 11)", 2)]:
    print(f"a {n} x {n} weight matrix in {name:25} {n * n * bits / 8 / 2**20:6.0f} MiB")

# %% [markdown]
# ## 2. One dot product, then a whole matmul
#
# Write the definition first, as plainly as possible: walk along the row,
# add the activation where the weight is $+1$, subtract it where it is $-1$,
# skip it where it is $0$. No `*` anywhere.
#
# One trap: if `x` is an int8 tensor, its elements are int8 tensors too, and
# a sum of int8 values *wraps around* past 127 ($127 + 1 = -128$). Turn each
# element into a Python int (unbounded) before adding. (The package's
# `babybitnet.addonly.addonly_dot` is this function; `addonly_matmul_loop`
# calls it once per token and output.)


# %% tags=["exercise"]
def addonly_dot(x, w) -> int:
    """Exercise 12.1: the dot product sum_j x[j] * w[j] with additions and subtractions only.

    x: K activations, integers in [-127, 127] (a list of ints or a 1-D int8 tensor).
    w: K ternary weights in {-1, 0, 1} (a list of ints or a 1-D int8 tensor).
    Add x[j] where w[j] == 1, subtract it where w[j] == -1, skip it where w[j] == 0;
    never multiply. Returns a Python int (0 for K = 0).
    """
    raise NotImplementedError("Exercise 12.1: write addonly_dot(); check it with: python -m babybitnet check 12")


# %%
print("x = [3, -5, 7, 2], w = [1, -1, 0, 1]:  3 + 5 + 2 =", addonly_dot([3, -5, 7, 2], [1, -1, 0, 1]))
torch.manual_seed(0)
x_row = quantize_activations(torch.randn(300))[0].to(torch.int8)  # lesson 7: integers in [-127, 127]
w_row = torch.randint(-1, 2, (300,), dtype=torch.int8)
print("a row of 300:", addonly_dot(x_row, w_row), "  int64 dot product:", int(x_row.long() @ w_row.long()))

# %% [markdown]
# A Python loop takes $M \cdot N \cdot K$ steps for $M$ tokens and $N$ outputs:
# seconds for one small layer. PyTorch does the same selections on whole
# tensors at once. For all tokens and all rows together:
#
# - `w_t == 1` is a boolean **mask** of shape $(N, K)$;
# - `torch.where(w_t == 1, x, 0)` keeps the activations where the mask is true
#   and puts 0 elsewhere: a selection, not a multiplication. With `x` of shape
#   $(M, 1, K)$ it broadcasts against the $(N, K)$ mask to $(M, N, K)$;
# - `.sum(-1)` adds along $K$, giving $(M, N)$.
#
# Do it for the $+1$ mask and the $-1$ mask and subtract. Convert to int32
# *before* summing: int8 sums would overflow, and int32 is plenty (the next
# section shows how much room a sum needs).


# %% tags=["exercise"]
def addonly_matmul(x_q: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """Exercise 12.2: x_q @ w_t^T with masks: select with torch.where, add with sum; never multiply.

    x_q: int8 (M, K), activations in [-127, 127]. w_t: int8 (N, K), ternary weights in {-1, 0, 1}.
    Returns int32 (M, N): entry [m, n] = (sum of x_q[m, j] where w_t[n, j] == 1)
                                      - (sum of x_q[m, j] where w_t[n, j] == -1).
    No `*`, `@`, torch.mul, torch.matmul (or any other product) on the operands.
    """
    raise NotImplementedError("Exercise 12.2: write addonly_matmul(); check it with: python -m babybitnet check 12")


# %% [markdown]
# Real activations (quantized per token as in lesson 7) and real ternary
# weights (absmean, lesson 6), compared with a matmul in int64, where nothing
# can round or overflow. `torch.equal` asks for the very same integers:

# %%
torch.manual_seed(0)
x_q, s_x = quantize_activations(torch.randn(4, 300) * 2)
x_q = x_q.to(torch.int8)
w_t, s_w = ternarize(torch.randn(24, 300))
w_t = w_t.to(torch.int8)
acc = addonly_matmul(x_q, w_t)
exact = x_q.long() @ w_t.long().T
print("x_q:", x_q.dtype, tuple(x_q.shape), " w_t:", w_t.dtype, tuple(w_t.shape), " ->", acc.dtype, tuple(acc.shape))
print("addonly_matmul == int64 matmul:", torch.equal(acc.long(), exact))
print("zero weights skipped:", f"{(w_t == 0).float().mean().item():.0%}")

# %% [markdown]
# How do we *know* no multiplication happened? PyTorch lets us watch: a
# `TorchFunctionMode` is called for every torch function (and tensor operator
# such as `*` or `@`) run inside its `with` block. `babybitnet.course.grading`
# has a small one that the graders of this lesson use; here is all of it:

# %%
import inspect

from babybitnet.course.grading import CallRecorder

print(inspect.getsource(CallRecorder))

with CallRecorder() as rec:
    addonly_matmul(x_q, w_t)
print("addonly_matmul called:", sorted(rec.names))
with CallRecorder() as rec:
    x_q.long() @ w_t.long().T
print("the int64 matmul called:", sorted(rec.names))

# %% [markdown]
# ### How big can a sum get?
#
# Each term is at most 127 in size, so $|y| \le 127\,K$, reached when every
# activation is $\pm 127$ and every weight matches its sign. That decides the
# accumulator's width: int16 (up to 32,767) only holds it for
# $K \le 258$; int32 (up to about $2.1 \cdot 10^9$) for any $K$ up to about 17 million.
# Real sums are much smaller (activations and weights have mixed signs, so
# most of the terms cancel), but a kernel must be right in the worst case too.

# %%
import matplotlib.pyplot as plt

torch.manual_seed(1)
K = 4096
x_big = quantize_activations(torch.randn(16, K))[0].to(torch.int8)
w_big = ternarize(torch.randn(64, K))[0].to(torch.int8)
acc_big = addonly_matmul(x_big, w_big)
print(f"K = {K}: accumulators span [{int(acc_big.min())}, {int(acc_big.max())}]; the bound 127 K = {127 * K:,}")
for name, dt in [("int16", torch.int16), ("int32", torch.int32)]:
    print(f"  {name} holds up to {torch.iinfo(dt).max:,}: every K up to {torch.iinfo(dt).max // 127:,}")
worst = addonly_matmul(torch.full((1, K), 127, dtype=torch.int8), torch.ones(1, K, dtype=torch.int8))
print("all activations 127, all weights +1:", worst.item(), "=", 127 * K)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.hist(acc_big.flatten().numpy(), bins=50, color="C0")
ax1.set(xlabel="accumulator value (an exact integer)", ylabel="count")
ax1.set_title(f"16 tokens x 64 rows, K = {K}")
ks = torch.logspace(0, 7, 50)
ax2.plot(ks, 127 * ks, color="C3", label="worst case 127 K")
for name, dt, color in [("int16 max", torch.int16, "C1"), ("int32 max", torch.int32, "C2")]:
    ax2.axhline(torch.iinfo(dt).max, color=color, linestyle="--", label=name)
ax2.axvline(K, color="gray", linewidth=0.8)
ax2.set(xscale="log", yscale="log", xlabel="K (inputs per output)", ylabel="largest possible |sum|")
ax2.set_title("How wide must the accumulator be?")
ax2.grid(alpha=0.3)
ax2.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Straight from the packed bytes
#
# Unpacking the 2-bit weights into an int8 matrix first would throw away
# what packing bought: the int8 matrix is 4 times bigger than the packed one.
# A real kernel reads the packed bytes and pulls the weights out on the fly.
#
# Recall lesson 11's format (`babybitnet.packing.pack_2bit`): the code of a
# weight is $c = w + 1$ (so $-1 \to$ `0b00`, $0 \to$ `0b01`, $+1 \to$ `0b10`),
# and byte $i$ of a row holds weights $4i, \dots, 4i + 3$:
#
# $$\text{byte}_i = c_{4i} + 4\,c_{4i+1} + 16\,c_{4i+2} + 64\,c_{4i+3},$$
#
# in Python `c0 | c1 << 2 | c2 << 4 | c3 << 6`: each code in its own pair of bits.
#
# So the code of weight $4i + j$ is `(byte >> 2*j) & 0b11`: a shift and a
# mask, no arithmetic. A row of $K$ weights takes $\lceil K/4 \rceil$ bytes, the
# last one padded with code `0b01` (zero weights).

# %%
from babybitnet.packing import pack_2bit

row = torch.tensor([[-1, 0, 1, 1, 1]], dtype=torch.int8)
packed_row = pack_2bit(row)
print("weights", row.tolist()[0], "-> bytes", [f"0b{b:08b}" for b in packed_row[0].tolist()])
for j in range(4):
    codes = (packed_row >> (2 * j)) & 0b11
    weights = codes.to(torch.int8) - 1  # not codes - 1: uint8 has no negative numbers, 0 - 1 wraps to 255
    print(f"  j = {j}: (byte >> {2 * j}) & 0b11 = {codes[0].tolist()}  -> weights {weights[0].tolist()}")

# %% [markdown]
# Weight $4i + j$ multiplies activation $4i + j$. Reshape the activations of a
# token into $(K/4, 4)$ (after padding $K$ to a multiple of 4 with zeros: a
# zero activation adds nothing, whatever the weight), and column $j$ lines up
# with the codes `(packed >> 2*j) & 0b11`: both have one entry per byte. Four
# passes, one per bit position, each the masked sums of exercise 12.2.


# %% tags=["exercise"]
def addonly_matmul_packed(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """Exercise 12.3: x_q @ W_t^T straight from 2-bit packed weights, with shifts, masks and sums only.

    x_q: int8 (M, k), activations in [-127, 127].
    packed: uint8 (N, ceil(k / 4)) from pack_2bit(W_t): the code (w + 1) of weight 4*i + j of a row
            sits in bits 2*j and 2*j + 1 of byte i: code 0b10 is +1, 0b00 is -1, 0b01 is 0.
    k: the number of weights per row before packing (the last byte may hold padding).
    Returns int32 (M, N), equal to the int64 product x_q @ W_t^T. Never multiply, never unpack
    the whole matrix: pad x_q with zeros to 4 * ceil(k / 4) inputs, reshape to (M, ceil(k / 4), 4),
    and for each j in 0..3 add the inputs 4*i + j whose code is 0b10 and subtract those whose code is 0b00.
    """
    raise NotImplementedError(
        "Exercise 12.3: write addonly_matmul_packed(); check it with: python -m babybitnet check 12"
    )


# %% [markdown]
# A $K$ that is not a multiple of 4, so the last byte of every row holds
# padding:

# %%
torch.manual_seed(2)
x_q = quantize_activations(torch.randn(3, 301))[0].to(torch.int8)
w_t = ternarize(torch.randn(40, 301))[0].to(torch.int8)
packed = pack_2bit(w_t)
acc = addonly_matmul_packed(x_q, packed, 301)
print("packed:", packed.dtype, tuple(packed.shape), f"= {packed.numel():,} bytes for {w_t.numel():,} weights")
print("addonly_matmul_packed == int64 matmul:", torch.equal(acc.long(), x_q.long() @ w_t.long().T))
print("                      == addonly_matmul:", torch.equal(acc, addonly_matmul(x_q, w_t)))

# %% [markdown]
# ## 4. Look-up tables: 4 weights in one step
#
# Exercise 12.3 still spends work on every single weight. The trick of T-MAC
# and of bitnet.cpp's "TL" kernels spends it on every *byte*. A byte holds 4
# weights, so its contribution to a dot product,
#
# $$\text{part}_i(\text{byte}) = \sum_{j=0}^{3} v(c_j, x_{4i+j}),\qquad
#   v(c, x) = \begin{cases} -x & c = 0 \\ 0 & c = 1 \\ x & c = 2 \end{cases},$$
#
# depends only on the byte's value and the 4 activations $x_{4i}, \dots, x_{4i+3}$.
# There are only $3^4 = 81$ ternary patterns (256 byte values, the others
# contain the unused code `0b11`). So, once per token, compute a **table** of
# all 256 possible partial sums for each group of 4 activations; then
#
# $$y_n = \sum_{i} T_i[\text{packed}_{n,i}] ,$$
#
# one look-up and one addition per byte, i.e. per 4 weights. The tables cost
# $256 \cdot K / 4$ entries per token, built once with additions and shared by
# all $N$ rows: small beside the $N \cdot K / 4$ look-ups of a layer with many more than 256
# outputs.
#
# `babybitnet.addonly.lut_tables` builds them (by broadcasting additions) and
# `lut_matmul` uses them, with `torch.gather` for the look-ups. The 4
# activations $[10, -3, 5, 7]$ and the byte of $[-1, 0, +1, +1]$ from above:

# %%
from babybitnet import addonly

x4 = torch.tensor([[10, -3, 5, 7]], dtype=torch.int8)
table = addonly.lut_tables(x4, 1)  # (M, K/4, 256)
byte = pack_2bit(torch.tensor([-1, 0, 1, 1], dtype=torch.int8)).item()
print(f"table shape {tuple(table.shape)}; byte of [-1, 0, +1, +1] = {byte} = 0b{byte:08b}")
print(f"table[0, 0, {byte}] = {table[0, 0, byte].item()}  (-10 + 0 + 5 + 7 = {-10 + 0 + 5 + 7})")
valid = torch.tensor([all(((b >> (2 * j)) & 3) != 3 for j in range(4)) for b in range(256)])
print("byte values that hold 4 ternary codes:", int(valid.sum()), "= 3^4")

torch.manual_seed(3)
x_q = quantize_activations(torch.randn(5, 301))[0].to(torch.int8)
w_t = ternarize(torch.randn(40, 301))[0].to(torch.int8)
print(
    "lut_matmul == int64 matmul:",
    torch.equal(addonly.lut_matmul(x_q, pack_2bit(w_t), 301).long(), x_q.long() @ w_t.long().T),
)

grid = table[0, 0].float().clone()
grid[~valid] = float("nan")  # bytes that never occur
fig, ax = plt.subplots(figsize=(5, 4.2))
im = ax.imshow(grid.reshape(16, 16).numpy(), cmap="coolwarm")
nibbles = [f"{v >> 2}{v & 3}" for v in range(16)]  # the two 2-bit codes of a half byte
ax.set_xticks(range(16), nibbles, fontsize=7)
ax.set_yticks(range(16), nibbles, fontsize=7)
ax.set(xlabel="low 4 bits: codes c1 c0", ylabel="high 4 bits: codes c3 c2")
ax.set_title("The 256-entry table of x = [10, -3, 5, 7]\n(white: bytes with the unused code 0b11)")
fig.colorbar(im, ax=ax, label="partial sum")
fig.tight_layout()
plt.show()

# %% [markdown]
# In pure PyTorch the look-ups are slow: `torch.gather` needs an index tensor
# of int64 (8 bytes to look up what 1 byte encodes) and writes every looked-up
# value to memory before `sum` reads it back. On a CPU core the idea shines:
# the `pshufb` instruction does 32 byte look-ups at once in 16-entry tables
# held *in a register*, with indices taken straight from the packed weights'
# bits. Real kernels therefore use groups small enough for tables of at most
# 16 entries, keep them in registers, and never write anything out but the
# final sums. That is how T-MAC and bitnet.cpp's TL kernels run low-bit models
# fast on CPUs. (Lesson 13 runs the add-only matmul on a GPU.)
#
# ## 5. A C++ kernel
#
# Every pure-PyTorch version above builds big intermediate tensors, writes
# them to memory and reads them back: the masks, the selected values, the
# indices. A kernel does the whole dot product in registers and reads each
# packed byte once. `babybitnet/kernels/csrc/ternary_gemv.cpp` (about 480 lines with its comments, read
# it!) does that with AVX2, the 256-bit vector instructions of x86 CPUs:
#
# - **32 packed bytes = 128 weights fill one register.** Bit pair $k$ of byte
#   $i$ is weight $4i + k$; `(bytes >> 2k) & 3` then minus 1 gives 32 weights
#   in $\{-1, 0, 1\}$, one per byte lane ("plane" $k$).
# - **The activations are permuted once per call** so that plane $k$ of each
#   block of 128 holds $x_{4i+k}$ for $i = 0..31$: the 32 activations that line
#   up with plane $k$'s 32 weights.
# - **`_mm256_sign_epi8(x, w)`** gives $x$ where $w > 0$, $-x$ where $w < 0$
#   and $0$ where $w = 0$, in all 32 lanes at once: exactly our
#   "add, subtract or skip", a conditional negate, no multiply instruction.
#   (It needs $|x| \le 127$: $-(-128)$ does not fit in int8, so the kernel
#   refuses $-128$; `quantize_activations` never gives it.)
# - **`psadbw`** (`_mm256_sad_epu8(u, 0)`, "sum of absolute differences" with
#   0) adds 8 bytes into a 64-bit lane. It wants unsigned bytes, so the kernel
#   flips each byte's top bit (adds 128) and subtracts 128 per input once at
#   the end. 64-bit lanes never overflow, whatever $K$.
# - Rows are shared out over the threads with `at::parallel_for`; without
#   AVX2 a plain loop does the same arithmetic.
#
# `babybitnet.kernels.cpu.load_extension()` compiles it with
# `torch.utils.cpp_extension` (it needs a C++ compiler and `ninja`; flags
# `-O3 -march=native`) the first time, which takes 20 s to a minute, and
# caches the result. Without a compiler it warns once and returns `None`; then
# `addonly.matmul_packed` falls back to the pure-torch version.
# `BABYBITNET_NO_EXT=1` skips the kernel altogether.

# %%
import time
import warnings

from babybitnet.kernels import cpu

t0 = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ext = cpu.load_extension()
for warning in caught:
    print("warning:", warning.message)
if ext is None:
    print("no C++ kernel here: the pure-torch versions take its place")
else:
    print(f"C++ kernel loaded in {time.perf_counter() - t0:.1f} s; compiled with AVX2: {ext.has_avx2()}")
    print(
        "ext_matmul_packed == int64 matmul:",
        torch.equal(cpu.ext_matmul_packed(x_q, pack_2bit(w_t), 301).long(), x_q.long() @ w_t.long().T),
    )

# %% [markdown]
# Every version, on several shapes (including $K$ not a multiple of 4) and on
# the worst case for the accumulator:

# %%
impls = {  # each: (x_q, w_t, packed, k) -> int32 (M, N)
    "12.2 masks": lambda x, w, p, k: addonly_matmul(x, w),
    "12.3 packed": lambda x, w, p, k: addonly_matmul_packed(x, p, k),
    "lut_matmul": lambda x, w, p, k: addonly.lut_matmul(x, p, k),
}
if ext is not None:
    impls["C++ kernel"] = lambda x, w, p, k: cpu.ext_matmul_packed(x, p, k)
gen = torch.Generator().manual_seed(4)
cases = {}
for m, n_out, k in [(1, 64, 64), (8, 96, 1000), (3, 17, 130)]:
    x = quantize_activations(torch.randn(m, k, generator=gen))[0].to(torch.int8)
    cases[f"M={m}, N={n_out}, K={k}"] = (x, torch.randint(-1, 2, (n_out, k), generator=gen).to(torch.int8))
cases["x = 127, w = +1, K=5000"] = (torch.full((2, 5000), 127, dtype=torch.int8), torch.ones(3, 5000, dtype=torch.int8))
print(f"{'equal to the int64 product?':28}" + "".join(f"{name:>13}" for name in impls))
for label, (x, w) in cases.items():
    want, p = x.long() @ w.long().T, pack_2bit(w)
    print(
        f"{label:28}" + "".join(f"{str(torch.equal(f(x, w, p, x.shape[1]).long(), want)):>13}" for f in impls.values())
    )

# %% [markdown]
# ## 6. How fast is it?
#
# `bench_matmul` (in `babybitnet.experiments.bench_kernels`) times an
# $(M, N) \times (N, N)$ ternary matmul with every backend: PyTorch's float32
# `F.linear` (the baseline: what the model did before), PyTorch's int8 matmul
# (`torch._int_mm`), the two pure-torch
# add-only versions and the C++ kernel. It first checks each answer against
# the int64 product, then reports the median of several runs. A small
# problem, live, on this machine and on one thread (the imports cell set
# it), so that every backend gets the same single core:

# %%
from babybitnet.course import show_markdown
from babybitnet.experiments.bench_kernels import bench_matmul, matmul_table

t0 = time.perf_counter()
live = bench_matmul(sizes=(1024,), batches=(1,), repeats=10)
show_markdown(matmul_table(live))
print(f"\n({time.perf_counter() - t0:.1f} s)")

# %% [markdown]
# One run on a machine that may be busy with other programs is noisy. The
# full measurement, at $N$ = 1,024 and 4,096 and batches of 1 and 8 tokens,
# ships with the package (`python -m babybitnet bench matmul` wrote it; its
# first line says on which machine and with how many threads):

# %%
from babybitnet.experiments.study import measured

shipped = measured("bench_matmul")
print(f"`{shipped['command']}`\n")
show_markdown(matmul_table(shipped))

# %%
N_PLOT = 4096


def row_of(n: int, m: int) -> dict | None:
    """The measurement of `shipped` at size n x n and batch m (None if it has none)."""
    return next((r for r in shipped["rows"] if r["n"] == n and r["m"] == m), None)


fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, m in zip(axes, (1, 8), strict=True):
    row = row_of(N_PLOT, m)
    if row is None:
        ax.set_title(f"no measurement at N = {N_PLOT}, M = {m}")
        continue
    names = list(row["speedup_vs_fp32"])
    speed = [row["speedup_vs_fp32"][k] for k in names]
    colors = ["gray" if k.startswith("torch fp32") else "C2" if row["speedup_vs_fp32"][k] > 1 else "C3" for k in names]
    ax.barh(names, speed, color=colors)
    for i, s in enumerate(speed):
        ax.text(s, i, f" {s:.2f}x", va="center", fontsize=8)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set(xscale="log", xlim=(min(speed) / 2, max(speed) * 3), xlabel="speed vs torch fp32 (> 1: faster)")
    ax.set_title(f"{N_PLOT} x {N_PLOT} weights, batch M = {m}")
    ax.grid(alpha=0.3, axis="x")
axes[0].invert_yaxis()
fig.tight_layout()
plt.show()


for m in (1, 8):
    row = row_of(N_PLOT, m)
    if row is None:
        continue
    for name, ratio in row["speedup_vs_fp32"].items():
        if not name.startswith("torch fp32"):
            how = "faster" if ratio > 1 else f"{1 / ratio:.1f}x slower"
            print(f"N = {N_PLOT}, M = {m}: {name:36} {ratio:.2f}x the speed of fp32 ({how})")
    print(f"  the fastest at M = {m}: {min(row['us'], key=row['us'].get)}")

# %% [markdown]
# How to read these numbers:
#
# - **Batch 1 is where ternary weights pay.** Generating text is a GEMV, bound
#   by how fast the weights stream in from memory. The C++ kernel reads 2 bits
#   per weight where float32 reads 32, 16 times fewer bytes, and does no
#   multiplications; on a quiet machine it beats PyTorch's float32 GEMV,
#   which is itself a carefully tuned library routine.
# - **At batch 8 PyTorch's int8 matmul is strong.** With 8 tokens every
#   weight read is used 8 times, so memory matters less and arithmetic more.
#   PyTorch's int8 matmul is a tuned library kernel that uses the CPU's
#   integer instructions at full width, while our small kernel still treats
#   the tokens one at a time; which of the two wins at batch 8 depends on the
#   CPU (the printout above says it for the measured one).
# - **The pure-torch versions are tens to hundreds of times slower**, although
#   they do less arithmetic than a float matmul. Every step materializes a big
#   intermediate tensor (masks of $M \cdot N \cdot K$ booleans, selected values in
#   int32, int64 indices for `gather`) and writes it to memory only to read it
#   back: the memory traffic we wanted to save, multiplied. This is why real
#   systems write kernels: the idea is only as fast as the code that keeps
#   the work in registers.
#
# ### A whole model: generating text
#
# In babyBitNet every packed layer calls the kernel's `ternary_linear`: the
# activation quantizer, the add-only GEMV and the rescale in one C++ call,
# bit for bit the torch steps of `packed_linear` (no torch op in between: at
# width 64 those dozen small ops would take longer than the arithmetic). The
# RMSNorm in front of each block's first layers goes into that call too
# (`GPT.generate` moves it there with `decode.fold_layers`): torch's norm is
# six small ops, about as slow as a whole packed layer at this width. So does the
# activation after the feed-forward's first layer (ReLU or ReLU², exactly torch's
# numbers). Only the norm's sum of squares runs in another order than torch's, so
# its last bit can differ.
# `python -m babybitnet bench generate --device cpu` generates 200 tokens with
# each model, freshly initialised, batch 1, with the KV cache, side by side.
# Measured on a 2-core CPU, one thread, at nanoGPT's size and the seed's:

# %%
from babybitnet.experiments.bench import generate_table

for preset in ("nanogpt", "seed"):
    gen = measured(f"bench_generate_cpu_{preset}")
    print(f"`{gen['command']}` ({gen['note']})\n")
    show_markdown(generate_table(gen))

# %% [markdown]
# At nanoGPT's size (width 384) the matmuls are most of a step, and the
# packed model, reading 2 bits per weight, generates about three times as fast as
# babyGPT. At the seed's size (width 64) the matrices are tiny: much of a step
# is what both models share (attention, Python calling modules), and with a
# 32-character context most steps recompute a whole window of 32 tokens, where
# the float library's matmul is as fast as ours. There the packed model is
# about 1.5x babyGPT, mostly thanks to the norms it no longer calls (this
# machine's speed varies from round to round, so the seed's run takes the median
# of 31: compare the ratios, not the tokens/s). The ratio depends on the machine:
# on a faster 2-core AMD EPYC, the same code gave 1.3x at the seed's size
# (`bench_generate_cpu_seed_epyc_s12.json`). The
# same commands on another 2-core machine, an Intel Xeon, with the same code for
# the CPU:

# %%
for preset in ("nanogpt", "seed"):
    show_markdown(generate_table(measured(f"bench_generate_cpu_{preset}_xeon")))

# %% [markdown]
# At this width the Python around each layer's call counts about as much as the
# arithmetic in it.
# (Both models compute the final norm and the output layer for the last
# position only when they generate: `last_only=True`.)
#
# The real thing, bitnet.cpp (look-up tables in registers, tuned for each CPU
# family, with a whole model around it), reports 2.37x to 6.17x the speed of
# llama.cpp on x86 CPUs (and 1.37x to 5.07x on ARM).
#
# ## What we have
#
# - With ternary weights a matmul is **sums of selected activations**:
#   $y = \sum_{w=+1} x - \sum_{w=-1} x$, exact in integer arithmetic; the only
#   multiplication left is one rescale per output, $1 / (s_x s_w)$.
# - The accumulator needs up to $127 K$: more than int16 beyond $K = 258$,
#   always within int32.
# - The same sums straight from **2-bit packed** weights, with shifts and
#   masks; and with **look-up tables**, one look-up per 4 weights.
# - A small **AVX2 kernel** (sign and add, no multiply) that reads 16 times
#   fewer bytes than float32, with a pure-torch fallback; every version gives
#   the very same integers.
#
# Lesson 13 does the same on a GPU, with a Triton kernel.
#
# The reference is `babybitnet/addonly.py` and `babybitnet/kernels/csrc/ternary_gemv.cpp`.
# Check your exercises with:
#
# ```
# python -m babybitnet check 12
# ```
