/* Tests of the safetensors reader and writer (lib/core/moshi-safetensors.c). */
#include <errno.h>
#include <string.h>

#include <glib/gstdio.h>

#include "moshi-error.h"
#include "moshi-safetensors.h"
#include "test-support.h"

/* Every test case gets a parent directory, made and removed in the parent process (an unchecked
 * fixture), so that it goes away even when a failing test ends its forked child early; each
 * test then gets a fresh scratch directory inside it. */
static char *parent_dir;
static char *scratch_dir;

static void
remove_tree (const char *path)
{
  if (g_file_test (path, G_FILE_TEST_IS_DIR) && !g_file_test (path, G_FILE_TEST_IS_SYMLINK)) {
    GDir *dir = g_dir_open (path, 0, NULL);
    if (dir != NULL) {
      const char *name;
      while ((name = g_dir_read_name (dir)) != NULL) {
        g_autofree char *child = g_build_filename (path, name, NULL);
        remove_tree (child);
      }
      g_dir_close (dir);
    }
    g_rmdir (path);
  } else {
    g_unlink (path);
  }
}

static void
parent_setup (void)
{
  g_autoptr (GError) error = NULL;
  parent_dir = g_dir_make_tmp ("moshi-st-XXXXXX", &error);
  ck_assert_msg (parent_dir != NULL, "g_dir_make_tmp: %s", error ? error->message : "?");
}

static void
parent_teardown (void)
{
  remove_tree (parent_dir);
  g_clear_pointer (&parent_dir, g_free);
}

static void
scratch_setup (void)
{
  scratch_dir = g_build_filename (parent_dir, "test-XXXXXX", NULL);
  ck_assert_msg (g_mkdtemp (scratch_dir) != NULL, "g_mkdtemp: %s", g_strerror (errno));
}

static void
scratch_teardown (void)
{
  remove_tree (scratch_dir);
  g_clear_pointer (&scratch_dir, g_free);
}

static char *
scratch_path (const char *name)
{
  return g_build_filename (scratch_dir, name, NULL);
}

static guint
count_scratch_files (void)
{
  guint n = 0;
  GDir *dir = g_dir_open (scratch_dir, 0, NULL);
  ck_assert_ptr_nonnull (dir);
  while (g_dir_read_name (dir) != NULL)
    n++;
  g_dir_close (dir);
  return n;
}

/* A file image: the little-endian header length (header_len, or text_len when it is
 * G_MAXUINT64), text_len bytes of header text and data_len bytes of data counting up from 0. */
static GBytes *
make_image_raw (const char *header, gsize text_len, guint64 header_len, gsize data_len)
{
  if (header_len == G_MAXUINT64)
    header_len = text_len;
  GByteArray *image = g_byte_array_new ();
  for (int i = 0; i < 8; i++) {
    guint8 b = (guint8) (header_len >> (8 * i));
    g_byte_array_append (image, &b, 1);
  }
  g_byte_array_append (image, (const guint8 *) header, (guint) text_len);
  for (gsize i = 0; i < data_len; i++) {
    guint8 b = (guint8) i;
    g_byte_array_append (image, &b, 1);
  }
  return g_byte_array_free_to_bytes (image);
}

static GBytes *
make_image_with_length (const char *header, guint64 header_len, gsize data_len)
{
  return make_image_raw (header, strlen (header), header_len, data_len);
}

static GBytes *
make_image (const char *header, gsize data_len)
{
  return make_image_raw (header, strlen (header), G_MAXUINT64, data_len);
}

static char *
write_scratch_file (const char *name, GBytes *contents)
{
  char *path = scratch_path (name);
  g_autoptr (GError) error = NULL;
  gsize len;
  const char *data = g_bytes_get_data (contents, &len);
  ck_assert_msg (g_file_set_contents (path, data != NULL ? data : "", (gssize) len, &error),
      "%s", error ? error->message : "?");
  return path;
}

static void
assert_error (const GError *error, MoshiErrorCode code, const char *source, const char *tensor,
    const char *needle)
{
  ck_assert_msg (error != NULL, "expected an error containing '%s'", needle);
  ck_assert_msg (g_error_matches (error, MOSHI_ERROR, (gint) code),
      "error '%s' has code %d, expected %d", error->message, error->code, code);
  ck_assert_msg (g_str_has_prefix (error->message, source), "error '%s' does not start with '%s'",
      error->message, source);
  if (tensor != NULL) {
    g_autofree char *quoted = g_strdup_printf ("'%s'", tensor);
    moshi_assert_error_contains (error, quoted);
  }
  moshi_assert_error_contains (error, needle);
}

/* Checks that image is rejected both from a file (whose full path must be in the message) and
 * from memory (where the display name stands in for it). */
static void
expect_rejected (GBytes *image, MoshiErrorCode code, const char *tensor, const char *needle)
{
  g_autofree char *path = write_scratch_file ("bad.safetensors", image);
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (path, &error);
  ck_assert_msg (st == NULL, "%s: accepted", needle);
  assert_error (error, code, path, tensor, needle);
  /* The directory, not just the basename, must be in the message. */
  moshi_assert_error_contains (error, scratch_dir);

  g_clear_error (&error);
  const char *display_name = "memory:/some/dir/bad.safetensors";
  g_autoptr (MoshiSafetensors) mem = moshi_safetensors_new_from_bytes (image, display_name, &error);
  ck_assert_msg (mem == NULL, "%s: accepted from memory", needle);
  assert_error (error, code, display_name, tensor, needle);
}

static void
expect_header_rejected (const char *header, gsize data_len, MoshiErrorCode code, const char *tensor,
    const char *needle)
{
  g_autoptr (GBytes) image = make_image (header, data_len);
  expect_rejected (image, code, tensor, needle);
}

