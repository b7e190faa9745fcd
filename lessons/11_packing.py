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
# # Lesson 11: Packing ternary weights into 2 and 1.6 bits
#
# A trained babyBitNet has every weight inside its blocks in $\{-1, 0, +1\}$.
# That is the whole point of BitNet b1.58: such a model should be *small*.
# Yet the seed project stored those weights as float32, 32 bits each, and so
# saved no memory at all (its README lists "2-bit packed storage" as future
# work). Lesson 9's inference path does better: `BitLinear.quantized_weight()`
# hands out an int8 tensor, 8 bits per weight. Still, a weight with three
# possible values carries only
#
# $$\log_2 3 \approx 1.585 \text{ bits}$$
#
# of information, so int8 wastes more than three quarters of every byte. This
# lesson
#
# 1. counts the bits that each way of storing a weight costs;
# 2. packs four weights into one byte, 2 bits each, with the codes that
#    bitnet.cpp uses (the exercises 11.1 and 11.2);
# 3. packs five weights into one byte as base-3 digits, 1.6 bits each, close
#    to the limit (the exercises 11.3 and 11.4), and sees why kernels still
#    prefer 2 bits;
# 4. measures real file sizes of babyBitNet in fp32, fp16, 2 bits and base 3,
#    and explains why a tiny model shrinks less than a larger one;
# 5. trains a small babyBitNet, saves it packed, loads it back and checks that
#    it generates exactly the same text.

# %% tags=["imports"]
import math

import torch

torch.set_num_threads(1)  # tiny models: one thread is as fast, and never fights other programs for the cores

# %% [markdown]
# ## 1. Bits per weight
#
# How much storage does one weight cost in each format? A float32 takes 32
# bits whatever it holds; fp16 takes 16; the int8 of lesson 9 takes 8. A
# packed format can go below 8 bits because it does not give every weight a
# byte of its own: it shares one byte among several weights. With $k$
# weights per byte, each costs $8 / k$ bits. How far down can we go? A group
# of $k$ ternary weights has $3^k$ possible values, and $b$ bits tell apart
# $2^b$ values, so we need $2^b \ge 3^k$, i.e. $b / k \ge \log_2 3$.

# %%
print(f"log2(3) = {math.log2(3):.4f} bits: the information in one ternary weight")
for k in range(1, 7):
    bits = math.ceil(k * math.log2(3))
    weights = "weights" if k > 1 else "weight "
    print(f"  {k} {weights}: 3^{k} = {3**k:4d} values need {bits:2d} bits = {bits / k:.3f} bits per weight")

# %% [markdown]
# Four weights need 7 bits, five need 8 ($3^5 = 243 \le 256$): five weights
# fit one byte exactly. That is the base-3 format of section 3. First the
# simpler one, which spends a whole 2 bits on each weight.
#
# ## 2. Two bits per weight
#
# Give each weight a 2-bit **code**, $c = w + 1$:
#
# | weight $w$ | $-1$ | $0$ | $+1$ |
# |---|---|---|---|
# | code $c = w + 1$ | `0b00` | `0b01` | `0b10` |
#
# (`0b11` is never used.) These are the codes of **I2_S**, bitnet.cpp's 2-bit
# format. Four codes fill one byte. We pack along the **last** dimension, the
# input features of a weight matrix $W \in \{-1, 0, 1\}^{m \times n}$, so each
# row (one output feature) is packed on its own and a kernel can decode one
# row without touching its neighbours. Weight $j$ of a row goes to byte
# $\lfloor j / 4 \rfloor$, at bits $2 (j \bmod 4)$ and $2 (j \bmod 4) + 1$,
# the first weight in the **lowest** bits:
#
# $$\text{byte}_i = c_{4i} + 4\, c_{4i+1} + 16\, c_{4i+2} + 64\, c_{4i+3}
#   = c_{4i} \,|\, (c_{4i+1} \ll 2) \,|\, (c_{4i+2} \ll 4) \,|\, (c_{4i+3} \ll 6).$$
#
# The two forms are equal because the four fields do not overlap: shifting by
# $2k$ multiplies by $4^k$, and an `|` of bits that never collide is a sum.
# A row of $n$ weights takes $\lceil n / 4 \rceil$ bytes; if $n$ is not a
# multiple of 4, the last byte is **padded** with code `0b01`, a zero weight,
# so that even a kernel that forgot to stop would add nothing.
#
# The worked example: the row $[-1, 0, +1, +1]$ has codes 0, 1, 2, 2, and
# its byte is $0 + 4 \cdot 1 + 16 \cdot 2 + 64 \cdot 2 = 164$. Read the byte
# in binary from the left and you see the codes in reverse order, $c_3$ first:

