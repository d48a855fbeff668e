/* gst-moshi: finding model files named by a Hugging Face repo id in the local hub cache.
 *
 * The cache is the one `huggingface-cli download`, the Python `huggingface_hub` package and
 * the Rust `hf-hub` crate share. What is missing from it is downloaded into it (see
 * moshi-hub-download.h) unless HF_HUB_OFFLINE is set or the build has no libsoup.
 *
 * Cache layout (huggingface_hub):
 *   <cache>/models--<owner>--<name>/refs/<revision>          text file holding a commit hash
 *   <cache>/models--<owner>--<name>/snapshots/<commit>/<file> usually a symlink into ../blobs
 * where <cache> is $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. */
#pragma once

#include <glib.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

/* The file that holds Mimi's weights in Kyutai's repositories (kyutai/moshiko-pytorch-bf16 and
 * siblings). */
#define MOSHI_HUB_MIMI_FILENAME "tokenizer-e351c8d8-checkpoint125.safetensors"
/* The LM's weights and the text tokenizer in the same repositories. */
#define MOSHI_HUB_LM_FILENAME "model.safetensors"
#define MOSHI_HUB_TOKENIZER_FILENAME "tokenizer_spm_32k_3.model"

/* Turns a model specification into a path to an existing file.
 *
 * spec is either a path to an existing file (returned as is) or a repo id:
 *   owner/name                  default_filename at the revision "main"
 *   owner/name:file             another file of the repository (may contain '/')
 *   owner/name@revision         a branch, tag or 40-hex commit hash
 *   owner/name@revision:file
 * default_filename may be NULL when spec must name the file itself.
 *
 * A repo file absent from the cache is downloaded (moshi_hub_resolve_full with no options).
 * Errors (MOSHI_ERROR_IO) say which paths were searched and why nothing was downloaded, or
 * why the download failed. Returns a newly allocated path. */
char *moshi_hub_resolve (const char *spec, const char *default_filename, GError **error);

/* The hub cache directory that moshi_hub_resolve searches, and the environment variable it
 * came from (a static string, or "default" for ~/.cache/huggingface/hub). */
char *moshi_hub_cache_dir (const char **origin);

MOSHI_END_DECLS