static MoshiSafetensors *
load_header (const char *header, gsize data_len)
{
  g_autoptr (GBytes) image = make_image (header, data_len);
  g_autoptr (GError) error = NULL;
  MoshiSafetensors *st = moshi_safetensors_new_from_bytes (image, "mem", &error);
  ck_assert_msg (st != NULL, "'%s' rejected: %s", header, error ? error->message : "?");
  return st;
}

/* ---- helpers ---- */

START_TEST (test_shape_helpers)
{
  char buf[128];
  const int64_t shape[] = { 2, 3, 40 };
  ck_assert_str_eq (moshi_shape_to_string (shape, 3, buf, sizeof buf), "[2, 3, 40]");
  ck_assert_str_eq (moshi_shape_to_string (shape, 1, buf, sizeof buf), "[2]");
  ck_assert_str_eq (moshi_shape_to_string (NULL, 0, buf, sizeof buf), "[]");
  const int64_t wild[] = { -1, 7 };
  ck_assert_str_eq (moshi_shape_to_string (wild, 2, buf, sizeof buf), "[*, 7]");
  /* A short buffer is truncated, still NUL-terminated. */
  ck_assert_str_eq (moshi_shape_to_string (shape, 3, buf, 5), "[2, ");

  ck_assert_int_eq (moshi_shape_numel (shape, 3), 240);
  ck_assert_int_eq (moshi_shape_numel (NULL, 0), 1);
  const int64_t empty[] = { 4, 0, 9 };
  ck_assert_int_eq (moshi_shape_numel (empty, 3), 0);
  const int64_t huge[] = { G_GINT64_CONSTANT (1) << 32, G_GINT64_CONSTANT (1) << 32 };
  ck_assert_int_eq (moshi_shape_numel (huge, 2), -1);
  ck_assert_int_eq (moshi_shape_numel (wild, 2), -1);
  const int64_t max[] = { G_MAXINT64 };
  ck_assert (moshi_shape_numel (max, 1) == G_MAXINT64);
}
END_TEST

/* ---- writing and reading back ---- */

typedef struct {
  MoshiTensorEntry entry;
  guint8 *owned;
} TestTensor;

static void
make_tensor (TestTensor *t, const char *name, MoshiDType dtype, int ndim, const int64_t *shape,
    guint8 seed)
{
  memset (t, 0, sizeof *t);
  t->entry.name = name;
  t->entry.dtype = dtype;
  t->entry.ndim = ndim;
  for (int i = 0; i < ndim; i++)
    t->entry.shape[i] = shape[i];
  t->entry.nbytes = (gsize) moshi_shape_numel (shape, ndim) * moshi_dtype_size (dtype);
  t->owned = g_malloc (MAX (t->entry.nbytes, 1));
  for (gsize i = 0; i < t->entry.nbytes; i++)
    t->owned[i] = (guint8) (seed + i * 31);
  t->entry.data = t->owned;
}

