// Fused block-sparse attention for CPU: forward and backward, FlashAttention-style.
//
// The layout arrives as CSR: row_offsets [Hl * nb + 1] and key block indices cols [nnz]
// (each query block's allowed key blocks, in increasing order), Hl = 1 (shared) or H.
// Forward: one task per (batch, head, query block), online softmax over its key blocks;
// only the output and the log-sum-exp per query are kept. Backward: one task per
// (batch, head, split of query blocks); it recomputes the probabilities from the saved
// log-sum-exp and owns dK / dV accumulators for its (batch, head) [, split], so no two
// threads ever write the same memory (splits, used when B * H is small against the
// thread count, are summed at the end). Keys and values are read in place, never gathered.
// Attention dropout draws its mask from a counter-based hash of (seed, head, query, key),
// so the backward regenerates it instead of storing it.
//
// Every product is C[M, N] (+)= A[M, K] B[K, N] with A read through strides (any element
// type, widened on the fly) and B, C contiguous accumulator-type buffers whose width N is
// a multiple of the vector width: query blocks are stored transposed (queries along the
// vector), so the softmax runs across vectors too. Vectors are GCC/Clang vector
// extensions, so the compiler maps them to whatever ISA the build targets.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

#if defined(__AVX512F__)
#define ES_VEC_BYTES 64
#elif defined(__AVX__)
#define ES_VEC_BYTES 32
#else
#define ES_VEC_BYTES 16
#endif

typedef float vfloat __attribute__((vector_size(ES_VEC_BYTES)));
typedef int32_t vint32 __attribute__((vector_size(ES_VEC_BYTES)));
typedef double vdouble __attribute__((vector_size(ES_VEC_BYTES)));

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  using type = vfloat;
};
template <>
struct VecOf<double> {
  using type = vdouble;
};

template <typename T>
constexpr int64_t lanes() {
  return ES_VEC_BYTES / sizeof(T);
}

template <typename V, typename T>
inline V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V, typename T>
inline V vbroadcast(T x) {
  V v = {};
  return v + x;
}

template <typename V>
inline V vmax(const V& a, const V& b) {
  return a > b ? a : b;
}

