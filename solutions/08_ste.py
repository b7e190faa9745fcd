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
# # Lesson 8: the straight-through estimator
#
# Lessons 6 and 7 made the numbers small: weights become $-1, 0, +1$ times one
# scale, activations become 8-bit integers times one scale per token. Both go
# through `round`. That is fine for *using* a model, but we want to *train* one
# whose forward pass is quantized, and training follows the gradient. The
# gradient of `round` is zero wherever it exists. Quantize naively and the
# optimizer gets told "nothing you change makes any difference".
#
# This lesson
#
# 1. shows that zero gradient with autograd, on a picture and on a tiny model;
# 2. fixes it with the **straight-through estimator** (STE): round in the
#    forward pass, pretend it was the identity in the backward pass, written
#    two ways (the `detach` trick, and a `torch.autograd.Function`);
# 3. checks gradients numerically, and sees why the STE's gradient is *not* the
#    true gradient of anything: it is a surrogate, and a useful one;
# 4. fits a tiny model with ternary weights with and without the STE.

# %% tags=["imports"]
import torch

from babybitnet.quant import ste, ternarize, weight_quant

# %% [markdown]
# ## 1. Rounding kills the gradient
#
# $\operatorname{round}(x)$ is a staircase: flat between the half-integers,
# a jump of 1 at each of them. Its derivative is
#
# $$\frac{d}{dx}\operatorname{round}(x) = \begin{cases} 0 & x \notin \mathbb{Z} + \tfrac12 \\
#   \text{undefined} & x \in \mathbb{Z} + \tfrac12 .\end{cases}$$
#
# PyTorch follows the math: the backward of `round` returns zeros everywhere
# (it has to return *something* at the jumps, and chooses 0 there too).

# %%
x = torch.linspace(-2.5, 2.5, 1001, requires_grad=True)
y = x.round()
y.sum().backward()
print("round(x) takes the values", sorted(set(y.detach().tolist())))
print("d round(x) / dx from autograd: all zero?", bool((x.grad == 0).all()), f"({x.numel()} points)")

# %%
import matplotlib.pyplot as plt

xs = x.detach()
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(xs, y.detach(), label="round(x): forward")
axes[0].plot(xs, xs, "--", color="gray", label="x: what the STE pretends")
axes[0].set(title="forward pass", xlabel="x")
axes[1].plot(xs, x.grad, label="autograd's d round / dx (zero)")
axes[1].plot(xs, torch.ones_like(xs), "--", color="C2", label="STE's d round / dx (one)")
axes[1].set(title="backward pass", xlabel="x", ylim=(-0.2, 1.3))
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The same happens to a whole ternary weight matrix. `weight_quant(W)` from
# lesson 6 computes $W_q = \operatorname{clamp}(\operatorname{round}(W s_w), -1, 1) / s_w$
# with $s_w = 1 / \operatorname{mean}|W|$. The chain rule through it multiplies
# by the zero of `round` for every path but one: the path through the scale
# $s_w$, which depends smoothly on $W$. So the gradient with respect to the
# *latent* (full-precision) weights only says "make all weights a bit bigger or
# smaller together". It never says "this weight should flip from 0 to +1":

# %%
torch.manual_seed(0)
W = torch.randn(4, 8, requires_grad=True)
xb, target = torch.randn(32, 8), torch.randn(32, 4)
loss = ((xb @ weight_quant(W).T - target) ** 2).mean()
loss.backward()
g = W.grad
w_t, s_w = ternarize(W.detach())
per_sign = g / W.detach().sign()  # the gradient divided by the sign of each weight
print(f"weights that round to 0: {(w_t == 0).sum().item()} of {w_t.numel()}, yet none has a zero gradient")
print(f"gradient / sign(W): min {per_sign.min():.6f}, max {per_sign.max():.6f}: one number for all {W.numel()} weights")