# %%
import matplotlib.pyplot as plt

row = [-1, 0, 1, 1]
codes = [w + 1 for w in row]
byte = sum(c << (2 * k) for k, c in enumerate(codes))
print("weights", row, " codes", codes, " byte", byte, "=", f"0b{byte:08b}")
# base 3 (section 3): the same row plus one padding trit 1, as five base-3 digits
trits = [w + 1 for w in row] + [1]
byte3 = sum(t * 3**k for k, t in enumerate(trits))
print("base 3: trits", trits, " byte", byte3)


def signed(v: int) -> str:
    return f"{v:+d}" if v else "0"


fig, (ax, ax3) = plt.subplots(2, 1, figsize=(8, 4.2))
bits = f"{byte:08b}"
for pos in range(8):  # drawn from bit 7 (left) to bit 0 (right), as binary is written
    bit = 7 - pos
    k = bit // 2  # which weight owns this bit
    ax.add_patch(plt.Rectangle((pos, 0), 1, 1, facecolor=f"C{k}", alpha=0.35, edgecolor="black"))
    ax.text(pos + 0.5, 0.5, bits[pos], ha="center", va="center", fontsize=16, family="monospace")
    ax.text(pos + 0.5, 1.15, f"bit {bit}", ha="center", fontsize=8)
for k in range(4):
    left = 6 - 2 * k
    ax.text(left + 1, -0.35, f"w{k} = {signed(row[k])}, code {codes[k]:02b}", ha="center", fontsize=9, color=f"C{k}")
ax.set(xlim=(-0.1, 8.1), ylim=(-0.6, 1.4), title=f"2 bits per weight: [-1, 0, +1, +1] -> 0b{bits} = {byte}")
ax.axis("off")
for pos in range(5):  # base-3 digits, most significant (3^4) on the left
    k = 4 - pos
    ax3.add_patch(plt.Rectangle((pos * 1.6, 0), 1.6, 1, facecolor=f"C{k}", alpha=0.35, edgecolor="black"))
    ax3.text(pos * 1.6 + 0.8, 0.5, str(trits[k]), ha="center", va="center", fontsize=16, family="monospace")
    ax3.text(pos * 1.6 + 0.8, 1.15, f"x {3**k}", ha="center", fontsize=8)
    who = "padding" if k == 4 else f"w{k} = {signed(row[k])}"
    ax3.text(pos * 1.6 + 0.8, -0.35, who, ha="center", fontsize=9, color=f"C{k}")
ax3.set(xlim=(-0.1, 8.1), ylim=(-0.6, 1.4), title=f"base 3, 5 weights per byte: {byte3} = 81*1 + 27*2 + 9*2 + 3*1 + 0")
ax3.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# Now the vectorized version, for a whole tensor at once. No Python loop over
# weights: a weight matrix of a real model has millions of them.
#
# *Hints.* Work in `torch.uint8` (`(w + 1).to(torch.uint8)`): the codes fit,
# and so does `2 << 6 = 128`. Pad the last dimension to a multiple of 4 with
# `torch.cat` (or `torch.nn.functional.pad(..., value=1)`), reshape it to
# `(..., n_bytes, 4)` so that the four weights of each byte sit in the last
# dimension, then combine `codes[..., 0] | codes[..., 1] << 2 | ...`.


