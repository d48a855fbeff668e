/* gst-moshi: token sampling of the LM (upstream moshi/utils/sampling.py) and its random
 * generator. Internal to the library; the tests use it directly. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* xoshiro256**, seeded through splitmix64. */
typedef struct {
  guint64 s[4];
} MoshiRng;

void moshi_rng_seed (MoshiRng *rng, guint64 seed);
guint64 moshi_rng_next (MoshiRng *rng);
/* An Exp(1) draw. */
double moshi_rng_exponential (MoshiRng *rng);

/* argmax when temperature <= 0 (first index on ties); otherwise softmax(logits / temperature)
 * restricted to the top_k largest (top_k <= 0: all), drawn by an exponential race, which is
 * exact categorical sampling. scratch holds n ints. */
int moshi_sample_token (const float *logits, int n, float temperature, int top_k, MoshiRng *rng,
    int *scratch);

G_END_DECLS
