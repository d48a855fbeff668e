/* gst-moshi CUDA kernels: token sampling on the device (the rule of lib/backend/moshi-sampling.h,
 * which the CPU backend implements too, so both pick the same tokens from the same logits).
 *
 * One block per session. The k-th largest logit is found by a radix select over the logits'
 * order keys (four passes of 8 bits, a 256-bin histogram in shared memory), so that top-k needs
 * no sort; each thread then scores its candidates with their own hashed Exp(1) draws and a
 * block reduction picks the winner. The logits stay in global memory (a text vocabulary of 32000
 * does not fit in shared memory) and are read once per pass. */
#include "common.cuh"
#include "moshi-sampling.h"

namespace {

const int SAMPLE_THREADS = 256;

/* The larger score wins, the lower index on equal scores; -1 = no candidate. */
struct Pick {
  double score;
  int index;
};

__device__ __forceinline__ bool
better (const Pick &a, const Pick &b)
{
  if (a.index < 0)
    return false;
  if (b.index < 0)
    return true;
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

/* Reduces one Pick per thread to thread 0's (blockDim.x == SAMPLE_THREADS). */
__device__ Pick
block_best (Pick mine, double *s_score, int *s_index)
{
  s_score[threadIdx.x] = mine.score;
  s_index[threadIdx.x] = mine.index;
  __syncthreads ();
  for (int half = SAMPLE_THREADS / 2; half > 0; half >>= 1) {
    if ((int) threadIdx.x < half) {
      Pick other = { s_score[threadIdx.x + half], s_index[threadIdx.x + half] };
      Pick self = { s_score[threadIdx.x], s_index[threadIdx.x] };
      if (better (other, self)) {
        s_score[threadIdx.x] = other.score;
        s_index[threadIdx.x] = other.index;
      }
    }
    __syncthreads ();
  }
  Pick best = { s_score[0], s_index[0] };
  __syncthreads ();             /* the arrays may be reused */
  return best;
}

__global__ void __launch_bounds__ (SAMPLE_THREADS)
sample_kernel (int32_t *tokens, int ld_tokens, int32_t *ids, float *logits, int ld_logits,
    int vocab, const MoshiKSampler *sessions, int stream_index)
{
  __shared__ unsigned hist[256];
  __shared__ double s_score[SAMPLE_THREADS];
  __shared__ int s_index[SAMPLE_THREADS];
  __shared__ uint32_t s_prefix;
  __shared__ int s_left, s_equal, s_cutoff;
  const MoshiKSampler sp = sessions[blockIdx.x];
  float *l = logits + (size_t) sp.row * ld_logits;
  const float temperature = stream_index == 0 ? sp.text_temperature : sp.audio_temperature;
  const int top_k = stream_index == 0 ? sp.text_top_k : sp.audio_top_k;

  if (sp.n_rows > 1) {
    /* null + coef * (cond - null), rounded step by step as on the CPU (no fused multiply-add) */
    const float *null_row = l + ld_logits;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
      const float diff = __fadd_rn (l[v], -null_row[v]);
      l[v] = __fadd_rn (null_row[v], __fmul_rn (diff, sp.cfg_coef));
    }
    __syncthreads ();
  }

  /* the argmax as the largest (key, -index) */
  Pick top = { 0.0, -1 };
  for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
    const Pick p = { (double) moshi_sampling_order_key (l[v]), v };
    if (better (p, top))
      top = p;
  }
  const int argmax = block_best (top, s_score, s_index).index;
  const float max = l[argmax];

  int token = argmax;
  if (temperature > 0.0f) {
    const int k = top_k > 0 && top_k < vocab ? top_k : vocab;
    uint32_t threshold = 0;
    int cutoff = vocab;         /* equal keys at the threshold are taken up to this index */
    if (k < vocab) {
      if (threadIdx.x == 0) {
        s_prefix = 0;
        s_left = k;
      }
      for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x)
          hist[b] = 0;
#if !defined(MOSHI_PLANT_MISSING_BARRIER)   /* tests/cuda/check-planted-bugs.py */
        __syncthreads ();
#endif
        const uint32_t high = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
        const uint32_t prefix = s_prefix;
        for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
          const uint32_t key = moshi_sampling_order_key (l[v]);
          if ((key & high) == prefix)
            atomicAdd (&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads ();
        if (threadIdx.x == 0) {
          int left = s_left, b = 255;
          for (; b > 0 && (int) hist[b] < left; b--)
            left -= (int) hist[b];
          s_prefix = prefix | ((uint32_t) b << shift);
          s_left = left;
          s_equal = (int) hist[b];
        }
        __syncthreads ();
      }
      threshold = s_prefix;
      if (threadIdx.x == 0) {
        /* more equal keys than places left: the lowest indices take them (rare: ties) */
        int c = vocab;
        if (s_equal > s_left) {
          int seen = 0;
          for (int v = 0; v < vocab; v++)
            if (moshi_sampling_order_key (l[v]) == threshold && ++seen == s_left) {
              c = v;
              break;
            }
        }
        s_cutoff = c;
      }
      __syncthreads ();
      cutoff = s_cutoff;
    }

    const uint64_t key = moshi_sampling_key (sp.seed, sp.step, stream_index);
    Pick best = { -1.0, -1 };
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
      const float x = l[v];
      const uint32_t ok = moshi_sampling_order_key (x);
      if (ok < threshold || (ok == threshold && v > cutoff) || x != x)
        continue;
      const double p = exp ((double) (x - max) / (double) temperature);
      const double score = p / -log (moshi_sampling_uniform (key, v));
      /* a NaN score (max = -inf) is never better, as on the CPU */
      if (best.index < 0 ? score > -1.0 : score > best.score) {
        best.score = score;
        best.index = v;
      }
    }
    const Pick won = block_best (best, s_score, s_index);
    if (won.index >= 0)
      token = won.index;
  }

  if (threadIdx.x == 0) {
    tokens[(size_t) blockIdx.x * ld_tokens] = token;
    if (ids != nullptr)
      for (int r = 0; r < sp.n_rows; r++)
        ids[sp.row + r] = token;
  }
}

}  // namespace

extern "C" cudaError_t
moshi_k_sample (cudaStream_t stream, int32_t *tokens, int ld_tokens, int32_t *ids, float *logits,
    int ld_logits, int vocab, const MoshiKSampler *sessions, int n, int stream_index)
{
  if (n < 0 || vocab < 1 || ld_logits < vocab || ld_tokens < 0 || n > 65535)
    return cudaErrorInvalidValue;
  if (n == 0)
    return cudaSuccess;
  return MOSHI_LAUNCH (sample_kernel, (unsigned) n, SAMPLE_THREADS, 0, stream, tokens, ld_tokens,
      ids, logits, ld_logits, vocab, sessions, stream_index);
}