# %% tags=["exercise"]
def pack_2bit(w: torch.Tensor) -> torch.Tensor:
    """Exercise 11.1: pack ternary weights 4 to a byte, 2 bits each, along the last dimension.

    w: (*, n) int8 with values in {-1, 0, 1} (you may assume w is ternary int8), n >= 1.
    Returns uint8 of shape (*, ceil(n / 4)): byte i of a row holds weights 4i..4i+3 as
    c0 | c1 << 2 | c2 << 4 | c3 << 6 with c = w + 1 (the first weight in the lowest bits);
    a row whose n is not a multiple of 4 is padded with code 0b01 (a zero weight).
    """
    raise NotImplementedError("Exercise 11.1: write pack_2bit(); check it with: python -m babybitnet check 11")


# %% [markdown]
# The worked example, a row of 3 (one padding code), and a small matrix, each
# against the package's `babybitnet.packing.pack_2bit`. Each row of the
# matrix is printed next to its bytes in binary; read every byte from the
# right, two bits at a time.

# %%
from babybitnet import packing

print("[-1, 0, 1, 1] ->", pack_2bit(torch.tensor([-1, 0, 1, 1], dtype=torch.int8)).tolist(), "(expected [164])")
print("[-1, 0, 1]    ->", pack_2bit(torch.tensor([-1, 0, 1], dtype=torch.int8)).tolist(), "(padded with 0b01: 100)")

torch.manual_seed(0)
w_small = torch.randint(-1, 2, (3, 6), dtype=torch.int8)
p_small = pack_2bit(w_small)
print(f"\nw: {tuple(w_small.shape)} {w_small.dtype} -> packed: {tuple(p_small.shape)} {p_small.dtype}")
for r in range(3):
    print(f"  {str(w_small[r].tolist()):28} -> {'  '.join(f'{b:08b}' for b in p_small[r].tolist())}")
print("same as the package:", torch.equal(p_small, packing.pack_2bit(w_small)))

# %% [markdown]
# Unpacking reverses it: shift each byte right by 0, 2, 4 and 6 bits, keep the
# two lowest bits with `& 0b11` (`& 3`), subtract 1, and drop the padding.
# The packed tensor does not say how many weights a row had (6 and 8 weights
# both take 2 bytes), so the caller passes `n`.
#
# *Hint.* `packed.unsqueeze(-1) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8)`
# gives shape `(..., n_bytes, 4)` in one go (broadcasting), in the order in
# which the weights were packed.


