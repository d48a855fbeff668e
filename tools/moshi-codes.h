/* gst-moshi tools: the codes file of `moshi-tool encode` / `decode`, a safetensors file with
 * one tensor `codes` (I64 or I32, [1, K, T] or [K, T]). */
#pragma once

#include <glib.h>
#include <stdint.h>

#include <moshi/moshi-safetensors.h>

G_BEGIN_DECLS

/* Most codebooks a codes file may hold (upstream Mimi has 32). */
#define MOSHI_CODES_MAX_CODEBOOKS 64

/* Reads `codes` of an open file into a new [K][T] int32 array. Dimensions are checked as
 * int64 before anything is allocated; a value beyond int32 becomes -1, which the decoder
 * rejects as outside the codebooks. Errors name st's path. */
gboolean moshi_codes_from_safetensors (const MoshiSafetensors *st, int32_t **codes_out,
    int *k_out, int *t_out, GError **error);

/* The same, opening path. */
gboolean moshi_codes_read (const char *path, int32_t **codes_out, int *k_out, int *t_out,
    GError **error);

G_END_DECLS
