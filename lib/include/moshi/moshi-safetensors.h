/* gst-moshi: safetensors files, memory-mapped and validated.
 *
 * The whole header is checked when the file is opened: well-formed JSON, known dtypes, shapes of
 * non-negative dimensions, data_offsets inside the data section, byte span == dtype size x
 * element count, and no two tensors overlapping. After a successful open every entry's data
 * pointer can be read for nbytes bytes. */
#pragma once

#include <glib.h>
#include "moshi-api.h"
#include <stdint.h>

#include "moshi-dtype.h"

MOSHI_BEGIN_DECLS

#define MOSHI_MAX_DIMS 8

typedef struct {
  const char *name;
  MoshiDType dtype;
  int ndim;
  int64_t shape[MOSHI_MAX_DIMS];
  const void *data;   /* points into the mapping (or into the caller's buffer for writing) */
  gsize nbytes;
} MoshiTensorEntry;

typedef struct _MoshiSafetensors MoshiSafetensors;

/* Maps path read-only and validates it. Errors name the path and the tensor at fault. */
MoshiSafetensors *moshi_safetensors_open (const char *path, GError **error);
/* Validates an in-memory image; bytes is kept alive (reffed) by the result. display_name stands
 * in for the path in messages. */
MoshiSafetensors *moshi_safetensors_new_from_bytes (GBytes *bytes, const char *display_name,
    GError **error);

MoshiSafetensors *moshi_safetensors_ref (MoshiSafetensors *st);
void moshi_safetensors_unref (MoshiSafetensors *st);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiSafetensors, moshi_safetensors_unref)

const char *moshi_safetensors_path (const MoshiSafetensors *st);
/* Tensors in the order of their data offsets. */
gsize moshi_safetensors_n_tensors (const MoshiSafetensors *st);
const MoshiTensorEntry *moshi_safetensors_nth (const MoshiSafetensors *st, gsize i);
/* NULL when absent. */
const MoshiTensorEntry *moshi_safetensors_lookup (const MoshiSafetensors *st, const char *name);
/* A string from "__metadata__", or NULL. */
const char *moshi_safetensors_metadata (const MoshiSafetensors *st, const char *key);

/* Looks name up and checks it: dtype (pass MOSHI_DTYPE_COUNT to accept any) and shape (ndim
 * dimensions; a dimension of -1 accepts any size). The errors say "<path>: tensor '<name>'
 * missing" / "... has shape [a, b], expected [c, d]" / "... has dtype BF16, expected F32". */
const MoshiTensorEntry *moshi_safetensors_require (const MoshiSafetensors *st, const char *name,
    MoshiDType dtype, int ndim, const int64_t *shape, GError **error);

/* Room for any shape: MOSHI_MAX_DIMS dimensions of up to 20 characters ("-9223372036854775808"),
 * their separators, the brackets and the NUL; a smaller buffer truncates the message. */
#define MOSHI_SHAPE_STRING_LEN (MOSHI_MAX_DIMS * 22 + 3)

/* Formats a shape as "[a, b, c]" into buf (MOSHI_SHAPE_STRING_LEN bytes hold any shape). */
const char *moshi_shape_to_string (const int64_t *shape, int ndim, char *buf, gsize buf_len);
int64_t moshi_shape_numel (const int64_t *shape, int ndim);

/* Writes entries (data taken from entry->data, nbytes must match) as a safetensors file that
 * the reference implementation reads: header padded to 8 bytes, data without gaps, tensors
 * ordered by decreasing element size so that each is aligned to its element size. metadata
 * may be NULL (string->string). */
gboolean moshi_safetensors_write (const char *path, const MoshiTensorEntry *entries, gsize n,
    GHashTable *metadata, GError **error);

/* FALSE, with an error naming path, the tensor and the element, when a floating-point tensor
 * holds an infinity or a NaN (integer tensors always pass). Reads the bits only, so it costs one
 * pass over the data. */
gboolean moshi_tensor_check_finite (const MoshiTensorEntry *entry, const char *path,
    GError **error);

MOSHI_END_DECLS