START_TEST (test_round_trip)
{
  static const int64_t s23[] = { 2, 3 }, s5[] = { 5 }, s7[] = { 7 }, s0x5[] = { 0, 5 },
      s8d[] = { 1, 2, 1, 2, 1, 1, 1, 3 }, s3[] = { 3 }, s2x2[] = { 2, 2 };
  TestTensor tensors[11];
  make_tensor (&tensors[0], "encoder.weight", MOSHI_DTYPE_F32, 2, s23, 1);
  make_tensor (&tensors[1], "odd.bytes", MOSHI_DTYPE_U8, 1, s5, 2);   /* 5 bytes: forces padding */
  make_tensor (&tensors[2], "decoder.bias", MOSHI_DTYPE_BF16, 1, s7, 3);
  make_tensor (&tensors[3], "scalar", MOSHI_DTYPE_I64, 0, NULL, 4);
  make_tensor (&tensors[4], "empty", MOSHI_DTYPE_F32, 2, s0x5, 5);
  make_tensor (&tensors[5], "eight.dims", MOSHI_DTYPE_F16, 8, s8d, 6);
  make_tensor (&tensors[6], "mask", MOSHI_DTYPE_BOOL, 1, s3, 7);
  make_tensor (&tensors[7], "doubles", MOSHI_DTYPE_F64, 2, s2x2, 8);
  make_tensor (&tensors[8], "ints", MOSHI_DTYPE_I32, 1, s3, 9);
  make_tensor (&tensors[9], "shorts \"quoted\" \\ name\n\xc3\xa9", MOSHI_DTYPE_I16, 1, s3, 10);
  make_tensor (&tensors[10], "bytes", MOSHI_DTYPE_I8, 1, s7, 11);
  MoshiTensorEntry entries[G_N_ELEMENTS (tensors)];
  for (gsize i = 0; i < G_N_ELEMENTS (tensors); i++)
    entries[i] = tensors[i].entry;

  g_autoptr (GHashTable) metadata = g_hash_table_new (g_str_hash, g_str_equal);
  g_hash_table_insert (metadata, "format", "pt");
  g_hash_table_insert (metadata, "tricky \"key\"", "line\nbreak\ttab \\ \x01 caf\xc3\xa9 \xf0\x9f\x98\x80");
  g_hash_table_insert (metadata, "", "empty key");

  g_autofree char *path = scratch_path ("model.safetensors");
  g_autoptr (GError) error = NULL;
  ck_assert_msg (moshi_safetensors_write (path, entries, G_N_ELEMENTS (entries), metadata, &error),
      "%s", error ? error->message : "?");
  /* Written atomically: no temporary file is left behind. */
  ck_assert_uint_eq (count_scratch_files (), 1);

  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (path, &error);
  ck_assert_msg (st != NULL, "%s", error ? error->message : "?");
  ck_assert_str_eq (moshi_safetensors_path (st), path);
  ck_assert_uint_eq (moshi_safetensors_n_tensors (st), G_N_ELEMENTS (entries));

  /* The data section is 8-byte aligned in the file; each tensor is aligned to its element size
   * and the tensors follow one another without gaps, as the reference reader requires. */
  g_autofree char *contents = NULL;
  gsize file_len;
  ck_assert (g_file_get_contents (path, &contents, &file_len, NULL));
  guint64 header_len = 0;
  for (int i = 7; i >= 0; i--)
    header_len = (header_len << 8) | (guint8) contents[i];
  ck_assert_uint_eq ((8 + header_len) % 8, 0);

  const MoshiTensorEntry *first = moshi_safetensors_nth (st, 0);
  const guint8 *data_start = (const guint8 *) first->data;
  const guint8 *previous = NULL;
  for (gsize i = 0; i < G_N_ELEMENTS (entries); i++) {
    const MoshiTensorEntry *want = &entries[i];
    const MoshiTensorEntry *got = moshi_safetensors_lookup (st, want->name);
    ck_assert_msg (got != NULL, "'%s' not found", want->name);
    ck_assert_str_eq (got->name, want->name);
    ck_assert_ptr_ne (got->name, want->name);   /* owned by st, not borrowed */
    ck_assert_int_eq (got->dtype, want->dtype);
    ck_assert_int_eq (got->ndim, want->ndim);
    for (int d = 0; d < want->ndim; d++)
      ck_assert_int_eq (got->shape[d], want->shape[d]);
    ck_assert_uint_eq (got->nbytes, want->nbytes);
    if (want->nbytes > 0)
      ck_assert_int_eq (memcmp (got->data, want->data, want->nbytes), 0);
    ck_assert_uint_eq ((gsize) ((const guint8 *) got->data - data_start)
        % moshi_dtype_size (want->dtype), 0);
  }
  /* nth () goes in data order: contiguous, element sizes never increasing. */
  gsize expected_offset = 0, last_size = 8;
  for (gsize i = 0; i < G_N_ELEMENTS (entries); i++) {
    const MoshiTensorEntry *nth = moshi_safetensors_nth (st, i);
    ck_assert_uint_eq ((gsize) ((const guint8 *) nth->data - data_start), expected_offset);
    ck_assert_uint_le (moshi_dtype_size (nth->dtype), last_size);
    last_size = moshi_dtype_size (nth->dtype);
    expected_offset += nth->nbytes;
    if (previous != NULL)
      ck_assert ((const guint8 *) nth->data >= previous);
    previous = nth->data;
  }
  ck_assert_uint_eq (8 + header_len + expected_offset, file_len);
  ck_assert_ptr_null (moshi_safetensors_lookup (st, "absent"));
  ck_assert_ptr_null (moshi_safetensors_lookup (st, "__metadata__"));

  ck_assert_str_eq (moshi_safetensors_metadata (st, "format"), "pt");
  ck_assert_str_eq (moshi_safetensors_metadata (st, "tricky \"key\""),
      "line\nbreak\ttab \\ \x01 caf\xc3\xa9 \xf0\x9f\x98\x80");
  ck_assert_str_eq (moshi_safetensors_metadata (st, ""), "empty key");
  ck_assert_ptr_null (moshi_safetensors_metadata (st, "absent"));

  /* The same bytes load from memory too. */
  g_autoptr (GBytes) bytes = g_bytes_new (contents, file_len);
  g_autoptr (MoshiSafetensors) mem = moshi_safetensors_new_from_bytes (bytes, "in memory", &error);
  ck_assert_msg (mem != NULL, "%s", error ? error->message : "?");
  ck_assert_str_eq (moshi_safetensors_path (mem), "in memory");
  ck_assert_uint_eq (moshi_safetensors_n_tensors (mem), G_N_ELEMENTS (entries));
  const MoshiTensorEntry *e = moshi_safetensors_lookup (mem, "encoder.weight");
  ck_assert_int_eq (memcmp (e->data, tensors[0].owned, 24), 0);

  for (gsize i = 0; i < G_N_ELEMENTS (tensors); i++)
    g_free (tensors[i].owned);
}
END_TEST

START_TEST (test_write_is_deterministic)
{
  /* The iteration order of the metadata hash table must not change the bytes written. */
  static const int64_t s2[] = { 2 };
  TestTensor t;
  make_tensor (&t, "w", MOSHI_DTYPE_F32, 1, s2, 1);
  g_autoptr (GHashTable) a = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr (GHashTable) b = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  for (int i = 0; i < 50; i++) {
    g_hash_table_insert (a, g_strdup_printf ("key%d", i), "v");
    g_hash_table_insert (b, g_strdup_printf ("key%d", 49 - i), "v");
  }
  g_autofree char *pa = scratch_path ("a.safetensors");
  g_autofree char *pb = scratch_path ("b.safetensors");
  ck_assert (moshi_safetensors_write (pa, &t.entry, 1, a, NULL));
  ck_assert (moshi_safetensors_write (pb, &t.entry, 1, b, NULL));
  g_autofree char *ca = NULL, *cb = NULL;
  gsize la, lb;
  ck_assert (g_file_get_contents (pa, &ca, &la, NULL));
  ck_assert (g_file_get_contents (pb, &cb, &lb, NULL));
  ck_assert_uint_eq (la, lb);
  ck_assert_int_eq (memcmp (ca, cb, la), 0);
  g_free (t.owned);
}
END_TEST

