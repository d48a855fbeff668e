/* gst-moshi tools: the client audio of moshi-server's WebSocket protocol (docs/server.md), an
 * Ogg/Opus byte stream cut into messages at arbitrary points, read into Opus packets.
 *
 * GLib only, so that the unit tests and the fuzz target run the server's reading without a
 * server. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* The largest Opus packet the reader assembles (a packet may span pages); upstream clients
 * send 20-60 ms packets of a few hundred bytes. */
#define MOSHI_OGG_MAX_PACKET (64 * 1024)

typedef struct {
  GByteArray *pending;          /* bytes of a page not yet whole */
  GByteArray *packet;           /* a packet continued onto the next page */
} MoshiOggReader;

typedef enum {
  MOSHI_OGG_READ_OK,            /* all whole pages read; the rest waits for more bytes */
  MOSHI_OGG_READ_NOT_OGG,       /* bytes where a page should start are not an Ogg page */
  MOSHI_OGG_READ_OVERSIZED,     /* a packet grew beyond MOSHI_OGG_MAX_PACKET */
  MOSHI_OGG_READ_STOPPED,       /* on_packet returned FALSE */
} MoshiOggReadResult;

/* One whole packet, valid only during the call. FALSE stops the reading. */
typedef gboolean (*MoshiOggPacketFunc) (const guint8 *packet, gsize len, gpointer user_data);

void moshi_ogg_reader_init (MoshiOggReader *reader);
void moshi_ogg_reader_clear (MoshiOggReader *reader);

/* Appends len bytes and hands every packet they complete to on_packet, in order. After any
 * result but OK the stream is unusable and the reader must only be cleared. */
MoshiOggReadResult moshi_ogg_reader_feed (MoshiOggReader *reader, const guint8 *data, gsize len,
    MoshiOggPacketFunc on_packet, gpointer user_data);

typedef enum {
  MOSHI_OPUS_PACKET_EMPTY,      /* nothing to decode */
  MOSHI_OPUS_PACKET_HEADER,     /* OpusHead or OpusTags */
  MOSHI_OPUS_PACKET_AUDIO,
  MOSHI_OPUS_PACKET_INVALID,    /* not an Opus packet (RFC 6716 3.1) */
} MoshiOpusPacketKind;

/* What a packet of the stream is; for audio, *samples48 is its duration in 48 kHz samples. */
MoshiOpusPacketKind moshi_opus_packet_kind (const guint8 *data, gsize len, guint *samples48);

/* Duration of an Opus packet in 48 kHz samples from its TOC byte (RFC 6716 3.1), or 0 when the
 * packet cannot be Opus. */
guint moshi_opus_packet_samples48 (const guint8 *data, gsize len);

G_END_DECLS