# %% tags=["exercise"]
def unpack_2bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Exercise 11.2: the inverse of pack_2bit.

    packed: (*, ceil(n / 4)) uint8 written by pack_2bit; n: the number of weights per row.
    Returns int8 of shape (*, n) with values in {-1, 0, 1}: the padding is dropped.
    """
    raise NotImplementedError("Exercise 11.2: write unpack_2bit(); check it with: python -m babybitnet check 11")


# %%
back = unpack_2bit(p_small, 6)
print("unpack_2bit(pack_2bit(w), 6) == w:", torch.equal(back, w_small), " dtype", back.dtype, tuple(back.shape))
w_big = torch.randint(-1, 2, (2, 5, 37), dtype=torch.int8)  # (B, T, C), 37 = 9 * 4 + 1
print("round trip of (2, 5, 37):", torch.equal(unpack_2bit(pack_2bit(w_big), 37), w_big))
print("same as the package:", torch.equal(unpack_2bit(p_small, 6), packing.unpack_2bit(p_small, 6)))

# %% [markdown]
# ## 3. Base 3: five weights per byte
#
# Section 1 showed that five ternary weights have $3^5 = 243$ combinations,
# and a byte has 256 values. So write the five codes $t_k = w_{5j+k} + 1 \in
# \{0, 1, 2\}$ (now called **trits**) as the digits of a number in base 3,
# the first weight in the lowest digit:
#
# $$\text{byte}_j = \sum_{k=0}^{4} t_{5j+k}\, 3^k
#   = t_{5j} + 3\, t_{5j+1} + 9\, t_{5j+2} + 27\, t_{5j+3} + 81\, t_{5j+4}
#   \;\in\; \{0, \dots, 242\}.$$
#
# That is $8 / 5 = 1.6$ bits per weight, within 1 % of $\log_2 3$. The
# padding trit is again 1 (a zero weight). The same row $[-1, 0, +1, +1]$,
# with one padding trit, is $0 + 3 + 18 + 54 + 81 = 156$ (the lower panel
# of the picture above). Reading digit $k$ back is
# $t_k = \lfloor \text{byte} / 3^k \rfloor \bmod 3$: **divisions**, where 2
# bits needed only shifts and masks.
#
# *Hints.* The sum of five products can reach 242, beyond int8, so compute in
# a wider integer type (`torch.int16` or `torch.int64`) and convert at the end.
# `torch.tensor([1, 3, 9, 27, 81])` times the `(..., n_bytes, 5)` trits, summed
# over the last dimension, is the whole formula.


# %% tags=["exercise"]
def pack_base3(w: torch.Tensor) -> torch.Tensor:
    """Exercise 11.3: pack ternary weights 5 to a byte as base-3 digits, along the last dimension.

    w: (*, n) int8 with values in {-1, 0, 1} (you may assume w is ternary int8), n >= 1.
    Returns uint8 of shape (*, ceil(n / 5)): byte j of a row is sum_k (w[5j + k] + 1) * 3**k
    for k = 0..4 (a value in 0..242); a row whose n is not a multiple of 5 is padded with trit 1.
    """
    raise NotImplementedError("Exercise 11.3: write pack_base3(); check it with: python -m babybitnet check 11")


# %%
print("[-1, 0, 1, 1]   ->", pack_base3(torch.tensor([-1, 0, 1, 1], dtype=torch.int8)).tolist(), "(expected [156])")
print("[1, 1, 1, 1, 1] ->", pack_base3(torch.ones(5, dtype=torch.int8)).tolist(), "(all +1: 3^5 - 1 = 242)")
print("[0] * 5         ->", pack_base3(torch.zeros(5, dtype=torch.int8)).tolist(), "(all zero: 11111 in base 3 = 121)")
p3 = pack_base3(w_big)
print(
    f"(2, 5, 37) int8 -> {tuple(p3.shape)} {p3.dtype}; same as the package:", torch.equal(p3, packing.pack_base3(w_big))
)

# %% [markdown]
# To unpack, divide by $3^k$ (integer division, `//`), keep the remainder
# modulo 3, subtract 1, drop the padding. Convert the bytes to a wider type
# first: `uint8` arithmetic has no room for mistakes.


# %% tags=["exercise"]
def unpack_base3(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Exercise 11.4: the inverse of pack_base3.

    packed: (*, ceil(n / 5)) uint8 written by pack_base3; n: the number of weights per row.
    Returns int8 of shape (*, n) with values in {-1, 0, 1}: the padding is dropped.
    """
    raise NotImplementedError("Exercise 11.4: write unpack_base3(); check it with: python -m babybitnet check 11")


# %%
print("unpack_base3([156], 4):", unpack_base3(torch.tensor([156], dtype=torch.uint8), 4).tolist())
print("round trip of (2, 5, 37):", torch.equal(unpack_base3(pack_base3(w_big), 37), w_big))
every_byte = torch.arange(243, dtype=torch.uint8)  # all 243 possible bytes, each one group of 5 weights
print(
    "every byte 0..242 unpacks and packs back to itself:",
    torch.equal(pack_base3(unpack_base3(every_byte, 1215)), every_byte),
)