# %% [markdown]
# One number for every weight, times its sign: the gradient is
# $c \cdot \operatorname{sign}(W)$, which only says "make every $|W_{ij}|$
# bigger" (or smaller), because that is how the scale
# $1/s_w = \operatorname{mean}|W|$ changes. It never says which weight should
# flip from 0 to +1. Training needs a better idea.
#
# ## 2. The straight-through estimator
#
# Bengio, Léonard and Courville (2013) popularised the fix: use the quantized
# value in the forward pass, but in the backward pass treat the quantizer as
# if it were the identity,
#
# $$\text{forward: } y = \operatorname{round}(x), \qquad
#   \text{backward: } \frac{\partial L}{\partial x} := \frac{\partial L}{\partial y}.$$
#
# In PyTorch the shortest way is the **detach trick**:
#
# $$y = x + \operatorname{detach}\big(\operatorname{round}(x) - x\big).$$
#
# The value is $x + \operatorname{round}(x) - x = \operatorname{round}(x)$.
# For autograd, the detached part is a constant, so $\partial y / \partial x = 1$.


# %% tags=["exercise"]
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Exercise 8.1: round to the nearest integer, with a straight-through gradient (the detach trick).

    x: a float tensor of any shape (even empty). Returns a tensor of the same shape and dtype
    whose values are torch.round(x) (ties to even, as torch.round: 0.5 -> 0, 1.5 -> 2) and
    whose gradient with respect to x is the identity: backward of (w * round_ste(x)).sum() gives w.
    """
    ### BEGIN SOLUTION
    return x + (x.round() - x).detach()
    ### END SOLUTION


# %%
x = torch.tensor([-1.7, -0.5, 0.2, 0.5, 1.5, 2.49], requires_grad=True)
w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
y = round_ste(x)
(w * y).sum().backward()
print("round_ste(x):", y.tolist())
print("d/dx sum(w * round_ste(x)):", x.grad.tolist(), " (w is", w.tolist(), ")")

# %% [markdown]
# The detach trick costs three operations in the graph (a subtraction, the
# detach, an addition). The same idea as **one** autograd node is a
# `torch.autograd.Function`: you write `forward` (what to compute) and
# `backward` (given $\partial L / \partial y$, return $\partial L / \partial x$)
# yourself, and autograd trusts you. Both are static methods; `ctx` is a place
# to keep tensors for the backward pass (the STE needs none).


# %% tags=["exercise"]
class RoundSTE(torch.autograd.Function):
    """Exercise 8.2: round as an autograd.Function whose backward passes the gradient straight through.

    RoundSTE.apply(x): x a float tensor of any shape. forward returns torch.round(x) (same shape
    and dtype); backward(ctx, grad) returns the gradient unchanged (d round / dx := 1).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return x.round()
        ### END SOLUTION

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        ### BEGIN SOLUTION
        return grad
        ### END SOLUTION


# %%
x1 = torch.tensor([-1.7, -0.5, 0.2, 0.5, 1.5, 2.49], requires_grad=True)
y1 = RoundSTE.apply(x1)
(w * y1).sum().backward()
print("RoundSTE:", y1.tolist(), "gradient:", x1.grad.tolist())
print("one node in the graph:", type(y1.grad_fn).__name__, "  the detach trick ends in:", type(y.grad_fn).__name__)

# %% [markdown]
# ## 3. Checking gradients
#
# When you write a `backward` by hand, check it. PyTorch's
# `torch.autograd.gradcheck(f, x)` compares your backward with **finite
# differences**, $\frac{\partial f_i}{\partial x_j} \approx \frac{f_i(x + h e_j) - f_i(x - h e_j)}{2h}$,
# in float64. Try it on `RoundSTE`:

# %%
x64 = torch.tensor([0.3, -1.2, 2.7], dtype=torch.float64, requires_grad=True)
print("gradcheck(RoundSTE.apply):", torch.autograd.gradcheck(RoundSTE.apply, (x64,), raise_exception=False))
print("finite differences: ", ((RoundSTE.apply(x64 + 1e-6) - RoundSTE.apply(x64 - 1e-6)) / 2e-6).tolist())

