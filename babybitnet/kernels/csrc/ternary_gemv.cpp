// Multiplication-free ternary x int8 matmul on the CPU, straight from 2-bit packed weights.
//
//   out[m, n] = sum_j x[m, j] * w[n, j]      with w in {-1, 0, +1} and x int8 in [-127, 127]
//
// Every "product" is x, 0 or -x, so the inner loop only selects, negates and adds. The packed
// format (babybitnet/packing.py) stores code = w + 1 in 2 bits: weight j of a row sits in byte
// j / 4, bits 2*(j%4)..2*(j%4)+1, rows padded with code 0b01 (zero) to a multiple of 4.
//
// AVX2 path (the one that matters for speed). A block of 128 inputs is 32 packed bytes = one
// 256-bit register. Bit pair k (k = 0..3) of byte i holds the weight of input 4i+k, so if we
// permute x once per call so that "plane k" of a block holds x[4i+k] for i = 0..31, then
//
//   codes_k = (bytes >> 2k) & 3        32 weights of plane k, still as codes 0/1/2
//   w_k     = codes_k - 1               int8 in {-1, 0, +1}
//   p_k     = _mm256_sign_epi8(x_k, w_k)   x where w = +1, -x where w = -1, 0 where w = 0
//
// _mm256_sign_epi8 is exactly "conditional negate or zero": no multiply instruction anywhere.
// That requires |x| <= 127: sign(-128, -1) would wrap to -128, so we reject -128 (a ValueError).
//
// Summing the 32 int8 results: _mm256_sad_epu8(u, 0) ("sum of absolute differences", psadbw)
// adds 8 unsigned bytes into one 64-bit lane; with 0 as the second operand it is a plain
// horizontal addition. Our bytes are signed, so we first flip their top bit (p ^ 0x80 is p + 128
// read as unsigned) and subtract the 128 per input once at the end. The 64-bit lanes never
// overflow, so there is nothing to flush, and it takes 3 instructions per 32 inputs where
// widening to int16 with shifts (and flushing int16 sums into int32 ones) takes 5 or more.
//
// Portable path (no AVX2): plain loops over the packed bytes, the same arithmetic, int32 sums.
//
// ternary_linear is the whole inference layer in one call (what babybitnet.addonly.packed_linear
// computes with a dozen torch ops): per-token absmax quantization of float32 activations, moved into
// the plane layout by a few shuffles per 128 inputs (block_to_planes), the add-only GEMV, and the one
// rescale per output, 8 at a time (+ bias). At
// babyGPT's size a token's matmul takes microseconds, so a dozen tensor ops around it (each a
// dispatch and an allocation) cost more than the matmul itself. The float steps are the very same
// IEEE operations, in the same order, as quant.quantize_activations and bitlinear.int_linear, so the
// results are bit for bit the same (the build uses -ffp-contract=off: no fused multiply-add).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 128;       // inputs per block
constexpr int64_t kBlockBytes = 32;   // packed bytes per block (4 inputs a byte)
constexpr int64_t kPlane = 32;        // inputs per plane (one byte lane each)
constexpr int64_t kBias = 128;        // added to every signed byte to make it unsigned for psadbw
constexpr int64_t kGrain = 16;        // rows per parallel task, at least
// Work (weights x tokens) per parallel task, at least: about 10 µs of one core. Below it, waking a second
// thread costs more than it saves (at babyGPT's size a whole layer is a few µs), and on a busy machine a
// parallel region waits for a thread the OS has not scheduled yet.
constexpr int64_t kMinTaskWork = 1 << 18;

// Rows per parallel task for an (M tokens, K inputs) problem.
inline int64_t row_grain(int64_t M, int64_t K) {
  const int64_t per_row = std::max<int64_t>(1, M * K);
  return std::max<int64_t>(kGrain, (kMinTaskWork + per_row - 1) / per_row);
}

#ifdef __AVX2__

