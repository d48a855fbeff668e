/* gst-moshi: fetching model files from the Hugging Face hub (see moshi-hub-download.h). */
#include "moshi-hub-download.h"

#include "moshi-error.h"
#include "moshi-hub.h"
#include "moshi-hub-private.h"

#include <string.h>

gboolean
moshi_hub_is_offline (void)
{
  const char *value = g_getenv ("HF_HUB_OFFLINE");
  if (value == NULL)
    return FALSE;
  /* huggingface_hub's truthy spellings; anything else (0, empty) means online. */
  static const char *const yes[] = { "1", "on", "yes", "true" };
  for (guint i = 0; i < G_N_ELEMENTS (yes); i++) {
    if (g_ascii_strcasecmp (value, yes[i]) == 0)
      return TRUE;
  }
  return FALSE;
}

#ifndef MOSHI_HAVE_SOUP

gboolean
moshi_hub_can_download (void)
{
  return FALSE;
}

char *
moshi_hub_download_checked (const char *repo_id, const char *revision, const char *filename,
    const MoshiHubOptions *options, gboolean *missing, GError **error)
{
  (void) options;
  if (missing)
    *missing = FALSE;
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED,
      "cannot download %s from the Hugging Face repository %s (revision %s): this build of "
      "libmoshi has no downloader (libsoup 3 was not found when it was built); fetch it with "
      "`huggingface-cli download %s %s`", filename, repo_id, revision ? revision : "main",
      repo_id, filename);
  return NULL;
}

#else /* MOSHI_HAVE_SOUP */

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <libsoup/soup.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_ENDPOINT "https://huggingface.co"
#define MAX_REDIRECTS 10
#define PROGRESS_INTERVAL_US (200 * 1000)

gboolean
moshi_hub_can_download (void)
{
  return TRUE;
}

/* What one download is about, for its requests and its error messages. */
typedef struct {
  const char *repo_id;
  const char *revision;
  const char *filename;
  const char *url;              /* the resolve URL */
  char *token;                  /* NULL: anonymous */
  GUri *endpoint;               /* the token goes to this host only */
  const MoshiHubOptions *options;
  SoupSession *session;
  char *missing_commit;         /* set when the hub said the repo has no such file */
} Fetch;

/* What the hub says about a file before it is downloaded. */
typedef struct {
  char *commit;
  char *etag;
  guint64 size;                 /* 0: unknown */
  char *location;               /* where the content is (a CDN after a redirect) */
} Metadata;

static void
metadata_clear (Metadata *m)
{
  g_free (m->commit);
  g_free (m->etag);
  g_free (m->location);
}

static char *
read_token (void)
{
  const char *env = g_getenv ("HF_TOKEN");
  if (env == NULL || *env == '\0')
    env = g_getenv ("HUGGING_FACE_HUB_TOKEN");
  if (env != NULL && *env != '\0')
    return g_strstrip (g_strdup (env));

  g_autofree char *path = NULL;
  const char *token_path = g_getenv ("HF_TOKEN_PATH");
  const char *hf_home = g_getenv ("HF_HOME");
  if (token_path != NULL && *token_path != '\0')
    path = g_strdup (token_path);
  else if (hf_home != NULL && *hf_home != '\0')
    path = g_build_filename (hf_home, "token", NULL);
  else
    path = g_build_filename (g_get_home_dir (), ".cache", "huggingface", "token", NULL);
  char *contents = NULL;
  if (!g_file_get_contents (path, &contents, NULL, NULL))
    return NULL;
  g_strstrip (contents);
  if (*contents == '\0') {
    g_free (contents);
    return NULL;
  }
  return contents;
}

static gboolean
same_host (GUri *a, GUri *b)
{
  return g_ascii_strcasecmp (g_uri_get_scheme (a), g_uri_get_scheme (b)) == 0
      && g_ascii_strcasecmp (g_uri_get_host (a), g_uri_get_host (b)) == 0
      && g_uri_get_port (a) == g_uri_get_port (b);
}

static const char *
describe (Fetch *f, GString *out)
{
  g_string_printf (out, "%s from the Hugging Face repository %s (revision %s, %s)",
      f->filename, f->repo_id, f->revision, f->url);
  return out->str;
}

/* A message for url, with the token only where the hub itself is asked: a CDN the hub
 * redirects to gets no credentials. */
