/* gst-moshi: the codes of audio/x-mimi buffers (stream-format u16le: frames one after another,
 * each the codes of its codebooks in order, 16-bit little-endian).
 *
 * GLib only, no GStreamer, so that the fuzz target of mimidec's token buffers and the unit
 * tests call exactly what the elements run. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Writes n codes (each in [0, 65536), as the caps' codebook-size promises) as u16le. */
G_GNUC_INTERNAL void gst_moshi_codes_pack (guint8 * dest, const gint32 * codes, gsize n);
/* Reads the n codes of one frame at src into codes[0], codes[stride], ... */
G_GNUC_INTERNAL void gst_moshi_codes_unpack (gint32 * codes, gsize stride,
    const guint8 * src, gsize n);
/* The index of the first of n u16le codes at src that is not below codebook_size, or -1. */
G_GNUC_INTERNAL gssize gst_moshi_codes_find_invalid (const guint8 * src, gsize n,
    guint codebook_size);

G_END_DECLS