// One block of 128 int8 inputs (natural order) -> the plane layout: dst[k*32 + i] = q[4i + k].
//
// A transpose of bytes, in registers: pshufb gathers, in each 128-bit lane, the 4 bytes of each plane
// (one dword per plane: lane = [P0 P1 P2 P3] of its 4 groups of 4 inputs); permd pairs the two lanes'
// dwords of a plane into one qword (8 inputs of that plane); a 4x4 transpose of qwords (unpack, then
// permute2x128) puts each plane's 4 qwords side by side. 20 instructions where a scalar loop stores 128 bytes.
inline void block_to_planes(const int8_t* q, int8_t* dst) {
  const __m256i gather = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                          0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i pair = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i a[4];  // a[r] = qwords [plane 0, 1 | 2, 3] of inputs 32r..32r+31
  for (int r = 0; r < 4; ++r) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r * kPlane));
    a[r] = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, gather), pair);
  }
  const __m256i t0 = _mm256_unpacklo_epi64(a[0], a[1]), t1 = _mm256_unpackhi_epi64(a[0], a[1]);
  const __m256i t2 = _mm256_unpacklo_epi64(a[2], a[3]), t3 = _mm256_unpackhi_epi64(a[2], a[3]);
  __m256i* out = reinterpret_cast<__m256i*>(dst);
  _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(t0, t2, 0x20));
  _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(t1, t3, 0x20));
  _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(t0, t2, 0x31));
  _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(t1, t3, 0x31));
}

// One token's int8 row (K inputs) -> the plane layout (Kp = K rounded up to 128, zeros past the end).
// ``pad`` is scratch of kBlock bytes for the partial last block.
inline void row_to_planes(const int8_t* q, int64_t K, int64_t Kp, int8_t* dst, int8_t* pad) {
  int64_t j = 0;
  for (; j + kBlock <= K; j += kBlock) block_to_planes(q + j, dst + j);
  if (j < Kp) {
    std::memset(pad, 0, kBlock);
    std::memcpy(pad, q + j, static_cast<size_t>(K - j));
    block_to_planes(pad, dst + j);
  }
}

// x_perm[m, b*128 + k*32 + i] = x[m, b*128 + 4i + k], zero past the end of the row.
void permute_planes(const int8_t* x, int64_t M, int64_t K, int64_t Kp, int8_t* x_perm) {
  alignas(32) int8_t pad[kBlock];
  for (int64_t m = 0; m < M; ++m) row_to_planes(x + m * K, K, Kp, x_perm + m * Kp, pad);
}

// The 4 weight planes of one block of 32 packed bytes, as int8 in {-1, 0, +1}.
inline void decode_block(__m256i bytes, __m256i w[4]) {
  const __m256i three = _mm256_set1_epi8(3);
  const __m256i one = _mm256_set1_epi8(1);
  for (int k = 0; k < 4; ++k) {
    // a 16-bit shift drags bits of the neighbouring byte in at the top; the & 3 throws them away
    const __m256i codes = _mm256_and_si256(_mm256_srli_epi16(bytes, 2 * k), three);
    w[k] = _mm256_sub_epi8(codes, one);
  }
}

// acc64 += the sum over the 4 planes of sign(x_k, w_k) + 128: 4 lanes of 64-bit sums (psadbw adds 8 bytes a lane).
inline __m256i plane_sums(__m256i acc64, const __m256i x[4], const __m256i* w) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i zero = _mm256_setzero_si256();
  for (int k = 0; k < 4; ++k) {
    const __m256i u = _mm256_xor_si256(_mm256_sign_epi8(x[k], w[k]), bias);  // p + 128 as unsigned bytes
    acc64 = _mm256_add_epi64(acc64, _mm256_sad_epu8(u, zero));
  }
  return acc64;
}

inline void load_planes(const int8_t* xb, __m256i x[4]) {
  for (int k = 0; k < 4; ++k) x[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + k * kPlane));
}