# %% [markdown]
# ### Padding, and where to pack
#
# Padding costs bits. A row of babyBitNet has $n = 64$ or $256$ weights:
# multiples of 4, so 2 bits pack them without waste, but not of 5:
# $\lceil 64 / 5 \rceil = 13$ bytes hold 65 trits, one of them padding, which
# is $8 \cdot 13 / 64 = 1.625$ bits per weight. The package's `PackedBitLinear`
# therefore packs base 3 over the **whole matrix, flattened**, so that a
# matrix wastes at most 4 trits in all; 2 bits stay row by row, the layout a
# kernel wants (lesson 12). Here is the table of section 1 completed:

# %%
W = torch.randint(-1, 2, (256, 64), dtype=torch.int8)  # babyBitNet's feed-forward input layer: 256 x 64
formats = {
    "float32": 32 * W.numel(),
    "float16": 16 * W.numel(),
    "int8 (lesson 9)": 8 * W.numel(),
    "2 bits, row by row": 8 * pack_2bit(W).numel(),
    "base 3, row by row": 8 * pack_base3(W).numel(),
    "base 3, flattened": 8 * pack_base3(W.flatten()).numel(),
}
print(f"a {tuple(W.shape)} ternary matrix, {W.numel():,} weights")
print(f"{'format':22}{'bytes':>8}{'bits/weight':>13}{'x the limit':>13}")
for name, n_bits in formats.items():
    per = n_bits / W.numel()
    print(f"{name:22}{n_bits // 8:>8,}{per:>13.4f}{per / math.log2(3):>13.2f}")
print(f"{'limit log2(3)':22}{'':>8}{math.log2(3):>13.4f}{1:>13.2f}")

# %% [markdown]
# ### Why kernels still use 2 bits
#
# Base 3 is 20 % smaller than 2 bits, so why does bitnet.cpp's basic format,
# I2_S, spend 2 bits? Because of what decoding costs. A 2-bit field sits at a
# fixed bit position: one shift and one mask, the same for every byte, which
# vector instructions do on 16 or 32 bytes at a time. A base-3 digit is
# spread over the whole byte: getting it out takes a division and a modulo,
# which are slower (compilers turn a division by a constant into a
# multiplication and shifts, but that is still more work than a mask).
# And the groups do not line up: a row of 64 weights is 16 whole bytes in
# 2 bits, but 12.8 bytes in base 3, so finding weight $j$ takes $j / 5$.
# Formats built on the idea do exist (llama.cpp's TQ1_0 uses base-3 digits,
# 1.6875 bits per weight with its block scales, and bitnet.cpp's TL2 kernel
# arranges them so that a multiplication extracts them), but the simple,
# fast default is 2 bits. Time both decoders of the package on a
# 1024 x 4096 matrix (the ratio varies with the machine; this is vectorized
# torch, not a kernel):

# %%
import time

big = torch.randint(-1, 2, (1024, 4096), dtype=torch.int8)
packed = {"2bit": packing.pack_2bit(big), "base3": packing.pack_base3(big)}
decode_ms = {}
for fmt, p in packed.items():
    packing.unpack(p, big.shape[-1], fmt)  # warm-up
    t0 = time.perf_counter()
    for _ in range(5):
        out = packing.unpack(p, big.shape[-1], fmt)
    decode_ms[fmt] = (time.perf_counter() - t0) / 5 * 1e3
    print(f"{fmt:6} {p.numel():>9,} bytes  unpack {decode_ms[fmt]:6.1f} ms  correct: {torch.equal(out, big)}")
print(
    f"base 3 takes {1 - packed['base3'].numel() / packed['2bit'].numel():.0%} fewer bytes and is "
    f"{decode_ms['base3'] / decode_ms['2bit']:.1f}x slower to decode here"
)

# %% [markdown]
# ## 4. Real file sizes
#
# Bits per weight are only part of the story: a model file also holds what
# is *not* ternary. In babyBitNet that is the token and position embeddings,
# `lm_head` (with its bias), the norms, and one scale $s_w$ per BitLinear (12
# for the q, k, v layer, whose heads keep their own scales), all in float32,
# plus the file's header. `memory_report(preset)`, in
# `babybitnet.experiments.bench`, builds a babyBitNet of a preset and writes
# it four ways into a temporary folder: the float32 state dict and an fp16
# copy (`torch.save`), and the 2-bit and base-3 packed files (`save_packed`,
# below), then measures the files.