static SoupMessage *
new_message (Fetch *f, const char *method, const char *url, GError **error)
{
  g_autoptr (GUri) uri = g_uri_parse (url, SOUP_HTTP_URI_FLAGS, NULL);
  if (uri == NULL || g_uri_get_host (uri) == NULL) {
    g_autoptr (GString) what = g_string_new (NULL);
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "cannot download %s: '%s' is not a valid URL (check HF_ENDPOINT)", describe (f, what),
        url);
    return NULL;
  }
  SoupMessage *msg = soup_message_new_from_uri (method, uri);
  /* Redirects are followed by hand: the hub's own headers are on its redirect, and the token
   * must not follow a redirect to another host. */
  soup_message_add_flags (msg, SOUP_MESSAGE_NO_REDIRECT);
  SoupMessageHeaders *h = soup_message_get_request_headers (msg);
  /* The ETag and the length are those of the stored bytes only without compression. */
  soup_message_headers_replace (h, "Accept-Encoding", "identity");
  if (f->token != NULL && same_host (uri, f->endpoint)) {
    g_autofree char *auth = g_strdup_printf ("Bearer %s", f->token);
    soup_message_headers_replace (h, "Authorization", auth);
  }
  return msg;
}

static char *
header_value (SoupMessage *msg, const char *name)
{
  const char *v = soup_message_headers_get_one (soup_message_get_response_headers (msg), name);
  return v != NULL && *v != '\0' ? g_strdup (v) : NULL;
}

/* ETags come quoted, weak ones with W/. */
static char *
normalize_etag (char *etag)
{
  if (etag == NULL)
    return NULL;
  char *s = etag;
  if (g_str_has_prefix (s, "W/"))
    s += 2;
  gsize len = strlen (s);
  if (len >= 2 && s[0] == '"' && s[len - 1] == '"') {
    s[len - 1] = '\0';
    s++;
  }
  char *out = g_strdup (s);
  g_free (etag);
  return out;
}

static gboolean
is_sha256 (const char *s)
{
  if (strlen (s) != 64)
    return FALSE;
  for (const char *p = s; *p; p++) {
    if (!g_ascii_isxdigit (*p))
      return FALSE;
  }
  return TRUE;
}

/* An ETag becomes a file name in blobs/: only characters that cannot leave the folder. */
static gboolean
is_safe_etag (const char *s)
{
  if (*s == '\0' || strlen (s) > 128)
    return FALSE;
  for (const char *p = s; *p; p++) {
    if (!g_ascii_isalnum (*p) && *p != '-' && *p != '_')
      return FALSE;
  }
  return TRUE;
}

static void
set_status_error (Fetch *f, SoupMessage *msg, const char *url, GError **error)
{
  guint status = soup_message_get_status (msg);
  const char *reason = soup_message_get_reason_phrase (msg);
  g_autoptr (GString) what = g_string_new (NULL);
  describe (f, what);
  const char *hint;
  if (status == SOUP_STATUS_NOT_FOUND)
    hint = "the repository, the revision or the file does not exist (or the repository is "
        "private: set HF_TOKEN)";
  else if (status == SOUP_STATUS_UNAUTHORIZED || status == SOUP_STATUS_FORBIDDEN)
    hint = f->token ? "the token in HF_TOKEN was refused (a gated repository whose terms "
        "were not accepted?)" : "the repository is gated or private: set HF_TOKEN to an "
        "access token";
  else
    hint = "the server refused the request";
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "could not download %s: HTTP %u %s from %s; %s",
      what->str, status, reason ? reason : "", url, hint);
}

static void
prefix_network_error (Fetch *f, const char *url, GError **error)
{
  g_autoptr (GString) what = g_string_new (NULL);
  describe (f, what);
  /* The resolve URL is in the description already; a CDN's is not. */
  if (strcmp (url, f->url) == 0)
    g_prefix_error (error, "could not download %s: ", what->str);
  else
    g_prefix_error (error, "could not download %s: %s: ", what->str, url);
}

static void
set_redirect_loop_error (Fetch *f, GError **error)
{
  g_autoptr (GString) what = g_string_new (NULL);
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "could not download %s: more than %d "
      "redirects", describe (f, what), MAX_REDIRECTS);
}