// Four accumulators -> their four dot products (int32), less the bias of the n_inputs (padding included) each
// summed. Every lane holds less than 2^32 and the true results fit in int32, so 32-bit arithmetic (mod 2^32)
// gives them exactly.
inline __m128i finish4(__m256i a, __m256i b, __m256i c, __m256i d, int64_t n_inputs) {
  const __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));  // a01 b01 a23 b23
  const __m256i cd = _mm256_add_epi64(_mm256_unpacklo_epi64(c, d), _mm256_unpackhi_epi64(c, d));  // c01 d01 c23 d23
  const __m256i sums = _mm256_add_epi64(_mm256_permute2x128_si256(ab, cd, 0x20),
                                        _mm256_permute2x128_si256(ab, cd, 0x31));  // a b c d (int64)
  const __m256i low32 = _mm256_permutevar8x32_epi32(sums, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
  const int32_t bias = static_cast<int32_t>(static_cast<uint32_t>(kBias * n_inputs));
  return _mm_sub_epi32(_mm256_castsi256_si128(low32), _mm_set1_epi32(bias));
}

// finish4 for two tokens at once: t[r] holds row r's sums of token m in lanes 0-1 and of token m+1 in lanes
// 2-3 (the half-tail pass of rows_avx2); lo and hi get the four rows' dot products of token m and m+1.
inline void finish_pair(const __m256i t[4], int64_t n_inputs, __m128i* lo, __m128i* hi) {
  // 64-bit lanes [t0 t1 | t0 t1] and [t2 t3 | t2 t3]: each the sum of its two lanes, token m low, m+1 high
  const __m256i ab = _mm256_add_epi64(_mm256_unpacklo_epi64(t[0], t[1]), _mm256_unpackhi_epi64(t[0], t[1]));
  const __m256i cd = _mm256_add_epi64(_mm256_unpacklo_epi64(t[2], t[3]), _mm256_unpackhi_epi64(t[2], t[3]));
  const __m256i low32 = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const __m128i bias = _mm_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(kBias * n_inputs)));
  const __m256i m0 = _mm256_permutevar8x32_epi32(_mm256_permute2x128_si256(ab, cd, 0x20), low32);
  const __m256i m1 = _mm256_permutevar8x32_epi32(_mm256_permute2x128_si256(ab, cd, 0x31), low32);
  *lo = _mm_sub_epi32(_mm256_castsi256_si128(m0), bias);
  *hi = _mm_sub_epi32(_mm256_castsi256_si128(m1), bias);
}

// The 32 packed bytes of block b of a row; the last block may be partial: pad it with 0x55 (zeros).
inline __m256i load_block(const uint8_t* row, int64_t KB, int64_t b) {
  const int64_t left = KB - b * kBlockBytes;
  if (left >= kBlockBytes) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * kBlockBytes));
  }
  if (left == kBlockBytes / 2) {  // half a block (K = 64 mod 128, e.g. 64): one 16-byte load, zero codes above it
    const __m128i low = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + b * kBlockBytes));
    return _mm256_inserti128_si256(_mm256_set1_epi8(0x55), low, 0);  // no copy through memory, as below
  }
  alignas(32) uint8_t tail[kBlockBytes];
  std::memset(tail, 0x55, kBlockBytes);
  std::memcpy(tail, row + b * kBlockBytes, static_cast<size_t>(KB - b * kBlockBytes));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
}

constexpr int kRows = 4;  // rows per tile: one load of x serves 4 rows, one reduction finishes 4 dot products

