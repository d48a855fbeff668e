/* gst-moshi: finding model files in the local Hugging Face hub cache (see moshi-hub.h). */
#include "moshi-hub.h"

#include "moshi-error.h"
#include "moshi-hub-download.h"
#include "moshi-hub-private.h"

#include <string.h>

char *
moshi_hub_cache_dir (const char **origin)
{
  static const char *const direct_vars[] = { "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE" };
  const char *from = "default";
  char *dir = NULL;

  for (guint i = 0; i < G_N_ELEMENTS (direct_vars) && dir == NULL; i++) {
    const char *value = g_getenv (direct_vars[i]);
    if (value != NULL && *value != '\0') {
      dir = g_strdup (value);
      from = direct_vars[i];
    }
  }
  if (dir == NULL) {
    const char *hf_home = g_getenv ("HF_HOME");
    const char *xdg_cache = g_getenv ("XDG_CACHE_HOME");
    if (hf_home != NULL && *hf_home != '\0') {
      dir = g_build_filename (hf_home, "hub", NULL);
      from = "HF_HOME";
    } else if (xdg_cache != NULL && *xdg_cache != '\0') {
      /* huggingface_hub honours XDG_CACHE_HOME, while GLib's g_get_user_cache_dir() would
       * also pick it up but caches the first value it sees; read the variable directly. */
      dir = g_build_filename (xdg_cache, "huggingface", "hub", NULL);
      from = "XDG_CACHE_HOME";
    } else {
      dir = g_build_filename (g_get_home_dir (), ".cache", "huggingface", "hub", NULL);
    }
  }
  if (origin)
    *origin = from;
  return dir;
}

/* Hub user and repository names: letters, digits, '-', '_' and '.', not "." or "..". */
static gboolean
is_repo_component (const char *s, gsize len)
{
  if (len == 0 || (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isalnum (s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
      return FALSE;
  }
  return TRUE;
}

/* A relative path that stays inside the directory it is joined to. */
static gboolean
is_safe_relative_path (const char *s)
{
  if (*s == '\0' || *s == '/')
    return FALSE;
  g_auto (GStrv) parts = g_strsplit (s, "/", -1);
  for (guint i = 0; parts[i]; i++) {
    if (parts[i][0] == '\0' || strcmp (parts[i], ".") == 0 || strcmp (parts[i], "..") == 0)
      return FALSE;
  }
  return TRUE;
}

static gboolean
is_commit_hash (const char *s)
{
  gsize len = strlen (s);
  if (len != 40)
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isxdigit (s[i]))
      return FALSE;
  }
  return TRUE;
}

gboolean
moshi_hub_valid_repo_id (const char *repo_id)
{
  const char *slash = strchr (repo_id, '/');
  return slash != NULL && strchr (slash + 1, '/') == NULL
      && is_repo_component (repo_id, (gsize) (slash - repo_id))
      && is_repo_component (slash + 1, strlen (slash + 1));
}

gboolean
moshi_hub_valid_relative_path (const char *path)
{
  return is_safe_relative_path (path);
}

gboolean
moshi_hub_is_commit (const char *s)
{
  return is_commit_hash (s);
}

typedef struct {
  char *owner;
  char *name;
  char *revision;
  char *filename;      /* NULL: use the default */
} RepoSpec;

static void
repo_spec_clear (RepoSpec *r)
{
  g_free (r->owner);
  g_free (r->name);
  g_free (r->revision);
  g_free (r->filename);
}

/* Parses "owner/name[@revision][:file]". */
static gboolean
parse_repo_spec (const char *spec, RepoSpec *out)
{
  memset (out, 0, sizeof *out);
  const char *colon = strchr (spec, ':');
  gsize repo_len = colon ? (gsize) (colon - spec) : strlen (spec);
  g_autofree char *repo = g_strndup (spec, repo_len);

  char *at = strchr (repo, '@');
  if (at != NULL) {
    *at = '\0';
    const char *rev = at + 1;
    if (!is_safe_relative_path (rev))
      return FALSE;
    out->revision = g_strdup (rev);
  } else {
    out->revision = g_strdup ("main");
  }

  if (!moshi_hub_valid_repo_id (repo))
    goto invalid;
  const char *slash = strchr (repo, '/');
  out->owner = g_strndup (repo, (gsize) (slash - repo));
  out->name = g_strdup (slash + 1);

  if (colon != NULL) {
    if (!is_safe_relative_path (colon + 1))
      goto invalid;
    out->filename = g_strdup (colon + 1);
  }
  return TRUE;

invalid:
  repo_spec_clear (out);
  memset (out, 0, sizeof *out);
  return FALSE;
}

