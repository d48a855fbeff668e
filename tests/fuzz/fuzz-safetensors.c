/* libFuzzer target for the safetensors loader and the JSON reader under it.
 *
 * Every input is fed both to moshi_safetensors_new_from_bytes () and, whole, to
 * moshi_json_parse (). Whatever the loader accepts must keep its promise that each entry's data
 * can be read for nbytes bytes, which AddressSanitizer checks when the first and last bytes are
 * touched. Run it with tests/fuzz/run-fuzz.sh. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "moshi-json.h"
#include "moshi-safetensors.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Reads land here so that the compiler cannot drop them. */
static volatile uint8_t sink;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  /* A critical from a g_return_if_fail () means the library misused itself on some input. */
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

/* Visits the whole tree, using every accessor; depth is bounded by the parser's limit. */
static void
walk_json (const MoshiJson *json)
{
  gint64 i;
  double d;
  gboolean b;
  const char *s;

  switch (moshi_json_kind (json)) {
    case MOSHI_JSON_OBJECT:
      for (gsize k = 0; k < moshi_json_length (json); k++) {
        const char *name = moshi_json_member_name (json, k);
        const MoshiJson *member = moshi_json_index (json, k);
        if (name == NULL || member == NULL || moshi_json_get (json, name) != member)
          __builtin_trap ();
        walk_json (member);
      }
      break;
    case MOSHI_JSON_ARRAY:
      for (gsize k = 0; k < moshi_json_length (json); k++)
        walk_json (moshi_json_index (json, k));
      break;
    case MOSHI_JSON_NUMBER:
      if (moshi_json_int64 (json, &i))
        sink ^= (uint8_t) i;
      if (moshi_json_double (json, &d))
        sink ^= (uint8_t) (d != 0);
      break;
    case MOSHI_JSON_STRING:
      s = moshi_json_string (json);
      /* Strings are promised to be valid UTF-8. */
      if (s == NULL || !g_utf8_validate (s, -1, NULL))
        __builtin_trap ();
      sink ^= (uint8_t) strlen (s);
      break;
    case MOSHI_JSON_TRUE:
    case MOSHI_JSON_FALSE:
      if (!moshi_json_bool (json, &b))
        __builtin_trap ();
      break;
    case MOSHI_JSON_NULL:
      break;
  }
}

static void
fuzz_json (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiJson) json = moshi_json_parse ((const char *) data, size, "fuzz", &error);
  if ((json == NULL) == (error == NULL))
    __builtin_trap ();
  if (json != NULL)
    walk_json (json);
}

static void
fuzz_safetensors (const uint8_t *data, size_t size)
{
  /* Static: the bytes are only borrowed for the duration of this call, and st is freed before it
   * returns. */
  g_autoptr (GBytes) bytes = g_bytes_new_static (data, size);
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_new_from_bytes (bytes, "fuzz", &error);
  if ((st == NULL) == (error == NULL))
    __builtin_trap ();
  if (st == NULL)
    return;

  const uint8_t *end = data + size;
  const uint8_t *previous = NULL;
  for (gsize i = 0; i < moshi_safetensors_n_tensors (st); i++) {
    const MoshiTensorEntry *entry = moshi_safetensors_nth (st, i);
    if (moshi_safetensors_lookup (st, entry->name) != entry)
      __builtin_trap ();
    const uint8_t *p = entry->data;
    /* The data lies inside the input, in data order. */
    if (p < data || p > end || entry->nbytes > (size_t) (end - p) || p < previous)
      __builtin_trap ();
    previous = p;
    if (entry->nbytes > 0)
      sink ^= p[0] ^ p[entry->nbytes - 1];
    if ((gsize) moshi_shape_numel (entry->shape, entry->ndim) * moshi_dtype_size (entry->dtype)
        != entry->nbytes)
      __builtin_trap ();

    /* Requiring a tensor exactly as it is must succeed. */
    if (moshi_safetensors_require (st, entry->name, entry->dtype, entry->ndim, entry->shape, NULL)
        != entry)
      __builtin_trap ();
    char shape[256];
    moshi_shape_to_string (entry->shape, entry->ndim, shape, sizeof shape);
    sink ^= (uint8_t) shape[0];
  }
  const char *format = moshi_safetensors_metadata (st, "format");
  if (format != NULL)
    sink ^= (uint8_t) format[0];
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  fuzz_safetensors (data, size);
  /* Also the JSON reader on its own, reached with no 8-byte length prefix to get past. */
  fuzz_json (data, size);
  return 0;
}
