/* libFuzzer target for the SentencePiece model reader (moshi_tokenizer_new_from_data).
 *
 * Every piece of an accepted model must be a readable string, and showing any id, in range or
 * not, must not touch memory outside the model. Run it with tests/fuzz/run-fuzz.sh. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "moshi-tokenizer.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static volatile uint8_t sink;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiTokenizer) tok = moshi_tokenizer_new_from_data (data, size, "fuzz", &error);
  if ((tok == NULL) == (error == NULL))
    __builtin_trap ();
  if (tok == NULL)
    return 0;
  int n = moshi_tokenizer_vocab_size (tok);
  if (n < 0)
    __builtin_trap ();
  for (int id = -1; id <= n; id++) {
    const char *piece = moshi_tokenizer_piece (tok, id);
    if ((piece == NULL) != (id < 0 || id >= n))
      __builtin_trap ();
    if (piece != NULL)
      sink ^= (uint8_t) strlen (piece) ^ (uint8_t) moshi_tokenizer_piece_type (tok, id);
    g_autofree char *shown = moshi_tokenizer_display (tok, id, 0, 3);
    if (shown != NULL)
      sink ^= (uint8_t) strlen (shown);
  }
  return 0;
}