# %% [markdown]
# It **fails**, and it should: finite differences measure the true derivative
# of round, which is 0, while our backward says 1. The STE gradient is not the
# derivative of the function we compute. It is a *surrogate*: the derivative of
# a different, smooth function (the identity) that follows round on average.
#
# So what *can* we check? That both implementations compute the same surrogate.
# `torch.autograd.functional.jacobian` builds the full matrix
# $\partial y_i / \partial x_j$ from the backward pass; for an elementwise STE
# it must be the identity matrix, for both versions:

# %%
from torch.autograd.functional import jacobian

xr = torch.randn(6, dtype=torch.float64) * 3
J_detach, J_function = jacobian(round_ste, xr), jacobian(RoundSTE.apply, xr)
print("same values:", torch.equal(round_ste(xr), RoundSTE.apply(xr)))
print(
    "same Jacobian:",
    torch.equal(J_detach, J_function),
    " identity:",
    torch.equal(J_detach, torch.eye(6, dtype=torch.float64)),
)

# %% [markdown]
# What does the surrogate mean for a model? Take the loss of the tiny ternary
# layer of section 1 and move **one** latent weight while keeping the others
# (we pick one that rounds to 0 and whose STE gradient is the largest). The
# loss is a staircase with sloped steps: it moves smoothly while only the scale
# moves, and jumps where $W_{ij} s_w$ crosses $\pm\frac12$ and the ternary value
# flips. The true derivative (autograd without the STE, which finite
# differences confirm) sees only the slope of the current step. The STE
# gradient is $\partial L / \partial W_q$, the slope the loss would have if the
# weight were not quantized: it points across the steps, towards the
# direction in which flipping the weight helps.


# %%
def ternary_loss(W: torch.Tensor, use_ste: bool) -> torch.Tensor:
    w_q = ste(W, weight_quant(W)) if use_ste else weight_quant(W)
    return ((xb @ w_q.T - target) ** 2).mean()


W0 = W.detach().clone()
Wg = W0.clone().requires_grad_()
ternary_loss(Wg, use_ste=True).backward()
ste_grad = Wg.grad
i, j = divmod(int((ste_grad.abs() * (w_t == 0)).argmax()), W0.shape[1])  # a weight at 0, largest STE gradient

grads = {}
for use_ste in (False, True):
    Wg = W0.clone().requires_grad_()
    ternary_loss(Wg, use_ste).backward()
    grads[use_ste] = Wg.grad[i, j].item()
h = 1e-3
Wp, Wm = W0.clone(), W0.clone()
Wp[i, j] += h
Wm[i, j] -= h
finite = (ternary_loss(Wp, False) - ternary_loss(Wm, False)).item() / (2 * h)
wij, l0 = W0[i, j].item(), ternary_loss(W0, False).item()
print(
    f"W[{i},{j}] = {wij:.3f} (rounds to 0): finite difference {finite:.4f}, "
    f"autograd without STE {grads[False]:.4f}, STE {grads[True]:.4f}"
)

ts = torch.linspace(wij - 3, wij + 3, 601)
curve = []
for t in ts:
    Wt = W0.clone()
    Wt[i, j] = t
    curve.append(ternary_loss(Wt, use_ste=False).item())

fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(ts, curve, label=f"loss as W[{i},{j}] moves (ternary forward pass)")
span = torch.tensor([wij - 1.5, wij + 1.5])
ax.plot(span, l0 + grads[True] * (span - wij), "--", color="C2", label=f"STE gradient: slope {grads[True]:.3f}")
ax.plot(span, l0 + grads[False] * (span - wij), ":", color="C3", label=f"true gradient: slope {grads[False]:.3f}")
ax.plot([wij], [l0], "ko", label=f"current W[{i},{j}]")
ax.set(
    xlabel=f"latent weight W[{i},{j}]",
    ylabel="loss",
    title="A quantized loss is a staircase; the STE sees across the steps",
)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Training with and without the STE
#
# Now a real fit. We make a regression problem whose answer *is* ternary,
# $y = X W_\star^\top + \text{noise}$ with $W_\star \in \{-\tfrac12, 0, \tfrac12\}^{8 \times 16}$,
# and train a $16 \to 8$ linear layer from random latent weights with Adam, three ways:
#
# - **full precision**: $\hat y = X W^\top$, the baseline;
# - **ternary + STE**: $\hat y = X W_q^\top$ with `ste(W, weight_quant(W))`, the
#   detach trick of exercise 8.1 applied to the whole quantizer (also straight
#   through the clamp);
# - **ternary, no STE**: $\hat y = X W_q^\top$ with `weight_quant(W)` and
#   autograd's true gradient.