// Rows n0..n1-1 of out (M, N) = x_perm (M, Kp, plane layout) times the packed rows.
//
// Tiles of 4 rows: their weights are decoded once into w (plane layout), then reused by every token.
// A "half tail": when the last block holds at most 64 real inputs (16 packed bytes, e.g. K = 64), the
// high half of its registers is padding. We then copy the low half of its weights into the high half and,
// for two tokens at a time, load token m's 64 inputs into the low half and token m+1's into the high
// half: one pass does both (psadbw lanes 0-1 are token m's, 2-3 token m+1's). A lone token still gets the
// right sum: its high half holds zeros, which add nothing but the bias. Where that tail is the whole row
// (K <= 64, the seed's width) one reduction (finish_pair) finishes the pair's eight dot products.
void rows_avx2(const int8_t* x_perm, int64_t M, int64_t Kp, const uint8_t* packed, int64_t KB, int32_t* out,
               int64_t N, int64_t n0, int64_t n1) {
  const int64_t nblocks = Kp / kBlock;
  const bool half_tail = KB - (nblocks - 1) * kBlockBytes <= kBlockBytes / 2;
  const int64_t tail_off = (nblocks - 1) * kBlock;
  const __m256i zero = _mm256_setzero_si256();
  // the decoded weights of one tile: scratch kept per thread, so that a call allocates nothing
  thread_local std::vector<__m256i> w;
  w.resize(static_cast<size_t>(kRows * nblocks * 4));
  alignas(16) int32_t res[kRows];
  for (int64_t n = n0; n < n1; n += kRows) {
    const int R = static_cast<int>(std::min<int64_t>(kRows, n1 - n));
    for (int r = 0; r < kRows; ++r) {
      __m256i* wr = &w[static_cast<size_t>(r * nblocks * 4)];
      for (int64_t b = 0; b < nblocks; ++b) {
        if (r >= R) {  // past the last row: zero weights, results thrown away
          for (int k = 0; k < 4; ++k) wr[b * 4 + k] = zero;
          continue;
        }
        __m256i bytes = load_block(packed + (n + r) * KB, KB, b);
        if (half_tail && b == nblocks - 1) bytes = _mm256_permute2x128_si256(bytes, bytes, 0x00);
        decode_block(bytes, &wr[b * 4]);
      }
    }
    auto store = [&](int64_t m, __m128i v) {
      if (R == kRows) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + m * N + n), v);
      } else {
        _mm_store_si128(reinterpret_cast<__m128i*>(res), v);
        for (int r = 0; r < R; ++r) out[m * N + n + r] = res[r];
      }
    };
    int64_t m = 0;
    if (half_tail) {
      for (; m + 1 < M; m += 2) {  // two tokens: the tail block of both in one pass, then their full blocks
        const int8_t* x0 = x_perm + m * Kp;
        const int8_t* x1 = x0 + Kp;
        __m256i x[4], a0[kRows], a1[kRows];
        for (int k = 0; k < 4; ++k) {
          x[k] = _mm256_inserti128_si256(
              _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x0 + tail_off + k * kPlane))),
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(x1 + tail_off + k * kPlane)), 1);
        }
        const int64_t n_inputs = Kp - kBlock / 2;  // the tail pass summed 64 inputs of each token, not 128
        if (nblocks == 1) {  // K <= 64: the tail is the whole row, and one reduction finishes both tokens
          __m256i t[kRows];
          for (int r = 0; r < kRows; ++r) t[r] = plane_sums(zero, x, &w[static_cast<size_t>(r * 4)]);
          __m128i lo, hi;
          finish_pair(t, n_inputs, &lo, &hi);
          store(m, lo);
          store(m + 1, hi);
          continue;
        }
        for (int r = 0; r < kRows; ++r) {
          const __m256i t = plane_sums(zero, x, &w[static_cast<size_t>((r * nblocks + nblocks - 1) * 4)]);
          a0[r] = _mm256_blend_epi32(t, zero, 0xF0);  // lanes 0-1: token m
          a1[r] = _mm256_blend_epi32(t, zero, 0x0F);  // lanes 2-3: token m+1
        }
        for (int64_t b = 0; b + 1 < nblocks; ++b) {
          load_planes(x0 + b * kBlock, x);
          for (int r = 0; r < kRows; ++r) a0[r] = plane_sums(a0[r], x, &w[static_cast<size_t>((r * nblocks + b) * 4)]);
          load_planes(x1 + b * kBlock, x);
          for (int r = 0; r < kRows; ++r) a1[r] = plane_sums(a1[r], x, &w[static_cast<size_t>((r * nblocks + b) * 4)]);
        }
        store(m, finish4(a0[0], a0[1], a0[2], a0[3], n_inputs));
        store(m + 1, finish4(a1[0], a1[1], a1[2], a1[3], n_inputs));
      }
    }
    for (; m < M; ++m) {  // one token at a time: every block, padding included
      const int8_t* xm = x_perm + m * Kp;
      __m256i x[4], a[kRows] = {zero, zero, zero, zero};
      for (int64_t b = 0; b < nblocks; ++b) {
        load_planes(xm + b * kBlock, x);
        for (int r = 0; r < kRows; ++r) a[r] = plane_sums(a[r], x, &w[static_cast<size_t>((r * nblocks + b) * 4)]);
      }
      store(m, finish4(a[0], a[1], a[2], a[3], Kp));
    }
  }
}