START_TEST (test_write_empty_and_overwrite)
{
  g_autofree char *path = scratch_path ("empty.safetensors");
  g_autoptr (GError) error = NULL;

  /* No tensors, no metadata: still a valid file. */
  ck_assert (moshi_safetensors_write (path, NULL, 0, NULL, &error));
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (path, &error);
  ck_assert_msg (st != NULL, "%s", error ? error->message : "?");
  ck_assert_uint_eq (moshi_safetensors_n_tensors (st), 0);
  ck_assert_ptr_null (moshi_safetensors_metadata (st, "format"));

  /* An empty metadata table writes no "__metadata__". */
  g_autoptr (GHashTable) metadata = g_hash_table_new (g_str_hash, g_str_equal);
  ck_assert (moshi_safetensors_write (path, NULL, 0, metadata, &error));
  g_autofree char *contents = NULL;
  ck_assert (g_file_get_contents (path, &contents, NULL, NULL));
  ck_assert_ptr_null (strstr (contents + 8, "__metadata__"));

  /* Overwriting replaces the file while the old mapping stays readable. */
  static const int64_t s1[] = { 1 };
  TestTensor t;
  make_tensor (&t, "x", MOSHI_DTYPE_F32, 1, s1, 9);
  ck_assert (moshi_safetensors_write (path, &t.entry, 1, NULL, &error));
  ck_assert_uint_eq (moshi_safetensors_n_tensors (st), 0);
  g_autoptr (MoshiSafetensors) again = moshi_safetensors_open (path, &error);
  ck_assert_uint_eq (moshi_safetensors_n_tensors (again), 1);
  ck_assert_uint_eq (count_scratch_files (), 1);
  g_free (t.owned);
}
END_TEST

START_TEST (test_write_errors)
{
  static const int64_t s2[] = { 2 };
  TestTensor t;
  make_tensor (&t, "w", MOSHI_DTYPE_F32, 1, s2, 1);
  g_autoptr (GError) error = NULL;

  /* A directory that does not exist: IO error naming the path. */
  g_autofree char *bad_path = g_build_filename (scratch_dir, "no-such-dir", "x.safetensors", NULL);
  ck_assert (!moshi_safetensors_write (bad_path, &t.entry, 1, NULL, &error));
  assert_error (error, MOSHI_ERROR_IO, bad_path, NULL, bad_path);
  g_clear_error (&error);

  g_autofree char *path = scratch_path ("w.safetensors");

  /* nbytes disagreeing with the dtype and shape. */
  MoshiTensorEntry wrong = t.entry;
  wrong.nbytes = 7;
  ck_assert (!moshi_safetensors_write (path, &wrong, 1, NULL, &error));
  assert_error (error, MOSHI_ERROR_INVALID_ARGUMENT, path, "w", "[2]");
  g_clear_error (&error);

  /* The same name twice. */
  MoshiTensorEntry twice[2] = { t.entry, t.entry };
  ck_assert (!moshi_safetensors_write (path, twice, 2, NULL, &error));
  assert_error (error, MOSHI_ERROR_INVALID_ARGUMENT, path, "w", "twice");
  g_clear_error (&error);

  /* A name that would be read back as metadata. */
  MoshiTensorEntry reserved = t.entry;
  reserved.name = "__metadata__";
  ck_assert (!moshi_safetensors_write (path, &reserved, 1, NULL, &error));
  assert_error (error, MOSHI_ERROR_INVALID_ARGUMENT, path, NULL, "name");
  g_clear_error (&error);

  /* Names must be UTF-8, since JSON strings are. */
  MoshiTensorEntry latin1 = t.entry;
  latin1.name = "caf\xe9";
  ck_assert (!moshi_safetensors_write (path, &latin1, 1, NULL, &error));
  assert_error (error, MOSHI_ERROR_INVALID_ARGUMENT, path, NULL, "name");
  g_clear_error (&error);

  MoshiTensorEntry many_dims = t.entry;
  many_dims.ndim = MOSHI_MAX_DIMS + 1;
  ck_assert (!moshi_safetensors_write (path, &many_dims, 1, NULL, &error));
  assert_error (error, MOSHI_ERROR_INVALID_ARGUMENT, path, "w", "dimensions");
  g_clear_error (&error);

  g_autoptr (GHashTable) metadata = g_hash_table_new (g_str_hash, g_str_equal);
  g_hash_table_insert (metadata, "k", "\xff");
  ck_assert (!moshi_safetensors_write (path, &t.entry, 1, metadata, &error));
  assert_error (error, MOSHI_ERROR_INVALID_ARGUMENT, path, NULL, "UTF-8");
  g_clear_error (&error);

  /* Nothing was created by the failed attempts. */
  ck_assert_uint_eq (count_scratch_files (), 0);
  g_free (t.owned);
}
END_TEST

START_TEST (test_open_missing_file)
{
  g_autofree char *path = scratch_path ("absent.safetensors");
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (path, &error);
  ck_assert_ptr_null (st);
  assert_error (error, MOSHI_ERROR_IO, path, NULL, path);
}
END_TEST

