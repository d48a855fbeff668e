/* gst-moshi: the packed layout of the RTP payload format MIMI (docs/rtp-mimi.md), and the
 * unpacking of a packet's payload into codes.
 *
 * GLib only, no GStreamer, so that the fuzz target and the unit tests call exactly what
 * rtpmimidepay runs on each packet. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define RTP_MIMI_MAX_CODEBOOKS 32
#define RTP_MIMI_MAX_CODEBOOK_SIZE 65536

/* Bits a code needs to hold [0, codebook_size): ceil(log2(codebook_size)), at least 1. */
guint rtp_mimi_min_code_bits (guint codebook_size);

/* The layout the SDP's fmtp gives: codebooks per frame, entries per codebook, bits per code. */
typedef struct {
  guint codebooks;              /* [1, 32] */
  guint codebook_size;          /* [2, 65536] */
  guint code_bits;              /* [1, 16], enough to hold codebook_size - 1 */
} RtpMimiLayout;

/* TRUE when every field is in its range above and code_bits can hold every code: what
 * rtpmimidepay accepts from caps, and what the functions below assume. */
gboolean rtp_mimi_layout_is_valid (const RtpMimiLayout *layout);

/* Bytes of one packed frame: its codes one after another, MSB first, padded to a byte. */
gsize rtp_mimi_packed_frame_bytes (const RtpMimiLayout *layout);

/* Whole frames in a payload of len bytes; 0 and *why set when there is none or the payload
 * is not a whole number of frames. */
gsize rtp_mimi_payload_frames (const RtpMimiLayout *layout, gsize len, const char **why);

/* Unpacks the n_frames frames of payload (n_frames from rtp_mimi_payload_frames) into out,
 * n_frames * codebooks u16le codes, frame-major (audio/x-mimi, stream-format u16le). FALSE
 * with *why set when a code is outside the codebooks; out is then partly written. */
gboolean rtp_mimi_unpack (const RtpMimiLayout *layout, const guint8 *payload, gsize n_frames,
    guint8 *out, const char **why);

G_END_DECLS
