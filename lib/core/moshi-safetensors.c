#include "moshi-safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "moshi-error.h"
#include "moshi-file.h"
#include "moshi-json.h"

/* The reference implementation refuses headers over 100 MB; a real header (about 1000 tensors
 * for the 7B model) is a few hundred kilobytes, so anything bigger is corruption or an attack. */
#define MAX_HEADER_LEN ((guint64) 100 * 1000 * 1000)

#define METADATA_KEY "__metadata__"

/* Alignment of the data section and of every tensor the writer lays out. */
#define WRITE_ALIGNMENT 8

struct _MoshiSafetensors {
  gatomicrefcount ref_count;
  char *path;
  GBytes *bytes;               /* the whole file: keeps the mapping or the caller's buffer alive */
  MoshiTensorEntry *entries;   /* sorted by data offset */
  gsize n_entries;
  GTree *by_name;              /* name (owned by entries) -> MoshiTensorEntry *; a tree for the
                                * reason given in moshi-json.c */
  GTree *metadata;             /* owned strings; NULL when the file has none */
};

/* Validation state of one tensor; offsets are kept to sort and to check overlaps. */
typedef struct {
  MoshiTensorEntry entry;
  guint64 begin;
  guint64 end;
} ParsedEntry;

static int
compare_names (gconstpointer a, gconstpointer b, gpointer user_data)
{
  return strcmp (a, b);
}

static int
compare_parsed_entries (gconstpointer a, gconstpointer b)
{
  const ParsedEntry *x = a, *y = b;
  if (x->begin != y->begin)
    return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end)
    return x->end < y->end ? -1 : 1;
  return strcmp (x->entry.name, y->entry.name);
}

const char *
moshi_shape_to_string (const int64_t *shape, int ndim, char *buf, gsize buf_len)
{
  g_return_val_if_fail (buf != NULL && buf_len > 0, buf);
  GString *s = g_string_sized_new (16 + 8 * (gsize) MAX (ndim, 0));
  g_string_append_c (s, '[');
  for (int i = 0; i < ndim; i++) {
    if (i > 0)
      g_string_append (s, ", ");
    /* Only expected shapes hold negative dimensions, where -1 means "any size". */
    if (shape[i] < 0)
      g_string_append_c (s, '*');
    else
      g_string_append_printf (s, "%" G_GINT64_FORMAT, (gint64) shape[i]);
  }
  g_string_append_c (s, ']');
  g_strlcpy (buf, s->str, buf_len);
  g_string_free (s, TRUE);
  return buf;
}

int64_t
moshi_shape_numel (const int64_t *shape, int ndim)
{
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return -1;
    if (shape[i] != 0 && n > G_MAXINT64 / shape[i])
      return -1;
    n *= shape[i];
  }
  return n;
}

static void
parsed_entries_free (GArray *entries)
{
  for (guint i = 0; i < entries->len; i++)
    g_free ((char *) g_array_index (entries, ParsedEntry, i).entry.name);
  g_array_free (entries, TRUE);
}

/* A GArray of ParsedEntry that frees the names it holds. */
typedef GArray ParsedEntries;
G_DEFINE_AUTOPTR_CLEANUP_FUNC (ParsedEntries, parsed_entries_free)

/* Reads data_offsets, [begin, end] as non-negative integers; FALSE when it is anything else. */
static gboolean
read_offset_pair (const MoshiJson *json, guint64 *begin, guint64 *end)
{
  gint64 b, e;
  if (json == NULL || moshi_json_kind (json) != MOSHI_JSON_ARRAY || moshi_json_length (json) != 2)
    return FALSE;
  if (!moshi_json_int64 (moshi_json_index (json, 0), &b) || b < 0)
    return FALSE;
  if (!moshi_json_int64 (moshi_json_index (json, 1), &e) || e < 0)
    return FALSE;
  *begin = (guint64) b;
  *end = (guint64) e;
  return TRUE;
}