#else  // portable scalar path

void rows_scalar(const int8_t* x, int64_t M, int64_t K, const uint8_t* packed, int64_t KB, int32_t* out, int64_t N,
                 int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = packed + n * KB;
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* xm = x + m * K;
      int32_t acc = 0;
      for (int64_t i = 0; i < KB; ++i) {
        const uint8_t byte = row[i];
        for (int k = 0; k < 4; ++k) {
          const int code = (byte >> (2 * k)) & 3;
          if (code == 2) acc += xm[4 * i + k];       // w = +1
          else if (code == 0) acc -= xm[4 * i + k];  // w = -1
        }
      }
      out[m * N + n] = acc;
    }
  }
}

#endif

// Whether any activation is -128 (a cheap pass: M * K bytes, vectorized by the compiler).
bool has_int8_min(const int8_t* x, int64_t n) {
  bool found = false;
  for (int64_t i = 0; i < n; ++i) found |= (x[i] == -128);
  return found;
}

}  // namespace

// x_q: int8 (M, K_pad), packed: uint8 (N, K_pad / 4) -> int32 (M, N). K_pad is a multiple of 4; the
// caller guarantees ternary codes (0b11 never occurs); x_q = -128 raises ValueError.
torch::Tensor ternary_matmul_packed(torch::Tensor x_q, torch::Tensor packed) {
  TORCH_CHECK(x_q.device().is_cpu() && packed.device().is_cpu(), "ternary_matmul_packed: CPU tensors only");
  TORCH_CHECK(x_q.scalar_type() == torch::kInt8, "ternary_matmul_packed: x_q must be int8, got ", x_q.scalar_type());
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8, "ternary_matmul_packed: packed must be uint8, got ",
              packed.scalar_type());
  TORCH_CHECK(x_q.dim() == 2 && packed.dim() == 2, "ternary_matmul_packed: expected 2-D x_q (M, K_pad) and packed "
              "(N, K_pad/4)");
  TORCH_CHECK(x_q.size(1) == 4 * packed.size(1), "ternary_matmul_packed: x_q has K_pad=", x_q.size(1),
              " columns but packed rows hold 4 * ", packed.size(1), " = ", 4 * packed.size(1), " weights");
  x_q = x_q.contiguous();
  packed = packed.contiguous();
  const int64_t M = x_q.size(0), K = x_q.size(1), N = packed.size(0), KB = packed.size(1);
  auto out = torch::zeros({M, N}, torch::dtype(torch::kInt32));
  if (M == 0 || N == 0 || K == 0) return out;
  TORCH_CHECK_VALUE(!has_int8_min(x_q.data_ptr<int8_t>(), M * K),
                    "x_q must lie in [-127, 127] for the C++ kernel (quantize_activations gives that); found -128");
  const uint8_t* pk = packed.data_ptr<uint8_t>();
  int32_t* po = out.data_ptr<int32_t>();
#ifdef __AVX2__
  const int64_t Kp = (K + kBlock - 1) / kBlock * kBlock;
  std::vector<int8_t> x_perm(static_cast<size_t>(M * Kp));
  permute_planes(x_q.data_ptr<int8_t>(), M, K, Kp, x_perm.data());
  const int8_t* px = x_perm.data();
  at::parallel_for(0, N, row_grain(M, Kp), [&](int64_t n0, int64_t n1) { rows_avx2(px, M, Kp, pk, KB, po, N, n0, n1); });
#else
  const int8_t* px = x_q.data_ptr<int8_t>();
  at::parallel_for(0, N, row_grain(M, K), [&](int64_t n0, int64_t n1) { rows_scalar(px, M, K, pk, KB, po, N, n0, n1); });
