/* gst-moshi: a whole conversation model from one repository or folder (moshi-dialog-load.h). */
#include "moshi-dialog-load.h"

#include "lm-internal.h"
#include "mimi-internal.h"
#include "moshi-error.h"
#include "moshi-hub.h"
#include "moshi-json.h"

#include <string.h>

const char *
moshi_dialog_part_name (MoshiDialogPart part)
{
  switch (part) {
    case MOSHI_DIALOG_PART_LM:
      return "Moshi LM";
    case MOSHI_DIALOG_PART_MIMI:
      return "Mimi model";
    case MOSHI_DIALOG_PART_TOKENIZER:
      return "text tokenizer";
    case MOSHI_DIALOG_PART_MODEL:
      return "conversation model";
    case MOSHI_DIALOG_PART_NONE:
    default:
      return "model";
  }
}

MoshiDialogLoadOptions
moshi_dialog_load_options_default (void)
{
  MoshiDialogLoadOptions o = { .device = MOSHI_DEVICE_AUTO, .kv_cache = MOSHI_LM_KV_DEFAULT,
    .weights = MOSHI_LM_WEIGHTS_AS_STORED };
  return o;
}

void
moshi_dialog_load_info_clear (MoshiDialogLoadInfo *info)
{
  g_free (info->source);
  g_free (info->lm);
  g_free (info->lm_config);
  g_free (info->mimi);
  g_free (info->mimi_config);
  g_free (info->tokenizer);
  g_free (info->lm_path);
  g_free (info->mimi_path);
  g_free (info->tokenizer_path);
  memset (info, 0, sizeof *info);
}

/* The repository or folder an LM spec lives in: a folder is its own, a repo spec's is the
 * part before ':file'; a plain file has none. */
static char *
source_of (const char *lm)
{
  if (g_file_test (lm, G_FILE_TEST_IS_DIR))
    return g_strdup (lm);
  if (g_file_test (lm, G_FILE_TEST_EXISTS))
    return NULL;
  const char *colon = strchr (lm, ':');
  return colon ? g_strndup (lm, (gsize) (colon - lm)) : g_strdup (lm);
}

/* The file names config.json gives (upstream's CheckpointInfo reads the same keys). */
typedef struct {
  char *lm;
  char *mimi;
  char *tokenizer;
} FileNames;

static char *
name_from (const MoshiJson *root, const char *key, const char *fallback)
{
  const MoshiJson *v = moshi_json_get (root, key);
  const char *s = v ? moshi_json_string (v) : NULL;
  return g_strdup (s != NULL && *s != '\0' ? s : fallback);
}

static gboolean
read_file_names (const char *config, FileNames *names, GError **error)
{
  g_autofree char *text = NULL;
  gsize len = 0;
  GError *local = NULL;
  if (!g_file_get_contents (config, &text, &len, &local)) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO, "%s: %s", config, local->message);
    g_error_free (local);
    return FALSE;
  }
  g_autoptr (MoshiJson) root = moshi_json_parse (text, len, config, error);
  if (root == NULL)
    return FALSE;
  names->lm = name_from (root, "moshi_name", MOSHI_HUB_LM_FILENAME);
  names->mimi = name_from (root, "mimi_name", MOSHI_HUB_MIMI_FILENAME);
  names->tokenizer = name_from (root, "tokenizer_name", MOSHI_HUB_TOKENIZER_FILENAME);
  return TRUE;
}

static MoshiDialogModel *
fail (MoshiDialogLoadInfo *info, MoshiDialogPart part, gboolean not_found)
{
  info->failed = part;
  info->not_found = not_found;
  return NULL;
}

