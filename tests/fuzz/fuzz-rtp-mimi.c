/* libFuzzer target for rtpmimidepay's payload parsing (gst/rtp-mimi-format.c), the functions
 * the element runs on each RTP packet's payload.
 *
 * Input: 4 bytes for the fmtp layout (codebooks, codebook-size, code-bits), kept to layouts the
 * element accepts, then the payload. An accepted payload must unpack to codes within the
 * codebooks, and packing them again (MSB first) must give the payload back. Run it with
 * tests/fuzz/run-fuzz.sh. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rtp-mimi-format.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 4)
    return 0;
  RtpMimiLayout layout;
  layout.codebooks = 1 + data[0] % RTP_MIMI_MAX_CODEBOOKS;
  layout.codebook_size = 2 + (data[1] | (guint) data[2] << 8) % (RTP_MIMI_MAX_CODEBOOK_SIZE - 1);
  layout.code_bits = 1 + data[3] % 16;
  if (!rtp_mimi_layout_is_valid (&layout))
    return 0;
  const guint8 *payload = data + 4;
  gsize len = size - 4;

  const char *why = NULL;
  gsize n_frames = rtp_mimi_payload_frames (&layout, len, &why);
  if ((n_frames == 0) != (why != NULL))
    __builtin_trap ();
  if (n_frames == 0)
    return 0;
  gsize frame_bytes = rtp_mimi_packed_frame_bytes (&layout);
  if (n_frames * frame_bytes != len)
    __builtin_trap ();
  g_autofree guint8 *codes = g_malloc (n_frames * layout.codebooks * 2);
  if (!rtp_mimi_unpack (&layout, payload, n_frames, codes, &why)) {
    if (why == NULL)
      __builtin_trap ();
    return 0;
  }
  /* Repack: the padding bits of each frame are not carried, so compare them cleared. */
  g_autofree guint8 *repacked = g_malloc0 (len);
  g_autofree guint8 *expected = g_memdup2 (payload, len);
  gsize pad_bits = frame_bytes * 8 - (gsize) layout.codebooks * layout.code_bits;
  for (gsize f = 0; f < n_frames; f++) {
    gsize bitpos = f * frame_bytes * 8;
    for (guint k = 0; k < layout.codebooks; k++) {
      gsize at = 2 * (f * layout.codebooks + k);
      guint code = codes[at] | (guint) codes[at + 1] << 8;
      if (code >= layout.codebook_size)
        __builtin_trap ();
      for (gint b = (gint) layout.code_bits - 1; b >= 0; b--, bitpos++)
        if ((code >> b) & 1u)
          repacked[bitpos / 8] |= 0x80 >> (bitpos % 8);
    }
    if (pad_bits > 0)
      expected[(f + 1) * frame_bytes - 1] &= (guint8) (0xff << pad_bits);
  }
  if (memcmp (repacked, expected, len) != 0)
    __builtin_trap ();
  return 0;
}