#endif
  return out;
}

namespace {

// One token's per-token absmax quantization, as quant.quantize_activations does it in float32:
//   s = reciprocal(max(max_j |x_j|, eps)) * 127     (Tensor.__rdiv__ is reciprocal() * other)
//   q_j = round_half_even(x_j * s)                  (torch.round), |q_j| <= 127 already
// The int8 q_j go to q (K of them, in order); returns s, or NaN if the row holds a NaN or an inf (torch's
// path then gives NaN for every output of the token: NaN times a zero weight is still NaN). max is exact
// in any order, and the rest is elementwise, so 8 lanes at a time give the very same numbers.
float quantize_row(const float* x, int64_t K, float eps, int8_t* q) {
  float amax = 0.0f;
  bool finite = true;
  int64_t j = 0;
#ifdef __AVX2__
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  for (; j + 8 <= K; j += 8) {
    const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // NaN or inf
    vmax = _mm256_max_ps(vmax, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  for (float v : lanes) amax = v > amax ? v : amax;
  finite = _mm256_movemask_ps(bad) == 0;
#endif
  for (; j < K; ++j) {
    const float a = std::fabs(x[j]);
    finite &= std::isfinite(a);
    amax = a > amax ? a : amax;
  }
  if (!finite) return std::numeric_limits<float>::quiet_NaN();
  const float s = (1.0f / std::max(amax, eps)) * 127.0f;
  j = 0;
#ifdef __AVX2__
  const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (; j + 8 <= K; j += 8) {
    __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);  // never bites (see above); keeps -128 out whatever happens
    const __m256i i32 = _mm256_cvtps_epi32(v);   // exact: v is a whole number
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + j), _mm_packs_epi16(i16, i16));
  }
#endif
  for (; j < K; ++j) {
    const float v = std::nearbyint(x[j] * s);  // the default rounding mode: to nearest, ties to even
    q[j] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
  }
  return s;
}

// The RMSNorm of one token as nn.RMSNorm defines it, y_j = x_j * r * w_j with r = 1 / sqrt(mean(x^2) + eps),
// in tens of nanoseconds where torch's composite of six ops takes about 20 microseconds at babyGPT's
// width. The sum of squares runs in 8 lanes here (a sum in order would be a chain of K dependent adds;
// torch sums in its own vectorized blocks), so r can differ from torch's in its last bit: the same
// numbers up to float rounding.
const float* normed_row(const float* x, int64_t K, const float* w, float eps, float* y) {
  float ss = 0.0f;
  int64_t j = 0;
#ifdef __AVX2__
  __m256 lanes8 = _mm256_setzero_ps();
  for (; j + 8 <= K; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    lanes8 = _mm256_add_ps(lanes8, _mm256_mul_ps(v, v));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, lanes8);
  for (float v : lanes) ss += v;
#endif
  for (; j < K; ++j) ss += x[j] * x[j];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(K) + eps);
  for (int64_t j = 0; j < K; ++j) y[j] = x[j] * r * w[j];
  return y;
}

}  // namespace

