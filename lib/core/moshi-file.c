#include "moshi-file.h"

#include "moshi-error.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *
kind_of (mode_t mode)
{
  if (S_ISDIR (mode))
    return "a directory";
  if (S_ISFIFO (mode))
    return "a FIFO";
  if (S_ISCHR (mode))
    return "a character device";
  if (S_ISBLK (mode))
    return "a block device";
  if (S_ISSOCK (mode))
    return "a socket";
  return "not a regular file";
}

int
moshi_file_open_regular (const char *path, const char *what, GError **error)
{
  /* O_NONBLOCK so that opening a FIFO with no writer returns at once; fstat then tells what it
   * is, on the very file that was opened. */
  int fd = g_open (path, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) {
    int saved = errno;
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot open the %s: %s", path, what,
        g_strerror (saved));
    return -1;
  }
  struct stat st;
  if (fstat (fd, &st) != 0) {
    int saved = errno;
    close (fd);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot open the %s: %s", path, what,
        g_strerror (saved));
    return -1;
  }
  if (!S_ISREG (st.st_mode)) {
    close (fd);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: the %s is %s; give a regular file",
        path, what, kind_of (st.st_mode));
    return -1;
  }
  int flags = fcntl (fd, F_GETFL);
  if (flags >= 0)
    fcntl (fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

gboolean
moshi_file_read_all (const char *path, const char *what, gsize max_bytes, char **contents,
    gsize *len, GError **error)
{
  int fd = moshi_file_open_regular (path, what, error);
  if (fd < 0)
    return FALSE;
  struct stat st;
  if (fstat (fd, &st) != 0 || (guint64) st.st_size > max_bytes) {
    close (fd);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO,
        "%s: the %s is larger than the %" G_GSIZE_FORMAT " bytes accepted", path, what, max_bytes);
    return FALSE;
  }
  /* Reads the size fstat gave, then checks that nothing follows: a file that grows while it is
   * read is an error rather than a buffer that keeps growing. */
  gsize size = (gsize) st.st_size, got = 0;
  g_autofree char *buf = g_try_malloc (size + 1);
  if (buf == NULL) {
    close (fd);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot read the %s: out of memory for %"
        G_GSIZE_FORMAT " bytes", path, what, size);
    return FALSE;
  }
  for (;;) {
    char extra;
    ssize_t r = got < size ? read (fd, buf + got, MIN (size - got, (gsize) 1 << 30))
        : read (fd, &extra, 1);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int saved = errno;
      close (fd);
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot read the %s: %s", path, what,
          g_strerror (saved));
      return FALSE;
    }
    if (r == 0)
      break;
    if (got == size) {
      close (fd);
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot read the %s: it grew while read",
          path, what);
      return FALSE;
    }
    got += (gsize) r;
  }
  close (fd);
  buf[got] = '\0';
  *len = got;
  *contents = g_steal_pointer (&buf);
  return TRUE;
}

GMappedFile *
moshi_file_map (const char *path, const char *what, GError **error)
{
  int fd = moshi_file_open_regular (path, what, error);
  if (fd < 0)
    return NULL;
  g_autoptr (GError) map_error = NULL;
  GMappedFile *mapped = g_mapped_file_new_from_fd (fd, FALSE, &map_error);
  close (fd);
  if (mapped == NULL)
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot map the %s: %s", path, what,
        map_error->message);
  return mapped;
}

gboolean
moshi_file_output_open (MoshiOutputFile *out, const char *path, GError **error)
{
  out->fd = -1;
  out->path = g_strdup (path);
  out->tmp_path = NULL;
  struct stat st;
  if (g_lstat (path, &st) == 0 && !S_ISREG (st.st_mode)) {
    if (g_stat (path, &st) == 0 && S_ISDIR (st.st_mode)) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot write: it is a directory", path);
      g_clear_pointer (&out->path, g_free);
      return FALSE;
    }
    /* A device, a FIFO or a symbolic link (/dev/stdout): write to it, as the user asked;
     * renaming over it would replace the node or the link with a regular file. */
    out->fd = g_open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  } else {
    out->tmp_path = g_strdup_printf ("%s.XXXXXX", path);
    out->fd = g_mkstemp_full (out->tmp_path, O_WRONLY | O_CLOEXEC, 0666);
  }
  if (out->fd < 0) {
    int saved = errno;
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot write the file: %s", path,
        g_strerror (saved));
    g_clear_pointer (&out->path, g_free);
    g_clear_pointer (&out->tmp_path, g_free);
    return FALSE;
  }
  return TRUE;
}

gboolean
moshi_file_output_write (MoshiOutputFile *out, const void *data, gsize len)
{
  const guint8 *p = data;
  while (len > 0) {
    ssize_t w = write (out->fd, p, MIN (len, (gsize) 1 << 30));
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      if (w == 0)
        errno = EIO;
      return FALSE;
    }
    p += w;
    len -= (gsize) w;
  }
  return TRUE;
}

gboolean
moshi_file_output_close (MoshiOutputFile *out, gboolean ok, int saved_errno, GError **error)
{
  int saved = saved_errno;
  /* Devices such as /dev/null refuse fsync; only a file about to be renamed needs it. */
  if (ok && out->tmp_path != NULL && fsync (out->fd) != 0) {
    ok = FALSE;
    saved = errno;
  }
  if (close (out->fd) != 0 && ok) {
    ok = FALSE;
    saved = errno;
  }
  out->fd = -1;
  if (ok && out->tmp_path != NULL && g_rename (out->tmp_path, out->path) != 0) {
    ok = FALSE;
    saved = errno;
  }
  if (!ok) {
    if (out->tmp_path != NULL)
      g_unlink (out->tmp_path);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: cannot write the file: %s", out->path,
        g_strerror (saved ? saved : EIO));
  }
  g_clear_pointer (&out->path, g_free);
  g_clear_pointer (&out->tmp_path, g_free);
  return ok;
}

gboolean
moshi_file_write_all (const char *path, const void *data, gsize len, GError **error)
{
  MoshiOutputFile out;
  if (!moshi_file_output_open (&out, path, error))
    return FALSE;
  gboolean ok = moshi_file_output_write (&out, data, len);
  return moshi_file_output_close (&out, ok, ok ? 0 : errno, error);
}