// exp(x) for float vectors: Cephes' expf, exact 0 below -87 (so -inf gives 0).
inline vfloat vexp(vfloat x) {
  const auto underflow = x < -87.0f;
  x = x > 88.3f ? vbroadcast<vfloat>(88.3f) : x;
  x = x < -87.0f ? vbroadcast<vfloat>(-87.0f) : x;
  vfloat fx = x * 1.44269504088896341f + 0.5f;
  vint32 truncated = __builtin_convertvector(fx, vint32);
  vfloat floor_fx = __builtin_convertvector(truncated, vfloat);
  floor_fx = floor_fx > fx ? floor_fx - 1.0f : floor_fx;
  x = x - floor_fx * 0.693359375f + floor_fx * 2.12194440e-4f;
  vfloat y = vbroadcast<vfloat>(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  vint32 exponent = (__builtin_convertvector(floor_fx, vint32) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  return underflow ? vbroadcast<vfloat>(0.0f) : y * scale;
}

// Double precision (tests and gradcheck): lane by lane.
inline vdouble vexp(vdouble x) {
  for (int64_t i = 0; i < lanes<double>(); ++i) {
    x[i] = std::exp(x[i]);
  }
  return x;
}

template <typename T>
using acc_type_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// ------------------------------------------------------------------ dropout mask

// Attention dropout keeps score (query i, key j) of head (b, h) when a hash of (seed, b * H
// + h, i, j) clears the threshold, so the backward regenerates the forward's mask exactly.
typedef uint32_t vuint32 __attribute__((vector_size(ES_VEC_BYTES)));

template <typename U>
inline U mix32(U x) {  // murmur3's finalizer
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

inline uint32_t column_key(int64_t query) {
  return mix32(static_cast<uint32_t>(query) * 0x9E3779B9u + 0x165667B1u);
}

// 1 / (1 - p) where kept, 0 where dropped, for the L queries whose column keys start at
// `columns`, against key `row` (a row_key).
inline vfloat keep_scale(uint32_t row, const uint32_t* columns, uint32_t threshold, float scale) {
  const vuint32 hash = mix32(vload<vuint32>(columns) ^ row);
  return (hash >> 8) >= threshold ? vbroadcast<vfloat>(scale) : vfloat{};
}

inline vdouble keep_scale(uint32_t row, const uint32_t* columns, uint32_t threshold, double scale) {
  vdouble out;
  for (int64_t i = 0; i < lanes<double>(); ++i) {
    out[i] = (mix32(columns[i] ^ row) >> 8) >= threshold ? scale : 0.0;
  }
  return out;
}

// ------------------------------------------------------------------ matrix products

// C[MR, NV * L] (+)= A[MR, K] B[K, NV * L]: the register tile.
template <int MR, int NV, typename TA, typename T>
inline void tile(
    int64_t K,
    const TA* A,
    int64_t a_row,
    int64_t a_col,
    const T* B,
    int64_t ldb,
    T* C,
    int64_t ldc,
    bool accumulate) {
  using V = typename VecOf<T>::type;
  constexpr int64_t L = lanes<T>();
  V c[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int n = 0; n < NV; ++n) {
      c[r][n] = accumulate ? vload<V>(C + r * ldc + n * L) : V{};
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int n = 0; n < NV; ++n) {
      b[n] = vload<V>(B + k * ldb + n * L);
    }
    for (int r = 0; r < MR; ++r) {
      const T a = static_cast<T>(A[r * a_row + k * a_col]);
      for (int n = 0; n < NV; ++n) {
        c[r][n] += a * b[n];
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int n = 0; n < NV; ++n) {
      vstore(C + r * ldc + n * L, c[r][n]);
    }
  }
}

constexpr int kTileRows = 6;

template <int NV, typename TA, typename T>
inline void column_strip(
    int64_t M,
    int64_t K,
    const TA* A,
    int64_t a_row,
    int64_t a_col,
    const T* B,
    int64_t ldb,
    T* C,
    int64_t ldc,
    bool accumulate) {
  int64_t m = 0;
  for (; m + kTileRows <= M; m += kTileRows) {
    tile<kTileRows, NV>(K, A + m * a_row, a_row, a_col, B, ldb, C + m * ldc, ldc, accumulate);
  }
  const TA* a = A + m * a_row;
  T* c = C + m * ldc;
  switch (M - m) {
    case 5: tile<5, NV>(K, a, a_row, a_col, B, ldb, c, ldc, accumulate); break;
    case 4: tile<4, NV>(K, a, a_row, a_col, B, ldb, c, ldc, accumulate); break;
    case 3: tile<3, NV>(K, a, a_row, a_col, B, ldb, c, ldc, accumulate); break;
    case 2: tile<2, NV>(K, a, a_row, a_col, B, ldb, c, ldc, accumulate); break;
    case 1: tile<1, NV>(K, a, a_row, a_col, B, ldb, c, ldc, accumulate); break;
    default: break;
  }
}

// C[M, N] (+)= A[M, K] B[K, N]; A element (m, k) at A[m * a_row + k * a_col]; B and C
// row-major with leading dimensions ldb, ldc; N a multiple of lanes<T>().
template <typename TA, typename T>
void gemm(
    int64_t M,
    int64_t N,
    int64_t K,
    const TA* A,
    int64_t a_row,
    int64_t a_col,
    const T* B,
    int64_t ldb,
    T* C,
    int64_t ldc,
    bool accumulate) {
  constexpr int64_t L = lanes<T>();
  int64_t n = 0;
  for (; n + 2 * L <= N; n += 2 * L) {
    column_strip<2>(M, K, A, a_row, a_col, B + n, ldb, C + n, ldc, accumulate);
  }
  for (; n + L <= N; n += L) {
    column_strip<1>(M, K, A, a_row, a_col, B + n, ldb, C + n, ldc, accumulate);
  }
}

inline int64_t round_up(int64_t x, int64_t multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// ------------------------------------------------------------------ shared pieces

// Strided view of one [B, H, Np, D] tensor with a unit last stride.
template <typename T>
struct Heads {
  T* data;
  int64_t batch_stride, head_stride, row_stride;

  Heads(const at::Tensor& t)
      : data(static_cast<T*>(t.data_ptr())),
        batch_stride(t.stride(0)),
        head_stride(t.stride(1)),
        row_stride(t.stride(2)) {}

  T* block(int64_t b, int64_t h, int64_t first_row) const {
    return data + b * batch_stride + h * head_stride + first_row * row_stride;
  }
};

struct Problem {
  int64_t batch, heads, layout_heads, num_blocks, block_size, dim;
  const int64_t* row_offsets;
  const int64_t* cols;
  const bool* key_valid;  // [B, Np] or nullptr
  std::vector<int64_t> valid_keys;  // [B * nb] real keys per key block (if key_valid)
  bool dropout = false;
  uint32_t drop_threshold = 0;  // drop where (hash >> 8) < threshold = p * 2^24
  double keep_scale = 1.0;  // 1 / (1 - p)
  uint64_t seed = 0;

  // The dropout hash of key `key` in head `head` (= b * H + h).
  uint32_t row_key(int64_t head, int64_t key) const {
    const uint32_t seed_hi = static_cast<uint32_t>(seed >> 32);
    const uint32_t head_key = mix32(seed_hi + static_cast<uint32_t>(head) * 0x27D4EB2Fu);
    const uint32_t key_hash = mix32(static_cast<uint32_t>(key) * 0x85EBCA77u + 0x61C88647u);
    return mix32(static_cast<uint32_t>(seed) ^ head_key ^ key_hash);
  }

  int64_t padded_len() const { return num_blocks * block_size; }

  int64_t layout_row(int64_t h, int64_t qb) const {
    return (layout_heads == 1 ? 0 : h) * num_blocks + qb;
  }

  int64_t block_keys(int64_t b, int64_t kb) const {
    return key_valid ? valid_keys[b * num_blocks + kb] : block_size;
  }

  // Scores of masked keys (rows of S^T) set to -inf, so their probability is exactly 0.
  template <typename T>
  void mask_keys(int64_t b, int64_t kb, T* scores_t, int64_t ld) const {
    const bool* valid = key_valid + b * padded_len() + kb * block_size;
    for (int64_t j = 0; j < block_size; ++j) {
      if (!valid[j]) {
        std::fill(scores_t + j * ld, scores_t + (j + 1) * ld, -std::numeric_limits<T>::infinity());
      }
    }
  }
};

Problem make_problem(
    const at::Tensor& q,
    const at::Tensor& row_offsets,
    const at::Tensor& cols,
    const std::optional<at::Tensor>& key_valid,
    int64_t block_size) {
  TORCH_CHECK(q.dim() == 4, "fused attention: q must be [B, H, Np, D], got ", q.sizes());
  TORCH_CHECK(block_size >= 1, "fused attention: block_size must be positive");
  Problem p;
  p.batch = q.size(0);
  p.heads = q.size(1);
  p.dim = q.size(3);
  p.block_size = block_size;
  TORCH_CHECK(
      q.size(2) % block_size == 0,
      "fused attention: length ",
      q.size(2),
      " is not a multiple of block_size ",
      block_size);
  p.num_blocks = q.size(2) / block_size;
  TORCH_CHECK(
      row_offsets.scalar_type() == at::kLong && cols.scalar_type() == at::kLong &&
          row_offsets.is_contiguous() && cols.is_contiguous(),
      "fused attention: row_offsets and cols must be contiguous int64");
  const int64_t rows = row_offsets.numel() - 1;
  TORCH_CHECK(
      p.num_blocks > 0 && rows > 0 && rows % p.num_blocks == 0,
      "fused attention: row_offsets has ",
      rows + 1,
      " entries for ",
      p.num_blocks,
      " blocks");
  p.layout_heads = rows / p.num_blocks;
  TORCH_CHECK(
      p.layout_heads == 1 || p.layout_heads == p.heads,
      "fused attention: layout heads ",
      p.layout_heads,
      " vs ",
      p.heads);
  p.row_offsets = row_offsets.data_ptr<int64_t>();
  p.cols = cols.data_ptr<int64_t>();
  TORCH_CHECK(p.row_offsets[0] == 0 && p.row_offsets[rows] == cols.numel(), "fused attention: bad CSR");
  for (int64_t i = 0; i < cols.numel(); ++i) {
    TORCH_CHECK(p.cols[i] >= 0 && p.cols[i] < p.num_blocks, "fused attention: key block out of range");
  }
  p.key_valid = nullptr;
  if (key_valid.has_value()) {
    const at::Tensor& mask = *key_valid;
    TORCH_CHECK(
        mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.dim() == 2 &&
            mask.size(0) == p.batch && mask.size(1) == q.size(2),
        "fused attention: key_valid must be a contiguous bool [B, Np]");
    p.key_valid = mask.data_ptr<bool>();
    p.valid_keys.assign(p.batch * p.num_blocks, 0);
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t kb = 0; kb < p.num_blocks; ++kb) {
        const bool* valid = p.key_valid + b * p.padded_len() + kb * block_size;
        p.valid_keys[b * p.num_blocks + kb] = std::count(valid, valid + block_size, true);
      }
    }
  }
  return p;
}

void set_dropout(Problem& p, double dropout_p, const std::optional<at::Tensor>& seed) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "fused attention: dropout_p must be in [0, 1)");
  if (dropout_p == 0.0) {
    return;
  }
  TORCH_CHECK(
      seed.has_value() && seed->numel() == 1 && seed->scalar_type() == at::kLong,
      "fused attention: dropout needs a one-element int64 seed tensor");
  p.dropout = true;
  p.drop_threshold = static_cast<uint32_t>(std::llround(dropout_p * 16777216.0));
  p.keep_scale = 1.0 / (1.0 - dropout_p);
  p.seed = static_cast<uint64_t>(seed->cpu().item<int64_t>());
}