// The BitLinear inference layer in one call: y = (x_i @ W_t^T) / (s_x * s_w[row]) (+ bias).
// x: float32 (..., K); packed: uint8 (N, ceil(K/4)); scale: float32 (G,), G dividing N (group g covers
// the N/G consecutive rows from g*N/G, as quant.row_scales); bias: float32 (N,) or None; eps: the
// quantizer's (quant.EPS). Returns float32 (..., N), bit for bit bitlinear.int_linear's numbers.
// norm_weight: float32 (K,) or None: first the RMSNorm of each token with that weight and norm_eps
// (normed_row), so that the norm in front of the layer costs no torch call of its own; the result is
// then bitlinear.int_linear's on torch's norm up to that norm's float rounding.
// act (0 none, 1 relu, 2 relu2 = relu(y) squared) and residual float32 (..., N) or None: the epilogue
// residual + act(y), each step in float32 as torch's ops round it (bit for bit torch's relu, square, add),
// so that the activation after a layer and the residual add after a block's layer cost no torch call.
torch::Tensor ternary_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor scale,
                             c10::optional<torch::Tensor> bias, double eps,
                             c10::optional<torch::Tensor> norm_weight, double norm_eps,
                             int64_t act, c10::optional<torch::Tensor> residual) {
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu() && scale.device().is_cpu(),
              "ternary_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && scale.scalar_type() == torch::kFloat32,
              "ternary_linear: x and scale must be float32, got ", x.scalar_type(), " and ", scale.scalar_type());
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.dim() == 2, "ternary_linear: packed must be 2-D uint8");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "ternary_linear: x must have at least one feature");
  const int64_t K = x.size(-1), N = packed.size(0), KB = packed.size(1), G = scale.numel();
  TORCH_CHECK((K + 3) / 4 == KB, "ternary_linear: x has K=", K, " features but packed rows hold ", KB, " bytes");
  TORCH_CHECK(scale.dim() <= 1 && G >= 1 && N % G == 0, "ternary_linear: scale must be (groups,) dividing N=", N);
  const float* pb = nullptr;
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == torch::kFloat32 && b.numel() == N, "ternary_linear: bias must be float32 (N,)");
    pb = b.data_ptr<float>();
  }
  const float* pw = nullptr;
  torch::Tensor nw;
  if (norm_weight.has_value() && norm_weight->defined()) {
    nw = norm_weight->contiguous();
    TORCH_CHECK(nw.device().is_cpu() && nw.scalar_type() == torch::kFloat32 && nw.numel() == K,
                "ternary_linear: norm_weight must be float32 (K,) = (", K, ",)");
    pw = nw.data_ptr<float>();
  }
  const float fneps = static_cast<float>(norm_eps);
  TORCH_CHECK(act >= 0 && act <= 2, "ternary_linear: act must be 0 (none), 1 (relu) or 2 (relu2), got ", act);
  const float* pr = nullptr;
  torch::Tensor r;
  if (residual.has_value() && residual->defined()) {
    r = residual->contiguous();
    TORCH_CHECK(r.device().is_cpu() && r.scalar_type() == torch::kFloat32 && r.numel() == x.numel() / K * N,
                "ternary_linear: residual must be float32 with the output's shape (..., N=", N, ")");
    pr = r.data_ptr<float>();
  }
  x = x.contiguous();
  packed = packed.contiguous();
  scale = scale.contiguous();
  const int64_t M = x.numel() / K;
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  auto out = torch::empty(out_shape, x.options());
  if (M == 0 || N == 0) return out;
  const float* px = x.data_ptr<float>();
  const uint8_t* pk = packed.data_ptr<uint8_t>();
  const float* ps = scale.data_ptr<float>();
  const float feps = static_cast<float>(eps);  // clamp(min=eps) compares in the tensor's dtype
  // scratch reused across calls (no allocation per token): the int32 sums, the scales per token and per row
  thread_local std::vector<int32_t> acc_buf;
  thread_local std::vector<float> s_x, s_row, x_norm;
  if (pw) x_norm.resize(static_cast<size_t>(K));
  // token m's inputs: its row of x, or (with a norm) that row normalised into x_norm
  auto row_in = [&](int64_t m) { return pw ? normed_row(px + m * K, K, pw, fneps, x_norm.data()) : px + m * K; };
  acc_buf.resize(static_cast<size_t>(M * N));
  s_x.resize(static_cast<size_t>(M));
  s_row.resize(static_cast<size_t>(N));
  int32_t* acc = acc_buf.data();
  for (int64_t g = 0, rows = N / G; g < G; ++g) std::fill_n(s_row.data() + g * rows, rows, ps[g]);  // row_scales
