/* libFuzzer target for moshi-server's client input: the /api/chat query string, read with
 * moshi_chat_query_parse, then WebSocket messages of kind 0x01 whose payloads together form an
 * Ogg/Opus stream, read with moshi_ogg_reader_feed and each packet classified with
 * moshi_opus_packet_kind, as tools/moshi-server.c does.
 *
 * Input: optionally '?' and a query string up to a NUL byte; then messages, each a 2-byte
 * little-endian length and that many bytes (the last one takes what is left), so that pages
 * split across and shared between messages are explored. Every query value taken must be in
 * moshidialog's range, every packet handed out must fit the reader's bound, and an audio packet
 * must last 2.5 to 120 ms. Run it with tests/fuzz/run-fuzz.sh. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "moshi-chat-query.h"
#include "moshi-ogg.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* The message kind of client audio in the protocol (docs/server.md). */
#define MSG_AUDIO 0x01
/* One Ogg page's body may complete a packet begun on earlier pages. */
#define MAX_PACKET_HANDED_OUT (MOSHI_OGG_MAX_PACKET + 255 * 255)

static volatile guint sink;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

static gboolean
on_packet (const guint8 *packet, gsize len, gpointer user_data)
{
  guint *n_packets = user_data;
  if (len > MAX_PACKET_HANDED_OUT)
    __builtin_trap ();
  guint samples;
  switch (moshi_opus_packet_kind (packet, len, &samples)) {
    case MOSHI_OPUS_PACKET_EMPTY:
    case MOSHI_OPUS_PACKET_HEADER:
      if (samples != 0)
        __builtin_trap ();
      return TRUE;
    case MOSHI_OPUS_PACKET_INVALID:
      return FALSE;             /* the server ends the conversation */
    case MOSHI_OPUS_PACKET_AUDIO:
      if (samples < 120 || samples > 5760)
        __builtin_trap ();
      break;
  }
  for (gsize i = 0; i < len; i++)
    sink += packet[i];
  (*n_packets)++;
  return TRUE;
}

static void
check_query (const uint8_t *query, size_t len)
{
  g_autofree char *text = g_strndup ((const char *) query, len);
  MoshiChatQuery q;
  moshi_chat_query_parse (text, &q);
  if ((q.have_text_temperature && !(q.text_temperature >= 0 && q.text_temperature <= 100))
      || (q.have_audio_temperature && !(q.audio_temperature >= 0 && q.audio_temperature <= 100))
      || (q.have_text_topk && q.text_topk < 0) || (q.have_audio_topk && q.audio_topk < 0))
    __builtin_trap ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size > 0 && data[0] == '?') {
    const uint8_t *nul = memchr (data, 0, size);
    size_t query_len = nul != NULL ? (size_t) (nul - data) : size;
    check_query (data + 1, query_len - 1);
    size_t used = nul != NULL ? query_len + 1 : size;
    data += used;
    size -= used;
  }
  MoshiOggReader reader;
  moshi_ogg_reader_init (&reader);
  guint n_packets = 0;
  gsize pos = 0;
  while (pos < size) {
    gsize len = size - pos;
    const guint8 *message = data + pos;
    if (len >= 2) {
      gsize wanted = data[pos] | (gsize) data[pos + 1] << 8;
      message += 2;
      len = MIN (wanted, len - 2);
    }
    pos = (gsize) (message - data) + len;
    /* Other kinds and empty audio messages are ignored, as the server does. */
    if (len < 2 || message[0] != MSG_AUDIO)
      continue;
    if (moshi_ogg_reader_feed (&reader, message + 1, len - 1, on_packet, &n_packets)
        != MOSHI_OGG_READ_OK)
      break;
    /* Whatever stays pending is at most one page, less the byte that would complete it. */
    if (reader.pending->len >= 27 + 255 + 255 * 255)
      __builtin_trap ();
  }
  moshi_ogg_reader_clear (&reader);
  return 0;
}