static char *
repo_folder (const RepoSpec *repo)
{
  g_autofree char *cache = moshi_hub_cache_dir (NULL);
  g_autofree char *folder = g_strdup_printf ("models--%s--%s", repo->owner, repo->name);
  return g_build_filename (cache, folder, NULL);
}

/* The cached path of filename, or NULL with miss (what is absent from the cache) set, or
 * NULL with error set when the cache is damaged. */
static char *
find_in_cache (const char *spec, const RepoSpec *repo, const char *filename, char **miss,
    GError **error)
{
  const char *origin;
  g_free (moshi_hub_cache_dir (&origin));
  g_autofree char *repo_dir = repo_folder (repo);
  g_autofree char *where = g_strcmp0 (origin, "default") == 0
      ? g_strdup ("the default cache directory")
      : g_strdup_printf ("cache directory from $%s", origin);

  g_autofree char *commit = NULL;
  if (is_commit_hash (repo->revision)) {
    commit = g_strdup (repo->revision);
  } else {
    g_autofree char *ref_path = g_build_filename (repo_dir, "refs", repo->revision, NULL);
    g_autofree char *contents = NULL;
    if (!g_file_get_contents (ref_path, &contents, NULL, NULL)) {
      *miss = g_strdup_printf ("'%s' is not an existing file, and as a Hugging Face repo id it "
          "is not in the local hub cache: %s does not exist (%s)", spec, ref_path, where);
      return NULL;
    }
    commit = g_strdup (g_strstrip (contents));
    if (!is_safe_relative_path (commit) || strchr (commit, '/') != NULL) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "%s: '%s' is not a commit hash (hub cache for '%s')", ref_path, commit, spec);
      return NULL;
    }
  }

  g_autofree char *path = g_build_filename (repo_dir, "snapshots", commit, filename, NULL);
  if (g_file_test (path, G_FILE_TEST_IS_REGULAR))
    return g_steal_pointer (&path);
  if (g_file_test (path, G_FILE_TEST_IS_SYMLINK))
    *miss = g_strdup_printf ("'%s': %s is a dangling symbolic link in the local Hugging Face "
        "hub cache (an interrupted download?)", spec, path);
  else
    *miss = g_strdup_printf ("'%s' is not an existing file, and as a Hugging Face repo id it "
        "is not in the local hub cache: %s does not exist (%s, revision %s)", spec, path, where,
        repo->revision);
  return NULL;
}

/* TRUE when the cache remembers that the hub has no such file at the revision
 * (.no_exist/<commit>/<file>, written by huggingface_hub and by moshi_hub_download). */
static gboolean
known_missing (const RepoSpec *repo, const char *filename)
{
  g_autofree char *repo_dir = repo_folder (repo);
  g_autofree char *commit = NULL;
  if (is_commit_hash (repo->revision)) {
    commit = g_strdup (repo->revision);
  } else {
    g_autofree char *ref_path = g_build_filename (repo_dir, "refs", repo->revision, NULL);
    if (!g_file_get_contents (ref_path, &commit, NULL, NULL))
      return FALSE;
    g_strstrip (commit);
    if (!is_safe_relative_path (commit) || strchr (commit, '/') != NULL)
      return FALSE;
  }
  g_autofree char *marker = g_build_filename (repo_dir, ".no_exist", commit, filename, NULL);
  return g_file_test (marker, G_FILE_TEST_EXISTS);
}

