"""One new token's attention over the static KV cache in ONE kernel (decode), with the cache write.

At decode each layer's attention is a handful of small torch kernels: two ``index_copy_`` that
write the new key and value into the cache, the mask (``positions <= pos``) turned into an
additive one, and ``scaled_dot_product_attention`` over every cached position, masked or not.
At batch 1 each is a few microseconds of latency and none has much to do: at BitNet b1.58 2B4T's
width they cost about as much as the layer's four packed matmuls (the profile in lesson 13).

:func:`decode_attention` does all of it in one launch. Its programs split the work by (sequence,
query head) and by *chunk* of cached positions (FlashAttention's "flash-decoding"): at batch 1 one
program per head would leave most of the GPU idle while each walks the whole cache.

1. read the new token's q, k and v (one row of ``head_size`` each); the program of the first query
   head of each key/value head, in chunk 0, writes k and v into the cache at ``pos`` (the others read
   only the positions before it: no race);
2. an *online softmax* over the chunk's cached positions (below ``pos``), block by block, keeping the
   running maximum ``m``, the sum ``l`` of ``exp(s - m)`` and the weighted sum ``acc`` of the values,
   each rescaled by ``exp(m_old - m_new)`` when the maximum grows; chunk 0 starts its sums with the
   new token's own score. Only the positions written so far are read: no mask, no wasted reads;
3. each chunk leaves its (m, l, acc) in a scratch buffer and counts itself done (an atomic add);
   the head's last chunk to finish combines them, each weighted by ``exp(m_chunk - m_max)``, and
   sets the count back to zero for the next call. While every cached position falls in chunk 0 (the
   first BLOCK_T tokens of a generation) that chunk writes the output itself: no partial sums, no count.

``pos`` is read on the GPU (the static cache's tensor), so the kernel never waits for the host
and a CUDA graph can replay it at every position. The numbers are those of
``scaled_dot_product_attention`` up to float rounding (float32 sums in another order).

On Hopper GPUs the kernel takes part in *programmatic dependent launch* (PDL, see
:mod:`babybitnet.kernels.triton_common`): it may start while the layer before it (the one that
computes q, k and v) still runs, and reads ``pos`` and the cached keys and values, written by earlier
steps, before it waits for that layer's outputs.
"""

from __future__ import annotations

import torch

from babybitnet.kernels.triton_common import interpreted, pdl_ready, pdl_wait, require_triton, tl, use_pdl
from babybitnet.kernels.triton_common import triton as triton

MAX_SPLITS = 64  # chunks of positions per head at most (the combine holds one row of head_size per chunk)
BLOCK_T = 64  # positions per block of the loop and per chunk at most (keys and values of one block fit in registers)

