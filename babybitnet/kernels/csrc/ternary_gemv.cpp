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

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
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

#ifdef __AVX2__

// x_perm[m, b*128 + k*32 + i] = x[m, b*128 + 4i + k], zero past the end of the row.
void permute_planes(const int8_t* x, int64_t M, int64_t K, int64_t Kp, int8_t* x_perm) {
  std::memset(x_perm, 0, static_cast<size_t>(M * Kp));
  for (int64_t m = 0; m < M; ++m) {
    const int8_t* xr = x + m * K;
    int8_t* pr = x_perm + m * Kp;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t b = j / kBlock, r = j % kBlock;
      pr[b * kBlock + (r % 4) * kPlane + r / 4] = xr[j];
    }
  }
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

// acc64 += the sum of x_k selected/negated by w_k over the 4 planes of one block, plus 128 per input.
inline __m256i block_step(__m256i acc64, const int8_t* xb, const __m256i w[4]) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i zero = _mm256_setzero_si256();
  for (int k = 0; k < 4; ++k) {
    const __m256i xk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + k * kPlane));
    const __m256i u = _mm256_xor_si256(_mm256_sign_epi8(xk, w[k]), bias);  // p + 128 as unsigned bytes
    acc64 = _mm256_add_epi64(acc64, _mm256_sad_epu8(u, zero));            // 4 lanes of 8-byte sums
  }
  return acc64;
}

// The dot product: the 4 lanes of acc64, less the bias of the n_inputs (padding included) it summed.
inline int32_t finish(__m256i acc64, int64_t n_inputs) {
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc64);
  return static_cast<int32_t>(lanes[0] + lanes[1] + lanes[2] + lanes[3] - kBias * n_inputs);
}

// The 32 packed bytes of block b of a row; the last block may be partial: pad it with 0x55 (zeros).
inline __m256i load_block(const uint8_t* row, int64_t KB, int64_t b) {
  if ((b + 1) * kBlockBytes <= KB) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * kBlockBytes));
  }
  alignas(32) uint8_t tail[kBlockBytes];
  std::memset(tail, 0x55, kBlockBytes);
  std::memcpy(tail, row + b * kBlockBytes, static_cast<size_t>(KB - b * kBlockBytes));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
}

void rows_avx2(const int8_t* x_perm, int64_t M, int64_t Kp, const uint8_t* packed, int64_t KB, int32_t* out,
               int64_t N, int64_t n0, int64_t n1) {
  const int64_t nblocks = Kp / kBlock;
  // M > 1: decode a row once into this buffer (plane layout, like x_perm), then reuse it for every token
  std::vector<__m256i> wrow(M > 1 ? static_cast<size_t>(nblocks * 4) : 0);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = packed + n * KB;
    if (M == 1) {  // decode and use straight away: the weights are read once anyway
      __m256i acc = _mm256_setzero_si256();
      for (int64_t b = 0; b < nblocks; ++b) {
        __m256i w[4];
        decode_block(load_block(row, KB, b), w);
        acc = block_step(acc, x_perm + b * kBlock, w);
      }
      out[n] = finish(acc, Kp);
      continue;
    }
    for (int64_t b = 0; b < nblocks; ++b) decode_block(load_block(row, KB, b), &wrow[b * 4]);
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* xm = x_perm + m * Kp;
      __m256i acc = _mm256_setzero_si256();
      for (int64_t b = 0; b < nblocks; ++b) acc = block_step(acc, xm + b * kBlock, &wrow[b * 4]);
      out[m * N + n] = finish(acc, Kp);
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
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) { rows_avx2(px, M, Kp, pk, KB, po, N, n0, n1); });
#else
  const int8_t* px = x_q.data_ptr<int8_t>();
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) { rows_scalar(px, M, K, pk, KB, po, N, n0, n1); });
#endif
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
  m.def("has_avx2", &has_avx2, "whether the extension was compiled with the AVX2 kernel");
}