/* The cache first; the hub when the file is not there and downloads are possible. */
static char *
resolve_repo_file (const char *spec, const RepoSpec *repo, const char *filename,
    const MoshiHubOptions *options, GError **error)
{
  g_autofree char *miss = NULL;
  char *path = find_in_cache (spec, repo, filename, &miss, error);
  if (path != NULL || miss == NULL)
    return path;

  g_autofree char *repo_id = g_strdup_printf ("%s/%s", repo->owner, repo->name);
  gboolean main_revision = strcmp (repo->revision, "main") == 0;
  g_autofree char *fetch_hint = g_strdup_printf ("fetch the file first, e.g. with "
      "`huggingface-cli download %s %s%s%s`", repo_id, filename,
      main_revision ? "" : " --revision ", main_revision ? "" : repo->revision);
  if (moshi_hub_is_offline ()) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s; HF_HUB_OFFLINE is set, so nothing is "
        "downloaded: unset it, or %s", miss, fetch_hint);
    return NULL;
  }
  if (!moshi_hub_can_download ()) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s; this build cannot download models "
        "(libsoup 3 was not found when it was built): %s", miss, fetch_hint);
    return NULL;
  }
  return moshi_hub_download (repo_id, repo->revision, filename, options, error);
}

char *
moshi_hub_resolve (const char *spec, const char *default_filename, GError **error)
{
  return moshi_hub_resolve_full (spec, default_filename, NULL, error);
}

char *
moshi_hub_resolve_full (const char *spec, const char *default_filename,
    const MoshiHubOptions *options, GError **error)
{
  g_return_val_if_fail (spec != NULL, NULL);

  if (*spec == '\0') {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "no model file given");
    return NULL;
  }
  /* Any existing non-directory, so that the loader, not the resolver, says what is wrong
   * with a FIFO or a device given as a model. */
  if (g_file_test (spec, G_FILE_TEST_EXISTS) && !g_file_test (spec, G_FILE_TEST_IS_DIR))
    return g_strdup (spec);
  if (g_file_test (spec, G_FILE_TEST_IS_DIR)) {
    /* A snapshot directory copied out of a cache, or any folder holding the usual file. */
    if (default_filename != NULL) {
      g_autofree char *inside = g_build_filename (spec, default_filename, NULL);
      if (g_file_test (inside, G_FILE_TEST_IS_REGULAR))
        return g_steal_pointer (&inside);
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO,
          "%s is a directory without %s in it", spec, default_filename);
    } else {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s is a directory, not a file", spec);
    }
    return NULL;
  }

  RepoSpec repo;
  if (!parse_repo_spec (spec, &repo)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO,
        "%s: no such file (and not a Hugging Face repo id of the form owner/name)", spec);
    return NULL;
  }
  const char *filename = repo.filename ? repo.filename : default_filename;
  char *path = NULL;
  if (filename == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "'%s' names a Hugging Face repository but no file in it; use %s/%s:<file>", spec,
        repo.owner, repo.name);
  } else {
    path = resolve_repo_file (spec, &repo, filename, options, error);
  }
  repo_spec_clear (&repo);
  return path;
}

char *
moshi_hub_resolve_optional (const char *source, const char *filename,
    const MoshiHubOptions *options, GError **error)
{
  g_return_val_if_fail (source != NULL && filename != NULL, NULL);
  if (g_file_test (source, G_FILE_TEST_IS_DIR)) {
    char *inside = g_build_filename (source, filename, NULL);
    if (g_file_test (inside, G_FILE_TEST_IS_REGULAR))
      return inside;
    g_free (inside);
    return NULL;
  }
  RepoSpec repo;
  /* A file has no repository around it; a spec that is no repo id has nothing to look in. */
  if (g_file_test (source, G_FILE_TEST_EXISTS) || !parse_repo_spec (source, &repo))
    return NULL;

  g_autofree char *miss = NULL;
  char *path = find_in_cache (source, &repo, filename, &miss, error);
  if (path == NULL && miss != NULL && !known_missing (&repo, filename)
      && moshi_hub_can_download () && !moshi_hub_is_offline ()) {
    g_autofree char *repo_id = g_strdup_printf ("%s/%s", repo.owner, repo.name);
    gboolean missing = FALSE;
    GError *local = NULL;
    path = moshi_hub_download_checked (repo_id, repo.revision, filename, options, &missing,
        &local);
    if (path == NULL && !missing)
      g_propagate_error (error, local);
    else
      g_clear_error (&local);
  }
  repo_spec_clear (&repo);
  return path;
}