static gboolean
parse_entry (const char *path, const char *name, const MoshiJson *json, guint64 data_len,
    ParsedEntry *out, GError **error)
{
  if (moshi_json_kind (json) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': entry is a JSON %s, expected an object", path, name,
        moshi_json_kind_name (moshi_json_kind (json)));
    return FALSE;
  }

  const MoshiJson *dtype_json = moshi_json_get (json, "dtype");
  const MoshiJson *shape_json = moshi_json_get (json, "shape");
  const MoshiJson *offsets_json = moshi_json_get (json, "data_offsets");
  const char *missing = dtype_json == NULL ? "dtype"
      : shape_json == NULL ? "shape" : offsets_json == NULL ? "data_offsets" : NULL;
  if (missing != NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: tensor '%s': no \"%s\" in the entry",
        path, name, missing);
    return FALSE;
  }

  const char *dtype_name = moshi_json_string (dtype_json);
  if (dtype_name == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': \"dtype\" is a JSON %s, expected a string", path, name,
        moshi_json_kind_name (moshi_json_kind (dtype_json)));
    return FALSE;
  }
  MoshiDType dtype;
  if (!moshi_dtype_from_name (dtype_name, &dtype)) {
    g_autofree char *escaped = g_strescape (dtype_name, NULL);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DTYPE, "%s: tensor '%s' has unsupported dtype '%.40s'",
        path, name, escaped);
    return FALSE;
  }

  if (moshi_json_kind (shape_json) != MOSHI_JSON_ARRAY) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': \"shape\" is a JSON %s, expected an array", path, name,
        moshi_json_kind_name (moshi_json_kind (shape_json)));
    return FALSE;
  }
  gsize ndim = moshi_json_length (shape_json);
  if (ndim > MOSHI_MAX_DIMS) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s' has %" G_GSIZE_FORMAT " dimensions, at most %d are supported",
        path, name, ndim, MOSHI_MAX_DIMS);
    return FALSE;
  }
  memset (out, 0, sizeof *out);
  out->entry.dtype = dtype;
  out->entry.ndim = (int) ndim;
  for (gsize i = 0; i < ndim; i++) {
    gint64 dim;
    if (!moshi_json_int64 (moshi_json_index (shape_json, i), &dim) || dim < 0) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "%s: tensor '%s': shape dimension %" G_GSIZE_FORMAT " is not a non-negative integer",
          path, name, i);
      return FALSE;
    }
    out->entry.shape[i] = dim;
  }

  char shape_str[MOSHI_SHAPE_STRING_LEN];
  moshi_shape_to_string (out->entry.shape, out->entry.ndim, shape_str, sizeof shape_str);
  int64_t numel = moshi_shape_numel (out->entry.shape, out->entry.ndim);
  gsize elem_size = moshi_dtype_size (dtype);
  if (numel < 0 || (guint64) numel > G_MAXUINT64 / elem_size
      || (guint64) numel * elem_size > G_MAXSIZE) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': shape %s has too many elements", path, name, shape_str);
    return FALSE;
  }
  guint64 expected_bytes = (guint64) numel * elem_size;

  guint64 begin, end;
  if (!read_offset_pair (offsets_json, &begin, &end)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': \"data_offsets\" is not a pair of non-negative integers", path, name);
    return FALSE;
  }
  if (end < begin) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
        "] end before they begin", path, name, begin, end);
    return FALSE;
  }
  if (end > data_len) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT
        "] run past the end of the data section (%" G_GUINT64_FORMAT " bytes; file truncated?)",
        path, name, begin, end, data_len);
    return FALSE;
  }
  if (end - begin != expected_bytes) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: tensor '%s': data_offsets [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT "] span %"
        G_GUINT64_FORMAT " bytes, but dtype %s with shape %s needs %" G_GUINT64_FORMAT " bytes",
        path, name, begin, end, end - begin, moshi_dtype_name (dtype), shape_str, expected_bytes);
    return FALSE;
  }

  out->begin = begin;
  out->end = end;
  out->entry.nbytes = (gsize) expected_bytes;
  return TRUE;
}

