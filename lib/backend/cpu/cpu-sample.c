/* gst-moshi CPU backend: the sampling rule of moshi-sampling.h, and the sample op. */
#include "cpu-internal.h"
#include "moshi-sampling.h"

#include <math.h>

/* Sifts the root of a min-heap of size n down. */
static void
heap_down (uint32_t *h, int n, int j)
{
  for (;;) {
    int l = 2 * j + 1, r = l + 1, m = j;
    if (l < n && h[l] < h[m])
      m = l;
    if (r < n && h[r] < h[m])
      m = r;
    if (m == j)
      return;
    uint32_t t = h[m];
    h[m] = h[j];
    h[j] = t;
    j = m;
  }
}

/* The k-th largest of the order keys of x (1 <= k <= n), by a min-heap of the k largest. */
static uint32_t
kth_largest_key (const float *x, int n, int k, uint32_t *heap)
{
  for (int i = 0; i < k; i++)
    heap[i] = moshi_sampling_order_key (x[i]);
  for (int j = k / 2 - 1; j >= 0; j--)
    heap_down (heap, k, j);
  for (int i = k; i < n; i++) {
    uint32_t key = moshi_sampling_order_key (x[i]);
    if (key > heap[0]) {
      heap[0] = key;
      heap_down (heap, k, 0);
    }
  }
  return heap[0];
}

int
moshi_sample_token (const float *logits, int n, float temperature, int top_k, uint64_t seed,
    int64_t step, int stream, int *scratch)
{
  int argmax = 0;
  uint32_t max_key = moshi_sampling_order_key (logits[0]);
  for (int i = 1; i < n; i++) {
    uint32_t key = moshi_sampling_order_key (logits[i]);
    if (key > max_key) {
      max_key = key;
      argmax = i;
    }
  }
  if (temperature <= 0)
    return argmax;
  float max = logits[argmax];
  int k = top_k > 0 && top_k < n ? top_k : n;
  uint32_t threshold = 0;
  int ties_left = n;              /* candidates still to take at the threshold */
  if (k < n) {
    G_STATIC_ASSERT (sizeof (int) == sizeof (uint32_t));
    threshold = kth_largest_key (logits, n, k, (uint32_t *) scratch);
    int above = 0;
    for (int i = 0; i < n; i++)
      above += moshi_sampling_order_key (logits[i]) > threshold;
    ties_left = k - above;
  }
  uint64_t key = moshi_sampling_key (seed, step, stream);
  int best = -1;
  double best_score = -1.0;
  for (int i = 0; i < n; i++) {
    uint32_t ok = moshi_sampling_order_key (logits[i]);
    if (ok < threshold)
      continue;
    if (ok == threshold) {
      if (ties_left == 0)
        continue;
      ties_left--;
    }
    if (isnan (logits[i]))
      continue;
    double p = exp ((double) (logits[i] - max) / (double) temperature);
    double score = p / -log (moshi_sampling_uniform (key, i));
    if (score > best_score) {
      best_score = score;
      best = i;
    }
  }
  return best >= 0 ? best : argmax;
}

void
cpu_op_sample (MoshiExec *ex, int32_t *tokens, int ld_tokens, int32_t *ids, float *logits,
    int ld_logits, int vocab, const MoshiSampler *sessions, int n, int stream)
{
  g_autofree int *scratch = g_new (int, vocab);
  for (int s = 0; s < n; s++) {
    const MoshiSampler *sp = &sessions[s];
    float *l = logits + (gsize) sp->row * ld_logits;
    if (sp->n_rows > 1) {
      const float *null = l + ld_logits;
      for (int v = 0; v < vocab; v++) {
        float diff = l[v] - null[v];
        float scaled = diff * sp->cfg_coef;
        l[v] = null[v] + scaled;
      }
    }
    int32_t token = moshi_sample_token (l, vocab,
        stream == 0 ? sp->text_temperature : sp->audio_temperature,
        stream == 0 ? sp->text_top_k : sp->audio_top_k, sp->seed, sp->step, stream, scratch);
    tokens[(gsize) s * ld_tokens] = token;
    if (ids != NULL)
      for (int r = 0; r < sp->n_rows; r++)
        ids[sp->row + r] = token;
  }
}