if triton is not None:

    @triton.jit
    def cache_block(kc_ptr, vc_ptr, cache, t0, end, D, d, d_ok, BLOCK_T: tl.constexpr):
        """The cached keys and values at positions t0 .. t0 + BLOCK_T - 1 as float32 (BLOCK_T, BLOCK_D), zero
        from ``end`` on (those are not read)."""
        t = t0 + tl.arange(0, BLOCK_T)
        ok = (t < end)[:, None] & d_ok[None, :]
        at = cache + t[:, None] * D + d[None, :]
        keys = tl.load(kc_ptr + at, mask=ok, other=0.0).to(tl.float32)
        values = tl.load(vc_ptr + at, mask=ok, other=0.0).to(tl.float32)
        return keys, values

    @triton.jit
    def decode_attention_kernel(
        q_ptr, k_ptr, v_ptr,  # the new token's q (B, H, D), k and v (B, KH, D), any batch and head strides
        kc_ptr, vc_ptr,  # the caches (B, KH, T, D), contiguous
        y_ptr,  # (B, H, D) contiguous: the heads side by side, as proj reads them
        pos_ptr,  # (1,) int64: the new token's position
        part_ptr,  # (B * H, SPLITS, BLOCK_D + 2) float32: each chunk's m, l and acc (SPLITS > 1)
        count_ptr,  # (B * H,) int32, zero: how many chunks of each head are done (SPLITS > 1)
        H, REP, D, T, CHUNK,
        stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh,
        scale,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr, USE_PDL: tl.constexpr,
    ):  # fmt: skip
        bh, c = tl.program_id(0), tl.program_id(1)  # (sequence, query head), chunk of positions
        b, h = bh // H, bh % H
        kh = h // REP  # the key/value head this query head shares
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        # pos and the cached positions before it were written by earlier decode steps, long finished: with
        # PDL they are read before the wait, while the layer before (which wrote q, k, v) still runs
        pos = tl.load(pos_ptr).to(tl.int32)
        chunks = tl.maximum(tl.cdiv(pos, CHUNK), 1)  # chunks holding cached positions (chunk 0 always: the new token)
        if c < chunks:
            cache = (b * (H // REP) + kh) * T * D  # this key/value head's (T, D) block of the caches
            start = c * CHUNK
            end = tl.minimum(start + CHUNK, pos)  # this chunk's positions written before: start .. end - 1
            keys, values = cache_block(kc_ptr, vc_ptr, cache, start, end, D, d, d_ok, BLOCK_T)
            pdl_wait(USE_PDL)  # q, k, v are the previous kernel's outputs
            q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d, mask=d_ok, other=0.0).to(tl.float32)
            k_new = tl.load(k_ptr + b * stride_kb + kh * stride_kh + d, mask=d_ok, other=0.0)
            v_new = tl.load(v_ptr + b * stride_vb + kh * stride_vh + d, mask=d_ok, other=0.0)
            # as torch's index_copy_(k.to(cache dtype)) then cache.to(q dtype): k and v rounded to the cache's
            k_new = k_new.to(kc_ptr.dtype.element_ty).to(tl.float32)
            v_new = v_new.to(vc_ptr.dtype.element_ty).to(tl.float32)
            if c == 0 and h % REP == 0:  # one writer per key/value head
                tl.store(kc_ptr + cache + pos * D + d, k_new, mask=d_ok)
                tl.store(vc_ptr + cache + pos * D + d, v_new, mask=d_ok)
            pdl_ready(USE_PDL)  # the next kernel may launch now; it waits for all of this one's outputs anyway
            # the online softmax; chunk 0 starts with the new token: m = its score, l = exp(0) = 1, acc = its value
            first = c == 0
            m = tl.where(first, tl.sum(q * k_new, axis=0) * scale, float("-inf"))
            l = tl.where(first, 1.0, 0.0)  # FlashAttention's names
            acc = tl.where(first, v_new, 0.0)
            for t0 in range(start, end, BLOCK_T):
                # the next block is requested before this one's arithmetic (past end: masked, nothing read)
                next_keys, next_values = cache_block(kc_ptr, vc_ptr, cache, t0 + BLOCK_T, end, D, d, d_ok, BLOCK_T)
                t = t0 + tl.arange(0, BLOCK_T)
                s = tl.where(t < end, tl.sum(keys * q[None, :], axis=1) * scale, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, axis=0))
                p = tl.exp(s - m_new)
                alpha = tl.exp(m - m_new)  # rescales what was summed under the old maximum
                acc = acc * alpha + tl.sum(p[:, None] * values, axis=0)
                l = l * alpha + tl.sum(p, axis=0)
                m = m_new
                keys, values = next_keys, next_values
            if SPLITS == 1 or chunks == 1:  # all the positions in one chunk (early in a generation): no merge
                tl.store(y_ptr + bh * D + d, acc / l, mask=d_ok)
            else:
                # flash-decoding: every chunk leaves its (m, l, acc); the head's last chunk to finish combines them
                row = part_ptr + (bh * SPLITS + c) * (BLOCK_D + 2)
                tl.store(row + d, acc)
                tl.store(row + BLOCK_D, m)
                tl.store(row + BLOCK_D + 1, l)
                # every thread's stores, then one thread's release at GPU scope: the last chunk to count sees them
                tl.debug_barrier()
                done = tl.atomic_add(count_ptr + bh, 1, sem="acq_rel")
                if done == chunks - 1:
                    tl.atomic_xchg(count_ptr + bh, 0)  # zero again for the next call
                    j = tl.arange(0, SPLITS)
                    rows = part_ptr + (bh * SPLITS + j) * (BLOCK_D + 2)
                    live = j < chunks
                    # .cg: from the L2 cache, where the other programs' stores are (never a stale L1 line)
                    m_j = tl.load(rows + BLOCK_D, mask=live, other=float("-inf"), cache_modifier=".cg")
                    l_j = tl.load(rows + BLOCK_D + 1, mask=live, other=0.0, cache_modifier=".cg")
                    acc_j = tl.load(rows[:, None] + d[None, :], mask=live[:, None], other=0.0, cache_modifier=".cg")
                    w = tl.exp(m_j - tl.max(m_j, axis=0))  # each chunk's sums under the common maximum
                    w = tl.where(live, w, 0.0)
                    y = tl.sum(acc_j * w[:, None], axis=0) / tl.sum(l_j * w, axis=0)
                    tl.store(y_ptr + bh * D + d, y, mask=d_ok)