static GTree *
parse_metadata (const char *path, const MoshiJson *json, GError **error)
{
  if (moshi_json_kind (json) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: \"" METADATA_KEY "\" is a JSON %s, expected an object", path,
        moshi_json_kind_name (moshi_json_kind (json)));
    return NULL;
  }
  g_autoptr (GTree) metadata = g_tree_new_full (compare_names, NULL, g_free, g_free);
  for (gsize i = 0; i < moshi_json_length (json); i++) {
    const char *key = moshi_json_member_name (json, i);
    const MoshiJson *value = moshi_json_index (json, i);
    if (moshi_json_string (value) == NULL) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "%s: \"" METADATA_KEY "\" value '%s' is a JSON %s, expected a string", path, key,
          moshi_json_kind_name (moshi_json_kind (value)));
      return NULL;
    }
    g_tree_insert (metadata, g_strdup (key), g_strdup (moshi_json_string (value)));
  }
  return g_steal_pointer (&metadata);
}

static void
safetensors_free (MoshiSafetensors *st)
{
  if (st->by_name != NULL)
    g_tree_unref (st->by_name);
  if (st->metadata != NULL)
    g_tree_unref (st->metadata);
  for (gsize i = 0; i < st->n_entries; i++)
    g_free ((char *) st->entries[i].name);
  g_free (st->entries);
  if (st->bytes != NULL)
    g_bytes_unref (st->bytes);
  g_free (st->path);
  g_free (st);
}

