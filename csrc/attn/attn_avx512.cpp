// AVX-512 attention primitives: a register-blocked FMA micro-kernel (4 rows x 64 columns of C in
// 16 zmm accumulators, so each k step is 4 loads + 4 broadcasts for 16 FMAs) and a vector exp2.
#include "../simd_avx512.h"
#include "attn_impl.h"

namespace ft::attn::avx512 {
namespace {

using simd512::mask_for;

// C[MR rows x up to 16 * NV columns] (+)= A B for one register block. The accumulators are named
// variables, not an array: GCC 12 kept a __m512 c[4][4] array on the stack and stored all 16 of them
// on every k step (a third of the FMA speed).
#define FT_ATTN_FOR_RJ(X) X(0, 0) X(0, 1) X(0, 2) X(0, 3) X(1, 0) X(1, 1) X(1, 2) X(1, 3) \
  X(2, 0) X(2, 1) X(2, 2) X(2, 3) X(3, 0) X(3, 1) X(3, 2) X(3, 3)
template <int MR, int NV>
inline void block(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C, int64_t ldc,
                  int64_t n_left, int64_t K, bool acc) {
  const __mmask16 k0 = mask_for(n_left), k1 = mask_for(n_left - 16), k2 = mask_for(n_left - 32),
                  k3 = mask_for(n_left - 48);
#define FT_DECL(r, j)                                                                                 \
  __m512 c##r##j = _mm512_setzero_ps();                                                               \
  if constexpr (r < MR && j < NV) {                                                                   \
    if (acc) c##r##j = _mm512_maskz_loadu_ps(k##j, C + r * ldc + 16 * j);                             \
  }
  FT_ATTN_FOR_RJ(FT_DECL)
#undef FT_DECL
  const float* a0 = A;
  const float* a1 = A + (MR > 1 ? ars : 0);
  const float* a2 = A + (MR > 2 ? 2 * ars : 0);
  const float* a3 = A + (MR > 3 ? 3 * ars : 0);
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    const __m512 b0 = _mm512_maskz_loadu_ps(k0, b);
    const __m512 b1 = NV > 1 ? _mm512_maskz_loadu_ps(k1, b + 16) : b0;
    const __m512 b2 = NV > 2 ? _mm512_maskz_loadu_ps(k2, b + 32) : b0;
    const __m512 b3 = NV > 3 ? _mm512_maskz_loadu_ps(k3, b + 48) : b0;
    const int64_t ka = k * aks;
#define FT_FMA(r, j)                                                                                  \
    if constexpr (r < MR && j < NV) c##r##j = _mm512_fmadd_ps(_mm512_set1_ps(a##r[ka]), b##j, c##r##j);
    FT_ATTN_FOR_RJ(FT_FMA)
#undef FT_FMA
  }
#define FT_STORE(r, j) \
  if constexpr (r < MR && j < NV) _mm512_mask_storeu_ps(C + r * ldc + 16 * j, k##j, c##r##j);
  FT_ATTN_FOR_RJ(FT_STORE)
#undef FT_STORE
}
#undef FT_ATTN_FOR_RJ

template <int MR>
inline void rows(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C, int64_t ldc,
                 int64_t N, int64_t K, bool acc) {
  for (int64_t n0 = 0; n0 < N; n0 += 64) {
    const int64_t left = N - n0;
    const int nv = int(std::min<int64_t>(4, (left + 15) / 16));
    switch (nv) {
      case 4: block<MR, 4>(A, ars, aks, B + n0, ldb, C + n0, ldc, left, K, acc); break;
      case 3: block<MR, 3>(A, ars, aks, B + n0, ldb, C + n0, ldc, left, K, acc); break;
      case 2: block<MR, 2>(A, ars, aks, B + n0, ldb, C + n0, ldc, left, K, acc); break;
      default: block<MR, 1>(A, ars, aks, B + n0, ldb, C + n0, ldc, left, K, acc); break;
    }
  }
}

struct Avx512Ops {
  static void gemm(const float* A, int64_t ars, int64_t aks, const float* B, int64_t ldb, float* C, int64_t ldc,
                   int64_t M, int64_t N, int64_t K, bool acc) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) rows<4>(A + m * ars, ars, aks, B, ldb, C + m * ldc, ldc, N, K, acc);
    switch (M - m) {
      case 3: rows<3>(A + m * ars, ars, aks, B, ldb, C + m * ldc, ldc, N, K, acc); break;
      case 2: rows<2>(A + m * ars, ars, aks, B, ldb, C + m * ldc, ldc, N, K, acc); break;
      case 1: rows<1>(A + m * ars, ars, aks, B, ldb, C + m * ldc, ldc, N, K, acc); break;
      default: break;
    }
  }

  // PortableOps::exp2_row's polynomial (same coefficients), 16 lanes at a time; VSCALEFPS applies 2^r.
  static float exp2_row(float* x, int64_t n, float mul, float sub) {
    const __m512 vs = _mm512_set1_ps(sub), vm = _mm512_set1_ps(mul), lo = _mm512_set1_ps(-126.0f);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 k = mask_for(n - j);
      // max(lo, t) returns t when t is NaN (MAXPS returns its second operand on unordered input)
      const __m512 t = _mm512_max_ps(lo, _mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, x + j), vm, vs));
      const __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 f = _mm512_sub_ps(t, r);
      __m512 p = _mm512_set1_ps(1.5252734e-05f);
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530e-04f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558e-03f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-03f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-02f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-01f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-01f));
      p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
      const __m512 e = _mm512_scalef_ps(p, r);
      _mm512_mask_storeu_ps(x + j, k, e);
      acc = _mm512_mask_add_ps(acc, k, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
  }
};

}  // namespace

const Kernels& table() {
  static const Kernels k{"avx512", forward<Avx512Ops>, backward<Avx512Ops>};
  return k;
}

}  // namespace ft::attn::avx512