static char *
resolve_location (SoupMessage *msg, const char *base, GError **error)
{
  const char *location = soup_message_headers_get_one (soup_message_get_response_headers (msg),
      "Location");
  if (location == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: HTTP %u without a Location header",
        base, soup_message_get_status (msg));
    return NULL;
  }
  return g_uri_resolve_relative (base, location, SOUP_HTTP_URI_FLAGS, error);
}

/* Asks the hub about the file (HEAD), following its redirects until one carries the hub's
 * headers: the commit, the ETag (X-Linked-Etag for LFS files, whose redirect goes to a CDN
 * with ETags of its own) and the size. */
static gboolean
fetch_metadata (Fetch *f, Metadata *meta, GError **error)
{
  g_autofree char *url = g_strdup (f->url);
  memset (meta, 0, sizeof *meta);
  for (int hop = 0; hop <= MAX_REDIRECTS; hop++) {
    g_autoptr (SoupMessage) msg = new_message (f, "HEAD", url, error);
    if (msg == NULL)
      return FALSE;
    g_autoptr (GBytes) body = soup_session_send_and_read (f->session, msg,
        f->options->cancellable, error);
    if (body == NULL) {
      prefix_network_error (f, url, error);
      return FALSE;
    }
    guint status = soup_message_get_status (msg);
    gboolean redirect = SOUP_STATUS_IS_REDIRECTION (status);
    if (!redirect && !SOUP_STATUS_IS_SUCCESSFUL (status)) {
      /* The hub answers a missing file of an existing repository with the commit it looked
       * in, which lets that absence be remembered. */
      if (status == SOUP_STATUS_NOT_FOUND)
        f->missing_commit = header_value (msg, "X-Repo-Commit");
      set_status_error (f, msg, url, error);
      return FALSE;
    }
    char *commit = header_value (msg, "X-Repo-Commit");
    char *etag = normalize_etag (header_value (msg, "X-Linked-Etag"));
    g_autofree char *size = header_value (msg, "X-Linked-Size");
    if (etag == NULL)
      etag = normalize_etag (header_value (msg, "ETag"));
    if (redirect && commit == NULL) {
      /* A renamed repository: the hub points at the new name, and asks again there. */
      g_free (etag);
      char *next = resolve_location (msg, url, error);
      if (next == NULL)
        return FALSE;
      g_free (url);
      url = next;
      continue;
    }
    meta->commit = commit;
    meta->etag = etag;
    if (size != NULL)
      meta->size = g_ascii_strtoull (size, NULL, 10);
    else if (!redirect)
      meta->size = (guint64) soup_message_headers_get_content_length (
          soup_message_get_response_headers (msg));
    meta->location = redirect ? resolve_location (msg, url, error) : g_strdup (url);
    if (meta->location == NULL)
      return FALSE;
    g_autoptr (GString) what = g_string_new (NULL);
    if (meta->commit == NULL || !moshi_hub_is_commit (meta->commit)) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "could not download %s: the server gave no commit hash (X-Repo-Commit: %s); is "
          "HF_ENDPOINT a Hugging Face hub?", describe (f, what),
          meta->commit ? meta->commit : "absent");
      return FALSE;
    }
    if (meta->etag == NULL || !is_safe_etag (meta->etag)) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "could not download %s: the server gave no usable ETag (%s)", describe (f, what),
          meta->etag ? meta->etag : "absent");
      return FALSE;
    }
    return TRUE;
  }
  set_redirect_loop_error (f, error);
  return FALSE;
}

/* GET url from offset on, following redirects; the stream of the final response. */
static GInputStream *
open_content (Fetch *f, const char *start_url, guint64 offset, SoupMessage **msg_out,
    GError **error)
{
  g_autofree char *url = g_strdup (start_url);
  for (int hop = 0; hop <= MAX_REDIRECTS; hop++) {
    g_autoptr (SoupMessage) msg = new_message (f, "GET", url, error);
    if (msg == NULL)
      return NULL;
    if (offset > 0)
      soup_message_headers_set_range (soup_message_get_request_headers (msg), (goffset) offset,
          -1);
    GInputStream *stream = soup_session_send (f->session, msg, f->options->cancellable, error);
    if (stream == NULL) {
      prefix_network_error (f, url, error);
      return NULL;
    }
    guint status = soup_message_get_status (msg);
    if (SOUP_STATUS_IS_REDIRECTION (status)) {
      g_input_stream_close (stream, NULL, NULL);
      g_object_unref (stream);
      char *next = resolve_location (msg, url, error);
      if (next == NULL)
        return NULL;
      g_free (url);
      url = next;
      continue;
    }
    if (!SOUP_STATUS_IS_SUCCESSFUL (status)
        && status != SOUP_STATUS_REQUESTED_RANGE_NOT_SATISFIABLE) {
      set_status_error (f, msg, url, error);
      g_object_unref (stream);
      return NULL;
    }
    *msg_out = g_steal_pointer (&msg);
    return stream;
  }
  set_redirect_loop_error (f, error);
  return NULL;
}

