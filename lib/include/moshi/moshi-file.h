/* gst-moshi: opening the files users name, bounded and without blocking.
 *
 * Inputs must be regular files: a FIFO would block the open (or the read) forever, and a device
 * such as /dev/zero never ends. Files read whole have a size cap. Outputs that are not regular
 * files (/dev/null, a FIFO) or are symbolic links (/dev/stdout) are written in place; regular
 * ones, and new ones, are written next to the target and renamed over it, so that a crash never
 * leaves a half-written file. */
#pragma once

#include <glib.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

/* Caps on the files read whole: configs are a few kilobytes. */
#define MOSHI_FILE_MAX_CONFIG_BYTES ((gsize) 16 << 20)

/* Opens path read-only; fails, naming `what` and path, unless it is a regular file. Returns a
 * file descriptor (blocking mode) or -1. */
int moshi_file_open_regular (const char *path, const char *what, GError **error);

/* Reads a whole regular file of at most max_bytes bytes. *contents gets a terminating NUL (not
 * counted in *len). */
gboolean moshi_file_read_all (const char *path, const char *what, gsize max_bytes,
    char **contents, gsize *len, GError **error);

/* Maps a whole regular file read-only. */
GMappedFile *moshi_file_map (const char *path, const char *what, GError **error);

/* An output file being written: see moshi_file_output_open. */
typedef struct {
  int fd;
  char *path;
  char *tmp_path;   /* NULL when writing in place */
} MoshiOutputFile;

/* Opens path for writing: a temporary file beside it when path is a regular file or does not
 * exist, else path itself (truncated, when it leads to a regular file). */
gboolean moshi_file_output_open (MoshiOutputFile *out, const char *path, GError **error);
/* Writes len bytes, retrying short writes; FALSE with errno set on failure. */
gboolean moshi_file_output_write (MoshiOutputFile *out, const void *data, gsize len);
/* Closes the output; when ok, syncs a regular file and renames it into place; when not ok (or
 * when that fails) removes the temporary file. `saved_errno` is the errno of a failed write,
 * reported in the error. */
gboolean moshi_file_output_close (MoshiOutputFile *out, gboolean ok, int saved_errno,
    GError **error);

/* The whole of data to path, as above. */
gboolean moshi_file_write_all (const char *path, const void *data, gsize len, GError **error);

MOSHI_END_DECLS
