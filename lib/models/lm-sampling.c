/* gst-moshi: token sampling of the LM, as upstream sample_token. */
#include "lm-sampling.h"

#include <math.h>


static guint64
splitmix64 (guint64 *x)
{
  guint64 z = (*x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void
moshi_rng_seed (MoshiRng *rng, guint64 seed)
{
  for (int i = 0; i < 4; i++)
    rng->s[i] = splitmix64 (&seed);
}

static inline guint64
rotl (guint64 x, int k)
{
  return (x << k) | (x >> (64 - k));
}

/* xoshiro256** */
guint64
moshi_rng_next (MoshiRng *rng)
{
  guint64 *s = rng->s;
  guint64 result = rotl (s[1] * 5, 7) * 9;
  guint64 t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl (s[3], 45);
  return result;
}

/* Exp(1) draw: -log(u) with u uniform in (0, 1]. */
double
moshi_rng_exponential (MoshiRng *rng)
{
  double u = ((moshi_rng_next (rng) >> 11) + 1) * (1.0 / 9007199254740992.0);
  return -log (u);
}

/* Indices of the k largest values (any order), by a min-heap of size k. */
static int
top_k_indices (const float *x, int n, int k, int *out)
{
  int size = 0;
  for (int i = 0; i < n; i++) {
    if (size < k) {
      int j = size++;
      out[j] = i;
      while (j > 0 && x[out[(j - 1) / 2]] > x[out[j]]) {
        int p = (j - 1) / 2, t = out[p];
        out[p] = out[j];
        out[j] = t;
        j = p;
      }
    } else if (x[i] > x[out[0]]) {
      out[0] = i;
      int j = 0;
      for (;;) {
        int l = 2 * j + 1, r = l + 1, m = j;
        if (l < size && x[out[l]] < x[out[m]])
          m = l;
        if (r < size && x[out[r]] < x[out[m]])
          m = r;
        if (m == j)
          break;
        int t = out[m];
        out[m] = out[j];
        out[j] = t;
        j = m;
      }
    }
  }
  return size;
}

/* As upstream sample_token: argmax when temperature <= 0; otherwise softmax(logits / t), keep
 * the top k, and pick by an exponential race (exact categorical sampling). */
int
moshi_sample_token (const float *logits, int n, float temperature, int top_k, MoshiRng *rng, int *scratch)
{
  if (temperature <= 0) {
    int best = 0;
    for (int i = 1; i < n; i++)
      if (logits[i] > logits[best])
        best = i;
    return best;
  }
  float max = logits[0];
  for (int i = 1; i < n; i++)
    max = MAX (max, logits[i]);
  int k = top_k > 0 && top_k < n ? top_k : n;
  int *idx = scratch;
  if (k < n) {
    k = top_k_indices (logits, n, k, idx);
  } else {
    for (int i = 0; i < n; i++)
      idx[i] = i;
  }
  /* Probabilities up to the softmax normaliser, which does not change the race's winner. */
  int best = idx[0];
  double best_score = -1;
  for (int j = 0; j < k; j++) {
    double p = exp ((double) (logits[idx[j]] - max) / temperature);
    double score = p / moshi_rng_exponential (rng);
    if (score > best_score) {
      best_score = score;
      best = idx[j];
    }
  }
  return best;
}

