import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babybitnet.packing import (
    FORMATS,
    ZERO_BYTE,
    bits_per_weight,
    pack,
    pack_2bit,
    pack_base3,
    packed_shape,
    unpack,
    unpack_2bit,
    unpack_base3,
)

PER_BYTE = {"2bit": 4, "base3": 5}


@st.composite
def ternary_tensors(draw):
    """int8 tensors of 1-4 dims, every size 0..3 but the last 0..13 (multiples of 4 and 5 and not), zero-size ones
    included, values in {-1, 0, 1} (one drawn byte each: hypothesis can still shrink a failure, and fast)."""
    lead = draw(st.lists(st.integers(0, 3), min_size=0, max_size=3))
    n = draw(st.integers(0, 13))
    count = math.prod(lead) * n
    raw = draw(st.binary(min_size=count, max_size=count))
    return torch.tensor([b % 3 - 1 for b in raw], dtype=torch.int8).reshape(*lead, n)


@settings(max_examples=2000, deadline=None)
@given(w=ternary_tensors(), extra=st.integers(1, 4))
def test_round_trip_is_exact_on_every_shape(w, extra):
    n = w.shape[-1]
    for fmt in FORMATS:
        packed = pack(w, fmt)
        assert packed.dtype == torch.uint8
        assert packed.shape == (*w.shape[:-1], math.ceil(n / PER_BYTE[fmt])) == packed_shape(w.shape, fmt)
        out = unpack(packed, n, fmt)
        assert out.dtype == torch.int8 and out.shape == w.shape and torch.equal(out, w)
        # another n that needs the same number of bytes: never a silent loss of weights
        for other in (n - extra, n + extra):
            if other < 0 or math.ceil(other / PER_BYTE[fmt]) != packed.shape[-1]:
                continue
            if other > n:  # the padding unpacks as zero weights
                padded = torch.cat([w, w.new_zeros(*w.shape[:-1], other - n)], dim=-1)
                assert torch.equal(unpack(packed, other, fmt), padded)
            elif bool((w[..., other:] != 0).any()):  # a smaller n would drop non-zero weights: refused
                with pytest.raises(ValueError, match=f"non-zero weights after weight n={other}"):
                    unpack(packed, other, fmt)
            else:  # it would drop only zeros: nothing is lost
                assert torch.equal(unpack(packed, other, fmt), w[..., :other])