/* Validates the image in bytes (reffed on success) and builds the tensor table. */
static MoshiSafetensors *
safetensors_new (GBytes *bytes, const char *path, GError **error)
{
  gsize file_len;
  const guint8 *file = g_bytes_get_data (bytes, &file_len);

  if (file_len < 8) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: truncated: %" G_GSIZE_FORMAT " bytes, too short for the 8-byte header length",
        path, file_len);
    return NULL;
  }
  guint64 header_len = 0;
  for (int i = 7; i >= 0; i--)
    header_len = (header_len << 8) | file[i];
  if (header_len > MAX_HEADER_LEN) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: header length %" G_GUINT64_FORMAT " is absurd (more than %" G_GUINT64_FORMAT
        " bytes); not a safetensors file?", path, header_len, MAX_HEADER_LEN);
    return NULL;
  }
  if (header_len > file_len - 8) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: truncated: header length %" G_GUINT64_FORMAT " runs past the end of the file (%"
        G_GSIZE_FORMAT " bytes)", path, header_len, file_len);
    return NULL;
  }
  const guint8 *data = file + 8 + header_len;
  guint64 data_len = file_len - 8 - header_len;

  g_autofree char *what = g_strdup_printf ("%s: header", path);
  g_autoptr (MoshiJson) header = moshi_json_parse ((const char *) file + 8, (gsize) header_len,
      what, error);
  if (header == NULL)
    return NULL;
  if (moshi_json_kind (header) != MOSHI_JSON_OBJECT) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: header is a JSON %s, expected an object", path,
        moshi_json_kind_name (moshi_json_kind (header)));
    return NULL;
  }

  gsize n_members = moshi_json_length (header);
  g_autoptr (ParsedEntries) parsed = g_array_sized_new (FALSE, FALSE, sizeof (ParsedEntry),
      (guint) n_members);
  g_autoptr (GTree) metadata = NULL;
  for (gsize i = 0; i < n_members; i++) {
    const char *name = moshi_json_member_name (header, i);
    const MoshiJson *value = moshi_json_index (header, i);
    if (strcmp (name, METADATA_KEY) == 0) {
      metadata = parse_metadata (path, value, error);
      if (metadata == NULL)
        return NULL;
      continue;
    }
    ParsedEntry entry;
    if (!parse_entry (path, name, value, data_len, &entry, error))
      return NULL;
    entry.entry.name = g_strdup (name);
    entry.entry.data = data + entry.begin;
    g_array_append_val (parsed, entry);
  }

  g_array_sort (parsed, compare_parsed_entries);

  /* Sorted by begin, tensors that are disjoint so far lie one after the other, so the first
   * overlap is always with the previous tensor. Empty tensors occupy no bytes and are skipped,
   * wherever they point. */
  const ParsedEntry *previous = NULL;
  for (guint i = 0; i < parsed->len; i++) {
    const ParsedEntry *cur = &g_array_index (parsed, ParsedEntry, i);
    if (cur->begin == cur->end)
      continue;
    if (previous != NULL && cur->begin < previous->end) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "%s: tensors '%s' [%" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT "] and '%s' [%"
          G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT "] overlap", path,
          previous->entry.name, previous->begin, previous->end,
          cur->entry.name, cur->begin, cur->end);
      return NULL;
    }
    previous = cur;
  }
  /* As the reference loader does, refuse bytes past the last tensor: they are what a truncated
   * header or an appended file leaves, never what a writer produces. */
  guint64 used = previous != NULL ? previous->end : 0;
  if (used != data_len) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
        "%s: %" G_GUINT64_FORMAT " trailing bytes after the last tensor (the data section is %"
        G_GUINT64_FORMAT " bytes, the tensors end at %" G_GUINT64_FORMAT ")", path,
        data_len - used, data_len, used);
    return NULL;
  }

  MoshiSafetensors *st = g_new0 (MoshiSafetensors, 1);
  g_atomic_ref_count_init (&st->ref_count);
  st->path = g_strdup (path);
  st->bytes = g_bytes_ref (bytes);
  st->metadata = g_steal_pointer (&metadata);
  st->n_entries = parsed->len;
  st->entries = g_new0 (MoshiTensorEntry, MAX (parsed->len, 1));
  st->by_name = g_tree_new_full (compare_names, NULL, NULL, NULL);
  for (guint i = 0; i < parsed->len; i++) {
    ParsedEntry *p = &g_array_index (parsed, ParsedEntry, i);
    st->entries[i] = p->entry;
    p->entry.name = NULL;   /* now owned by st */
    g_tree_insert (st->by_name, (gpointer) st->entries[i].name, &st->entries[i]);
  }
  return st;
}