static void
report (Fetch *f, guint64 done, guint64 total, gboolean finished, gint64 *last_us)
{
  if (f->options->progress == NULL)
    return;
  gint64 now = g_get_monotonic_time ();
  if (!finished && *last_us != 0 && now - *last_us < PROGRESS_INTERVAL_US)
    return;
  MoshiHubProgress p = { .repo_id = f->repo_id, .filename = f->filename, .downloaded = done,
    .total = total, .started = *last_us == 0, .done = finished };
  *last_us = now;
  f->options->progress (&p, f->options->user_data);
}

/* Hashes what an interrupted download already holds, so that a resumed one is checked whole. */
static gboolean
hash_existing (int fd, guint64 length, GChecksum *sum, const char *path, GError **error)
{
  g_autofree guchar *buf = g_malloc (1 << 16);
  guint64 left = length;
  if (lseek (fd, 0, SEEK_SET) < 0)
    goto failed;
  while (left > 0) {
    ssize_t n = read (fd, buf, MIN (left, (guint64) (1 << 16)));
    if (n <= 0)
      goto failed;
    g_checksum_update (sum, buf, (gssize) n);
    left -= (guint64) n;
  }
  return TRUE;
failed:
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: could not read the partial download: %s",
      path, g_strerror (errno));
  return FALSE;
}

static gboolean
write_all (int fd, const guchar *data, gsize len)
{
  while (len > 0) {
    ssize_t n = write (fd, data, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FALSE;
    data += n;
    len -= (gsize) n;
  }
  return TRUE;
}

/* Downloads the content into incomplete (resuming what is there), checks it and renames it
 * to blob. */
static gboolean
download_blob (Fetch *f, const Metadata *meta, const char *incomplete, const char *blob,
    GError **error)
{
  g_autoptr (GString) what = g_string_new (NULL);
  describe (f, what);
  int fd = g_open (incomplete, O_RDWR | O_CREAT, 0644);
  if (fd < 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "could not download %s: cannot create "
        "%s: %s", what->str, incomplete, g_strerror (errno));
    return FALSE;
  }
  GChecksum *sum = is_sha256 (meta->etag) ? g_checksum_new (G_CHECKSUM_SHA256) : NULL;
  g_autofree guchar *buf = g_malloc (1 << 16);
  GInputStream *stream = NULL;
  SoupMessage *msg = NULL;
  gboolean ok = FALSE;
  gint64 last_report = 0;

  struct stat st;
  guint64 have = fstat (fd, &st) == 0 ? (guint64) st.st_size : 0;
  if (meta->size > 0 && have > meta->size)
    have = 0;                   /* not a prefix of this file: start again */
  if (have > 0 && sum != NULL && !hash_existing (fd, have, sum, incomplete, error))
    goto out;

  stream = open_content (f, meta->location, have, &msg, error);
  if (stream == NULL)
    goto out;
  guint status = soup_message_get_status (msg);
  if (status == SOUP_STATUS_REQUESTED_RANGE_NOT_SATISFIABLE && have > 0
      && have != meta->size) {
    /* What is kept is no prefix of this content (it changed, or the size is unknown): start
     * again from nothing rather than fail the same way at every attempt. */
    g_input_stream_close (stream, NULL, NULL);
    g_clear_object (&stream);
    g_clear_object (&msg);
    have = 0;
    if (sum != NULL)
      g_checksum_reset (sum);
    if (ftruncate (fd, 0) != 0)
      goto write_failed;
    stream = open_content (f, meta->location, 0, &msg, error);
    if (stream == NULL)
      goto out;
    status = soup_message_get_status (msg);
  }
  if (status == SOUP_STATUS_REQUESTED_RANGE_NOT_SATISFIABLE && have > 0) {
    /* Interrupted after the last byte: nothing left to fetch, only to check. */
  } else if (status != SOUP_STATUS_PARTIAL_CONTENT || have == 0) {
    if (status != SOUP_STATUS_OK) {
      set_status_error (f, msg, meta->location, error);
      goto out;
    }
    /* The whole file: the server ignored the range, or there was nothing to resume. */
    have = 0;
    if (sum != NULL)
      g_checksum_reset (sum);
    if (ftruncate (fd, 0) != 0)
      goto write_failed;
  }
  if (lseek (fd, (off_t) have, SEEK_SET) < 0)
    goto write_failed;

  report (f, have, meta->size, FALSE, &last_report);
  if (status != SOUP_STATUS_REQUESTED_RANGE_NOT_SATISFIABLE) {
    for (;;) {
      GError *read_error = NULL;
      gssize n = g_input_stream_read (stream, buf, 1 << 16, f->options->cancellable,
          &read_error);
      if (n < 0) {
        g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "could not download %s: the transfer "
            "was interrupted after %" G_GUINT64_FORMAT " bytes (%s); %s keeps them and the "
            "next attempt resumes from there", what->str, have, read_error->message,
            incomplete);
        g_error_free (read_error);
        goto out;
      }
      if (n == 0)
        break;
      if (!write_all (fd, buf, (gsize) n))
        goto write_failed;
      if (sum != NULL)
        g_checksum_update (sum, buf, n);
      have += (guint64) n;
      report (f, have, meta->size, FALSE, &last_report);
    }
  }
  if (meta->size > 0 && have != meta->size) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "could not download %s: the transfer "
        "ended after %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " bytes; %s keeps them and "
        "the next attempt resumes from there", what->str, have, meta->size, incomplete);
    goto out;
  }
  if (sum != NULL) {
    const char *got = g_checksum_get_string (sum);
    if (g_ascii_strcasecmp (got, meta->etag) != 0) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "could not download %s: the "
          "content is corrupted: its sha256 is %s where the hub's ETag says %s; the download "
          "was deleted", what->str, got, meta->etag);
      g_unlink (incomplete);
      goto out;
    }
  }
  if (fsync (fd) != 0 || g_rename (incomplete, blob) != 0)
    goto write_failed;
  report (f, have, meta->size, TRUE, &last_report);
  ok = TRUE;
  goto out;