void check_heads(const at::Tensor& t, const at::Tensor& q, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fused attention: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.sizes() == q.sizes(), "fused attention: ", name, " has shape ", t.sizes(), ", q ", q.sizes());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), "fused attention: ", name, " dtype differs from q");
  TORCH_CHECK(t.stride(3) == 1 || t.size(3) == 1, "fused attention: ", name, " needs a unit last stride");
}

at::Tensor unit_last_stride(const at::Tensor& t) {
  return (t.stride(3) == 1 || t.size(3) == 1) ? t : t.contiguous();
}

int threads() {
  return std::max(1, at::get_num_threads());
}

// ------------------------------------------------------------------ forward

template <typename scalar_t>
void forward_impl(
    const Problem& p,
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& v,
    double scale_arg,
    at::Tensor& out,
    at::Tensor& lse) {
  using acc_t = acc_type_t<scalar_t>;
  using V = typename VecOf<acc_t>::type;
  constexpr int64_t L = lanes<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_arg);
  const acc_t keep_value = static_cast<acc_t>(p.keep_scale);
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int64_t bs = p.block_size, dim = p.dim, nb = p.num_blocks;
  const int64_t bqp = round_up(bs, L);  // queries per block, padded to whole vectors
  const Heads<const scalar_t> qh(q), kh(k), vh(v);
  const Heads<scalar_t> oh(out);
  acc_t* lse_data = lse.data_ptr<acc_t>();
  const int64_t tasks = p.batch * p.heads * nb;