static MoshiDialogModel *
load (const char *source, const MoshiDialogLoadOptions *o, MoshiDialogLoadInfo *info,
    GError **error)
{
  const MoshiHubOptions *hub = &o->hub;
  if (source == NULL && o->lm == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "no Moshi LM given: name a "
        "Hugging Face repo id such as kyutai/moshiko-pytorch-bf16, a folder or a file");
    return fail (info, MOSHI_DIALOG_PART_LM, TRUE);
  }
  info->source = source ? g_strdup (source) : source_of (o->lm);
  info->lm = g_strdup (o->lm ? o->lm : source);

  FileNames names = { 0 };
  if (o->lm_config != NULL) {
    info->lm_config = g_strdup (o->lm_config);
  } else if (info->source != NULL) {
    info->lm_config = moshi_hub_resolve_optional (info->source, MOSHI_DIALOG_CONFIG_FILENAME,
        hub, error);
    if (info->lm_config == NULL && error != NULL && *error != NULL)
      return fail (info, MOSHI_DIALOG_PART_LM, TRUE);
    if (info->lm_config != NULL && !read_file_names (info->lm_config, &names, error))
      return fail (info, MOSHI_DIALOG_PART_LM, FALSE);
  }
  g_autofree char *lm_name = names.lm;
  g_autofree char *mimi_name = names.mimi;
  g_autofree char *tokenizer_name = names.tokenizer;

  /* The LM first: without it nothing else matters, and its error is the clearest. */
  MoshiLmLoadOptions lm_options = { .device = o->device, .kv_cache = o->kv_cache,
    .weights = o->weights };
  info->lm_path = moshi_hub_resolve_full (info->lm,
      lm_name ? lm_name : MOSHI_HUB_LM_FILENAME, hub, error);
  if (info->lm_path == NULL)
    return fail (info, MOSHI_DIALOG_PART_LM, TRUE);
  g_autoptr (MoshiLm) lm = (o->shared ? moshi_lm_load_shared : moshi_lm_load) (info->lm_path,
      info->lm_config, &lm_options, error);
  if (lm == NULL)
    return fail (info, MOSHI_DIALOG_PART_LM, FALSE);

  info->mimi = g_strdup (o->mimi ? o->mimi : info->source);
  info->mimi_config = g_strdup (o->mimi_config);
  if (info->mimi == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "no Mimi model given: it "
        "comes from the LM's repository or folder, but the LM %s is a file; name Mimi's "
        "safetensors file or a repo id such as kyutai/moshiko-pytorch-bf16", info->lm);
    return fail (info, MOSHI_DIALOG_PART_MIMI, TRUE);
  }
  MoshiMimiLoadOptions mimi_options = { .device = o->device };
  info->mimi_path = moshi_hub_resolve_full (info->mimi,
      mimi_name ? mimi_name : MOSHI_HUB_MIMI_FILENAME, hub, error);
  if (info->mimi_path == NULL)
    return fail (info, MOSHI_DIALOG_PART_MIMI, TRUE);
  /* on the LM's backend: one load, one open */
  g_autoptr (MoshiMimi) mimi = moshi_mimi_load_on_backend (moshi_lm_get_backend (lm), o->shared,
      info->mimi_path, info->mimi_config, &mimi_options, error);
  if (mimi == NULL)
    return fail (info, MOSHI_DIALOG_PART_MIMI, FALSE);

  /* The tokenizer only shows the text: a source without one still makes a conversation. */
  const char *tok_file = tokenizer_name ? tokenizer_name : MOSHI_HUB_TOKENIZER_FILENAME;
  if (o->tokenizer != NULL && *o->tokenizer != '\0') {
    info->tokenizer = g_strdup (o->tokenizer);
    info->tokenizer_path = moshi_hub_resolve_full (o->tokenizer, tok_file, hub, error);
    if (info->tokenizer_path == NULL)
      return fail (info, MOSHI_DIALOG_PART_TOKENIZER, TRUE);
  } else if (o->tokenizer == NULL && info->source != NULL) {
    info->tokenizer = g_strdup (info->source);
    info->tokenizer_path = moshi_hub_resolve_optional (info->source, tok_file, hub, error);
    if (info->tokenizer_path == NULL && error != NULL && *error != NULL)
      return fail (info, MOSHI_DIALOG_PART_TOKENIZER, TRUE);
  }
  g_autoptr (MoshiTokenizer) tokenizer = NULL;
  if (info->tokenizer_path != NULL
      && (tokenizer = moshi_tokenizer_load (info->tokenizer_path, error)) == NULL)
    return fail (info, MOSHI_DIALOG_PART_TOKENIZER, FALSE);

  MoshiDialogModel *model = moshi_dialog_model_new (lm, mimi, tokenizer, error);
  if (model == NULL)
    return fail (info, MOSHI_DIALOG_PART_MODEL, FALSE);
  return model;
}

MoshiDialogModel *
moshi_dialog_model_load (const char *source, const MoshiDialogLoadOptions *options,
    MoshiDialogLoadInfo *info, GError **error)
{
  MoshiDialogLoadOptions defaults = moshi_dialog_load_options_default ();
  MoshiDialogLoadInfo local = { 0 };
  /* Whether a step failed is read from the error, so one must be collected. */
  GError *err = NULL;
  MoshiDialogModel *model = load (source, options ? options : &defaults, info ? info : &local,
      &err);
  if (err != NULL)
    g_propagate_error (error, err);
  moshi_dialog_load_info_clear (&local);
  return model;
}