write_failed:
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "could not download %s: writing %s failed: %s",
      what->str, incomplete, g_strerror (errno));
out:
  if (stream != NULL) {
    g_input_stream_close (stream, NULL, NULL);
    g_object_unref (stream);
  }
  g_clear_object (&msg);
  if (sum != NULL)
    g_checksum_free (sum);
  close (fd);
  return ok;
}

/* snapshots/<commit>/<file> -> ../../blobs/<etag>, one more ../ per folder in file, as
 * huggingface_hub makes it, so that the cache can be moved whole. */
static gboolean
link_snapshot (const char *entry, const char *filename, const char *etag, GError **error)
{
  g_autofree char *dir = g_path_get_dirname (entry);
  if (g_mkdir_with_parents (dir, 0755) != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "cannot create %s: %s", dir,
        g_strerror (errno));
    return FALSE;
  }
  GString *target = g_string_new ("../../");
  for (const char *p = filename; *p; p++) {
    if (*p == '/')
      g_string_append (target, "../");
  }
  g_string_append_printf (target, "blobs/%s", etag);
  /* A dangling or stale link from an earlier, interrupted download is replaced. */
  g_unlink (entry);
  int rc = symlink (target->str, entry);
  int saved = errno;
  g_string_free (target, TRUE);
  if (rc != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "cannot create the symbolic link %s: %s",
        entry, g_strerror (saved));
    return FALSE;
  }
  return TRUE;
}

static gboolean
write_ref (const char *repo_dir, const char *revision, const char *commit, GError **error)
{
  g_autofree char *path = g_build_filename (repo_dir, "refs", revision, NULL);
  g_autofree char *dir = g_path_get_dirname (path);
  if (g_mkdir_with_parents (dir, 0755) != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "cannot create %s: %s", dir,
        g_strerror (errno));
    return FALSE;
  }
  GError *local = NULL;
  /* No newline: huggingface_hub writes the bare hash. */
  if (!g_file_set_contents (path, commit, -1, &local)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "cannot write %s: %s", path,
        local->message);
    g_error_free (local);
    return FALSE;
  }
  return TRUE;
}

