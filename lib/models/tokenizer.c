/* SentencePiece ModelProto, read without a protobuf library: field 1 of the top-level message
 * repeats one SentencePiece message per id, each with its piece (field 1, bytes), score
 * (field 2, float) and type (field 3, varint). Everything else is skipped by wire type. */
#include "moshi-tokenizer.h"

#include "moshi-error.h"
#include "moshi-file.h"

#include <string.h>

struct _MoshiTokenizer {
  gint ref_count;
  char *path;
  GPtrArray *pieces;        /* char * */
  GArray *types;            /* MoshiPieceType */
};

typedef struct {
  const guint8 *p, *end, *start;
  const char *what;
  GError **error;
} Reader;

static gboolean
fail_at (Reader *rd, const guint8 *at, const char *problem)
{
  g_set_error (rd->error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: %s at byte %" G_GSIZE_FORMAT
      " (not a SentencePiece model?)", rd->what, problem, (gsize) (at - rd->start));
  return FALSE;
}

static gboolean
read_varint (Reader *rd, const guint8 **p, const guint8 *end, guint64 *out)
{
  guint64 v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end)
      return fail_at (rd, *p, "truncated varint");
    guint8 byte = *(*p)++;
    v |= (guint64) (byte & 0x7f) << shift;
    if (!(byte & 0x80)) {
      *out = v;
      return TRUE;
    }
  }
  return fail_at (rd, *p, "varint longer than 10 bytes");
}

/* Skips one field value of the given wire type, or reads a length-delimited one. */
static gboolean
read_field (Reader *rd, const guint8 **p, const guint8 *end, int wire, const guint8 **bytes,
    gsize *len, guint64 *varint)
{
  switch (wire) {
    case 0:
      return read_varint (rd, p, end, varint);
    case 1:
    case 5: {
      gsize n = wire == 1 ? 8 : 4;
      if ((gsize) (end - *p) < n)
        return fail_at (rd, *p, "truncated fixed-size field");
      *bytes = *p;
      *len = n;
      *p += n;
      return TRUE;
    }
    case 2: {
      guint64 n;
      if (!read_varint (rd, p, end, &n))
        return FALSE;
      if (n > (guint64) (end - *p))
        return fail_at (rd, *p, "length past the end of the message");
      *bytes = *p;
      *len = (gsize) n;
      *p += n;
      return TRUE;
    }
    default:
      return fail_at (rd, *p, "unsupported wire type");
  }
}

static gboolean
parse_piece (Reader *rd, MoshiTokenizer *tok, const guint8 *p, const guint8 *end)
{
  char *piece = NULL;
  MoshiPieceType type = MOSHI_PIECE_NORMAL;
  while (p < end) {
    guint64 key;
    if (!read_varint (rd, &p, end, &key))
      goto error;
    int field = (int) (key >> 3), wire = (int) (key & 7);
    const guint8 *bytes = NULL;
    gsize len = 0;
    guint64 v = 0;
    if (!read_field (rd, &p, end, wire, &bytes, &len, &v))
      goto error;
    if (field == 1 && wire == 2) {
      if (!g_utf8_validate ((const char *) bytes, len, NULL)) {
        fail_at (rd, bytes, "piece is not valid UTF-8");
        goto error;
      }
      g_free (piece);
      piece = g_strndup ((const char *) bytes, len);
    } else if (field == 3 && wire == 0) {
      if (v < MOSHI_PIECE_NORMAL || v > MOSHI_PIECE_BYTE) {
        fail_at (rd, p, "unknown piece type");
        goto error;
      }
      type = (MoshiPieceType) v;
    }
  }
  if (piece == NULL) {
    fail_at (rd, p, "piece without text");
    return FALSE;
  }
  g_ptr_array_add (tok->pieces, piece);
  g_array_append_val (tok->types, type);
  return TRUE;

error:
  g_free (piece);
  return FALSE;
}

MoshiTokenizer *
moshi_tokenizer_ref (MoshiTokenizer *tok)
{
  g_atomic_int_inc (&tok->ref_count);
  return tok;
}

void
moshi_tokenizer_unref (MoshiTokenizer *tok)
{
  if (tok == NULL || !g_atomic_int_dec_and_test (&tok->ref_count))
    return;
  g_ptr_array_unref (tok->pieces);
  g_array_unref (tok->types);
  g_free (tok->path);
  g_free (tok);
}

const char *
moshi_tokenizer_get_path (const MoshiTokenizer *tok)
{
  return tok->path;
}

MoshiTokenizer *
moshi_tokenizer_new_from_data (const guint8 *data, gsize len, const char *what, GError **error)
{
  MoshiTokenizer *tok = g_new0 (MoshiTokenizer, 1);
  tok->ref_count = 1;
  tok->path = g_strdup (what);
  tok->pieces = g_ptr_array_new_with_free_func (g_free);
  tok->types = g_array_new (FALSE, FALSE, sizeof (MoshiPieceType));
  Reader rd = { data, data + len, data, what, error };
  const guint8 *p = data, *end = data + len;
  while (p < end) {
    guint64 key;
    if (!read_varint (&rd, &p, end, &key))
      goto fail;
    int field = (int) (key >> 3), wire = (int) (key & 7);
    if (field == 0) {
      fail_at (&rd, p, "field number 0");
      goto fail;
    }
    const guint8 *bytes = NULL;
    gsize flen = 0;
    guint64 v;
    if (!read_field (&rd, &p, end, wire, &bytes, &flen, &v))
      goto fail;
    if (field == 1 && wire == 2 && !parse_piece (&rd, tok, bytes, bytes + flen))
      goto fail;
  }
  if (tok->pieces->len == 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: no pieces (not a SentencePiece model?)",
        what);
    goto fail;
  }
  return tok;

fail:
  moshi_tokenizer_unref (tok);
  return NULL;
}

MoshiTokenizer *
moshi_tokenizer_load (const char *path, GError **error)
{
  g_autoptr (GMappedFile) file = moshi_file_map (path, "tokenizer", error);
  if (file == NULL)
    return NULL;
  return moshi_tokenizer_new_from_data ((const guint8 *) g_mapped_file_get_contents (file),
      g_mapped_file_get_length (file), path, error);
}

int
moshi_tokenizer_vocab_size (const MoshiTokenizer *tok)
{
  return (int) tok->pieces->len;
}

const char *
moshi_tokenizer_piece (const MoshiTokenizer *tok, int id)
{
  if (id < 0 || (guint) id >= tok->pieces->len)
    return NULL;
  return tok->pieces->pdata[id];
}

MoshiPieceType
moshi_tokenizer_piece_type (const MoshiTokenizer *tok, int id)
{
  if (id < 0 || (guint) id >= tok->types->len)
    return MOSHI_PIECE_UNUSED;
  return g_array_index (tok->types, MoshiPieceType, id);
}

char *
moshi_tokenizer_display (const MoshiTokenizer *tok, int id, int padding_id, int end_padding_id)
{
  if (id == padding_id || id == end_padding_id)
    return NULL;
  const char *piece = moshi_tokenizer_piece (tok, id);
  if (piece == NULL)
    return NULL;
  GString *s = g_string_new (NULL);
  static const char word_start[] = "\xe2\x96\x81";   /* U+2581 */
  for (const char *c = piece; *c;) {
    if (strncmp (c, word_start, 3) == 0) {
      g_string_append_c (s, ' ');
      c += 3;
    } else {
      g_string_append_c (s, *c++);
    }
  }
  return g_string_free (s, FALSE);
}