START_TEST (test_ref_counting)
{
  g_autoptr (MoshiSafetensors) st = load_header ("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
  MoshiSafetensors *extra = moshi_safetensors_ref (st);
  ck_assert_ptr_eq (extra, st);
  moshi_safetensors_unref (extra);
  ck_assert_uint_eq (moshi_safetensors_n_tensors (st), 1);
  moshi_safetensors_unref (NULL);
}
END_TEST

START_TEST (test_bytes_outlive_caller)
{
  /* The result keeps the caller's GBytes alive. */
  GBytes *image = make_image ("{\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}", 3);
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_new_from_bytes (image, "mem", NULL);
  g_bytes_unref (image);
  ck_assert_ptr_nonnull (st);
  const guint8 *data = moshi_safetensors_lookup (st, "a")->data;
  ck_assert_uint_eq (data[0], 0);
  ck_assert_uint_eq (data[2], 2);
}
END_TEST

/* ---- reading hand-made files ---- */

START_TEST (test_unaligned_and_unpadded)
{
  /* A writer that did not pad: data starts at an odd offset and a tensor at an odd offset in
   * it. Accepted, with the data pointer left where it is. */
  const char *header = "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
      "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}}";
  g_autoptr (GBytes) image = make_image (header, 9);
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_new_from_bytes (image, "mem", NULL);
  ck_assert_ptr_nonnull (st);
  const MoshiTensorEntry *f = moshi_safetensors_lookup (st, "f");
  const guint8 *base = g_bytes_get_data (image, NULL);
  ck_assert_ptr_eq (f->data, base + 8 + strlen (header) + 1);
  guint8 copy[8];
  memcpy (copy, f->data, 8);
  for (int i = 0; i < 8; i++)
    ck_assert_uint_eq (copy[i], i + 1);
}
END_TEST

START_TEST (test_data_order_and_extras)
{
  /* Entries in the header out of data order, unknown keys, holes between tensors, a zero-sized
   * tensor inside another's span and header padding. */
  const char *header = "{\"late\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[16,20],\"x\":[1]},"
      "\"early\":{\"shape\":[2,2],\"data_offsets\":[0,4],\"dtype\":\"I8\"},"
      "\"nothing\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[2,2]},"
      "\"__metadata__\":{}}    ";
  g_autoptr (MoshiSafetensors) st = load_header (header, 20);
  ck_assert_uint_eq (moshi_safetensors_n_tensors (st), 3);
  ck_assert_str_eq (moshi_safetensors_nth (st, 0)->name, "early");
  ck_assert_str_eq (moshi_safetensors_nth (st, 1)->name, "nothing");
  ck_assert_str_eq (moshi_safetensors_nth (st, 2)->name, "late");
  ck_assert_uint_eq (moshi_safetensors_lookup (st, "nothing")->nbytes, 0);
  ck_assert_uint_eq (((const guint8 *) moshi_safetensors_lookup (st, "late")->data)[0], 16);
  ck_assert_ptr_null (moshi_safetensors_metadata (st, "x"));
}
END_TEST

START_TEST (test_zero_sized_at_end)
{
  /* A zero-sized tensor at the very end of the file: its data pointer is one past the end. */
  g_autoptr (MoshiSafetensors) st = load_header (
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"z\":{\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[4,4]}}", 4);
  const MoshiTensorEntry *z = moshi_safetensors_lookup (st, "z");
  ck_assert_uint_eq (z->nbytes, 0);
  ck_assert_int_eq (z->ndim, 2);
}
END_TEST

START_TEST (test_require)
{
  g_autoptr (MoshiSafetensors) st = load_header (
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[24,26]}}", 26);
  g_autoptr (GError) error = NULL;

  static const int64_t exact[] = { 2, 3 }, wild_rows[] = { -1, 3 }, all_wild[] = { -1, -1 };
  ck_assert_ptr_eq (moshi_safetensors_require (st, "w", MOSHI_DTYPE_F32, 2, exact, &error),
      moshi_safetensors_lookup (st, "w"));
  ck_assert_ptr_nonnull (moshi_safetensors_require (st, "w", MOSHI_DTYPE_F32, 2, wild_rows, &error));
  ck_assert_ptr_nonnull (moshi_safetensors_require (st, "w", MOSHI_DTYPE_COUNT, 2, all_wild, &error));
  ck_assert_ptr_nonnull (moshi_safetensors_require (st, "s", MOSHI_DTYPE_BF16, 0, NULL, &error));
  /* A negative ndim skips the shape check. */
  ck_assert_ptr_nonnull (moshi_safetensors_require (st, "w", MOSHI_DTYPE_F32, -1, NULL, &error));
  ck_assert_ptr_null (error);

  ck_assert_ptr_null (moshi_safetensors_require (st, "v", MOSHI_DTYPE_F32, 2, exact, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_MISSING_TENSOR));
  ck_assert_str_eq (error->message, "mem: tensor 'v' missing");
  g_clear_error (&error);

  ck_assert_ptr_null (moshi_safetensors_require (st, "w", MOSHI_DTYPE_BF16, 2, exact, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_DTYPE));
  ck_assert_str_eq (error->message, "mem: tensor 'w' has dtype F32, expected BF16");
  g_clear_error (&error);

  static const int64_t transposed[] = { 3, -1 };
  ck_assert_ptr_null (moshi_safetensors_require (st, "w", MOSHI_DTYPE_F32, 2, transposed, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE));
  ck_assert_str_eq (error->message, "mem: tensor 'w' has shape [2, 3], expected [3, *]");
  g_clear_error (&error);

  static const int64_t three_d[] = { 2, 3, 1 };
  ck_assert_ptr_null (moshi_safetensors_require (st, "w", MOSHI_DTYPE_F32, 3, three_d, &error));
  ck_assert (g_error_matches (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE));
  ck_assert_str_eq (error->message, "mem: tensor 'w' has shape [2, 3], expected [2, 3, 1]");
  g_clear_error (&error);

  static const int64_t one_d[] = { 1 };
  ck_assert_ptr_null (moshi_safetensors_require (st, "s", MOSHI_DTYPE_BF16, 1, one_d, &error));
  ck_assert_str_eq (error->message, "mem: tensor 's' has shape [], expected [1]");
  g_clear_error (&error);

  /* With a file, the message starts with its full path. */
  static const int64_t s4[] = { 4 };
  TestTensor t;
  make_tensor (&t, "emb", MOSHI_DTYPE_F16, 1, s4, 3);
  g_autofree char *path = scratch_path ("req.safetensors");
  ck_assert (moshi_safetensors_write (path, &t.entry, 1, NULL, &error));
  g_autoptr (MoshiSafetensors) file = moshi_safetensors_open (path, &error);
  ck_assert_ptr_nonnull (file);
  static const int64_t s5[] = { 5 };
  ck_assert_ptr_null (moshi_safetensors_require (file, "emb", MOSHI_DTYPE_F16, 1, s5, &error));
  g_autofree char *expected = g_strdup_printf ("%s: tensor 'emb' has shape [4], expected [5]", path);
  ck_assert_str_eq (error->message, expected);
  g_clear_error (&error);
  ck_assert_ptr_null (moshi_safetensors_require (file, "emb", MOSHI_DTYPE_F32, 1, s4, &error));
  assert_error (error, MOSHI_ERROR_DTYPE, path, "emb", "has dtype F16, expected F32");
  g_clear_error (&error);
  ck_assert_ptr_null (moshi_safetensors_require (file, "nope", MOSHI_DTYPE_F16, 1, s4, &error));
  assert_error (error, MOSHI_ERROR_MISSING_TENSOR, path, "nope", "missing");
  g_free (t.owned);
}
END_TEST

