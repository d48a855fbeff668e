/* gst-moshi: loading a whole conversation model (the LM, Mimi and the text tokenizer) from one
 * Hugging Face repository or folder, as Kyutai releases them.
 *
 *   MoshiDialogLoadOptions o = moshi_dialog_load_options_default ();
 *   model = moshi_dialog_model_load ("kyutai/moshiko-pytorch-bf16", &o, NULL, &error);
 *
 * The source is a repo id (owner/name[@revision], resolved in the hub cache and downloaded
 * when missing, see moshi-hub-download.h) or a folder. From it come, unless an option names
 * them otherwise:
 *   config.json            the LM's config when the source has one (else Moshi 7B's); its
 *                          "moshi_name", "mimi_name" and "tokenizer_name" name the files below
 *   model.safetensors      the LM
 *   tokenizer-e351c8d8-checkpoint125.safetensors   Mimi
 *   tokenizer_spm_32k_3.model                      the tokenizer, when the source has it */
#pragma once

#include "moshi-dialog.h"
#include "moshi-hub.h"
#include "moshi-hub-download.h"

MOSHI_BEGIN_DECLS

#define MOSHI_DIALOG_CONFIG_FILENAME "config.json"

/* The parts of a conversation model, to say which one failed. */
typedef enum {
  MOSHI_DIALOG_PART_NONE,
  MOSHI_DIALOG_PART_LM,
  MOSHI_DIALOG_PART_MIMI,
  MOSHI_DIALOG_PART_TOKENIZER,
  MOSHI_DIALOG_PART_MODEL,      /* the three do not fit together */
} MoshiDialogPart;

/* "Moshi LM", "Mimi model", "text tokenizer", "conversation model". */
const char *moshi_dialog_part_name (MoshiDialogPart part);

typedef struct {
  /* Each a file, a folder or a repo spec (moshi_hub_resolve); NULL: from the source. */
  const char *lm;
  const char *lm_config;        /* NULL: the source's config.json, else Moshi 7B */
  const char *mimi;
  const char *mimi_config;      /* NULL: the released Mimi */
  const char *tokenizer;        /* NULL: the source's, if it has one; "": none */
  MoshiDevice device;
  MoshiLmKvCache kv_cache;
  MoshiLmWeights weights;
  gboolean shared;              /* the process's copies (moshi_lm_load_shared, ...) */
  MoshiHubOptions hub;          /* download progress and cancellation */
} MoshiDialogLoadOptions;

MoshiDialogLoadOptions moshi_dialog_load_options_default (void);

/* What a load used, and on failure what failed: for messages. */
typedef struct {
  MoshiDialogPart failed;
  gboolean not_found;           /* the failed part's file could not be found or fetched */
  char *source;                 /* the source (given, or the LM's repo or folder), or NULL */
  char *lm, *lm_config, *mimi, *mimi_config, *tokenizer;   /* the specs, defaults filled in */
  char *lm_path, *mimi_path, *tokenizer_path;              /* the files, as far as resolved */
} MoshiDialogLoadInfo;

void moshi_dialog_load_info_clear (MoshiDialogLoadInfo *info);

/* Loads the conversation model of source (which may be NULL when options->lm names the LM:
 * the LM's repository or folder is then the source; a plain LM file has none, and Mimi must
 * be named). options may be NULL (the defaults); info may be NULL, and is filled in success
 * or failure (clear it after). Errors are those of the resolver and the loaders, which name
 * the file at fault; info->failed says which part. */
MoshiDialogModel *moshi_dialog_model_load (const char *source,
    const MoshiDialogLoadOptions *options, MoshiDialogLoadInfo *info, GError **error);

MOSHI_END_DECLS
