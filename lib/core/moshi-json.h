/* gst-moshi: a small strict JSON reader for safetensors headers and model configs.
 *
 * Strict RFC 8259: no comments, no trailing commas, no duplicate object keys, bounded nesting.
 * Numbers keep their text so that 64-bit integers (tensor offsets) are read exactly. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
  MOSHI_JSON_NULL,
  MOSHI_JSON_FALSE,
  MOSHI_JSON_TRUE,
  MOSHI_JSON_NUMBER,
  MOSHI_JSON_STRING,
  MOSHI_JSON_ARRAY,
  MOSHI_JSON_OBJECT,
} MoshiJsonKind;

typedef struct _MoshiJson MoshiJson;

/* Parses len bytes (need not be NUL-terminated). what names the source in error messages
 * ("model.safetensors header"). Returns NULL and sets MOSHI_ERROR_FORMAT with the byte offset
 * on malformed input. */
MoshiJson *moshi_json_parse (const char *text, gsize len, const char *what, GError **error);
void moshi_json_free (MoshiJson *json);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiJson, moshi_json_free)

MoshiJsonKind moshi_json_kind (const MoshiJson *json);
const char *moshi_json_kind_name (MoshiJsonKind kind);

/* Arrays and objects: number of elements / members. 0 for scalars. */
gsize moshi_json_length (const MoshiJson *json);
/* Array element or object member value by index. */
const MoshiJson *moshi_json_index (const MoshiJson *json, gsize i);
/* Object member name by index. */
const char *moshi_json_member_name (const MoshiJson *json, gsize i);
/* Object member by name, NULL when absent or when json is not an object. */
const MoshiJson *moshi_json_get (const MoshiJson *json, const char *name);

/* Strings: the unescaped UTF-8 text. NULL for other kinds. */
const char *moshi_json_string (const MoshiJson *json);
/* Numbers: FALSE if not a number or (for int64) not an integer that fits. */
gboolean moshi_json_int64 (const MoshiJson *json, gint64 *out);
gboolean moshi_json_double (const MoshiJson *json, double *out);
/* true/false. FALSE if not a boolean. */
gboolean moshi_json_bool (const MoshiJson *json, gboolean *out);

G_END_DECLS