# %%
from babybitnet.course import show_markdown
from babybitnet.experiments.bench import memory_report, memory_table

live = memory_report("seed")
print(
    f"seed preset: {live['params']:,} parameters, {live['ternary_weights']:,} of them ternary "
    f"in {live['bitlinear_layers']} BitLinear layers, {live['full_precision_params']:,} full precision\n"
)
show_markdown(memory_table([live]))

# %% [markdown]
# The same report for the seed size and for nanoGPT's size (6 layers of
# width 384, 10.8M parameters, the model of Karpathy's "Let's build GPT"),
# written by `python -m babybitnet bench memory` and shipped with the
# package:

# %%
from babybitnet.experiments.study import measured

bench = measured("bench_memory")
print(f"`{bench['command']}`\n")
show_markdown(memory_table(bench["reports"]))
same = all(live["formats"][f]["bytes"] == bench["reports"][0]["formats"][f]["bytes"] for f in ("2bit", "base3"))
print("\nthe live seed report has the same packed file sizes:", same)

# %% [markdown]
# Split each file into its ternary weights and everything else, and the
# difference between the two sizes shows:

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, rep in zip(axes, bench["reports"], strict=True):
    names = list(rep["formats"])
    total = [rep["formats"][f]["bytes"] / 2**20 for f in names]
    weights = []
    for f in names:  # the ternary weights' share of the file
        info = rep["formats"][f]
        weights.append(info.get("packed_weight_bytes", rep["ternary_weights"] * info["bits_per_weight"] / 8) / 2**20)
    rest = [t - w for t, w in zip(total, weights, strict=True)]
    ax.bar(names, weights, color="C0", label="BitLinear weights")
    ax.bar(names, rest, bottom=weights, color="C1", label="everything else: embeddings, lm_head, norms, scales, header")
    for i, f in enumerate(names):
        ax.text(i, total[i], f"{rep['formats'][f]['ratio_vs_fp32']:.1f}x", ha="center", va="bottom")
    ax.set(ylabel="file size (MiB)", title=f"{rep['preset']} preset, {rep['params']:,} parameters")
    ax.grid(alpha=0.3, axis="y")
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=2)
fig.suptitle("babyBitNet's file in four formats (label: smaller than fp32 by)")
fig.tight_layout(rect=(0, 0.07, 1, 1))
plt.show()

# %%
for rep in bench["reports"]:
    fp32, two = rep["formats"]["fp32"]["bytes"], rep["formats"]["2bit"]
    rest = two["bytes"] - two["packed_weight_bytes"]
    print(
        f"{rep['preset']:8} full-precision share: {rep['full_precision_params'] / rep['params']:5.1%} of the "
        f"parameters, {rest / two['bytes']:5.1%} of the 2-bit file; "
        f"even with free weights the file would shrink at most {fp32 / rest:.0f}x"
    )

# %% [markdown]
# The 2-bit weights are 16 times smaller than float32 and the base-3 ones 20
# times, but a file shrinks by less because the rest stays float32:
#
# - At the **seed** size the full-precision parameters are only 5 % of the
#   parameters, but 5 % at 32 bits is as many bytes as the other 95 % at 2
#   bits: they make up half of the packed file. So the file shrinks about 8x
#   (2 bits) or 9x (base 3), not 16x or 20x; even weights that cost nothing
#   would leave a file only 16x smaller.
# - At **nanoGPT**'s size (10.8M parameters) the embeddings and norms are
#   1.5 % of the parameters and a fifth of the file: it shrinks 13x (2 bits)
#   and 15x (base 3).
#
# The larger the model, the smaller the full-precision share, and the closer
# the ratio gets to that of the weights alone. The BitNet b1.58 paper reports
# the same trend, measured as memory against LLaMA in fp16 (not as a file
# against float32): 2.08 GB against 0.80 GB at 700M parameters (2.6x), and
# 7.89 GB against 2.22 GB at 3B (**3.55x** less memory).
#
# ## 5. Save, load, generate
#
# Now a real model. Train a small babyBitNet for a few hundred steps (the
# `quick` preset: the seed's model and settings), then save it three ways:
# the training checkpoint of lesson 5 (`save_checkpoint`: every latent
# weight in float32), and the packed file in both formats (`save_packed`).

