/* Vector kernels of the CPU backend, compiled for several instruction sets in one binary and
 * chosen once at run time from what the processor supports. */
#include "cpu-internal.h"

#include <math.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86_DISPATCH 1
#endif

/* ---- portable C ---- */

static float
dot_c (const float *a, const float *b, int n)
{
  float acc[4] = { 0, 0, 0, 0 };
  int i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; j++)
      acc[j] += a[i + j] * b[i + j];
  float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (; i < n; i++)
    s += a[i] * b[i];
  return s;
}

static void
axpy_c (float *y, float alpha, const float *x, int n)
{
  for (int i = 0; i < n; i++)
    y[i] += alpha * x[i];
}

static void
elu_c (float *dst, const float *src, int n)
{
  for (int i = 0; i < n; i++)
    dst[i] = src[i] > 0 ? src[i] : expm1f (src[i]);
}

static void
dot_multi_c (const float *a, const float *const *b, int nb, int n, float *out)
{
  for (int j = 0; j < nb; j++)
    out[j] = dot_c (a, b[j], n);
}

static void
dot_multi_bf16_c (const uint16_t *a, const float *const *b, int nb, int n, float *out)
{
  for (int j = 0; j < nb; j++) {
    float acc[4] = { 0, 0, 0, 0 };
    int i = 0;
    for (; i + 4 <= n; i += 4)
      for (int q = 0; q < 4; q++)
        acc[q] += moshi_bf16_to_f32 (a[i + q]) * b[j][i + q];
    float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (; i < n; i++)
      s += moshi_bf16_to_f32 (a[i]) * b[j][i];
    out[j] = s;
  }
}

static const CpuKernels kernels_c = { "portable", dot_c, axpy_c, elu_c, dot_multi_c, dot_multi_bf16_c };

#ifdef HAVE_X86_DISPATCH

/* exp(x) for x in [-87, 0] to about 2 ulp: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-6
 * polynomial, 2^n through the exponent bits. */