MoshiSafetensors *
moshi_safetensors_open (const char *path, GError **error)
{
  g_return_val_if_fail (path != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  GMappedFile *mapped = moshi_file_map (path, "safetensors file", error);
  if (mapped == NULL)
    return NULL;
  /* The GBytes holds the mapping for as long as the result lives. */
  g_autoptr (GBytes) bytes = g_mapped_file_get_bytes (mapped);
  g_mapped_file_unref (mapped);
  return safetensors_new (bytes, path, error);
}

MoshiSafetensors *
moshi_safetensors_new_from_bytes (GBytes *bytes, const char *display_name, GError **error)
{
  g_return_val_if_fail (bytes != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);
  return safetensors_new (bytes, display_name != NULL ? display_name : "<memory>", error);
}

MoshiSafetensors *
moshi_safetensors_ref (MoshiSafetensors *st)
{
  g_return_val_if_fail (st != NULL, NULL);
  g_atomic_ref_count_inc (&st->ref_count);
  return st;
}

void
moshi_safetensors_unref (MoshiSafetensors *st)
{
  if (st == NULL)
    return;
  if (g_atomic_ref_count_dec (&st->ref_count))
    safetensors_free (st);
}

const char *
moshi_safetensors_path (const MoshiSafetensors *st)
{
  g_return_val_if_fail (st != NULL, NULL);
  return st->path;
}

gsize
moshi_safetensors_n_tensors (const MoshiSafetensors *st)
{
  g_return_val_if_fail (st != NULL, 0);
  return st->n_entries;
}

const MoshiTensorEntry *
moshi_safetensors_nth (const MoshiSafetensors *st, gsize i)
{
  g_return_val_if_fail (st != NULL, NULL);
  g_return_val_if_fail (i < st->n_entries, NULL);
  return &st->entries[i];
}

const MoshiTensorEntry *
moshi_safetensors_lookup (const MoshiSafetensors *st, const char *name)
{
  g_return_val_if_fail (st != NULL, NULL);
  g_return_val_if_fail (name != NULL, NULL);
  return g_tree_lookup (st->by_name, name);
}

const char *
moshi_safetensors_metadata (const MoshiSafetensors *st, const char *key)
{
  g_return_val_if_fail (st != NULL, NULL);
  g_return_val_if_fail (key != NULL, NULL);
  return st->metadata != NULL ? g_tree_lookup (st->metadata, key) : NULL;
}

const MoshiTensorEntry *
moshi_safetensors_require (const MoshiSafetensors *st, const char *name, MoshiDType dtype,
    int ndim, const int64_t *shape, GError **error)
{
  g_return_val_if_fail (st != NULL, NULL);
  g_return_val_if_fail (name != NULL, NULL);
  g_return_val_if_fail (ndim <= MOSHI_MAX_DIMS, NULL);
  g_return_val_if_fail (ndim <= 0 || shape != NULL, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  const MoshiTensorEntry *entry = moshi_safetensors_lookup (st, name);
  if (entry == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_MISSING_TENSOR, "%s: tensor '%s' missing",
        st->path, name);
    return NULL;
  }
  if (dtype != MOSHI_DTYPE_COUNT && entry->dtype != dtype) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DTYPE, "%s: tensor '%s' has dtype %s, expected %s",
        st->path, name, moshi_dtype_name (entry->dtype), moshi_dtype_name (dtype));
    return NULL;
  }
  /* A negative ndim skips the shape check altogether. */
  if (ndim >= 0) {
    gboolean matches = entry->ndim == ndim;
    for (int i = 0; matches && i < ndim; i++)
      matches = shape[i] == -1 || shape[i] == entry->shape[i];
    if (!matches) {
      char actual[MOSHI_SHAPE_STRING_LEN], expected[MOSHI_SHAPE_STRING_LEN];
      moshi_shape_to_string (entry->shape, entry->ndim, actual, sizeof actual);
      moshi_shape_to_string (shape, ndim, expected, sizeof expected);
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE, "%s: tensor '%s' has shape %s, expected %s",
          st->path, name, actual, expected);
      return NULL;
    }
  }
  return entry;
}

/* ---- writing ---- */

static void
append_json_string (GString *out, const char *s)
{
  g_string_append_c (out, '"');
  for (const guchar *p = (const guchar *) s; *p != '\0'; p++) {
    switch (*p) {
      case '"': g_string_append (out, "\\\""); break;
      case '\\': g_string_append (out, "\\\\"); break;
      case '\n': g_string_append (out, "\\n"); break;
      case '\r': g_string_append (out, "\\r"); break;
      case '\t': g_string_append (out, "\\t"); break;
      default:
        if (*p < 0x20)
          g_string_append_printf (out, "\\u%04x", *p);
        else
          g_string_append_c (out, (char) *p);
    }
  }
  g_string_append_c (out, '"');
}