#pragma omp parallel num_threads(threads())
  {
    // Transposed tiles [*, bqp]: scaled queries, scores / probabilities, output.
    std::vector<acc_t> queries_t(dim * bqp, 0), scores_t(bs * bqp), out_t(dim * bqp);
    std::vector<acc_t> row_max(bqp), row_sum(bqp), shift(bqp), correction(bqp), block_max(bqp);
    std::vector<uint32_t> column_keys(bqp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / (p.heads * nb), h = (task / nb) % p.heads, qb = task % nb;
      const int64_t row = p.layout_row(h, qb);
      const scalar_t* q_block = qh.block(b, h, qb * bs);
      scalar_t* o_block = oh.block(b, h, qb * bs);
      acc_t* lse_block = lse_data + (b * p.heads + h) * p.padded_len() + qb * bs;
      if (p.dropout) {
        for (int64_t i = 0; i < bqp; ++i) {
          column_keys[i] = column_key(qb * bs + i);
        }
      }
      for (int64_t i = 0; i < bs; ++i) {
        for (int64_t d = 0; d < dim; ++d) {
          queries_t[d * bqp + i] = scale * static_cast<acc_t>(q_block[i * qh.row_stride + d]);
        }
      }
      std::fill(row_max.begin(), row_max.end(), -inf);
      std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
      bool first = true;
      for (int64_t e = p.row_offsets[row]; e < p.row_offsets[row + 1]; ++e) {
        const int64_t kb = p.cols[e];
        const int64_t real_keys = p.block_keys(b, kb);
        if (real_keys == 0) {
          continue;
        }
        const scalar_t* k_block = kh.block(b, h, kb * bs);
        const scalar_t* v_block = vh.block(b, h, kb * bs);
        // S^T [bs keys, bqp queries] = K Q^T (scaled).
        gemm(bs, bqp, dim, k_block, kh.row_stride, 1, queries_t.data(), bqp, scores_t.data(), bqp, false);
        if (real_keys < bs) {
          p.mask_keys(b, kb, scores_t.data(), bqp);
        }
        for (int64_t c = 0; c < bqp; c += L) {
          V m = vload<V>(scores_t.data() + c);
          for (int64_t j = 1; j < bs; ++j) {
            m = vmax(m, vload<V>(scores_t.data() + j * bqp + c));
          }
          vstore(block_max.data() + c, m);
        }
        for (int64_t c = 0; c < bqp; c += L) {
          const V old_max = vload<V>(row_max.data() + c);
          const V new_max = vmax(old_max, vload<V>(block_max.data() + c));
          // No real key yet (max -inf): shift by 0 so that exp gives 0, not NaN.
          const V s = new_max == -inf ? V{} : new_max;
          vstore(row_max.data() + c, new_max);
          vstore(shift.data() + c, s);
          vstore(correction.data() + c, vexp(old_max - s));
        }
        for (int64_t c = 0; c < bqp; c += L) {
          const V s = vload<V>(shift.data() + c);
          V total = {};
          for (int64_t j = 0; j < bs; ++j) {
            acc_t* at = scores_t.data() + j * bqp + c;
            const V prob = vexp(vload<V>(at) - s);
            vstore(at, prob);
            total += prob;
          }
          const V old_sum = vload<V>(row_sum.data() + c);
          vstore(row_sum.data() + c, old_sum * vload<V>(correction.data() + c) + total);
        }
        if (p.dropout) {  // the normalizer sums every probability; the values see the kept ones
          for (int64_t j = 0; j < bs; ++j) {
            const uint32_t row_key = p.row_key(b * p.heads + h, kb * bs + j);
            for (int64_t c = 0; c < bqp; c += L) {
              acc_t* at = scores_t.data() + j * bqp + c;
              const V keep = keep_scale(row_key, column_keys.data() + c, p.drop_threshold, keep_value);
              vstore(at, vload<V>(at) * keep);
            }
          }
        }
        if (!first) {
          for (int64_t d = 0; d < dim; ++d) {
            for (int64_t c = 0; c < bqp; c += L) {
              acc_t* at = out_t.data() + d * bqp + c;
              vstore(at, vload<V>(at) * vload<V>(correction.data() + c));
            }
          }
        }
        // O^T [dim, bqp] (+)= V^T P^T.
        gemm(dim, bqp, bs, v_block, 1, vh.row_stride, scores_t.data(), bqp, out_t.data(), bqp, !first);
        first = false;
      }
      for (int64_t i = 0; i < bs; ++i) {
        const bool has_key = !first && row_sum[i] > 0;
        const acc_t inverse = has_key ? acc_t(1) / row_sum[i] : acc_t(0);
        lse_block[i] = has_key ? row_max[i] + std::log(row_sum[i]) : inf;
        for (int64_t d = 0; d < dim; ++d) {
          const acc_t value = first ? acc_t(0) : out_t[d * bqp + i] * inverse;
          o_block[i * oh.row_stride + d] = static_cast<scalar_t>(value);
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> fused_forward(
    const at::Tensor& q_in,
    const at::Tensor& k_in,
    const at::Tensor& v_in,
    const at::Tensor& row_offsets,
    const at::Tensor& cols,
    const std::optional<at::Tensor>& key_valid,
    int64_t block_size,
    double scale,
    double dropout_p,
    const std::optional<at::Tensor>& seed) {
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  check_heads(q, q, "q");
  check_heads(k, q, "k");
  check_heads(v, q, "v");
  Problem p = make_problem(q, row_offsets, cols, key_valid, block_size);
  set_dropout(p, dropout_p, seed);
  at::Tensor out = at::empty(q.sizes(), q.options());
  const auto acc_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lse = at::empty({p.batch, p.heads, p.padded_len()}, q.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "fused_forward", [&] {
    forward_impl<scalar_t>(p, q, k, v, scale, out, lse);
  });
  return {out, lse};
}

// ------------------------------------------------------------------ backward

// Query block ranges [first, last) of each split of each layout head, balanced by visits.
std::vector<int64_t> split_rows(const Problem& p, int64_t splits) {
  std::vector<int64_t> bounds(p.layout_heads * (splits + 1));
  for (int64_t lh = 0; lh < p.layout_heads; ++lh) {
    const int64_t* offsets = p.row_offsets + lh * p.num_blocks;
    const int64_t total = offsets[p.num_blocks] - offsets[0];
    int64_t* bound = bounds.data() + lh * (splits + 1);
    bound[0] = 0;
    int64_t qb = 0;
    for (int64_t s = 1; s < splits; ++s) {
      const int64_t target = offsets[0] + (total * s + splits - 1) / splits;
      while (qb < p.num_blocks && offsets[qb] < target) {
        ++qb;
      }
      bound[s] = std::max(qb, bound[s - 1]);
    }
    bound[splits] = p.num_blocks;
  }
  return bounds;
}

template <typename scalar_t>
void backward_impl(
    const Problem& p,
    const at::Tensor& grad_out,
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& v,
    const at::Tensor& out,
    const at::Tensor& lse,
    double scale_arg,
    int64_t splits,
    at::Tensor& grad_q,
    at::Tensor& grad_k,
    at::Tensor& grad_v) {
  using acc_t = acc_type_t<scalar_t>;
  using V = typename VecOf<acc_t>::type;
  constexpr int64_t L = lanes<acc_t>();
  const acc_t scale = static_cast<acc_t>(scale_arg);
  const acc_t keep_value = static_cast<acc_t>(p.keep_scale);
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int64_t bs = p.block_size, dim = p.dim, nb = p.num_blocks, np = p.padded_len();
  const int64_t bqp = round_up(bs, L), dp = round_up(dim, L);
  const Heads<const scalar_t> qh(q), kh(k), vh(v), oh(out), gh(grad_out);
  const Heads<scalar_t> dqh(grad_q);
  const acc_t* lse_data = lse.data_ptr<acc_t>();
  const int64_t bh = p.batch * p.heads;
  const std::vector<int64_t> bounds = split_rows(p, splits);

  // dK, dV accumulators [B * H * splits, Np, dp]; the outputs themselves when they can be.
  const bool direct = splits == 1 && std::is_same_v<scalar_t, acc_t> && dp == dim &&
      grad_k.is_contiguous() && grad_v.is_contiguous();
  at::Tensor acc_k, acc_v;
  if (direct) {
    acc_k = grad_k;
    acc_v = grad_v;
  } else {
    const auto options = grad_k.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    acc_k = at::zeros({bh * splits, np, dp}, options);
    acc_v = at::zeros({bh * splits, np, dp}, options);
  }
  acc_t* acc_k_data = acc_k.data_ptr<acc_t>();
  acc_t* acc_v_data = acc_v.data_ptr<acc_t>();

#pragma omp parallel num_threads(threads())
  {
    std::vector<acc_t> queries_t(dim * bqp, 0), queries(bs * dp, 0);  // scaled Q^T, Q
    std::vector<acc_t> grad_t(dim * bqp, 0), grad(bs * dp, 0);  // dO^T, dO
    std::vector<acc_t> grad_q_t(dim * bqp), probs_t(bs * bqp), grad_scores_t(bs * bqp);
    std::vector<acc_t> lse_row(bqp), delta(bqp);
    std::vector<acc_t> keep_t(p.dropout ? bs * bqp : 0), kept_probs_t(p.dropout ? bs * bqp : 0);
    std::vector<uint32_t> column_keys(bqp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < bh * splits; ++task) {
      const int64_t b = task / (p.heads * splits), h = (task / splits) % p.heads;
      const int64_t split = task % splits;
      const int64_t* bound = bounds.data() + (p.layout_heads == 1 ? 0 : h) * (splits + 1);
      acc_t* acc_k_head = acc_k_data + task * np * dp;
      acc_t* acc_v_head = acc_v_data + task * np * dp;
      for (int64_t qb = bound[split]; qb < bound[split + 1]; ++qb) {
        const int64_t row = p.layout_row(h, qb);
        const acc_t* lse_block = lse_data + (b * p.heads + h) * np + qb * bs;
        scalar_t* dq_block = dqh.block(b, h, qb * bs);
        const bool any_key = p.row_offsets[row] < p.row_offsets[row + 1] &&
            std::any_of(lse_block, lse_block + bs, [&](acc_t x) { return x != inf; });
        if (!any_key) {  // no real key: zero output, zero gradients
          for (int64_t i = 0; i < bs; ++i) {
            std::fill(dq_block + i * dqh.row_stride, dq_block + i * dqh.row_stride + dim, scalar_t(0));
          }
          continue;
        }
        const scalar_t* q_block = qh.block(b, h, qb * bs);
        const scalar_t* o_block = oh.block(b, h, qb * bs);
        const scalar_t* g_block = gh.block(b, h, qb * bs);
        if (p.dropout) {
          for (int64_t i = 0; i < bqp; ++i) {
            column_keys[i] = column_key(qb * bs + i);
          }
        }
        std::fill(lse_row.begin(), lse_row.end(), inf);  // padding queries: probability 0
        std::fill(delta.begin(), delta.end(), acc_t(0));
        for (int64_t i = 0; i < bs; ++i) {
          acc_t dot = 0;
          for (int64_t d = 0; d < dim; ++d) {
            const acc_t qs = scale * static_cast<acc_t>(q_block[i * qh.row_stride + d]);
            const acc_t g = static_cast<acc_t>(g_block[i * gh.row_stride + d]);
            queries_t[d * bqp + i] = qs;
            queries[i * dp + d] = qs;
            grad_t[d * bqp + i] = g;
            grad[i * dp + d] = g;
            dot += g * static_cast<acc_t>(o_block[i * oh.row_stride + d]);
          }
          lse_row[i] = lse_block[i];
          delta[i] = dot;  // sum_j P_ij dP_ij = <dO_i, O_i>
        }
        std::fill(grad_q_t.begin(), grad_q_t.end(), acc_t(0));
        for (int64_t e = p.row_offsets[row]; e < p.row_offsets[row + 1]; ++e) {
          const int64_t kb = p.cols[e];
          const int64_t real_keys = p.block_keys(b, kb);
          if (real_keys == 0) {
            continue;
          }
          const scalar_t* k_block = kh.block(b, h, kb * bs);
          const scalar_t* v_block = vh.block(b, h, kb * bs);
          acc_t* acc_k_block = acc_k_head + kb * bs * dp;
          acc_t* acc_v_block = acc_v_head + kb * bs * dp;
          // P^T [bs keys, bqp queries] = exp(K Q^T - lse).
          gemm(bs, bqp, dim, k_block, kh.row_stride, 1, queries_t.data(), bqp, probs_t.data(), bqp, false);
          if (real_keys < bs) {
            p.mask_keys(b, kb, probs_t.data(), bqp);
          }
          for (int64_t j = 0; j < bs; ++j) {
            for (int64_t c = 0; c < bqp; c += L) {
              acc_t* at = probs_t.data() + j * bqp + c;
              vstore(at, vexp(vload<V>(at) - vload<V>(lse_row.data() + c)));
            }
          }
          const acc_t* value_probs = probs_t.data();
          if (p.dropout) {  // the forward's mask Z (0 or 1 / (1 - p)), and P^T * Z
            for (int64_t j = 0; j < bs; ++j) {
              const uint32_t row_key = p.row_key(b * p.heads + h, kb * bs + j);
              for (int64_t c = 0; c < bqp; c += L) {
                const V keep = keep_scale(row_key, column_keys.data() + c, p.drop_threshold, keep_value);
                vstore(keep_t.data() + j * bqp + c, keep);
                vstore(kept_probs_t.data() + j * bqp + c, keep * vload<V>(probs_t.data() + j * bqp + c));
              }
            }
            value_probs = kept_probs_t.data();
          }
          // dV [bs, dp] += (P * Z)^T dO.
          gemm(bs, dp, bs, value_probs, bqp, 1, grad.data(), dp, acc_v_block, dp, true);
          // dP^T = Z * (V dO^T), then dS^T = P^T * (dP^T - delta).
          gemm(bs, bqp, dim, v_block, vh.row_stride, 1, grad_t.data(), bqp, grad_scores_t.data(), bqp, false);
          for (int64_t j = 0; j < bs; ++j) {
            for (int64_t c = 0; c < bqp; c += L) {
              acc_t* at = grad_scores_t.data() + j * bqp + c;
              const V prob = vload<V>(probs_t.data() + j * bqp + c);
              V grad_prob = vload<V>(at);
              if (p.dropout) {
                grad_prob *= vload<V>(keep_t.data() + j * bqp + c);
              }
              vstore(at, prob * (grad_prob - vload<V>(delta.data() + c)));
            }
          }
          // dK [bs, dp] += dS^T (scale Q); dQ^T [dim, bqp] += K^T dS^T.
          gemm(bs, dp, bs, grad_scores_t.data(), bqp, 1, queries.data(), dp, acc_k_block, dp, true);
          gemm(dim, bqp, bs, k_block, 1, kh.row_stride, grad_scores_t.data(), bqp, grad_q_t.data(), bqp, true);
        }
        for (int64_t i = 0; i < bs; ++i) {
          for (int64_t d = 0; d < dim; ++d) {
            dq_block[i * dqh.row_stride + d] = static_cast<scalar_t>(scale * grad_q_t[d * bqp + i]);
          }
        }
      }
    }
  }
  if (direct) {
    return;
  }
  // Sum the splits into dK, dV.
  const Heads<scalar_t> dkh(grad_k), dvh(grad_v);
  at::parallel_for(0, bh * nb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t head = item / nb, kb = item % nb;
      const int64_t b = head / p.heads, h = head % p.heads;
      scalar_t* dk_block = dkh.block(b, h, kb * bs);
      scalar_t* dv_block = dvh.block(b, h, kb * bs);
      for (int64_t j = 0; j < bs; ++j) {
        for (int64_t d = 0; d < dim; ++d) {
          acc_t sum_k = 0, sum_v = 0;
          for (int64_t s = 0; s < splits; ++s) {
            const int64_t at = ((head * splits + s) * np + kb * bs + j) * dp + d;
            sum_k += acc_k_data[at];
            sum_v += acc_v_data[at];
          }
          dk_block[j * dkh.row_stride + d] = static_cast<scalar_t>(sum_k);
          dv_block[j * dvh.row_stride + d] = static_cast<scalar_t>(sum_v);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_backward(
    const at::Tensor& grad_out_in,
    const at::Tensor& q_in,
    const at::Tensor& k_in,
    const at::Tensor& v_in,
    const at::Tensor& out_in,
    const at::Tensor& lse,
    const at::Tensor& row_offsets,
    const at::Tensor& cols,
    const std::optional<at::Tensor>& key_valid,
    int64_t block_size,
    double scale,
    double dropout_p,
    const std::optional<at::Tensor>& seed,
    int64_t splits) {
  const at::Tensor q = unit_last_stride(q_in), k = unit_last_stride(k_in), v = unit_last_stride(v_in);
  const at::Tensor out = unit_last_stride(out_in), grad_out = unit_last_stride(grad_out_in);
  check_heads(q, q, "q");
  check_heads(k, q, "k");
  check_heads(v, q, "v");
  check_heads(out, q, "out");
  check_heads(grad_out, q, "grad_out");
  Problem p = make_problem(q, row_offsets, cols, key_valid, block_size);
  set_dropout(p, dropout_p, seed);
  const auto acc_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(
      lse.scalar_type() == acc_dtype && lse.is_contiguous() &&
          lse.sizes() == at::IntArrayRef({p.batch, p.heads, p.padded_len()}),
      "fused attention: lse must be a contiguous [B, H, Np] tensor of the accumulation dtype");
  if (splits <= 0) {  // enough tasks for every thread, when B * H alone is not
    const int64_t bh = p.batch * p.heads, wanted = 4 * static_cast<int64_t>(threads());
    splits = bh >= wanted ? 1 : std::min(p.num_blocks, (wanted + bh - 1) / bh);
  }
  splits = std::max<int64_t>(1, std::min(splits, p.num_blocks));
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::zeros(q.sizes(), q.options());
  at::Tensor grad_v = at::zeros(q.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "fused_backward", [&] {
    backward_impl<scalar_t>(p, grad_out, q, k, v, out, lse, scale, splits, grad_q, grad_k, grad_v);
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY(ernie_sparse_fused, m) {
  m.def(
      "attention_forward(Tensor q, Tensor k, Tensor v, Tensor row_offsets, Tensor cols, Tensor? key_valid, "
      "int block_size, float scale, float dropout_p, Tensor? seed) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor row_offsets, Tensor cols, Tensor? key_valid, int block_size, float scale, "
      "float dropout_p, Tensor? seed, int splits) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ernie_sparse_fused, CPU, m) {
  m.impl("attention_forward", &fused_forward);
  m.impl("attention_backward", &fused_backward);
}