# %%
torch.manual_seed(1)
X = torch.randn(512, 16)
W_star = 0.5 * torch.randint(-1, 2, (8, 16)).float()
Y = X @ W_star.T + 0.1 * torch.randn(512, 8)
W_init = 0.1 * torch.randn(8, 16)

variants = {
    "full precision": lambda W: W,
    "ternary + STE": lambda W: ste(W, weight_quant(W)),
    "ternary, no STE": lambda W: weight_quant(W),
}
losses, final = {}, {}
for name, quantize in variants.items():
    W = W_init.clone().requires_grad_()
    opt = torch.optim.Adam([W], lr=0.01)
    losses[name] = []
    for _ in range(300):
        loss = ((X @ quantize(W).T - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[name].append(loss.item())
    final[name] = W.detach()

t0, _ = ternarize(W_init)
print(f"{'at init':16} ternary pattern = W_star's: {(t0 == W_star.sign()).float().mean():.0%}")
for name, W in final.items():
    t, s = ternarize(W)
    match, flipped = (t == W_star.sign()).float().mean(), (t != t0).sum().item()
    print(
        f"{name:16} final loss {losses[name][-1]:.4f}   ternary pattern = W_star's: {match:.0%}   "
        f"entries flipped since init: {flipped} of {t.numel()}   1/s_w = {1 / s.item():.3f}"
    )

fig, ax = plt.subplots(figsize=(8, 4))
for name, curve in losses.items():
    ax.plot(curve, label=name)
ax.axhline(0.01, color="gray", ls=":", label="the noise: 0.1² = 0.01")
ax.set(yscale="log", xlabel="Adam step", ylabel="mean squared error", title="Fitting a ternary target")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the printout above the picture. With the STE the ternary layer finds
# (almost all of) $W_\star$'s pattern and its loss falls to the noise floor,
# like full precision. The spikes are latent weights sitting right at a
# rounding boundary: one Adam step flips a ternary value, the next flips it
# back.
#
# Without the STE the loss does not move. Many entries *do* flip, but not
# towards $W_\star$: the true gradient is $c \cdot \operatorname{sign}(W)$
# (section 1), the same push on every $|W_{ij}|$, and Adam turns it into
# steps of the same size for every weight. All weights shrink together (see
# $1/s_w$), and small ones cross zero by accident; none flips because it
# should, so the pattern stays about as far from $W_\star$'s as it was at init.
#
# ## What we have
#
# - `round` (and so every quantizer) has zero gradient almost everywhere:
#   autograd's true gradient cannot train quantized weights.
# - The **straight-through estimator** uses the quantized value forward and the
#   identity backward: `x + (q(x) - x).detach()`, or an `autograd.Function`
#   whose backward returns its input.
# - `gradcheck` rightly rejects it: the STE gradient is a **surrogate**, not a
#   derivative. Check STE code against another STE implementation instead.
# - With the STE, the latent full-precision weights accumulate small updates
#   until a ternary value flips; that is how a ternary network learns.
#
# The package has both: `babybitnet.quant.ste` and `babybitnet.quant.RoundSTE`.
# Lesson 9 puts the STE, the ternary weights and the 8-bit activations together
# into one layer, BitLinear. Check your exercises with:
#
# ```
# python -m babybitnet check 8
# ```