static gboolean
check_entries_for_writing (const char *path, const MoshiTensorEntry *entries, gsize n,
    GHashTable *metadata, GError **error)
{
  g_autoptr (GHashTable) seen = g_hash_table_new (g_str_hash, g_str_equal);
  for (gsize i = 0; i < n; i++) {
    const MoshiTensorEntry *e = &entries[i];
    if (e->name == NULL || !g_utf8_validate (e->name, -1, NULL) || strcmp (e->name, METADATA_KEY) == 0) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "%s: tensor %" G_GSIZE_FORMAT " has an invalid name", path, i);
      return FALSE;
    }
    if (!g_hash_table_add (seen, (gpointer) e->name)) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "%s: tensor '%s' appears twice", path, e->name);
      return FALSE;
    }
    if (e->dtype >= MOSHI_DTYPE_COUNT || e->ndim < 0 || e->ndim > MOSHI_MAX_DIMS) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "%s: tensor '%s' has an invalid dtype or number of dimensions", path, e->name);
      return FALSE;
    }
    int64_t numel = moshi_shape_numel (e->shape, e->ndim);
    gsize elem_size = moshi_dtype_size (e->dtype);
    if (numel < 0 || (guint64) numel > G_MAXSIZE / elem_size
        || (gsize) numel * elem_size != e->nbytes || (e->nbytes > 0 && e->data == NULL)) {
      char shape_str[MOSHI_SHAPE_STRING_LEN];
      moshi_shape_to_string (e->shape, e->ndim, shape_str, sizeof shape_str);
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
          "%s: tensor '%s' has %" G_GSIZE_FORMAT " bytes of data, which does not match dtype %s"
          " with shape %s", path, e->name, e->nbytes, moshi_dtype_name (e->dtype), shape_str);
      return FALSE;
    }
  }
  if (metadata != NULL) {
    GHashTableIter iter;
    gpointer key, value;
    g_hash_table_iter_init (&iter, metadata);
    while (g_hash_table_iter_next (&iter, &key, &value)) {
      if (key == NULL || value == NULL || !g_utf8_validate (key, -1, NULL)
          || !g_utf8_validate (value, -1, NULL)) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
            "%s: metadata keys and values must be UTF-8 strings", path);
        return FALSE;
      }
    }
  }
  return TRUE;
}

/* The data section is written without gaps, as the reference implementation requires (it
 * rejects files with holes). Tensors go in decreasing element size, so that each one still
 * starts at a multiple of its element size: every earlier tensor's length is a multiple of a
 * larger-or-equal power of two. */
static gsize *
write_order (const MoshiTensorEntry *entries, gsize n)
{
  gsize *order = g_new (gsize, MAX (n, 1));
  gsize k = 0;
  for (gsize size = 8; size >= 1; size /= 2)
    for (gsize i = 0; i < n; i++)
      if (moshi_dtype_size (entries[i].dtype) == size)
        order[k++] = i;
  g_assert (k == n);
  return order;
}