@pytest.mark.parametrize("pack_fn, unpack_fn", [(pack_2bit, unpack_2bit), (pack_base3, unpack_base3)])
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.float32, torch.float16])
def test_other_dtypes_pack_like_int8(pack_fn, unpack_fn, dtype):
    w = torch.randint(-1, 2, (3, 13), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    assert torch.equal(pack_fn(w.to(dtype)), pack_fn(w))
    assert torch.equal(unpack_fn(pack_fn(w.to(dtype)), 13), w)


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_and_single_element(fmt):
    z = torch.zeros(3, 11, dtype=torch.int8)
    zero_byte = {"2bit": 0b01010101, "base3": 121}[fmt]  # every code/trit is 1
    assert (pack(z, fmt) == zero_byte).all()
    assert torch.equal(unpack(pack(z, fmt), 11, fmt), z)
    for v in (-1, 0, 1):
        w = torch.tensor([v], dtype=torch.int8)
        assert torch.equal(unpack(pack(w, fmt), 1, fmt), w)


def test_2bit_layout_by_hand():
    # codes c = w + 1: 0b00, 0b01, 0b10, 0b10 -> c0 | c1<<2 | c2<<4 | c3<<6 = 0b10100100
    assert pack_2bit(torch.tensor([-1, 0, 1, 1], dtype=torch.int8)).tolist() == [0b10100100] == [164]
    # weight j of a row lands in byte j // 4; a short last byte is padded with 0b01 (a zero weight)
    w = torch.tensor([[1, 1, 1, 1, -1], [0, 0, 0, 0, 1]], dtype=torch.int8)
    assert pack_2bit(w).tolist() == [[0b10101010, 0b01010100], [0b01010101, 0b01010110]]
    assert pack_2bit(torch.tensor([1], dtype=torch.int8)).tolist() == [0b01010110]


def test_base3_layout_by_hand():
    # trits t = w + 1 = 0, 1, 2, 2, 1 (the padding) -> 0 + 3*1 + 9*2 + 27*2 + 81*1 = 156
    assert pack_base3(torch.tensor([-1, 0, 1, 1], dtype=torch.int8)).tolist() == [156]
    # five +1 weights: 2 * (1 + 3 + 9 + 27 + 81) = 242, the largest byte; then [-1] padded: 0 + 3 + 9 + 27 + 81 = 120
    assert pack_base3(torch.tensor([1, 1, 1, 1, 1, -1], dtype=torch.int8)).tolist() == [242, 120]
    assert pack_base3(-torch.ones(5, dtype=torch.int8)).tolist() == [0]


def test_bits_per_weight_exact():
    w = torch.randint(-1, 2, (64, 320), dtype=torch.int8)
    assert bits_per_weight(pack_2bit(w).numel(), w.numel()) == 2.0
    assert bits_per_weight(pack_base3(w).numel(), w.numel()) == 1.6
    assert bits_per_weight(pack_base3(w[:, :7]).numel(), 64 * 7) == 8 * 2 / 7  # padding costs
    with pytest.raises(ValueError, match="positive"):
        bits_per_weight(1, 0)


@pytest.mark.parametrize("pack_fn", [pack_2bit, pack_base3])
def test_pack_errors(pack_fn):
    with pytest.raises(ValueError, match=r"2 of 4 values are not, the first is 3 at index \(1, 0\)"):
        pack_fn(torch.tensor([[0, 1], [3, -5]]))
    with pytest.raises(ValueError, match=r"1 of 3 values are not, the first is 0.5"):
        pack_fn(torch.tensor([1.0, 0.5, -1.0]))
    with pytest.raises(ValueError, match="NaN/inf"):
        pack_fn(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN/inf"):
        pack_fn(torch.tensor([float("-inf")]))
    with pytest.raises(ValueError, match="0-d"):
        pack_fn(torch.tensor(1, dtype=torch.int8))
    with pytest.raises(ValueError, match="torch.bool"):
        pack_fn(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="complex"):
        pack_fn(torch.tensor([1 + 0j]))
    with pytest.raises(ValueError, match="torch.Tensor"):
        pack_fn([1, 0, -1])


@pytest.mark.parametrize("unpack_fn, k, fmt", [(unpack_2bit, 4, "2bit"), (unpack_base3, 5, "base3")])
def test_unpack_errors(unpack_fn, k, fmt):
    ok = torch.zeros(2, 3, dtype=torch.uint8) + 1
    with pytest.raises(ValueError, match="uint8"):
        unpack_fn(ok.to(torch.int8), 3 * k)
    with pytest.raises(ValueError, match=r"need ceil"):
        unpack_fn(ok, 3 * k + 1)  # one byte short
    with pytest.raises(ValueError, match=r"need ceil"):
        unpack_fn(ok, 2 * k)  # one byte too many
    with pytest.raises(ValueError, match="non-negative int"):
        unpack_fn(ok, -1)
    with pytest.raises(ValueError, match="0-d"):
        unpack_fn(torch.tensor(5, dtype=torch.uint8), 1)
    zeros = torch.full((2, 3), ZERO_BYTE[fmt], dtype=torch.uint8)
    assert unpack_fn(zeros, 3 * k - (k - 1)).shape == (2, 3 * k - (k - 1))  # shortest n that fits 3 bytes
    with pytest.raises(ValueError, match=f"non-zero weights after weight n={2 * k + 1}"):
        unpack_fn(ok, 2 * k + 1)  # byte 1 is not padding: its weights would be dropped


def test_unpack_invalid_codes():
    bad = torch.tensor([[0b01010101, 0b11010101]], dtype=torch.uint8)  # one 0b11 field in byte (0, 1)
    with pytest.raises(ValueError, match=r"1 fields hold code 0b11.*byte \(0, 1\)"):
        unpack_2bit(bad, 8)
    with pytest.raises(ValueError, match="0b11"):  # also in the padding
        unpack_2bit(torch.tensor([0b11010101], dtype=torch.uint8), 3)
    bad3 = torch.tensor([[121, 243, 255]], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"2 bytes are above 242 \(first 243 at index \(0, 1\)\)"):
        unpack_base3(bad3, 15)
    assert torch.equal(unpack_base3(torch.tensor([242], dtype=torch.uint8), 5), torch.ones(5, dtype=torch.int8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_wrong_n_of_the_same_byte_count_is_refused(fmt):
    """7 and 8 weights both take 2 bytes in 2 bits (6..10 in base 3): the padding tells them apart."""
    w = torch.tensor([[1, 0, -1, 0, 1, 0, 0, -1], [0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int8)
    packed = pack(w, fmt)
    n_short = 7 if fmt == "2bit" else 6
    assert packed.shape[-1] == math.ceil(n_short / PER_BYTE[fmt])
    with pytest.raises(ValueError, match=rf"non-zero weights after weight n={n_short} \(in row \(0,\)\)"):
        unpack(packed, n_short, fmt)
    assert torch.equal(unpack(packed[1:], n_short, fmt), w[1:, :n_short])  # only zeros dropped: nothing lost
    with pytest.raises(ValueError, match=f"after weight n={n_short}, where"):  # 1-D: no row to name
        unpack(packed[0], n_short, fmt)


def test_bytes_no_packer_writes_are_refused():
    for byte in (0b11, 0b1100, 0b110000, 0b11000000, 255):  # a 0b11 field in each position, and uint8 255
        with pytest.raises(ValueError, match="0b11"):
            unpack_2bit(torch.tensor([[byte]], dtype=torch.uint8), 4)
    assert unpack_2bit(torch.tensor([0b10101010], dtype=torch.uint8), 4).tolist() == [1, 1, 1, 1]  # 170 is fine
    for byte in (243, 250, 255):
        with pytest.raises(ValueError, match=f"above 242 \\(first {byte}"):
            unpack_base3(torch.tensor([byte], dtype=torch.uint8), 5)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 5), (2, 0, 7), (0, 0)])
def test_zero_size_tensors_pack_exactly(fmt, shape):
    w = torch.zeros(shape, dtype=torch.int8)
    packed = pack(w, fmt)
    assert packed.dtype == torch.uint8 and packed.shape == packed_shape(shape, fmt) and packed.numel() == 0
    assert torch.equal(unpack(packed, shape[-1], fmt), w)


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown packing format"):
        pack(torch.zeros(4, dtype=torch.int8), "3bit")