/* One process at a time downloads a blob (huggingface_hub locks the same file). */
static int
lock_blob (const char *cache, const char *folder, const char *etag, GError **error)
{
  g_autofree char *dir = g_build_filename (cache, ".locks", folder, NULL);
  g_autofree char *name = g_strdup_printf ("%s.lock", etag);
  g_autofree char *path = g_build_filename (dir, name, NULL);
  int fd = -1;
  if (g_mkdir_with_parents (dir, 0755) == 0)
    fd = g_open (path, O_RDWR | O_CREAT, 0644);
  if (fd < 0 || flock (fd, LOCK_EX) != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "cannot lock %s: %s", path,
        g_strerror (errno));
    if (fd >= 0)
      close (fd);
    return -1;
  }
  return fd;
}

static const char *
env_either (const char *upper, const char *lower)
{
  const char *v = g_getenv (upper);
  if (v == NULL || *v == '\0')
    v = g_getenv (lower);
  return v != NULL && *v != '\0' ? v : NULL;
}

/* Proxies from HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY, as huggingface_hub (through
 * requests) takes them; NULL: none. Not GIO's default resolver, which may load libproxy and
 * follow desktop settings that the Python tools ignore. */
static GProxyResolver *
proxy_from_env (void)
{
  const char *https = env_either ("HTTPS_PROXY", "https_proxy");
  const char *http = env_either ("HTTP_PROXY", "http_proxy");
  const char *all = env_either ("ALL_PROXY", "all_proxy");
  if (https == NULL && http == NULL && all == NULL)
    return NULL;
  const char *no_proxy = env_either ("NO_PROXY", "no_proxy");
  g_auto (GStrv) ignore = g_strsplit (no_proxy ? no_proxy : "", ",", -1);
  for (guint i = 0; ignore[i] != NULL; i++)
    g_strstrip (ignore[i]);
  GProxyResolver *resolver = g_simple_proxy_resolver_new (all, ignore);
  if (https != NULL)
    g_simple_proxy_resolver_set_uri_proxy (G_SIMPLE_PROXY_RESOLVER (resolver), "https", https);
  if (http != NULL)
    g_simple_proxy_resolver_set_uri_proxy (G_SIMPLE_PROXY_RESOLVER (resolver), "http", http);
  return resolver;
}

/* Puts the file the hub described into the cache: its blob (downloaded unless present), the
 * snapshot entry and the ref. Returns the entry's path. */
static char *
store (Fetch *f, const Metadata *meta, GError **error)
{
  g_autofree char *cache = moshi_hub_cache_dir (NULL);
  g_autofree char *owner = g_strndup (f->repo_id, strcspn (f->repo_id, "/"));
  g_autofree char *folder = g_strdup_printf ("models--%s--%s", owner,
      strchr (f->repo_id, '/') + 1);
  g_autofree char *repo_dir = g_build_filename (cache, folder, NULL);
  g_autofree char *blobs = g_build_filename (repo_dir, "blobs", NULL);
  g_autofree char *blob = g_build_filename (blobs, meta->etag, NULL);
  g_autofree char *incomplete = g_strdup_printf ("%s.incomplete", blob);
  g_autofree char *entry = g_build_filename (repo_dir, "snapshots", meta->commit, f->filename,
      NULL);

  if (g_mkdir_with_parents (blobs, 0755) != 0) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "cannot create %s: %s", blobs,
        g_strerror (errno));
    return NULL;
  }
  int lock_fd = lock_blob (cache, folder, meta->etag, error);
  if (lock_fd < 0)
    return NULL;
  /* Another process may have completed it while this one waited for the lock. */
  gboolean ok = (g_file_test (blob, G_FILE_TEST_IS_REGULAR)
      || download_blob (f, meta, incomplete, blob, error))
      && link_snapshot (entry, f->filename, meta->etag, error)
      && (strcmp (f->revision, meta->commit) == 0
      || write_ref (repo_dir, f->revision, meta->commit, error));
  close (lock_fd);
  return ok ? g_steal_pointer (&entry) : NULL;
}

/* Remembers that the repo has no such file at commit, where huggingface_hub does
 * (.no_exist/<commit>/<file>), so that asking again needs no request. */
