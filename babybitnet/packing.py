"""Bit formats for ternary weights: 2 bits per weight, and 5 weights per byte (1.6 bits).

A BitLinear weight is one of three values, so int8 (8 bits) wastes 6 of them.
Two formats store it compactly; both pack along the LAST dimension (the input
features of a weight matrix), so every row is packed on its own and a kernel
can unpack a row without touching its neighbours.

**2 bits per weight** (``pack_2bit``). The code of a weight is ``w + 1``::

    weight  -1    0    +1
    code    0b00  0b01 0b10          (0b11 never occurs: unpacking it is an error)

These are bitnet.cpp's I2_S codes. Weight ``j`` of a row goes to byte
``j // 4``, bits ``2*(j % 4)`` and ``2*(j % 4) + 1``; the first weight sits in
the lowest bits::

    byte = c0 | c1 << 2 | c2 << 4 | c3 << 6

A row whose length is not a multiple of 4 is padded with code 0b01 (a zero
weight). Worked example, the row [-1, 0, +1, +1]::

    codes  c0=0b00  c1=0b01  c2=0b10  c3=0b10
    byte   0b10_10_01_00 = 164                  (c3 c2 c1 c0, read from the left)

**Base 3, 5 weights per byte** (``pack_base3``). Three values need
log2(3) = 1.585 bits; 3**5 = 243 <= 256, so five trits fit one byte, 1.6 bits
per weight::

    byte = t0 + 3*t1 + 9*t2 + 27*t3 + 81*t4,   t_k = w_{5j+k} + 1,   byte in 0..242

padded with trit 1 (a zero weight); bytes 243..255 never occur. The same row
[-1, 0, +1, +1] becomes (with one padding trit t4 = 1)::

    0 + 3*1 + 9*2 + 27*2 + 81*1 = 156

Unpacking base 3 takes divisions (``byte // 3**k % 3``) where 2 bits take
shifts and masks: the smaller file costs arithmetic. (llama.cpp's TQ1_0 and
bitnet.cpp's TL2 arrange base-3 digits so that a multiplication extracts
them; this module keeps the plain positional form, the easiest to read.)

Every function is vectorized torch (no Python loop over weights), runs on any
device, and checks its input: a wrong value fails loudly here instead of
silently corrupting a model.
"""

from __future__ import annotations

import math

import torch

from babybitnet.quant import check_int8_activations

FORMATS = ("2bit", "base3")
WEIGHTS_PER_BYTE = {"2bit": 4, "base3": 5}
MAX_BASE3_BYTE = 3**5 - 1  # 242
ZERO_BYTE = {
    "2bit": 0b01010101,
    "base3": 121,
}  # a byte of zero weights: four 0b01 codes; five trits 1 (11111 in base 3)

_SHIFTS_2BIT = (0, 2, 4, 6)
_POWERS_3 = (1, 3, 9, 27, 81)


# ---------------------------------------------------------------- checks
def _index_of(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    """The multi-dimensional index of element ``flat_index`` of a tensor of ``shape`` (row-major)."""
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(index))