# %%
import tempfile
from pathlib import Path

from babybitnet.data import load_dataset
from babybitnet.files import load_packed, save_checkpoint, save_packed
from babybitnet.presets import build_model
from babybitnet.train import train

tok, train_data, val_data = load_dataset()
model, tcfg = build_model("quick", "bitnet", tok.vocab_size, eval_iters=10)
t0 = time.perf_counter()
run = train(model, train_data, val_data, tcfg, "cpu", progress=False)
print(
    f"babyBitNet, {run['params']:,} parameters: val loss {run['history']['val'][0]:.3f} -> {run['final_val']:.3f} "
    f"after {tcfg.max_iters} steps ({time.perf_counter() - t0:.0f} s)"
)
model.eval()

tmp = Path(tempfile.mkdtemp(prefix="babybitnet-lesson11-"))
files = {"checkpoint (fp32)": save_checkpoint(tmp / "bitnet.pt", model, tok)}
for fmt in ("2bit", "base3"):
    files[f"packed, {fmt}"] = save_packed(tmp / f"bitnet-{fmt}.safetensors", model, tok, fmt)
ckpt_bytes = files["checkpoint (fp32)"].stat().st_size
for name, path in files.items():
    size = path.stat().st_size
    ratio = f"  {ckpt_bytes / size:.2f}x smaller than the checkpoint" if size < ckpt_bytes else ""
    print(f"  {name:18} {path.name:26} {size:>9,} bytes{ratio}")

# %% [markdown]
# Load the packed files back. `load_packed` returns a GPT whose BitLinear
# layers are `PackedBitLinear`: they keep only the packed bytes and the
# scales, unpack the weights in every forward pass and call lesson 9's
# `int_linear`, so they compute what the eval-mode BitLinear computes. The
# 2-bit buffers are row-by-row `pack_2bit` of the ternary weights; yours
# gives the same bytes:

# %%
loaded = {fmt: load_packed(tmp / f"bitnet-{fmt}.safetensors") for fmt in ("2bit", "base3")}
packed_model, tok2, _ = loaded["2bit"]
print(packed_model.blocks[0].mlp.fc)
for name in ("blocks.0.attn.qkv", "blocks.0.mlp.fc", "blocks.3.mlp.proj"):
    w_t, _ = model.get_submodule(name).quantized_weight()
    layer2, layer3 = packed_model.get_submodule(name), loaded["base3"][0].get_submodule(name)
    print(
        f"{name:18} {tuple(w_t.shape)} -> {tuple(layer2.packed.shape)} bytes (2 bits) "
        f"/ {tuple(layer3.packed.shape)} (base 3, flattened); "
        f"yours equal: {torch.equal(pack_2bit(w_t), layer2.packed)}, "
        f"{torch.equal(pack_base3(w_t.flatten()), layer3.packed)}"
    )

# %% [markdown]
# Same logits? Same text? Greedy generation (`temperature=0`) picks the most
# likely character at each step, so one differing logit anywhere could change
# the text. Sampling (`temperature=1`) with the same random generator draws
# the same characters only if the probabilities are the same too.