/* ---- loader errors ---- */

START_TEST (test_reject_truncated)
{
  g_autoptr (GBytes) empty = g_bytes_new (NULL, 0);
  expect_rejected (empty, MOSHI_ERROR_FORMAT, NULL, "truncated");
  g_autoptr (GBytes) five = g_bytes_new ("\x10\0\0\0\0", 5);
  expect_rejected (five, MOSHI_ERROR_FORMAT, NULL, "truncated");
  g_autoptr (GBytes) seven = g_bytes_new ("\x02\0\0\0\0\0\0", 7);
  expect_rejected (seven, MOSHI_ERROR_FORMAT, NULL, "7 bytes");
}
END_TEST

/* Bytes after the last tensor are what an appended or mis-sized file leaves (issue 14,
 * defect 10): refused, with the count. */
START_TEST (test_reject_trailing_bytes)
{
  expect_header_rejected ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 7,
      MOSHI_ERROR_FORMAT, NULL, "3 trailing bytes");
  expect_header_rejected ("{}", 1, MOSHI_ERROR_FORMAT, NULL, "1 trailing bytes");
}
END_TEST

START_TEST (test_check_finite)
{
  static const struct { const char *dtype; int size; guint64 bad, good; } cases[] = {
    { "F32", 4, 0x7f800000u, 0x3f800000u },                  /* inf, 1 */
    { "F32", 4, 0xffc00000u, 0x7f7fffffu },                  /* NaN, FLT_MAX */
    { "BF16", 2, 0xff80u, 0x7f7fu },
    { "F16", 2, 0x7e00u, 0x7bffu },
    { "F64", 8, G_GUINT64_CONSTANT (0x7ff0000000000000), G_GUINT64_CONSTANT (0x7fefffffffffffff) },
  };
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    guint8 data[3 * 8] = { 0 };
    MoshiTensorEntry e = { .name = "t", .ndim = 1, .shape = { 3 }, .data = data,
      .nbytes = 3 * cases[c].size };
    ck_assert (moshi_dtype_from_name (cases[c].dtype, &e.dtype));
    for (int b = 0; b < cases[c].size; b++)
      data[cases[c].size + b] = (guint8) (cases[c].good >> (8 * b));
    ck_assert (moshi_tensor_check_finite (&e, "f.safetensors", NULL));
    for (int b = 0; b < cases[c].size; b++)
      data[2 * cases[c].size + b] = (guint8) (cases[c].bad >> (8 * b));
    g_autoptr (GError) error = NULL;
    ck_assert (!moshi_tensor_check_finite (&e, "f.safetensors", &error));
    ck_assert_msg (strstr (error->message, "f.safetensors") && strstr (error->message, "'t'")
        && strstr (error->message, "element 2"), "%s", error->message);
  }
  int64_t ints[2] = { -1, G_MAXINT64 };
  MoshiTensorEntry e = { .name = "i", .dtype = MOSHI_DTYPE_I64, .ndim = 1, .shape = { 2 },
    .data = ints, .nbytes = sizeof ints };
  ck_assert (moshi_tensor_check_finite (&e, "f.safetensors", NULL));
}
END_TEST

START_TEST (test_reject_header_past_eof)
{
  g_autoptr (GBytes) image = make_image_with_length ("{}", 1000, 0);
  expect_rejected (image, MOSHI_ERROR_FORMAT, NULL, "header length 1000 runs past the end");
  g_autoptr (GBytes) one_over = make_image_with_length ("{}  ", 5, 0);
  expect_rejected (one_over, MOSHI_ERROR_FORMAT, NULL, "runs past the end of the file (12 bytes)");
  g_autoptr (GBytes) absurd = make_image_with_length ("{}", G_GUINT64_CONSTANT (1) << 63, 0);
  expect_rejected (absurd, MOSHI_ERROR_FORMAT, NULL, "absurd");
  g_autoptr (GBytes) max = make_image_with_length ("{}", G_MAXUINT64 - 1, 0);
  expect_rejected (max, MOSHI_ERROR_FORMAT, NULL, "absurd");
}
END_TEST

START_TEST (test_reject_malformed_json)
{
  expect_header_rejected ("{\"a\": {", 0, MOSHI_ERROR_FORMAT, NULL, "header: unexpected end of input");
  expect_header_rejected ("{\"a\": 1,}", 0, MOSHI_ERROR_FORMAT, NULL, "trailing comma in object at byte 8");
  expect_header_rejected ("{\"a\": 1, \"a\": 2}", 0, MOSHI_ERROR_FORMAT, NULL, "duplicate key");
  expect_header_rejected ("", 0, MOSHI_ERROR_FORMAT, NULL, "empty document at byte 0");
  /* A header length shorter than the JSON cuts it off. */
  g_autoptr (GBytes) cut = make_image_with_length ("{\"a\":{}}", 4, 4);
  expect_rejected (cut, MOSHI_ERROR_FORMAT, NULL, "at byte 4");
  /* NUL padding is not JSON whitespace. */
  g_autoptr (GBytes) nul = make_image_raw ("{}\0\0", 4, G_MAXUINT64, 0);
  expect_rejected (nul, MOSHI_ERROR_FORMAT, NULL, "at byte 2");
}
END_TEST