static void
mark_missing (Fetch *f, const char *commit)
{
  if (!moshi_hub_is_commit (commit))
    return;
  g_autofree char *cache = moshi_hub_cache_dir (NULL);
  g_autofree char *owner = g_strndup (f->repo_id, strcspn (f->repo_id, "/"));
  g_autofree char *folder = g_strdup_printf ("models--%s--%s", owner,
      strchr (f->repo_id, '/') + 1);
  g_autofree char *repo_dir = g_build_filename (cache, folder, NULL);
  g_autofree char *marker = g_build_filename (repo_dir, ".no_exist", commit, f->filename, NULL);
  g_autofree char *dir = g_path_get_dirname (marker);
  if (g_mkdir_with_parents (dir, 0755) == 0)
    g_file_set_contents (marker, "", 0, NULL);
  if (strcmp (f->revision, commit) != 0)
    write_ref (repo_dir, f->revision, commit, NULL);
}

char *
moshi_hub_download_checked (const char *repo_id, const char *revision, const char *filename,
    const MoshiHubOptions *options, gboolean *missing, GError **error)
{
  g_return_val_if_fail (repo_id != NULL && filename != NULL, NULL);
  if (missing)
    *missing = FALSE;
  static const MoshiHubOptions no_options = { 0 };
  if (revision == NULL)
    revision = "main";
  if (options == NULL)
    options = &no_options;

  if (!moshi_hub_valid_repo_id (repo_id) || !moshi_hub_valid_relative_path (revision)
      || !moshi_hub_valid_relative_path (filename)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "cannot download '%s' at revision '%s' of '%s': not a repo id owner/name with a "
        "relative file name", filename, revision, repo_id);
    return NULL;
  }
  if (moshi_hub_is_offline ()) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED,
        "cannot download %s from the Hugging Face repository %s (revision %s): HF_HUB_OFFLINE "
        "is set, so only the local cache is used", filename, repo_id, revision);
    return NULL;
  }

  const char *endpoint_env = g_getenv ("HF_ENDPOINT");
  g_autofree char *endpoint = g_strdup (endpoint_env && *endpoint_env ? endpoint_env
      : DEFAULT_ENDPOINT);
  while (g_str_has_suffix (endpoint, "/"))
    endpoint[strlen (endpoint) - 1] = '\0';
  g_autoptr (GUri) endpoint_uri = g_uri_parse (endpoint, SOUP_HTTP_URI_FLAGS, NULL);
  if (endpoint_uri == NULL || g_uri_get_host (endpoint_uri) == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "cannot download %s from the Hugging Face repository %s: HF_ENDPOINT='%s' is not a "
        "URL", filename, repo_id, endpoint);
    return NULL;
  }
  g_autofree char *rev_escaped = g_uri_escape_string (revision, NULL, FALSE);
  g_autofree char *file_escaped = g_uri_escape_string (filename, "/", FALSE);
  g_autofree char *url = g_strdup_printf ("%s/%s/resolve/%s/%s", endpoint, repo_id,
      rev_escaped, file_escaped);
  const char *timeout_env = g_getenv ("HF_HUB_DOWNLOAD_TIMEOUT");
  guint timeout = timeout_env ? (guint) g_ascii_strtoull (timeout_env, NULL, 10) : 0;
  g_autoptr (SoupSession) session = soup_session_new_with_options (
      "timeout", timeout > 0 ? timeout : 10, "user-agent", "gst-moshi (libmoshi)", NULL);
  g_autoptr (GProxyResolver) proxy = proxy_from_env ();
  soup_session_set_proxy_resolver (session, proxy);

  Fetch f = { .repo_id = repo_id, .revision = revision, .filename = filename, .url = url,
    .token = read_token (), .endpoint = endpoint_uri, .options = options,
    .session = session };
  Metadata meta = { 0 };
  char *result = NULL;
  if (fetch_metadata (&f, &meta, error))
    result = store (&f, &meta, error);
  else if (f.missing_commit != NULL) {
    mark_missing (&f, f.missing_commit);
    if (missing)
      *missing = TRUE;
  }
  g_free (f.missing_commit);
  metadata_clear (&meta);
  if (f.token != NULL)
    memset (f.token, 0, strlen (f.token));
  g_free (f.token);
  return result;
}

#endif /* MOSHI_HAVE_SOUP */

char *
moshi_hub_download (const char *repo_id, const char *revision, const char *filename,
    const MoshiHubOptions *options, GError **error)
{
  return moshi_hub_download_checked (repo_id, revision, filename, options, NULL, error);
}