def check_ternary(w: torch.Tensor) -> torch.Tensor:
    """Validate ``w`` and return its codes ``w + 1`` as int16 (0, 1 or 2), same shape."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor of ternary weights, got {type(w).__name__}")
    if w.dim() == 0:
        raise ValueError("cannot pack a 0-d tensor: packing works along the last dimension (use w.reshape(1))")
    if w.dtype == torch.bool or w.is_complex():
        raise ValueError(
            f"ternary weights must be an integer tensor (int8 is best) or a float tensor holding -1, 0, 1; "
            f"got dtype {w.dtype}"
        )
    if w.is_floating_point():
        finite = torch.isfinite(w)
        if not bool(finite.all()):
            bad = (~finite).nonzero()[0].tolist()
            raise ValueError(
                f"weights contain {int((~finite).sum())} NaN/inf values (first {w[tuple(bad)].item()} at index "
                f"{tuple(bad)}); ternarize finite weights first (BitLinear.quantized_weight())"
            )
    bad = (w != -1) & (w != 0) & (w != 1)
    n_bad = int(bad.sum())
    if n_bad:
        first = int(bad.flatten().nonzero()[0])
        value = w.flatten()[first].item()
        raise ValueError(
            f"weights must be ternary (-1, 0 or 1): {n_bad} of {w.numel()} values are not, the first is {value} "
            f"at index {_index_of(first, w.shape)}; ternarize first (BitLinear.quantized_weight())"
        )
    # int16 holds every code and every intermediate sum below (at most 242) without overflow
    return w.to(torch.int16) + 1


def _check_packed(packed: torch.Tensor, n: int, weights_per_byte: int) -> None:
    """Check that ``packed`` is a uint8 tensor whose last dimension holds exactly ``n`` weights."""
    if not isinstance(packed, torch.Tensor):
        raise ValueError(f"expected a packed torch.Tensor of dtype uint8, got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed weights must have dtype torch.uint8, got {packed.dtype} (did you pack them?)")
    if packed.dim() == 0:
        raise ValueError("packed weights must have at least 1 dimension, got a 0-d tensor")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n (the number of weights per row) must be a non-negative int, got {n!r}")
    if math.ceil(n / weights_per_byte) != packed.shape[-1]:
        raise ValueError(
            f"n={n} weights per row need ceil({n}/{weights_per_byte}) = {math.ceil(n / weights_per_byte)} bytes, "
            f"but the packed last dimension has {packed.shape[-1]}; pass the n the weights had before packing"
        )


def _check_padding(padding: torch.Tensor, n: int, fmt: str) -> None:
    """Check that the codes after weight ``n`` of every row are the padding the packer writes (code 1, a zero).

    A smaller ``n`` than the weights were packed with fits the same number of bytes (7 or 8 weights
    both take 2 bytes in 2 bits), so the byte count cannot catch it; the padding can, unless every
    weight it would drop is 0 (then nothing is lost).
    """
    bad = padding != 1
    if bool(bad.any()):
        row = _index_of(int(bad.any(dim=-1).flatten().nonzero()[0]), padding.shape[:-1])
        where = f" (in row {row})" if row else ""
        raise ValueError(
            f"packed {fmt} data holds non-zero weights after weight n={n}{where}, where only padding "
            f"belongs: pass the n the weights had before packing (is n too small?), or the data is corrupt"
        )


def _pad_last(codes: torch.Tensor, multiple: int, pad_code: int) -> torch.Tensor:
    """Pad the last dimension of ``codes`` to a multiple of ``multiple`` with ``pad_code``."""
    pad = -codes.shape[-1] % multiple
    if pad == 0:
        return codes
    filler = codes.new_full((*codes.shape[:-1], pad), pad_code)
    return torch.cat([codes, filler], dim=-1)


# ---------------------------------------------------------------- 2 bits per weight
def pack_2bit(w: torch.Tensor) -> torch.Tensor:
    """Pack ternary weights into 2 bits each, 4 per byte, along the last dimension.

    w: (*, n) values in {-1, 0, 1}; int8 preferred, any integer dtype or a float
    tensor holding exactly -1, 0, 1 accepted. Returns uint8 of shape
    (*, ceil(n / 4)); byte ``j`` of a row holds weights 4j..4j+3 as
    ``c0 | c1 << 2 | c2 << 4 | c3 << 6`` with ``c = w + 1``.
    """
    codes = _pad_last(check_ternary(w), 4, pad_code=1)  # pad with 0b01, a zero weight
    # (*, n/4, 4): the four weights of each byte (sizes spelled out: -1 is ambiguous for zero-size tensors)
    codes = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 4, 4)
    shifts = torch.tensor(_SHIFTS_2BIT, dtype=torch.int16, device=codes.device)
    # the four 2-bit fields do not overlap, so their sum equals their bitwise or
    return (codes << shifts).sum(dim=-1, dtype=torch.int16).to(torch.uint8)


def unpack_2bit(packed: torch.Tensor, n: int, check: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_2bit`: uint8 (*, ceil(n / 4)) -> int8 (*, n) in {-1, 0, 1}.

    Raises ValueError if a 2-bit field holds 0b11 (no weight has that code: the
    data is corrupt or was not made by ``pack_2bit``), or if a padding field after
    weight ``n`` is not a zero weight (see :func:`_check_padding`). ``check=False`` skips these
    checks of the values (not of the shapes): for data checked before, where a check would wait for
    the GPU (it cannot be captured in a CUDA graph).
    """
    _check_packed(packed, n, 4)
    # made on the device (arange), not copied from the host: a CUDA graph can capture it
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device)  # _SHIFTS_2BIT
    codes = (packed.unsqueeze(-1) >> shifts) & 0b11  # (*, bytes, 4)
    invalid = codes == 0b11
    if check and bool(invalid.any()):
        byte = int(invalid.any(dim=-1).flatten().nonzero()[0])
        raise ValueError(
            f"invalid 2-bit packed data: {int(invalid.sum())} fields hold code 0b11, which no ternary weight has "
            f"(first in byte {_index_of(byte, packed.shape)} = {packed.flatten()[byte].item():#010b}); "
            f"the data is corrupt or was not written by pack_2bit"
        )
    codes = codes.reshape(*packed.shape[:-1], 4 * packed.shape[-1])
    if check:
        _check_padding(codes[..., n:], n, "2bit")
    return codes[..., :n].to(torch.int8) - 1  # drop the padding