#ifdef __AVX2__
  const int64_t Kp = (K + kBlock - 1) / kBlock * kBlock;
  thread_local std::vector<int8_t> x_perm, q_row;
  x_perm.resize(static_cast<size_t>(M * Kp));  // every row is written in full below: no need to zero it
  q_row.resize(static_cast<size_t>(K));
  alignas(32) int8_t pad[kBlock];
  for (int64_t m = 0; m < M; ++m) {
    int8_t* row = x_perm.data() + m * Kp;
    s_x[m] = quantize_row(row_in(m), K, feps, q_row.data());
    if (std::isnan(s_x[m])) {
      std::memset(row, 0, static_cast<size_t>(Kp));  // NaN: the row stays zero (its outputs become NaN below)
    } else {
      row_to_planes(q_row.data(), K, Kp, row, pad);
    }
  }
  const int8_t* pq = x_perm.data();
  at::parallel_for(0, N, row_grain(M, Kp), [&](int64_t n0, int64_t n1) { rows_avx2(pq, M, Kp, pk, KB, acc, N, n0, n1); });
#else
  const int64_t Kq = 4 * KB;  // the scalar kernel reads whole bytes: pad the row with zeros
  thread_local std::vector<int8_t> x_q;
  x_q.assign(static_cast<size_t>(M * Kq), 0);
  for (int64_t m = 0; m < M; ++m) {
    s_x[m] = quantize_row(row_in(m), K, feps, x_q.data() + m * Kq);  // NaN: the row stays zero
  }
  const int8_t* pq = x_q.data();
  at::parallel_for(0, N, row_grain(M, Kq), [&](int64_t n0, int64_t n1) { rows_scalar(pq, M, Kq, pk, KB, acc, N, n0, n1); });
#endif
  // y = acc / (s_x * s_w): int_linear's float32 product, then its division (then + bias, as forward does),
  // then the epilogue: act, + residual
  float* po = out.data_ptr<float>();
  const float* sr = s_row.data();
  for (int64_t m = 0; m < M; ++m) {
    const float sx = s_x[m];
    const int32_t* am = acc + m * N;
    float* om = po + m * N;
    const float* rm = pr ? pr + m * N : nullptr;
    int64_t n = 0;
#ifdef __AVX2__
    // 8 outputs at a time: the same IEEE conversion, product, division and sum as the scalar lines below
    const __m256 vsx = _mm256_set1_ps(sx);
    const __m256 zero = _mm256_setzero_ps();
    for (; n + 8 <= N; n += 8) {
      const __m256 a = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(am + n)));
      __m256 y = _mm256_div_ps(a, _mm256_mul_ps(vsx, _mm256_loadu_ps(sr + n)));
      if (pb) y = _mm256_add_ps(y, _mm256_loadu_ps(pb + n));
      if (act) y = _mm256_max_ps(zero, y);  // zero first: a NaN y stays NaN, as in torch.relu
      if (act == 2) y = _mm256_mul_ps(y, y);
      if (rm) y = _mm256_add_ps(_mm256_loadu_ps(rm + n), y);
      _mm256_storeu_ps(om + n, y);
    }
#endif
    for (; n < N; ++n) {
      float y = static_cast<float>(am[n]) / (sx * sr[n]);
      if (pb) y += pb[n];
      if (act) y = y > 0.0f || std::isnan(y) ? y : 0.0f;
      if (act == 2) y = y * y;
      if (rm) y = rm[n] + y;
      om[n] = y;
    }
  }
  return out;
}

bool has_avx2() {
#ifdef __AVX2__
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ternary_matmul_packed", &ternary_matmul_packed,
        "int32 (M, N) = x_q int8 (M, K_pad) times ternary weights packed 2-bit uint8 (N, K_pad/4), additions only");
  m.def("ternary_linear", &ternary_linear, py::arg("x"), py::arg("packed"), py::arg("scale"), py::arg("bias"),
        py::arg("eps"), py::arg("norm_weight") = py::none(), py::arg("norm_eps") = 0.0, py::arg("act") = 0,
        py::arg("residual") = py::none(),
        "float32 (..., N) = BitLinear inference on float32 x (..., K): (RMSNorm,) quantize per token, add-only "
        "GEMV, rescale, + bias, (relu / relu2,) (+ residual); bit for bit bitlinear.int_linear and torch's ops "
        "(with a norm: up to the norm's rounding)");
  m.def("has_avx2", &has_avx2, "whether the extension was compiled with the AVX2 kernel");
}