static int
compare_string_pointers (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

static char *
build_header (const MoshiTensorEntry *entries, gsize n, GHashTable *metadata, const gsize *order,
    gsize *offsets)
{
  GString *header = g_string_new ("{");
  gboolean first = TRUE;

  if (metadata != NULL && g_hash_table_size (metadata) > 0) {
    /* Sorted so that the same input always gives the same bytes. */
    g_autofree gpointer *keys = g_hash_table_get_keys_as_array (metadata, NULL);
    guint n_keys = g_hash_table_size (metadata);
    qsort (keys, n_keys, sizeof (gpointer), compare_string_pointers);
    g_string_append (header, "\"" METADATA_KEY "\":{");
    for (guint i = 0; i < n_keys; i++) {
      if (i > 0)
        g_string_append_c (header, ',');
      append_json_string (header, keys[i]);
      g_string_append_c (header, ':');
      append_json_string (header, g_hash_table_lookup (metadata, keys[i]));
    }
    g_string_append_c (header, '}');
    first = FALSE;
  }

  gsize offset = 0;
  for (gsize j = 0; j < n; j++) {
    offsets[order[j]] = offset;
    offset += entries[order[j]].nbytes;
  }
  for (gsize i = 0; i < n; i++) {
    const MoshiTensorEntry *e = &entries[i];
    offset = offsets[i];
    if (!first)
      g_string_append_c (header, ',');
    first = FALSE;
    append_json_string (header, e->name);
    g_string_append_printf (header, ":{\"dtype\":\"%s\",\"shape\":[", moshi_dtype_name (e->dtype));
    for (int d = 0; d < e->ndim; d++)
      g_string_append_printf (header, d > 0 ? ",%" G_GINT64_FORMAT : "%" G_GINT64_FORMAT,
          (gint64) e->shape[d]);
    g_string_append_printf (header, "],\"data_offsets\":[%" G_GSIZE_FORMAT ",%" G_GSIZE_FORMAT "]}",
        offset, offset + e->nbytes);
  }
  g_string_append_c (header, '}');

  /* Spaces are JSON whitespace, so padding keeps the header valid while aligning the data. */
  while ((8 + header->len) % WRITE_ALIGNMENT != 0)
    g_string_append_c (header, ' ');
  return g_string_free (header, FALSE);
}

gboolean
moshi_safetensors_write (const char *path, const MoshiTensorEntry *entries, gsize n,
    GHashTable *metadata, GError **error)
{
  g_return_val_if_fail (path != NULL, FALSE);
  g_return_val_if_fail (entries != NULL || n == 0, FALSE);
  g_return_val_if_fail (error == NULL || *error == NULL, FALSE);

  if (!check_entries_for_writing (path, entries, n, metadata, error))
    return FALSE;

  g_autofree gsize *offsets = g_new0 (gsize, MAX (n, 1));
  g_autofree gsize *order = write_order (entries, n);
  g_autofree char *header = build_header (entries, n, metadata, order, offsets);
  gsize header_len = strlen (header);
  guint8 len_bytes[8];
  for (int i = 0; i < 8; i++)
    len_bytes[i] = (guint8) ((guint64) header_len >> (8 * i));

  /* A regular file is written next to the target and renamed over it, so that readers (and a
   * crash) never see a half-written file; a device or FIFO is written in place (moshi-file.h).
   * g_file_set_contents would need the whole file in memory. */
  MoshiOutputFile out;
  if (!moshi_file_output_open (&out, path, error))
    return FALSE;
  gboolean ok = moshi_file_output_write (&out, len_bytes, sizeof len_bytes)
      && moshi_file_output_write (&out, header, header_len);
  for (gsize j = 0; ok && j < n; j++) {
    const MoshiTensorEntry *e = &entries[order[j]];
    if (e->nbytes > 0)
      ok = moshi_file_output_write (&out, e->data, e->nbytes);
  }
  return moshi_file_output_close (&out, ok, ok ? 0 : errno, error);
}

gboolean
moshi_tensor_check_finite (const MoshiTensorEntry *entry, const char *path, GError **error)
{
  /* The exponent field of each format: all ones is an infinity or a NaN. */
  guint64 mask;
  gsize size;
  switch (entry->dtype) {
    case MOSHI_DTYPE_F32: mask = 0x7f800000u; size = 4; break;
    case MOSHI_DTYPE_BF16: mask = 0x7f80u; size = 2; break;
    case MOSHI_DTYPE_F16: mask = 0x7c00u; size = 2; break;
    case MOSHI_DTYPE_F64: mask = G_GUINT64_CONSTANT (0x7ff0000000000000); size = 8; break;
    default: return TRUE;
  }
  const guint8 *p = entry->data;
  gsize n = entry->nbytes / size;
  for (gsize i = 0; i < n; i++) {
    guint64 bits = 0;
    /* Little-endian, as the file stores it, at whatever alignment the file gave. */
    for (gsize b = 0; b < size; b++)
      bits |= (guint64) p[i * size + b] << (8 * b);
    if ((bits & mask) == mask) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "%s: tensor '%s' holds a non-finite value (an infinity or NaN) at element %"
          G_GSIZE_FORMAT, path, entry->name, i);
      return FALSE;
    }
  }
  return TRUE;
}