# ---------------------------------------------------------------- base 3, 5 weights per byte
def pack_base3(w: torch.Tensor) -> torch.Tensor:
    """Pack ternary weights 5 to a byte (1.6 bits each) as base-3 digits, along the last dimension.

    w: (*, n) values in {-1, 0, 1} (dtypes as :func:`pack_2bit`). Returns uint8
    of shape (*, ceil(n / 5)); byte ``j`` of a row is
    ``sum_k (w[5j + k] + 1) * 3**k`` for k = 0..4, a value in 0..242.
    """
    trits = _pad_last(check_ternary(w), 5, pad_code=1)  # pad with trit 1, a zero weight
    trits = trits.reshape(*trits.shape[:-1], trits.shape[-1] // 5, 5)
    powers = torch.tensor(_POWERS_3, dtype=torch.int16, device=trits.device)
    return (trits * powers).sum(dim=-1, dtype=torch.int16).to(torch.uint8)


def unpack_base3(packed: torch.Tensor, n: int, check: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_base3`: uint8 (*, ceil(n / 5)) -> int8 (*, n) in {-1, 0, 1}.

    Raises ValueError if a byte is above 242 (five trits never exceed 3**5 - 1), or if
    a padding trit after weight ``n`` is not a zero weight (see :func:`_check_padding`);
    ``check=False`` skips these value checks (see :func:`unpack_2bit`).
    """
    _check_packed(packed, n, 5)
    invalid = packed > MAX_BASE3_BYTE
    if check and bool(invalid.any()):
        first = int(invalid.flatten().nonzero()[0])
        raise ValueError(
            f"invalid base-3 packed data: {int(invalid.sum())} bytes are above {MAX_BASE3_BYTE} (first "
            f"{packed.flatten()[first].item()} at index {_index_of(first, packed.shape)}); the data is corrupt "
            f"or was not written by pack_base3"
        )
    powers = 3 ** torch.arange(5, dtype=torch.int16, device=packed.device)  # _POWERS_3, made on the device
    trits = packed.to(torch.int16).unsqueeze(-1) // powers % 3  # (*, bytes, 5): digit k of each byte
    trits = trits.reshape(*packed.shape[:-1], 5 * packed.shape[-1])
    if check:
        _check_padding(trits[..., n:], n, "base3")
    return trits[..., :n].to(torch.int8) - 1


# ---------------------------------------------------------------- by name
PACK = {"2bit": pack_2bit, "base3": pack_base3}
UNPACK = {"2bit": unpack_2bit, "base3": unpack_base3}


def check_format(fmt: str) -> str:
    """``fmt`` if it names a packing format, else a ValueError listing them."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown packing format {fmt!r}; choose one of {FORMATS}")
    return fmt


def pack(w: torch.Tensor, fmt: str = "2bit") -> torch.Tensor:
    """Pack ternary ``w`` (*, n) in format ``fmt`` ("2bit" or "base3")."""
    return PACK[check_format(fmt)](w)


def unpack(packed: torch.Tensor, n: int, fmt: str = "2bit", check: bool = True) -> torch.Tensor:
    """Unpack ``packed`` (*, bytes) written by :func:`pack` in format ``fmt`` into int8 (*, n)."""
    return UNPACK[check_format(fmt)](packed, n, check)


def packed_shape(shape: tuple[int, ...] | torch.Size, fmt: str = "2bit") -> tuple[int, ...]:
    """Shape of the packed form of a ternary tensor of ``shape``: the last dimension becomes ceil(n / k)."""
    k = WEIGHTS_PER_BYTE[check_format(fmt)]
    return (*shape[:-1], math.ceil(shape[-1] / k))


def bits_per_weight(packed_bytes: int, n_weights: int) -> float:
    """Storage cost in bits per weight: ``8 * packed_bytes / n_weights`` (2.0 and 1.6 without padding)."""
    if n_weights <= 0:
        raise ValueError(f"n_weights must be positive, got {n_weights}")
    return 8 * packed_bytes / n_weights


def row_bytes(k: int, fmt: str = "2bit") -> int:
    """Bytes that one row of ``k`` weights packs into: ceil(k / weights per byte)."""
    return -(-k // WEIGHTS_PER_BYTE[check_format(fmt)])


def check_packed_2bit(packed: torch.Tensor, k: int) -> None:
    """Raise ValueError unless ``packed`` is a 2-D uint8 matrix (N, ceil(k/4)) of 2-bit rows of ``k`` weights.

    What every matmul over packed weights checks first (the C++ and Triton kernels, the add-only versions).
    """
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 2:
        what = f"{packed.dtype} {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"packed must be a 2-D uint8 tensor (N, ceil(K/4)) from pack_2bit, got {what}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (weights per row) must be a non-negative int, got {k!r}")
    if packed.shape[1] != row_bytes(k):
        raise ValueError(
            f"K mismatch: k={k} weights per row pack into {row_bytes(k)} bytes, but packed rows have "
            f"{packed.shape[1]} bytes (room for K={4 * packed.shape[1]})"
        )


def check_packed_matmul(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> None:
    """The inputs of an integer matmul over packed weights: int8 x_q (M, k) and 2-bit packed (N, ceil(k/4))."""
    check_int8_activations(x_q)
    check_packed_2bit(packed, k)
    if x_q.shape[1] != k:
        raise ValueError(f"K mismatch: x_q has K={x_q.shape[1]} inputs per token but k={k}")
