/* gst-moshi: the sampling rule every backend implements, bit for bit.
 *
 * Upstream (moshi/utils/sampling.py) samples from softmax(logits / temperature) restricted to
 * the top k with torch's generator. We keep the distribution and make the draws a function of
 * (seed, step, stream, vocabulary index) instead of a sequential generator, so that a GPU can
 * draw for all candidates at once and every backend picks the same token:
 *   - temperature <= 0: the argmax (the lowest index on ties; NaN below -inf);
 *   - otherwise the candidates are the k largest logits (k = top_k, or all when top_k <= 0 or
 *     >= vocab); at the k-th value, the lowest indices are taken first; NaN is never one;
 *   - the token is the candidate with the largest exp((l - max) / temperature) / E_i, computed
 *     in double, where E_i = -log(u_i) is an Exp(1) draw (the lowest index on equal scores).
 *     The argmax of p_i / E_i over independent E_i is distributed as p_i / sum p: exact
 *     categorical sampling (the "exponential race"). Without a finite score, the argmax.
 * The draw u_i is ((h >> 11) + 1) / 2^53, in (0, 1], from a splitmix64-style hash h of the key.
 * Usable from C and from the CUDA kernels. */
#pragma once

#include <stdint.h>

#if defined(__CUDACC__) || defined(MOSHI_CUDA_EMU)
#define MOSHI_SAMPLING_FN static __host__ __device__ __forceinline__
#else
#define MOSHI_SAMPLING_FN static inline
#endif

MOSHI_SAMPLING_FN uint64_t
moshi_sampling_mix (uint64_t z)
{
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* The key of one token's draws: stream 0 is the text token, 1.. the audio codebooks. */
MOSHI_SAMPLING_FN uint64_t
moshi_sampling_key (uint64_t seed, int64_t step, int stream)
{
  uint64_t k = moshi_sampling_mix (seed ^ 0x6D6F736869ull);
  k = moshi_sampling_mix (k + (uint64_t) step * 0x9E3779B97F4A7C15ull);
  return moshi_sampling_mix (k + (uint64_t) (stream + 1) * 0xD1B54A32D192ED03ull);
}

/* u in (0, 1] for vocabulary index i under key */
MOSHI_SAMPLING_FN double
moshi_sampling_uniform (uint64_t key, int i)
{
  uint64_t h = moshi_sampling_mix (key + (uint64_t) (i + 1) * 0x9E3779B97F4A7C15ull);
  return (double) ((h >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* The order-preserving integer image of a logit (-0 as +0, NaN lowest), for selecting the k-th
 * largest and the argmax. */
MOSHI_SAMPLING_FN uint32_t
moshi_sampling_order_key (float f)
{
  if (f != f)
    return 0;                   /* NaN: below everything, and never a candidate */
  union { float f; uint32_t u; } v;    /* (GCC and nvcc define union punning) */
  v.f = f == 0.0f ? 0.0f : f;
  uint32_t u = v.u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#ifndef __CUDACC__
#ifndef MOSHI_CUDA_EMU
#include <glib.h>
G_BEGIN_DECLS
/* The rule above on the host. scratch holds n ints. */
int moshi_sample_token (const float *logits, int n, float temperature, int top_k, uint64_t seed,
    int64_t step, int stream, int *scratch);
G_END_DECLS
#endif
#endif