else:
    cache_block = decode_attention_kernel = None


def merge_chunks(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Flash-decoding's last step, in torch: one query's attention from its chunks' partial sums.

    Chunk c of the cached positions left ``m[c]``, its largest score (``-inf`` if it held no position),
    ``l[c] = sum exp(s - m[c])`` and ``acc[c] = sum exp(s - m[c]) v`` over its positions s, v. Under the
    common maximum M = max m every chunk's sums are scaled by ``exp(m[c] - M)`` (at most 1: nothing
    overflows), and the attention is ``sum_c acc[c] e^(m[c] - M) / sum_c l[c] e^(m[c] - M)``.
    m, l: float (C,); acc: float (C, D) -> (D,) in acc's dtype. What the head's last chunk computes in
    :func:`decode_attention` (the reference of lesson 13's exercise).
    """
    w = torch.exp(m - m.max())  # a chunk without positions: exp(-inf) = 0, it adds nothing
    return (acc * w[:, None]).sum(0) / (l * w).sum()


def new_counts(batch: int, n_head: int, device: torch.device | str) -> torch.Tensor:
    """The ``counts`` scratch of :func:`decode_attention` for ``batch`` sequences of ``n_head`` query heads."""
    return torch.zeros(batch * n_head, dtype=torch.int32, device=device)


def _check(name: str, t: torch.Tensor, shape: tuple, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.device != device or not t.is_floating_point():
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a float tensor of shape {shape} on {device}, got {got}")


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    scale: float,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """One new token per sequence: write k, v into the caches at ``pos`` and attend to positions 0..pos.

    q (B, H, 1, D); k, v (B, KH, 1, D) with H a multiple of KH (query head h uses key/value head
    h // (H // KH)); k_cache, v_cache (B, KH, T, D) contiguous; pos (1,) int64 on the same device, with
    pos < T (not checked: reading it would wait for the GPU). Returns (B, 1, H, D) in q's dtype: the
    heads side by side, as the projection after them reads them (``transpose(1, 2)`` is the usual
    (B, H, 1, D) layout). The numbers of ``k_cache[:, :, pos] = k; softmax(q K^T * scale) V`` over
    positions 0..pos. ``torch.ops.babybitnet.decode_attention`` is the same function as a torch operator
    (what the decode step calls, so that ``torch.compile`` and CUDA graphs take it as one opaque op).
    ``counts``: int32 zeros on the device, at least B * H of them (:func:`new_counts`), where the chunks
    of each head count themselves done; every call leaves them zero again. Calls that may run at the
    same time (on two CUDA streams) need their own (as each ``StaticCache`` keeps); None: fresh zeros
    for this call (one more small kernel).
    """
    require_triton()
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[2] != 1:
        raise ValueError(f"q must be (B, n_head, 1, head_size): one new token, got {getattr(q, 'shape', q)}")
    B, H, _, D = q.shape
    if not isinstance(k_cache, torch.Tensor) or k_cache.dim() != 4 or k_cache.shape[0] != B or k_cache.shape[3] != D:
        raise ValueError(f"k_cache must be (B={B}, n_kv_head, block_size, head_size={D}), got {k_cache.shape}")
    KH, T = k_cache.shape[1], k_cache.shape[2]
    if KH == 0 or H % KH:
        raise ValueError(f"n_head ({H}) must be a multiple of the caches' n_kv_head ({KH})")
    dev = q.device
    _check("k", k, (B, KH, 1, D), dev)
    _check("v", v, (B, KH, 1, D), dev)
    _check("k_cache", k_cache, (B, KH, T, D), dev)
    _check("v_cache", v_cache, (B, KH, T, D), dev)
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous (as StaticCache allocates them)")
    if not isinstance(pos, torch.Tensor) or pos.shape != (1,) or pos.dtype != torch.long or pos.device != dev:
        raise ValueError(f"pos must be a (1,) int64 tensor on {dev}, got {getattr(pos, 'dtype', pos)}")
    if counts is not None and (
        not isinstance(counts, torch.Tensor) or counts.dtype != torch.int32 or counts.device != dev
        or counts.dim() != 1 or counts.numel() < B * H or not counts.is_contiguous()
    ):  # fmt: skip
        got = f"{counts.dtype} {tuple(counts.shape)} on {counts.device}" if isinstance(counts, torch.Tensor) else counts
        raise ValueError(f"counts must be {B * H} or more contiguous int32 zeros on {dev} (new_counts), got {got}")
    if dev.type != "cuda" and not interpreted():
        raise ValueError(
            f"decode_attention runs on a CUDA GPU but the tensors are on {dev}; to run it on CPU in "
            "Triton's interpreter, set TRITON_INTERPRET=1 before importing babybitnet"
        )
    y = torch.empty(B, 1, H, D, dtype=q.dtype, device=dev)
    if B == 0 or H == 0 or D == 0:
        return y
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    block_d = triton.next_power_of_2(D)
    # chunks of positions side by side, each a program: more of the GPU reads the cache at once
    splits = min(MAX_SPLITS, triton.cdiv(T, BLOCK_T))
    chunk = triton.cdiv(triton.cdiv(T, splits), BLOCK_T) * BLOCK_T
    splits = triton.cdiv(T, chunk)
    rows = triton.next_power_of_2(splits)  # the combine reads a power of 2 of rows per head (masked past splits)
    part = torch.empty(B * H * rows * (block_d + 2) if splits > 1 else 1, dtype=torch.float32, device=dev)
    pdl = use_pdl(dev)
    counts = new_counts(B, H, dev) if counts is None else counts
    decode_attention_kernel[(B * H, splits)](
        q, k, v, k_cache, v_cache, y, pos, part, counts, H, H // KH, D, T, chunk,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), float(scale),
        BLOCK_T=BLOCK_T, BLOCK_D=block_d, SPLITS=rows, USE_PDL=pdl,
        num_warps=4, **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return y


@torch.library.custom_op("babybitnet::decode_attention", mutates_args=("k_cache", "v_cache", "counts"))
def decode_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    scale: float,
    counts: torch.Tensor,
) -> torch.Tensor:
    """:func:`decode_attention` as a torch operator (it writes into the caches and counts: ``mutates_args``)."""
    return decode_attention(q, k, v, k_cache, v_cache, pos, scale, counts)


@decode_attention_op.register_fake
def _(q, k, v, k_cache, v_cache, pos, scale, counts):
    B, H, _, D = q.shape
    return q.new_empty(B, 1, H, D)