__attribute__((target ("avx2,fma")))
static inline __m256
exp_neg_avx2 (__m256 x)
{
  x = _mm256_max_ps (x, _mm256_set1_ps (-87.0f));
  __m256 n = _mm256_round_ps (_mm256_mul_ps (x, _mm256_set1_ps (1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps (n, _mm256_set1_ps (0.693359375f), x);
  r = _mm256_fnmadd_ps (n, _mm256_set1_ps (-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps (1.9875691500e-4f);
  p = _mm256_fmadd_ps (p, r, _mm256_set1_ps (1.3981999507e-3f));
  p = _mm256_fmadd_ps (p, r, _mm256_set1_ps (8.3334519073e-3f));
  p = _mm256_fmadd_ps (p, r, _mm256_set1_ps (4.1665795894e-2f));
  p = _mm256_fmadd_ps (p, r, _mm256_set1_ps (1.6666665459e-1f));
  p = _mm256_fmadd_ps (p, r, _mm256_set1_ps (5.0000001201e-1f));
  __m256 r2 = _mm256_mul_ps (r, r);
  p = _mm256_fmadd_ps (p, r2, _mm256_add_ps (r, _mm256_set1_ps (1.0f)));
  __m256i e = _mm256_slli_epi32 (_mm256_add_epi32 (_mm256_cvtps_epi32 (n), _mm256_set1_epi32 (127)), 23);
  return _mm256_mul_ps (p, _mm256_castsi256_ps (e));
}

__attribute__((target ("avx2,fma")))
static float
dot_avx2 (const float *a, const float *b, int n)
{
  __m256 acc0 = _mm256_setzero_ps (), acc1 = _mm256_setzero_ps ();
  __m256 acc2 = _mm256_setzero_ps (), acc3 = _mm256_setzero_ps ();
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps (_mm256_loadu_ps (a + i), _mm256_loadu_ps (b + i), acc0);
    acc1 = _mm256_fmadd_ps (_mm256_loadu_ps (a + i + 8), _mm256_loadu_ps (b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps (_mm256_loadu_ps (a + i + 16), _mm256_loadu_ps (b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps (_mm256_loadu_ps (a + i + 24), _mm256_loadu_ps (b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps (_mm256_loadu_ps (a + i), _mm256_loadu_ps (b + i), acc0);
  __m256 acc = _mm256_add_ps (_mm256_add_ps (acc0, acc1), _mm256_add_ps (acc2, acc3));
  __m128 s4 = _mm_add_ps (_mm256_castps256_ps128 (acc), _mm256_extractf128_ps (acc, 1));
  s4 = _mm_add_ps (s4, _mm_movehl_ps (s4, s4));
  s4 = _mm_add_ss (s4, _mm_movehdup_ps (s4));
  float s = _mm_cvtss_f32 (s4);
  for (; i < n; i++)
    s += a[i] * b[i];
  return s;
}

__attribute__((target ("avx2,fma")))
static void
axpy_avx2 (float *y, float alpha, const float *x, int n)
{
  __m256 va = _mm256_set1_ps (alpha);
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps (y + i, _mm256_fmadd_ps (va, _mm256_loadu_ps (x + i), _mm256_loadu_ps (y + i)));
  for (; i < n; i++)
    y[i] += alpha * x[i];
}

__attribute__((target ("avx2,fma")))
static void
elu_avx2 (float *dst, const float *src, int n)
{
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps (src + i);
    __m256 neg = _mm256_sub_ps (exp_neg_avx2 (_mm256_min_ps (x, _mm256_setzero_ps ())),
        _mm256_set1_ps (1.0f));
    _mm256_storeu_ps (dst + i, _mm256_blendv_ps (neg, x, _mm256_cmp_ps (x, _mm256_setzero_ps (), _CMP_GT_OQ)));
  }
  for (; i < n; i++)
    dst[i] = src[i] > 0 ? src[i] : expm1f (src[i]);
}

__attribute__((target ("avx2,fma")))
static inline float
hsum_avx2 (__m256 v)
{
  __m128 s4 = _mm_add_ps (_mm256_castps256_ps128 (v), _mm256_extractf128_ps (v, 1));
  s4 = _mm_add_ps (s4, _mm_movehl_ps (s4, s4));
  s4 = _mm_add_ss (s4, _mm_movehdup_ps (s4));
  return _mm_cvtss_f32 (s4);
}

__attribute__((target ("avx2,fma")))
static void
dot_multi_avx2 (const float *a, const float *const *b, int nb, int n, float *out)
{
  if (nb != 4 && nb != 2) {
    for (int j = 0; j < nb; j++)
      out[j] = dot_avx2 (a, b[j], n);
    return;
  }
  __m256 acc[4] = { _mm256_setzero_ps (), _mm256_setzero_ps (), _mm256_setzero_ps (), _mm256_setzero_ps () };
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 va = _mm256_loadu_ps (a + i);
    for (int j = 0; j < nb; j++)
      acc[j] = _mm256_fmadd_ps (va, _mm256_loadu_ps (b[j] + i), acc[j]);
  }
  for (int j = 0; j < nb; j++) {
    float s = hsum_avx2 (acc[j]);
    for (int r = i; r < n; r++)
      s += a[r] * b[j][r];
    out[j] = s;
  }
}

__attribute__((target ("avx2,fma")))
static void
dot_multi_bf16_avx2 (const uint16_t *a, const float *const *b, int nb, int n, float *out)
{
  __m256 acc[4] = { _mm256_setzero_ps (), _mm256_setzero_ps (), _mm256_setzero_ps (), _mm256_setzero_ps () };
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i wi = _mm256_cvtepu16_epi32 (_mm_loadu_si128 ((const __m128i *) (a + i)));
    __m256 va = _mm256_castsi256_ps (_mm256_slli_epi32 (wi, 16));
    for (int j = 0; j < nb; j++)
      acc[j] = _mm256_fmadd_ps (va, _mm256_loadu_ps (b[j] + i), acc[j]);
  }
  for (int j = 0; j < nb; j++) {
    float s = hsum_avx2 (acc[j]);
    for (int r = i; r < n; r++)
      s += moshi_bf16_to_f32 (a[r]) * b[j][r];
    out[j] = s;
  }
}

static const CpuKernels kernels_avx2 = { "avx2", dot_avx2, axpy_avx2, elu_avx2, dot_multi_avx2,
  dot_multi_bf16_avx2 };

__attribute__((target ("avx512f")))
static inline __m512
exp_neg_avx512 (__m512 x)
{
  x = _mm512_max_ps (x, _mm512_set1_ps (-87.0f));
  __m512 n = _mm512_roundscale_ps (_mm512_mul_ps (x, _mm512_set1_ps (1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps (n, _mm512_set1_ps (0.693359375f), x);
  r = _mm512_fnmadd_ps (n, _mm512_set1_ps (-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps (1.9875691500e-4f);
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (1.3981999507e-3f));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (8.3334519073e-3f));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (4.1665795894e-2f));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (1.6666665459e-1f));
  p = _mm512_fmadd_ps (p, r, _mm512_set1_ps (5.0000001201e-1f));
  __m512 r2 = _mm512_mul_ps (r, r);
  p = _mm512_fmadd_ps (p, r2, _mm512_add_ps (r, _mm512_set1_ps (1.0f)));
  __m512i e = _mm512_slli_epi32 (_mm512_add_epi32 (_mm512_cvtps_epi32 (n), _mm512_set1_epi32 (127)), 23);
  return _mm512_mul_ps (p, _mm512_castsi512_ps (e));
}

__attribute__((target ("avx512f")))
static float
dot_avx512 (const float *a, const float *b, int n)
{
  __m512 acc0 = _mm512_setzero_ps (), acc1 = _mm512_setzero_ps ();
  __m512 acc2 = _mm512_setzero_ps (), acc3 = _mm512_setzero_ps ();
  int i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_fmadd_ps (_mm512_loadu_ps (a + i), _mm512_loadu_ps (b + i), acc0);
    acc1 = _mm512_fmadd_ps (_mm512_loadu_ps (a + i + 16), _mm512_loadu_ps (b + i + 16), acc1);
    acc2 = _mm512_fmadd_ps (_mm512_loadu_ps (a + i + 32), _mm512_loadu_ps (b + i + 32), acc2);
    acc3 = _mm512_fmadd_ps (_mm512_loadu_ps (a + i + 48), _mm512_loadu_ps (b + i + 48), acc3);
  }
  for (; i + 16 <= n; i += 16)
    acc0 = _mm512_fmadd_ps (_mm512_loadu_ps (a + i), _mm512_loadu_ps (b + i), acc0);
  if (i < n) {
    __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
    acc1 = _mm512_fmadd_ps (_mm512_maskz_loadu_ps (m, a + i), _mm512_maskz_loadu_ps (m, b + i), acc1);
  }
  return _mm512_reduce_add_ps (_mm512_add_ps (_mm512_add_ps (acc0, acc1), _mm512_add_ps (acc2, acc3)));
}

__attribute__((target ("avx512f")))
static void
axpy_avx512 (float *y, float alpha, const float *x, int n)
{
  __m512 va = _mm512_set1_ps (alpha);
  int i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps (y + i, _mm512_fmadd_ps (va, _mm512_loadu_ps (x + i), _mm512_loadu_ps (y + i)));
  if (i < n) {
    __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps (y + i, m, _mm512_fmadd_ps (va, _mm512_maskz_loadu_ps (m, x + i),
            _mm512_maskz_loadu_ps (m, y + i)));
  }
}

__attribute__((target ("avx512f")))
static void
elu_avx512 (float *dst, const float *src, int n)
{
  int i = 0;
  for (; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? (__mmask16) 0xffff : (__mmask16) ((1u << (n - i)) - 1);
    __m512 x = _mm512_maskz_loadu_ps (m, src + i);
    __m512 neg = _mm512_sub_ps (exp_neg_avx512 (_mm512_min_ps (x, _mm512_setzero_ps ())),
        _mm512_set1_ps (1.0f));
    __mmask16 pos = _mm512_cmp_ps_mask (x, _mm512_setzero_ps (), _CMP_GT_OQ);
    _mm512_mask_storeu_ps (dst + i, m, _mm512_mask_blend_ps (pos, neg, x));
  }
}

__attribute__((target ("avx512f")))
static void
dot_multi_avx512 (const float *a, const float *const *b, int nb, int n, float *out)
{
  __m512 acc[4] = { _mm512_setzero_ps (), _mm512_setzero_ps (), _mm512_setzero_ps (), _mm512_setzero_ps () };
  int i = 0;
  if (nb == 4) {
    for (; i + 16 <= n; i += 16) {
      __m512 va = _mm512_loadu_ps (a + i);
      acc[0] = _mm512_fmadd_ps (va, _mm512_loadu_ps (b[0] + i), acc[0]);
      acc[1] = _mm512_fmadd_ps (va, _mm512_loadu_ps (b[1] + i), acc[1]);
      acc[2] = _mm512_fmadd_ps (va, _mm512_loadu_ps (b[2] + i), acc[2]);
      acc[3] = _mm512_fmadd_ps (va, _mm512_loadu_ps (b[3] + i), acc[3]);
    }
  } else {
    for (; i + 16 <= n; i += 16) {
      __m512 va = _mm512_loadu_ps (a + i);
      for (int j = 0; j < nb; j++)
        acc[j] = _mm512_fmadd_ps (va, _mm512_loadu_ps (b[j] + i), acc[j]);
    }
  }
  if (i < n) {
    __mmask16 m = (__mmask16) ((1u << (n - i)) - 1);
    __m512 va = _mm512_maskz_loadu_ps (m, a + i);
    for (int j = 0; j < nb; j++)
      acc[j] = _mm512_fmadd_ps (va, _mm512_maskz_loadu_ps (m, b[j] + i), acc[j]);
  }
  for (int j = 0; j < nb; j++)
    out[j] = _mm512_reduce_add_ps (acc[j]);
}

__attribute__((target ("avx512f")))
static void
dot_multi_bf16_avx512 (const uint16_t *a, const float *const *b, int nb, int n, float *out)
{
  __m512 acc[4] = { _mm512_setzero_ps (), _mm512_setzero_ps (), _mm512_setzero_ps (), _mm512_setzero_ps () };
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i wi = _mm512_cvtepu16_epi32 (_mm256_loadu_si256 ((const __m256i *) (a + i)));
    __m512 va = _mm512_castsi512_ps (_mm512_slli_epi32 (wi, 16));
    for (int j = 0; j < nb; j++)
      acc[j] = _mm512_fmadd_ps (va, _mm512_loadu_ps (b[j] + i), acc[j]);
  }
  for (int j = 0; j < nb; j++) {
    float s = _mm512_reduce_add_ps (acc[j]);
    for (int r = i; r < n; r++)
      s += moshi_bf16_to_f32 (a[r]) * b[j][r];
    out[j] = s;
  }
}

static const CpuKernels kernels_avx512 = { "avx512", dot_avx512, axpy_avx512, elu_avx512,
  dot_multi_avx512, dot_multi_bf16_avx512 };

#endif

static const CpuKernels *
select_kernels (void)
{
  const char *forced = g_getenv ("MOSHI_CPU_KERNELS");
#ifdef HAVE_X86_DISPATCH
  __builtin_cpu_init ();
  gboolean has_avx512 = __builtin_cpu_supports ("avx512f");
  gboolean has_avx2 = __builtin_cpu_supports ("avx2") && __builtin_cpu_supports ("fma");
  if (forced != NULL) {
    if (g_str_equal (forced, "portable"))
      return &kernels_c;
    if (g_str_equal (forced, "avx2") && has_avx2)
      return &kernels_avx2;
    if (g_str_equal (forced, "avx512") && has_avx512)
      return &kernels_avx512;
    g_warning ("MOSHI_CPU_KERNELS=%s is not available on this processor; choosing automatically",
        forced);
  }
  if (has_avx512)
    return &kernels_avx512;
  if (has_avx2)
    return &kernels_avx2;
#endif
  return &kernels_c;
}

const CpuKernels *
cpu_kernels (void)
{
  static gsize chosen;
  if (g_once_init_enter (&chosen))
    g_once_init_leave (&chosen, (gsize) select_kernels ());
  return (const CpuKernels *) chosen;
}