# %%
x = val_data[:256].reshape(8, 32)
prompt = torch.tensor([tok.encode("\n")])
with torch.no_grad():
    logits_ref, _ = model(x)
    greedy_ref = model.generate(prompt, 200, temperature=0)
    sampled_ref = model.generate(prompt, 300, generator=torch.Generator().manual_seed(0))
    for fmt, (m, tok_, _) in loaded.items():
        logits, _ = m(x)
        greedy = m.generate(prompt, 200, temperature=0)
        sampled = m.generate(prompt, 300, generator=torch.Generator().manual_seed(0))
        print(
            f"{fmt:6} max |logits - eval-mode model's| = {(logits - logits_ref).abs().max().item():.3g}; "
            f"token-identical text: greedy {torch.equal(greedy, greedy_ref)}, "
            f"sampled {torch.equal(sampled, sampled_ref)}; same tokenizer: {tok_.chars == tok.chars}"
        )
print("\ngreedy:", tok.decode(greedy_ref[0, 1:].tolist())[:120])
print("\nsampled:\n" + tok.decode(sampled_ref[0].tolist()))

# %% [markdown]
# The same numbers, from a file a fraction of the size. (The text is what 600
# steps can do: greedy decoding of a young model falls into a loop, sampling
# looks more like Shakespeare. `make run` or the `recipe` preset trains far
# longer.)
#
# ### Why safetensors, and the checksum
#
# `torch.save` writes a pickle, and unpickling can run arbitrary code: loading
# a stranger's `.pt` file means trusting it (the package's `load_checkpoint`
# passes `weights_only=True` to `torch.load` for that reason). A **safetensors** file is a JSON
# header (the names, dtypes and shapes of the tensors, plus our metadata: the
# model's config, the tokenizer's characters, the format, a checksum) followed
# by the raw bytes; reading it never runs code. safetensors checks that the
# header's layout is consistent, but not the bytes themselves: a flipped bit
# in a weight would load silently. So `save_packed` adds a SHA-256 checksum of
# every tensor, and `load_packed` refuses a file that does not match it:

# %%
damaged = tmp / "damaged.safetensors"
data = bytearray((tmp / "bitnet-2bit.safetensors").read_bytes())
data[-1] ^= 0b01  # flip one bit of the last tensor's last byte
damaged.write_bytes(bytes(data))
try:
    load_packed(damaged)
except ValueError as e:
    print("load_packed refused it:", str(e).replace(f"{tmp}/", ""))  # the message names the file; drop the temp folder

# %% [markdown]
# ### From the command line
#
# The same steps, with a full-length training run:
#
# ```
# python -m babybitnet train --preset seed --model bitnet --out runs/bitnet.pt
# python -m babybitnet pack runs/bitnet.pt runs/bitnet.safetensors        # --format base3 for 1.6 bits
# python -m babybitnet sample --packed runs/bitnet.safetensors
# ```
#
# `pack` prints both sizes and writes a JSON summary next to the packed file.

# %%
import shutil

shutil.rmtree(tmp)  # the temporary files of this lesson

# %% [markdown]
# ## What we have
#
# - A ternary weight holds $\log_2 3 \approx 1.585$ bits; float32 spends 32 on
#   it, int8 8.
# - **2 bits**: codes $w + 1$ (bitnet.cpp's I2_S), four per byte along the
#   last dimension, the first weight in the lowest bits, padding `0b01`;
#   decoded with shifts and masks.
# - **Base 3**: five trits per byte, $\sum_k (w_k + 1)\, 3^k \le 242$, 1.6
#   bits per weight, padding trit 1; 20 % smaller, decoded with divisions.
# - Real files: 8x (2 bits) to 9x (base 3) smaller than float32 at the seed's
#   size, 13x to 15x at nanoGPT's, because the embeddings, `lm_head` and the
#   norms stay float32 and weigh less as the model grows.
# - `save_packed` / `load_packed`: a safetensors file with a checksum; the
#   loaded model gives the eval-mode model's logits and its greedy text.
#
# The packed model still unpacks its weights to int8 before every matmul.
# Lesson 12 computes straight from the packed bytes, with additions only.
#
# The reference is `babybitnet/packing.py`, `babybitnet/packed.py` and
# `babybitnet/files.py` (`save_packed`, `load_packed`). Check your exercises with:
#
# ```
# python -m babybitnet check 11
# ```