START_TEST (test_reject_wrong_structure)
{
  expect_header_rejected ("[]", 0, MOSHI_ERROR_FORMAT, NULL, "header is a JSON array, expected an object");
  expect_header_rejected ("\"x\"", 0, MOSHI_ERROR_FORMAT, NULL, "expected an object");
  expect_header_rejected ("{\"t\": 5}", 0, MOSHI_ERROR_FORMAT, "t", "entry is a JSON number");
  expect_header_rejected ("{\"t\": [\"F32\"]}", 0, MOSHI_ERROR_FORMAT, "t", "expected an object");
  expect_header_rejected ("{\"t\": {\"shape\":[1],\"data_offsets\":[0,4]}}", 4, MOSHI_ERROR_FORMAT,
      "t", "no \"dtype\"");
  expect_header_rejected ("{\"t\": {\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, MOSHI_ERROR_FORMAT,
      "t", "no \"shape\"");
  expect_header_rejected ("{\"t\": {\"dtype\":\"F32\",\"shape\":[1]}}", 4, MOSHI_ERROR_FORMAT,
      "t", "no \"data_offsets\"");
  expect_header_rejected ("{\"t\": {\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
      MOSHI_ERROR_FORMAT, "t", "\"dtype\" is a JSON number");
  expect_header_rejected ("{\"t\": {\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", 4,
      MOSHI_ERROR_FORMAT, "t", "\"shape\" is a JSON number");
}
END_TEST

START_TEST (test_reject_unknown_dtype)
{
  expect_header_rejected ("{\"fp8.weight\": {\"dtype\":\"F8_E5M2\",\"shape\":[4],\"data_offsets\":[0,4]}}",
      4, MOSHI_ERROR_DTYPE, "fp8.weight", "unsupported dtype 'F8_E5M2'");
  expect_header_rejected ("{\"q\": {\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,1]}}",
      1, MOSHI_ERROR_DTYPE, "q", "'Q4'");
  expect_header_rejected ("{\"q\": {\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
      4, MOSHI_ERROR_DTYPE, "q", "'f32'");
}
END_TEST

START_TEST (test_reject_bad_shape)
{
  expect_header_rejected ("{\"neg\": {\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}", 0,
      MOSHI_ERROR_FORMAT, "neg", "shape dimension 1 is not a non-negative integer");
  expect_header_rejected ("{\"frac\": {\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8,
      MOSHI_ERROR_FORMAT, "frac", "dimension 0");
  expect_header_rejected ("{\"exp\": {\"dtype\":\"F32\",\"shape\":[1e1],\"data_offsets\":[0,40]}}", 40,
      MOSHI_ERROR_FORMAT, "exp", "dimension 0");
  expect_header_rejected ("{\"str\": {\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
      MOSHI_ERROR_FORMAT, "str", "dimension 0");
  expect_header_rejected ("{\"big\": {\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
      "\"data_offsets\":[0,8]}}", 8, MOSHI_ERROR_FORMAT, "big", "dimension 0");
  expect_header_rejected ("{\"deep\": {\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
      "\"data_offsets\":[0,4]}}", 4, MOSHI_ERROR_FORMAT, "deep", "9 dimensions, at most 8");
  /* Element counts whose product (or byte size) does not fit in 64 bits. */
  expect_header_rejected ("{\"huge\": {\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],"
      "\"data_offsets\":[0,8]}}", 8, MOSHI_ERROR_FORMAT, "huge", "too many elements");
  expect_header_rejected ("{\"wide\": {\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
      "\"data_offsets\":[0,8]}}", 8, MOSHI_ERROR_FORMAT, "wide", "[4611686018427387904] has too many");
  /* A zero dimension makes any product fine, but the span must then be empty. */
  expect_header_rejected ("{\"z\": {\"dtype\":\"F32\",\"shape\":[9223372036854775807,0],"
      "\"data_offsets\":[0,4]}}", 4, MOSHI_ERROR_FORMAT, "z", "needs 0 bytes");
}
END_TEST

START_TEST (test_reject_bad_offsets)
{
  expect_header_rejected ("{\"rev\": {\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
      MOSHI_ERROR_FORMAT, "rev", "data_offsets [8, 4] end before they begin");
  expect_header_rejected ("{\"eof\": {\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
      MOSHI_ERROR_FORMAT, "eof", "data_offsets [0, 16] run past the end of the data section (8 bytes");
  expect_header_rejected ("{\"far\": {\"dtype\":\"U8\",\"shape\":[1],"
      "\"data_offsets\":[18446744073709551614,18446744073709551615]}}", 8,
      MOSHI_ERROR_FORMAT, "far", "data_offsets");
  expect_header_rejected ("{\"far\": {\"dtype\":\"U8\",\"shape\":[1],"
      "\"data_offsets\":[9223372036854775806,9223372036854775807]}}", 8,
      MOSHI_ERROR_FORMAT, "far", "run past the end");
  expect_header_rejected ("{\"one\": {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 8,
      MOSHI_ERROR_FORMAT, "one", "not a pair of non-negative integers");
  expect_header_rejected ("{\"three\": {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 8,
      MOSHI_ERROR_FORMAT, "three", "not a pair");
  expect_header_rejected ("{\"neg\": {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 8,
      MOSHI_ERROR_FORMAT, "neg", "not a pair");
  expect_header_rejected ("{\"obj\": {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":{}}}", 8,
      MOSHI_ERROR_FORMAT, "obj", "not a pair");
  expect_header_rejected ("{\"flt\": {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.0]}}", 8,
      MOSHI_ERROR_FORMAT, "flt", "not a pair");
}
END_TEST

