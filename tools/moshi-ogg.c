#include "moshi-ogg.h"

#include <string.h>

/* Ogg page header (RFC 3533 6): "OggS", version 0, flags, granule (8), serial (4),
 * sequence (4), CRC (4), segment count, then one lacing value per segment. */
#define OGG_HEADER_BYTES 27
#define OGG_FLAG_CONTINUED 0x01

void
moshi_ogg_reader_init (MoshiOggReader *reader)
{
  reader->pending = g_byte_array_new ();
  reader->packet = g_byte_array_new ();
}

void
moshi_ogg_reader_clear (MoshiOggReader *reader)
{
  g_clear_pointer (&reader->pending, g_byte_array_unref);
  g_clear_pointer (&reader->packet, g_byte_array_unref);
}

MoshiOggReadResult
moshi_ogg_reader_feed (MoshiOggReader *reader, const guint8 *data, gsize len,
    MoshiOggPacketFunc on_packet, gpointer user_data)
{
  GByteArray *in = reader->pending;
  g_byte_array_append (in, data, len);
  MoshiOggReadResult result = MOSHI_OGG_READ_OK;
  gsize pos = 0;
  while (result == MOSHI_OGG_READ_OK && in->len > pos) {
    const guint8 *p = in->data + pos;
    gsize avail = in->len - pos;
    /* Checked on the first bytes already, so that a short message of garbage fails too. */
    if (memcmp (p, "OggS", MIN (avail, 4)) != 0 || (avail > 4 && p[4] != 0)) {
      result = MOSHI_OGG_READ_NOT_OGG;
      break;
    }
    if (avail < OGG_HEADER_BYTES)
      break;
    guint n_segments = p[26];
    const guint8 *lacing = p + OGG_HEADER_BYTES;
    if (avail < OGG_HEADER_BYTES + n_segments)
      break;
    gsize body = 0;
    for (guint i = 0; i < n_segments; i++)
      body += lacing[i];
    if (avail < OGG_HEADER_BYTES + n_segments + body)
      break;
    const guint8 *segment = lacing + n_segments;
    if (!(p[5] & OGG_FLAG_CONTINUED))
      g_byte_array_set_size (reader->packet, 0);  /* a fresh packet starts on this page */
    for (guint i = 0; i < n_segments && result == MOSHI_OGG_READ_OK; i++) {
      g_byte_array_append (reader->packet, segment, lacing[i]);
      segment += lacing[i];
      /* A lacing value below 255 ends a packet. */
      if (lacing[i] < 255) {
        if (!on_packet (reader->packet->data, reader->packet->len, user_data))
          result = MOSHI_OGG_READ_STOPPED;
        g_byte_array_set_size (reader->packet, 0);
      }
    }
    if (result == MOSHI_OGG_READ_OK && reader->packet->len > MOSHI_OGG_MAX_PACKET)
      result = MOSHI_OGG_READ_OVERSIZED;
    pos += OGG_HEADER_BYTES + n_segments + body;
  }
  g_byte_array_remove_range (in, 0, MIN (pos, in->len));
  return result;
}

guint
moshi_opus_packet_samples48 (const guint8 *d, gsize len)
{
  static const guint silk[4] = { 480, 960, 1920, 2880 }, celt[4] = { 120, 240, 480, 960 };
  if (len < 1)
    return 0;
  guint config = d[0] >> 3, frame, count;
  if (config < 12)
    frame = silk[config & 3];
  else if (config < 16)
    frame = (config & 1) ? 960 : 480;
  else
    frame = celt[config & 3];
  switch (d[0] & 3) {
    case 0:
      count = 1;
      break;
    case 1:
    case 2:
      count = 2;
      break;
    default:
      if (len < 2)
        return 0;
      count = d[1] & 0x3f;
      break;
  }
  /* At most 120 ms in a packet (RFC 6716 3.2.5). */
  if (count == 0 || count * frame > 5760)
    return 0;
  return count * frame;
}

MoshiOpusPacketKind
moshi_opus_packet_kind (const guint8 *data, gsize len, guint *samples48)
{
  *samples48 = 0;
  if (len == 0)
    return MOSHI_OPUS_PACKET_EMPTY;
  if (len >= 8 && (memcmp (data, "OpusHead", 8) == 0 || memcmp (data, "OpusTags", 8) == 0))
    return MOSHI_OPUS_PACKET_HEADER;
  *samples48 = moshi_opus_packet_samples48 (data, len);
  return *samples48 == 0 ? MOSHI_OPUS_PACKET_INVALID : MOSHI_OPUS_PACKET_AUDIO;
}