START_TEST (test_reject_span_mismatch)
{
  expect_header_rejected ("{\"w\": {\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
      MOSHI_ERROR_FORMAT, "w",
      "data_offsets [0, 20] span 20 bytes, but dtype F32 with shape [2, 3] needs 24 bytes");
  expect_header_rejected ("{\"s\": {\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,4]}}", 4,
      MOSHI_ERROR_FORMAT, "s", "dtype BF16 with shape [] needs 2 bytes");
}
END_TEST

START_TEST (test_reject_overlap)
{
  expect_header_rejected ("{\"a\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
      MOSHI_ERROR_FORMAT, "a", "tensors 'a' [0, 8] and 'b' [4, 12] overlap");
  /* Listed in the other order in the header. */
  expect_header_rejected ("{\"b\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
      "\"a\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
      MOSHI_ERROR_FORMAT, "b", "'a' [0, 8] and 'b' [4, 12] overlap");
  /* The same span twice. */
  expect_header_rejected ("{\"x\": {\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
      "\"y\": {\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
      MOSHI_ERROR_FORMAT, "y", "overlap");
  /* A tensor inside a big one that is not its neighbour in data order. */
  expect_header_rejected ("{\"big\": {\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
      "\"first\": {\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},"
      "\"inner\": {\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[12,14]}}", 16,
      MOSHI_ERROR_FORMAT, "big", "'first' [2, 4] overlap");
  /* Adjacent tensors touch without overlapping. */
  g_autoptr (MoshiSafetensors) ok = load_header (
      "{\"a\": {\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
      "\"b\": {\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4);
  ck_assert_uint_eq (moshi_safetensors_n_tensors (ok), 2);
}
END_TEST

START_TEST (test_reject_bad_metadata)
{
  expect_header_rejected ("{\"__metadata__\": {\"format\": \"pt\", \"version\": 2}}", 0,
      MOSHI_ERROR_FORMAT, "version", "\"__metadata__\" value 'version' is a JSON number, expected a string");
  expect_header_rejected ("{\"__metadata__\": [\"pt\"]}", 0, MOSHI_ERROR_FORMAT, NULL,
      "\"__metadata__\" is a JSON array, expected an object");
  expect_header_rejected ("{\"__metadata__\": {\"nested\": {}}}", 0, MOSHI_ERROR_FORMAT, "nested",
      "expected a string");
}
END_TEST

START_TEST (test_error_names_path_not_basename)
{
  /* A path with directories and a name that differs from the basename elsewhere. */
  g_autofree char *sub = g_build_filename (scratch_dir, "sub", NULL);
  ck_assert_int_eq (g_mkdir (sub, 0700), 0);
  g_autofree char *path = g_build_filename (sub, "weights.safetensors", NULL);
  g_autoptr (GBytes) image = make_image ("{\"t\": {\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
  gsize len;
  const char *data = g_bytes_get_data (image, &len);
  ck_assert (g_file_set_contents (path, data, (gssize) len, NULL));
  g_autoptr (GError) error = NULL;
  g_autoptr (MoshiSafetensors) st = moshi_safetensors_open (path, &error);
  ck_assert_ptr_null (st);
  g_autofree char *prefix = g_strdup_printf ("%s: tensor 't'", path);
  ck_assert_msg (g_str_has_prefix (error->message, prefix), "'%s'", error->message);
}
END_TEST

static Suite *
safetensors_suite (void)
{
  Suite *suite = suite_create ("safetensors");

  TCase *helpers = tcase_create ("helpers");
  tcase_add_test (helpers, test_shape_helpers);
  suite_add_tcase (suite, helpers);

  TCase *round_trip = tcase_create ("round-trip");
  tcase_add_unchecked_fixture (round_trip, parent_setup, parent_teardown);
  tcase_add_checked_fixture (round_trip, scratch_setup, scratch_teardown);
  tcase_add_test (round_trip, test_round_trip);
  tcase_add_test (round_trip, test_write_is_deterministic);
  tcase_add_test (round_trip, test_write_empty_and_overwrite);
  tcase_add_test (round_trip, test_write_errors);
  tcase_add_test (round_trip, test_open_missing_file);
  tcase_add_test (round_trip, test_ref_counting);
  tcase_add_test (round_trip, test_bytes_outlive_caller);
  suite_add_tcase (suite, round_trip);

  TCase *reading = tcase_create ("reading");
  tcase_add_unchecked_fixture (reading, parent_setup, parent_teardown);
  tcase_add_checked_fixture (reading, scratch_setup, scratch_teardown);
  tcase_add_test (reading, test_unaligned_and_unpadded);
  tcase_add_test (reading, test_data_order_and_extras);
  tcase_add_test (reading, test_zero_sized_at_end);
  tcase_add_test (reading, test_require);
  suite_add_tcase (suite, reading);

  TCase *errors = tcase_create ("errors");
  tcase_add_unchecked_fixture (errors, parent_setup, parent_teardown);
  tcase_add_checked_fixture (errors, scratch_setup, scratch_teardown);
  tcase_add_test (errors, test_reject_truncated);
  tcase_add_test (errors, test_reject_trailing_bytes);
  tcase_add_test (errors, test_check_finite);
  tcase_add_test (errors, test_reject_header_past_eof);
  tcase_add_test (errors, test_reject_malformed_json);
  tcase_add_test (errors, test_reject_wrong_structure);
  tcase_add_test (errors, test_reject_unknown_dtype);
  tcase_add_test (errors, test_reject_bad_shape);
  tcase_add_test (errors, test_reject_bad_offsets);
  tcase_add_test (errors, test_reject_span_mismatch);
  tcase_add_test (errors, test_reject_overlap);
  tcase_add_test (errors, test_reject_bad_metadata);
  tcase_add_test (errors, test_error_names_path_not_basename);
  suite_add_tcase (suite, errors);

  return suite;
}

int
main (void)
{
  return moshi_test_run_suite (safetensors_suite ());
}
