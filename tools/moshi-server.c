/* moshi-server: Kyutai's Moshi WebSocket protocol (/api/chat) over the moshidialog element.
 *
 * One GStreamer pipeline per connection:
 *
 *   appsrc (Opus packets from our Ogg reader) ! opusdec ! audioconvert ! audioresample !
 *   moshidialog ! audioconvert ! opusenc ! appsink (packets, paged by our Ogg writer)
 *   moshidialog.text_src ! appsink (0x02 text pieces)
 *
 * Every connection's moshidialog names the same model files, so they share the one copy the
 * process loaded at start-up. The Ogg layer is our own on both sides (docs/server.md says why:
 * oggdemux trusts client metadata that real clients get wrong, oggmux adds two packets of
 * latency). See docs/server.md and ../shared/spec/protocol.md. */
#include <gio/gio.h>
#include <glib-unix.h>
#include <gst/app/gstappsink.h>
#include <gst/app/gstappsrc.h>
#include <gst/gst.h>
#include <libsoup/soup.h>

#include "moshi-chat-query.h"
#include "moshi-ogg.h"
#include "moshi-progress.h"
#include "moshi-tool-version.h"
#include "serve-util.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define MSG_HANDSHAKE 0x00
#define MSG_AUDIO 0x01
#define MSG_TEXT 0x02
#define MSG_ERROR 0x05

#define DEFAULT_REPO "kyutai/moshiko-pytorch-bf16"
#define MAX_OGG_PAGE (27 + 255 + 255 * 255)

/* ---------------------------------------------------------------------------------------------
 * Options and server state */

typedef struct {
  gchar *host;
  gint port;
  gchar *moshi_weight, *mimi_weight, *tokenizer, *hf_repo, *config_path, *mimi_config;
  gchar *device;
  gchar *static_dir;
  gchar *ssl_dir;
  gint max_conversations;
  gint idle_timeout;            /* s without client audio before a conversation ends */
  gint stall_timeout;           /* s that the client may leave our output unread */
  gint max_message;             /* bytes, the largest client message accepted */
  gint threads;                 /* CPU threads per conversation, 0: automatic */
  char *kv_cache;               /* moshidialog's kv-cache, NULL: its default */
  char *weights;                /* moshidialog's weights, NULL: as stored */
  gint bitrate;                 /* Opus bitrate of the model's voice */
  gboolean progress;            /* download lines even when stderr is not a terminal */
} Options;

typedef struct {
  Options opt;
  SoupServer *soup;
  GMainLoop *loop;
  GstElement *holder;           /* a moshidialog in READY: keeps the shared model loaded */
  GHashTable *conversations;    /* id -> Conversation */
  guint next_id;
  guint64 served, refused;
} Server;

/* ---------------------------------------------------------------------------------------------
 * Log lines: one per connection, at its end, plus start-up and refusals. */

static void server_log (const char *format, ...) G_GNUC_PRINTF (1, 2);

static void
server_log (const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree gchar *text = g_strdup_vprintf (format, args);
  va_end (args);
  g_autoptr (GDateTime) now = g_date_time_new_now_utc ();
  g_autofree gchar *stamp = g_date_time_format (now, "%Y-%m-%dT%H:%M:%S.%fZ");
  /* %f gives microseconds; milliseconds are enough. */
  if (strlen (stamp) > 24)
    memmove (stamp + 23, stamp + strlen (stamp) - 1, 2);
  fprintf (stderr, "%s moshi-server: %s\n", stamp, text);
  fflush (stderr);
}

/* ---------------------------------------------------------------------------------------------
 * Ogg: page CRC, our page writer, and a byte-stream page reader. */

static guint32 ogg_crc_table[256];

static void
ogg_crc_init (void)
{
  for (guint32 i = 0; i < 256; i++) {
    guint32 r = i << 24;
    for (int k = 0; k < 8; k++)
      r = (r & 0x80000000u) ? (r << 1) ^ 0x04c11db7u : r << 1;
    ogg_crc_table[i] = r;
  }
}

static guint32
ogg_crc (const guint8 *data, gsize len)
{
  guint32 crc = 0;
  for (gsize i = 0; i < len; i++)
    crc = (crc << 8) ^ ogg_crc_table[((crc >> 24) & 0xff) ^ data[i]];
  return crc;
}

/* Appends one page holding exactly one packet to out. */
static void
ogg_write_page (GByteArray *out, const guint8 *packet, gsize len, guint8 flags,
    guint64 granule, guint32 serial, guint32 seq)
{
  g_assert (len < 255 * 255);
  guint nsegs = len / 255 + 1;
  guint start = out->len;
  guint8 header[27 + 255];
  memcpy (header, "OggS", 4);
  header[4] = 0;
  header[5] = flags;
  for (int i = 0; i < 8; i++)
    header[6 + i] = (granule >> (8 * i)) & 0xff;
  for (int i = 0; i < 4; i++) {
    header[14 + i] = (serial >> (8 * i)) & 0xff;
    header[18 + i] = (seq >> (8 * i)) & 0xff;
    header[22 + i] = 0;
  }
  header[26] = nsegs;
  for (guint i = 0; i < nsegs; i++)
    header[27 + i] = i + 1 < nsegs ? 255 : len % 255;
  g_byte_array_append (out, header, 27 + nsegs);
  g_byte_array_append (out, packet, len);
  guint32 crc = ogg_crc (out->data + start, out->len - start);
  for (int i = 0; i < 4; i++)
    out->data[start + 22 + i] = (crc >> (8 * i)) & 0xff;
}

/* ---------------------------------------------------------------------------------------------
 * Conversations */

typedef struct {
  Server *server;
  guint id;
  gchar *peer;
  GDateTime *started;
  gint64 start_us;

  SoupWebsocketConnection *ws;
  GSocket *socket;
  GstElement *pipeline, *appsrc, *dialog;
  guint bus_watch;
  guint timer;

  /* Client audio: Ogg byte stream -> Opus packets (main thread only). */
  MoshiOggReader ogg;
  guint64 in_samples48;
  GstClockTime in_base;
  gboolean in_started;
  gint64 last_input_us;
  gint64 first_input_us;        /* when the first packet came */
  guint64 bytes_in;

  /* Our output pages (audio appsink streaming thread only). */
  gboolean headers_done;
  guint32 serial, seq;
  guint64 granule;

  /* Main thread only. */
  gint64 stall_since_us;
  guint64 pages_out, texts_out;
  gboolean ended, finished;
  gint64 ended_us;
  gchar *reason;
  guint64 seed;
} Conversation;

static Conversation *
conversation_ref (Conversation *c)
{
  return g_atomic_rc_box_acquire (c);
}

static void
conversation_clear (Conversation *c)
{
  g_free (c->peer);
  g_clear_pointer (&c->started, g_date_time_unref);
  moshi_ogg_reader_clear (&c->ogg);
  g_free (c->reason);
  g_clear_object (&c->socket);
  g_clear_object (&c->ws);
  if (c->pipeline != NULL) {
    gst_element_set_state (c->pipeline, GST_STATE_NULL);
    gst_clear_object (&c->pipeline);
  }
}

static void
conversation_unref (Conversation *c)
{
  g_atomic_rc_box_release_full (c, (GDestroyNotify) conversation_clear);
}

/* Ends the conversation once: frees the pipeline, writes its log line, drops it from the table.
 * The WebSocket is left to finish closing on its own. */
static void
conversation_finish (Conversation *c, const char *why)
{
  if (c->finished)
    return;
  c->finished = TRUE;
  if (c->reason == NULL)
    c->reason = g_strdup (why);
  if (c->timer != 0)
    g_source_remove (c->timer);
  c->timer = 0;
  if (c->bus_watch != 0)
    g_source_remove (c->bus_watch);
  c->bus_watch = 0;
  if (c->pipeline != NULL) {
    gst_element_set_state (c->pipeline, GST_STATE_NULL);
    gst_clear_object (&c->pipeline);
  }
  c->appsrc = c->dialog = NULL;
  if (c->ws != NULL)
    g_signal_handlers_disconnect_by_data (c->ws, c);

  g_autoptr (GDateTime) now = g_date_time_new_now_utc ();
  g_autofree gchar *t0 = g_date_time_format (c->started, "%H:%M:%S");
  g_autofree gchar *t1 = g_date_time_format (now, "%H:%M:%S");
  double secs = (g_get_monotonic_time () - c->start_us) / 1e6;
  Server *s = c->server;
  g_hash_table_remove (s->conversations, GUINT_TO_POINTER (c->id));
  server_log ("conversation %u from %s: start %s, end %s, duration %.1f s, ended: %s "
      "(%" G_GUINT64_FORMAT " bytes in, %" G_GUINT64_FORMAT " pages and %" G_GUINT64_FORMAT
      " text pieces out, seed %" G_GUINT64_FORMAT "; %u active)", c->id, c->peer, t0, t1, secs,
      c->reason, c->bytes_in, c->pages_out, c->texts_out, c->seed,
      g_hash_table_size (s->conversations));
  conversation_unref (c);       /* the table's reference */
}

static void
send_message (Conversation *c, guint8 kind, const void *payload, gsize len)
{
  if (c->ws == NULL || soup_websocket_connection_get_state (c->ws) != SOUP_WEBSOCKET_STATE_OPEN)
    return;
  g_autofree guint8 *msg = g_malloc (len + 1);
  msg[0] = kind;
  if (len > 0)
    memcpy (msg + 1, payload, len);
  soup_websocket_connection_send_binary (c->ws, msg, len + 1);
}

/* Ends the conversation on our side: an 0x05 error message when the protocol still allows one,
 * then a close frame with code, then the pipeline goes. */
static void
conversation_end (Conversation *c, const char *why, const char *error_text, gushort code)
{
  if (c->ended || c->finished)
    return;
  c->ended = TRUE;
  c->ended_us = g_get_monotonic_time ();
  c->reason = g_strdup (why);
  if (error_text != NULL)
    send_message (c, MSG_ERROR, error_text, strlen (error_text));
  if (c->ws != NULL && soup_websocket_connection_get_state (c->ws) == SOUP_WEBSOCKET_STATE_OPEN) {
    /* A close frame's reason holds at most 123 bytes. */
    g_autofree gchar *close_reason = NULL;
    if (error_text != NULL) {
      close_reason = g_strndup (error_text, 120);
      const gchar *end = NULL;
      if (!g_utf8_validate (close_reason, -1, &end))
        close_reason[end - close_reason] = '\0';
    }
    soup_websocket_connection_close (c->ws, code, close_reason);
  }
  /* The pipeline goes now; the log line when the socket has closed (or here if it already
   * has). */
  if (c->pipeline != NULL)
    gst_element_set_state (c->pipeline, GST_STATE_NULL);
  if (c->ws == NULL || soup_websocket_connection_get_state (c->ws) == SOUP_WEBSOCKET_STATE_CLOSED)
    conversation_finish (c, why);
}

/* True while the kernel takes our output; tracks how long it has not. */
static gboolean
check_stall (Conversation *c)
{
  if (c->socket == NULL)
    return TRUE;
  if (g_socket_condition_check (c->socket, G_IO_OUT) & G_IO_OUT) {
    c->stall_since_us = 0;
    return TRUE;
  }
  gint64 now = g_get_monotonic_time ();
  if (c->stall_since_us == 0)
    c->stall_since_us = now;
  else if (now - c->stall_since_us > (gint64) c->server->opt.stall_timeout * G_USEC_PER_SEC) {
    g_autofree gchar *why = g_strdup_printf ("client stopped reading (output unread for %d s)",
        c->server->opt.stall_timeout);
    conversation_end (c, why, NULL, SOUP_WEBSOCKET_CLOSE_POLICY_VIOLATION);
    return FALSE;
  }
  return TRUE;
}

/* Output from the streaming threads, handed to the main thread. */
typedef struct {
  Conversation *c;
  guint8 kind;
  GBytes *payload;
  guint pages;
} Outgoing;

static gboolean
outgoing_send (gpointer data)
{
  Outgoing *o = data;
  Conversation *c = o->c;
  if (!c->ended && !c->finished && check_stall (c)) {
    gsize len;
    const guint8 *p = g_bytes_get_data (o->payload, &len);
    send_message (c, o->kind, p, len);
    c->pages_out += o->pages;
    c->texts_out += o->kind == MSG_TEXT;
  }
  return G_SOURCE_REMOVE;
}

static void
outgoing_free (gpointer data)
{
  Outgoing *o = data;
  g_bytes_unref (o->payload);
  conversation_unref (o->c);
  g_free (o);
}

static void
queue_outgoing (Conversation *c, guint8 kind, GBytes *payload, guint pages)
{
  Outgoing *o = g_new0 (Outgoing, 1);
  o->c = conversation_ref (c);
  o->kind = kind;
  o->payload = payload;
  o->pages = pages;
  g_idle_add_full (G_PRIORITY_DEFAULT, outgoing_send, o, outgoing_free);
}

/* Audio appsink (its streaming thread): one Opus packet -> one page -> one 0x01 message; the
 * OpusHead and OpusTags pages (from opusenc's streamheader) go before the first one. */
static GstFlowReturn
on_audio_sample (GstAppSink *sink, gpointer user_data)
{
  Conversation *c = user_data;
  g_autoptr (GstSample) sample = gst_app_sink_pull_sample (sink);
  if (sample == NULL)
    return GST_FLOW_EOS;
  GstBuffer *buf = gst_sample_get_buffer (sample);
  if (buf == NULL || GST_BUFFER_FLAG_IS_SET (buf, GST_BUFFER_FLAG_HEADER))
    return GST_FLOW_OK;
  GByteArray *out = g_byte_array_new ();
  guint pages = 0;
  if (!c->headers_done) {
    const GstStructure *st = gst_caps_get_structure (gst_sample_get_caps (sample), 0);
    const GValue *headers = gst_structure_get_value (st, "streamheader");
    if (headers == NULL || !GST_VALUE_HOLDS_ARRAY (headers) || gst_value_array_get_size (headers) < 2) {
      g_byte_array_unref (out);
      return GST_FLOW_ERROR;
    }
    for (guint i = 0; i < 2; i++) {
      GstBuffer *h = gst_value_get_buffer (gst_value_array_get_value (headers, i));
      GstMapInfo hm;
      gst_buffer_map (h, &hm, GST_MAP_READ);
      ogg_write_page (out, hm.data, hm.size, i == 0 ? 0x02 : 0x00, 0, c->serial, c->seq++);
      gst_buffer_unmap (h, &hm);
      pages++;
    }
    c->headers_done = TRUE;
  }
  GstMapInfo map;
  if (gst_buffer_map (buf, &map, GST_MAP_READ)) {
    if (map.size > 0 && map.size < 255 * 255) {
      c->granule += moshi_opus_packet_samples48 (map.data, map.size);
      ogg_write_page (out, map.data, map.size, 0, c->granule, c->serial, c->seq++);
      pages++;
    }
    gst_buffer_unmap (buf, &map);
  }
  if (pages > 0)
    queue_outgoing (c, MSG_AUDIO, g_byte_array_free_to_bytes (out), pages);
  else
    g_byte_array_unref (out);
  return GST_FLOW_OK;
}

/* Text appsink: each buffer is one piece as upstream prints it ("▁" shown as a space). */
static GstFlowReturn
on_text_sample (GstAppSink *sink, gpointer user_data)
{
  Conversation *c = user_data;
  g_autoptr (GstSample) sample = gst_app_sink_pull_sample (sink);
  if (sample == NULL)
    return GST_FLOW_EOS;
  GstBuffer *buf = gst_sample_get_buffer (sample);
  gsize size = buf != NULL ? gst_buffer_get_size (buf) : 0;
  if (size > 0) {
    guint8 *text = g_malloc (size);
    gst_buffer_extract (buf, 0, text, size);
    queue_outgoing (c, MSG_TEXT, g_bytes_new_take (text, size), 0);
  }
  return GST_FLOW_OK;
}

static gboolean
on_bus_message (GstBus *bus, GstMessage *msg, gpointer user_data)
{
  Conversation *c = user_data;
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    g_autoptr (GError) err = NULL;
    g_autofree gchar *debug = NULL;
    gst_message_parse_error (msg, &err, &debug);
    g_autofree gchar *src = gst_object_get_name (GST_MESSAGE_SRC (msg));
    g_autofree gchar *why = g_strdup_printf ("stream error in %s: %s", src, err->message);
    g_autofree gchar *text = g_strdup_printf ("audio stream error: %s", err->message);
    c->bus_watch = 0;
    conversation_ref (c);
    conversation_end (c, why, text, SOUP_WEBSOCKET_CLOSE_BAD_DATA);
    conversation_unref (c);
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

/* Hands one Opus packet to the pipeline, stamped from the running sample count (never from
 * the client's granules): the first at the running time it arrived, then back to back. */
static gboolean
push_packet (const guint8 *data, gsize len, gpointer user_data)
{
  Conversation *c = user_data;
  guint samples;
  switch (moshi_opus_packet_kind (data, len, &samples)) {
    case MOSHI_OPUS_PACKET_EMPTY:
    case MOSHI_OPUS_PACKET_HEADER:
      return TRUE;
    case MOSHI_OPUS_PACKET_INVALID:
      conversation_end (c, "client sent a packet that is not Opus",
          "invalid Opus packet in the audio stream", SOUP_WEBSOCKET_CLOSE_BAD_DATA);
      return FALSE;
    case MOSHI_OPUS_PACKET_AUDIO:
      break;
  }
  if (!c->in_started) {
    GstClock *clock = gst_element_get_clock (c->pipeline);
    GstClockTime now = clock != NULL ? gst_clock_get_time (clock) : 0;
    GstClockTime base = gst_element_get_base_time (c->pipeline);
    c->in_base = now > base ? now - base : 0;
    gst_clear_object (&clock);
    c->in_started = TRUE;
    c->first_input_us = g_get_monotonic_time ();
  }
  GstBuffer *buf = gst_buffer_new_memdup (data, len);
  GST_BUFFER_PTS (buf) = c->in_base + gst_util_uint64_scale (c->in_samples48, GST_SECOND, 48000);
  GST_BUFFER_DURATION (buf) = gst_util_uint64_scale (samples, GST_SECOND, 48000);
  c->in_samples48 += samples;
  gst_app_src_push_buffer (GST_APP_SRC (c->appsrc), buf);
  /* Real-time clients keep this small; ~2 min of Opus queued means a client that sends far
   * faster than real time. */
  if (gst_app_src_get_current_level_bytes (GST_APP_SRC (c->appsrc)) > 4 * 1024 * 1024) {
    conversation_end (c, "client sends audio much faster than real time",
        "audio arrives much faster than real time", SOUP_WEBSOCKET_CLOSE_POLICY_VIOLATION);
    return FALSE;
  }
  return TRUE;
}

/* Client audio is a byte stream: pages may be split across messages or share one. */
static void
feed_ogg (Conversation *c, const guint8 *data, gsize len)
{
  switch (moshi_ogg_reader_feed (&c->ogg, data, len, push_packet, c)) {
    case MOSHI_OGG_READ_OK:
    case MOSHI_OGG_READ_STOPPED:     /* push_packet ended the conversation */
      break;
    case MOSHI_OGG_READ_NOT_OGG:
      conversation_end (c, "client sent audio that is not an Ogg stream",
          "audio must be Ogg/Opus: this is not an Ogg page", SOUP_WEBSOCKET_CLOSE_BAD_DATA);
      break;
    case MOSHI_OGG_READ_OVERSIZED:
      conversation_end (c, "client sent an oversized Opus packet",
          "invalid Opus packet in the audio stream", SOUP_WEBSOCKET_CLOSE_BAD_DATA);
      break;
  }
}

static void
on_ws_message (SoupWebsocketConnection *ws, gint type, GBytes *message, gpointer user_data)
{
  Conversation *c = user_data;
  if (c->ended)
    return;
  if (type != SOUP_WEBSOCKET_DATA_BINARY)
    return;                     /* text frames: ignored, as upstream does */
  gsize len;
  const guint8 *data = g_bytes_get_data (message, &len);
  if (len == 0)
    return;
  if (data[0] != MSG_AUDIO)
    return;                     /* other kinds (control, metadata, unknown): ignored */
  if (len == 1)
    return;
  c->bytes_in += len - 1;
  c->last_input_us = g_get_monotonic_time ();
  conversation_ref (c);
  feed_ogg (c, data + 1, len - 1);
  conversation_unref (c);
}

static void
on_ws_error (SoupWebsocketConnection *ws, GError *error, gpointer user_data)
{
  Conversation *c = user_data;
  if (c->reason == NULL)
    c->reason = g_strdup_printf ("connection error: %s", error->message);
  if (!c->ended) {
    /* libsoup closes the connection; "closed" follows. */
    c->ended = TRUE;
    c->ended_us = g_get_monotonic_time ();
    if (c->pipeline != NULL)
      gst_element_set_state (c->pipeline, GST_STATE_NULL);
  }
}

static void
on_ws_closed (SoupWebsocketConnection *ws, gpointer user_data)
{
  Conversation *c = user_data;
  g_autofree gchar *why = NULL;
  gushort code = soup_websocket_connection_get_close_code (ws);
  if (code == 0)
    why = g_strdup ("connection lost (no close frame)");
  else
    why = g_strdup_printf ("client closed (code %u)", code);
  conversation_finish (c, why);
}

static void
timer_tick (Conversation *c)
{
  gint64 now = g_get_monotonic_time ();
  if (c->finished)
    return;
  if (c->ended) {
    /* Our close frame got no answer in 5 s (a client that reads nothing): drop the socket. */
    if (now - c->ended_us > 5 * G_USEC_PER_SEC) {
      if (c->ws != NULL)
        g_io_stream_close (soup_websocket_connection_get_io_stream (c->ws), NULL, NULL);
      conversation_finish (c, c->reason);
    }
    return;
  }
  /* Idle: no audio for the timeout, counted from the end of the audio already sent (a client
   * may send faster than real time). */
  gint64 last = c->last_input_us;
  if (c->in_started)
    last = MAX (last, c->first_input_us + (gint64) (c->in_samples48 * G_USEC_PER_SEC / 48000));
  if (now - last > (gint64) c->server->opt.idle_timeout * G_USEC_PER_SEC) {
    g_autofree gchar *why = g_strdup_printf ("no audio from the client for %d s",
        c->server->opt.idle_timeout);
    g_autofree gchar *text = g_strdup_printf ("no audio received for %d s",
        c->server->opt.idle_timeout);
    conversation_end (c, why, text, SOUP_WEBSOCKET_CLOSE_POLICY_VIOLATION);
    return;
  }
  /* Also catches a client that stops reading while we have nothing new to send. */
  check_stall (c);
}

static gboolean
on_timer (gpointer user_data)
{
  Conversation *c = conversation_ref (user_data);
  timer_tick (c);
  conversation_unref (c);
  return G_SOURCE_CONTINUE;
}

/* The sampling settings the client asks for in the query string. */
static void
apply_query (Conversation *c, const char *query)
{
  MoshiChatQuery q;
  moshi_chat_query_parse (query, &q);
  if (q.have_text_temperature)
    g_object_set (c->dialog, "text-temperature", q.text_temperature, NULL);
  if (q.have_audio_temperature)
    g_object_set (c->dialog, "audio-temperature", q.audio_temperature, NULL);
  if (q.have_text_topk)
    g_object_set (c->dialog, "text-topk", q.text_topk, NULL);
  if (q.have_audio_topk)
    g_object_set (c->dialog, "audio-topk", q.audio_topk, NULL);
  if (q.have_seed)
    g_object_set (c->dialog, "seed", q.seed, NULL);
}

static void
configure_dialog (const Options *o, GstElement *dialog)
{
  const char *repo = o->hf_repo != NULL ? o->hf_repo : DEFAULT_REPO;
  g_object_set (dialog,
      "model", o->moshi_weight != NULL ? o->moshi_weight : repo,
      "mimi-model", o->mimi_weight != NULL ? o->mimi_weight : repo,
      "tokenizer", o->tokenizer != NULL ? o->tokenizer : repo,
      "lm-config", o->config_path, "mimi-config", o->mimi_config,
      "threads", o->threads,
      /* every conversation joins the process's scheduler: one batched LM step per tick */
      "max-conversations", o->max_conversations > 0 ? (guint) o->max_conversations : 1024u,
      /* as upstream's server, the model steps on the client's frames: a WebSocket's jitter
       * is not a silent caller (a client that stops sending meets --idle-timeout) */
      "fill-stalls", FALSE, NULL);
  if (o->device != NULL)
    gst_util_set_object_arg (G_OBJECT (dialog), "device", o->device);
  if (o->kv_cache != NULL)
    gst_util_set_object_arg (G_OBJECT (dialog), "kv-cache", o->kv_cache);
  if (o->weights != NULL)
    gst_util_set_object_arg (G_OBJECT (dialog), "weights", o->weights);
}

static gboolean
conversation_start (Conversation *c, const char *query, GError **error)
{
  const Options *o = &c->server->opt;
  c->pipeline = gst_parse_launch_full ("appsrc name=src is-live=true format=time "
      "caps=audio/x-opus,channel-mapping-family=(int)0,channels=(int)1,rate=(int)48000 "
      "! opusdec max-errors=5 ! audioconvert ! audioresample ! moshidialog name=dialog "
      "! audioconvert ! opusenc name=enc frame-size=40 audio-type=voice "
      "! appsink name=audio sync=true async=false qos=false max-lateness=-1 "
      "dialog.text_src ! appsink name=text sync=true async=false qos=false max-lateness=-1",
      NULL, GST_PARSE_FLAG_FATAL_ERRORS, error);
  if (c->pipeline == NULL)
    return FALSE;
  GstBin *bin = GST_BIN (c->pipeline);
  c->appsrc = gst_bin_get_by_name (bin, "src");
  c->dialog = gst_bin_get_by_name (bin, "dialog");
  GstElement *enc = gst_bin_get_by_name (bin, "enc");
  GstElement *audio = gst_bin_get_by_name (bin, "audio");
  GstElement *text = gst_bin_get_by_name (bin, "text");
  /* The bin holds them; these pointers live as long as the pipeline. */
  gst_object_unref (c->appsrc);
  gst_object_unref (c->dialog);
  g_object_set (enc, "bitrate", o->bitrate, NULL);
  gst_object_unref (enc);
  configure_dialog (o, c->dialog);
  /* Like upstream, where each conversation draws on from one generator, conversations differ
   * unless the client asks for a seed. */
  guint64 seed = ((guint64) g_random_int () << 32) | g_random_int ();
  g_object_set (c->dialog, "seed", seed, NULL);
  apply_query (c, query);
  g_object_get (c->dialog, "seed", &c->seed, NULL);

  GstAppSinkCallbacks audio_cb = { .new_sample = on_audio_sample };
  GstAppSinkCallbacks text_cb = { .new_sample = on_text_sample };
  gst_app_sink_set_callbacks (GST_APP_SINK (audio), &audio_cb, c, NULL);
  gst_app_sink_set_callbacks (GST_APP_SINK (text), &text_cb, c, NULL);
  gst_object_unref (audio);
  gst_object_unref (text);

  g_autoptr (GstBus) bus = gst_element_get_bus (c->pipeline);
  c->bus_watch = gst_bus_add_watch (bus, on_bus_message, c);

  return serve_start_pipeline (c->pipeline, "could not start the conversation", error);
}

static void
unref_when_closed (SoupWebsocketConnection *ws, gpointer user_data)
{
  g_object_unref (ws);
}

static void
on_chat (SoupServer *soup, SoupServerMessage *msg, const char *path,
    SoupWebsocketConnection *ws, gpointer user_data)
{
  Server *s = user_data;
  g_autofree gchar *peer = serve_peer_name (msg);

  guint id = ++s->next_id;
  if (s->opt.max_conversations > 0
      && g_hash_table_size (s->conversations) >= (guint) s->opt.max_conversations) {
    /* A clear refusal: an 0x05 message, then close code 4013: RFC 6455's 1013 (try again later)
     * in the application range, as libsoup 3.2 refuses to send 1012-1014. */
    g_autofree gchar *text = g_strdup_printf ("server busy: all %d conversations in use, "
        "try again later", s->opt.max_conversations);
    guint8 *m = g_malloc (strlen (text) + 1);
    m[0] = MSG_ERROR;
    memcpy (m + 1, text, strlen (text));
    soup_websocket_connection_send_binary (ws, m, strlen (text) + 1);
    g_free (m);
    /* Keep the socket until the close is done: the server lets go of it when we return. */
    g_signal_connect (g_object_ref (ws), "closed", G_CALLBACK (unref_when_closed), NULL);
    soup_websocket_connection_close (ws, 4013, "server busy, try again later");
    s->refused++;
    server_log ("conversation %u from %s: refused, %d conversations already active", id, peer,
        s->opt.max_conversations);
    return;
  }

  Conversation *c = g_atomic_rc_box_new0 (Conversation);
  c->server = s;
  c->id = id;
  c->peer = g_steal_pointer (&peer);
  c->started = g_date_time_new_now_utc ();
  c->start_us = c->last_input_us = g_get_monotonic_time ();
  c->ws = g_object_ref (ws);
  moshi_ogg_reader_init (&c->ogg);
  c->serial = g_random_int ();
  GSocket *sock = soup_server_message_get_socket (msg);
  if (sock != NULL) {
    c->socket = g_object_ref (sock);
    /* A small send buffer: a client that stops reading shows within seconds (its data then
     * waits in libsoup's queue, bounded by --stall-timeout). */
    g_socket_set_option (sock, SOL_SOCKET, SO_SNDBUF, 32 * 1024, NULL);
    g_socket_set_option (sock, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
  }
  g_hash_table_insert (s->conversations, GUINT_TO_POINTER (id), c);
  s->served++;

  soup_websocket_connection_set_max_incoming_payload_size (ws, s->opt.max_message);
  g_signal_connect (ws, "message", G_CALLBACK (on_ws_message), c);
  g_signal_connect (ws, "error", G_CALLBACK (on_ws_error), c);
  g_signal_connect (ws, "closed", G_CALLBACK (on_ws_closed), c);

  GUri *uri = soup_server_message_get_uri (msg);
  g_autoptr (GError) error = NULL;
  if (!conversation_start (c, uri != NULL ? g_uri_get_query (uri) : NULL, &error)) {
    conversation_end (c, error->message, error->message, SOUP_WEBSOCKET_CLOSE_SERVER_ERROR);
    return;
  }
  c->timer = g_timeout_add (250, on_timer, c);
  /* The handshake: kind 0, protocol version 0, model version 0. */
  static const guint8 zeros[8] = { 0 };
  send_message (c, MSG_HANDSHAKE, zeros, sizeof zeros);
}

/* ---------------------------------------------------------------------------------------------
 * HTTP: /health and the static web client */

/* Plain HTTP answers close their connection: libsoup 3.2 leaks keep-alive connections that the
 * client closes while idle (fixed in libsoup 3.3), and nothing here needs keep-alive. */
static void
close_after (SoupServerMessage *msg)
{
  soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Connection",
      "close");
}

static void
on_health (SoupServer *soup, SoupServerMessage *msg, const char *path, GHashTable *query,
    gpointer user_data)
{
  Server *s = user_data;
  close_after (msg);
  g_autofree gchar *body = g_strdup_printf ("{\"status\":\"ok\",\"conversations\":%u,"
      "\"max_conversations\":%d,\"served\":%" G_GUINT64_FORMAT ",\"refused\":%"
      G_GUINT64_FORMAT "}\n", g_hash_table_size (s->conversations), s->opt.max_conversations,
      s->served, s->refused);
  soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
  soup_server_message_set_response (msg, "application/json", SOUP_MEMORY_COPY, body,
      strlen (body));
}

static const char *
mime_type (const char *path)
{
  static const struct { const char *ext, *type; } types[] = {
    { ".html", "text/html; charset=utf-8" }, { ".js", "text/javascript" },
    { ".mjs", "text/javascript" }, { ".css", "text/css" }, { ".wasm", "application/wasm" },
    { ".json", "application/json" }, { ".svg", "image/svg+xml" }, { ".png", "image/png" },
    { ".jpg", "image/jpeg" }, { ".ico", "image/x-icon" }, { ".txt", "text/plain" },
    { ".woff2", "font/woff2" }, { ".map", "application/json" },
  };
  for (gsize i = 0; i < G_N_ELEMENTS (types); i++)
    if (g_str_has_suffix (path, types[i].ext))
      return types[i].type;
  return "application/octet-stream";
}

static void
on_static (SoupServer *soup, SoupServerMessage *msg, const char *path, GHashTable *query,
    gpointer user_data)
{
  Server *s = user_data;
  const char *method = soup_server_message_get_method (msg);
  close_after (msg);
  if (s->opt.static_dir == NULL || g_strcmp0 (path, "/api/chat") == 0) {
    soup_server_message_set_status (msg, SOUP_STATUS_NOT_FOUND, NULL);
    return;
  }
  if (method != SOUP_METHOD_GET && method != SOUP_METHOD_HEAD) {
    soup_server_message_set_status (msg, SOUP_STATUS_METHOD_NOT_ALLOWED, NULL);
    return;
  }
  g_auto (GStrv) parts = g_strsplit (path, "/", -1);
  for (guint i = 0; parts[i] != NULL; i++)
    if (g_str_equal (parts[i], "..")) {
      soup_server_message_set_status (msg, SOUP_STATUS_FORBIDDEN, NULL);
      return;
    }
  g_autofree gchar *file = g_build_filename (s->opt.static_dir, path, NULL);
  if (g_file_test (file, G_FILE_TEST_IS_DIR)) {
    gchar *index = g_build_filename (file, "index.html", NULL);
    g_free (file);
    file = index;
  }
  gchar *contents = NULL;
  gsize len = 0;
  if (!g_file_get_contents (file, &contents, &len, NULL)) {
    soup_server_message_set_status (msg, SOUP_STATUS_NOT_FOUND, NULL);
    return;
  }
  soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
  soup_server_message_set_response (msg, mime_type (file), SOUP_MEMORY_TAKE, contents, len);
}

/* ---------------------------------------------------------------------------------------------
 * Start-up */

static gboolean
load_model (Server *s)
{
  GstElement *dialog = gst_element_factory_make ("moshidialog", NULL);
  if (dialog == NULL) {
    g_printerr ("moshi-server: the moshidialog element is not available (is the moshi plugin "
        "on GST_PLUGIN_PATH?)\n");
    return FALSE;
  }
  configure_dialog (&s->opt, dialog);
  g_autoptr (GError) error = NULL;
  MoshiProgress meter;
  moshi_progress_init (&meter, s->opt.progress, "download", 0);
  s->holder = serve_hold_in_ready (dialog, serve_download_progress, &meter, &error);
  if (s->holder == NULL) {
    g_printerr ("moshi-server: %s\n", error->message);
    return FALSE;
  }
  return TRUE;
}

static gboolean
server_listen (Server *s, GError **error)
{
  SoupServerListenOptions flags = s->opt.ssl_dir != NULL ? SOUP_SERVER_LISTEN_HTTPS : 0;
  const char *host = s->opt.host;
  if (g_str_equal (host, "localhost"))
    return soup_server_listen_local (s->soup, s->opt.port, flags, error);
  if (g_str_equal (host, "0.0.0.0") || g_str_equal (host, "::") || host[0] == '\0')
    return soup_server_listen_all (s->soup, s->opt.port, flags, error);
  g_autoptr (GInetAddress) ip = g_inet_address_new_from_string (host);
  if (ip == NULL) {
    GResolver *resolver = g_resolver_get_default ();
    GList *list = g_resolver_lookup_by_name (resolver, host, NULL, error);
    g_object_unref (resolver);
    if (list == NULL)
      return FALSE;
    ip = g_object_ref (list->data);
    g_resolver_free_addresses (list);
  }
  g_autoptr (GSocketAddress) addr = g_inet_socket_address_new (ip, s->opt.port);
  return soup_server_listen (s->soup, addr, flags, error);
}

static gboolean
on_signal (gpointer user_data)
{
  Server *s = user_data;
  server_log ("shutting down");
  g_main_loop_quit (s->loop);
  return G_SOURCE_REMOVE;
}

int
main (int argc, char **argv)
{
  Server s = { 0 };
  Options *o = &s.opt;
  o->port = 8998;
  o->max_conversations = 8;
  o->idle_timeout = 10;
  o->stall_timeout = 10;
  o->max_message = 1024 * 1024;
  o->bitrate = 32000;
  gboolean version = FALSE;
  GOptionEntry entries[] = {
    { "host", 0, 0, G_OPTION_ARG_STRING, &o->host, "Address to listen on (default localhost; "
          "0.0.0.0 for all)", "HOST" },
    { "port", 0, 0, G_OPTION_ARG_INT, &o->port, "Port (default 8998; 0: any free port)", "PORT" },
    { "moshi-weight", 0, 0, G_OPTION_ARG_FILENAME, &o->moshi_weight,
          "Moshi LM checkpoint (.safetensors); default: from --hf-repo", "FILE" },
    { "mimi-weight", 0, 0, G_OPTION_ARG_FILENAME, &o->mimi_weight,
          "Mimi checkpoint; default: from --hf-repo", "FILE" },
    { "tokenizer", 0, 0, G_OPTION_ARG_FILENAME, &o->tokenizer,
          "SentencePiece text tokenizer; default: from --hf-repo", "FILE" },
    { "hf-repo", 0, 0, G_OPTION_ARG_STRING, &o->hf_repo, "Hugging Face repo holding the models, "
          "downloaded into the hub cache when missing; default " DEFAULT_REPO, "REPO" },
    { "config-path", 0, 0, G_OPTION_ARG_FILENAME, &o->config_path,
          "LM config.json, for models other than Moshi 7B", "FILE" },
    { "mimi-config", 0, 0, G_OPTION_ARG_FILENAME, &o->mimi_config,
          "Mimi config JSON, for models other than the released Mimi", "FILE" },
    { "device", 0, 0, G_OPTION_ARG_STRING, &o->device, "auto (default), cpu or cuda", "DEV" },
    { "static", 0, 0, G_OPTION_ARG_FILENAME, &o->static_dir,
          "Serve this directory (a built web client) at /; 'none' or absent: no static files",
          "DIR" },
    { "ssl", 0, 0, G_OPTION_ARG_FILENAME, &o->ssl_dir,
          "Serve HTTPS/WSS with DIR/cert.pem and DIR/key.pem", "DIR" },
    { "max-conversations", 0, 0, G_OPTION_ARG_INT, &o->max_conversations,
          "Concurrent conversations; later clients are refused (default 8; 0: no limit)", "N" },
    { "idle-timeout", 0, 0, G_OPTION_ARG_INT, &o->idle_timeout,
          "End a conversation after S seconds without client audio (default 10)", "S" },
    { "stall-timeout", 0, 0, G_OPTION_ARG_INT, &o->stall_timeout,
          "End a conversation whose client leaves output unread for S seconds (default 10)", "S" },
    { "max-message", 0, 0, G_OPTION_ARG_INT, &o->max_message,
          "Largest client message in bytes (default 1048576)", "BYTES" },
    { "threads", 0, 0, G_OPTION_ARG_INT, &o->threads,
          "CPU threads per conversation (default 0: automatic)", "N" },
    { "kv-cache", 0, 0, G_OPTION_ARG_STRING, &o->kv_cache,
          "LM attention caches: bf16 (default), fp8 or f32", "TYPE" },
    { "weights", 0, 0, G_OPTION_ARG_STRING, &o->weights,
          "LM linear layers: as-stored (default) or int8 (quantized at load)", "FORMAT" },
    { "bitrate", 0, 0, G_OPTION_ARG_INT, &o->bitrate,
          "Opus bitrate of the model's voice in bit/s (default 32000)", "BPS" },
    { "progress", 'p', 0, G_OPTION_ARG_NONE, &o->progress,
          "Model download progress on stderr even when it is not a terminal", NULL },
    { "version", 0, 0, G_OPTION_ARG_NONE, &version, "The versions of moshi-server and libmoshi",
          NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- the Moshi WebSocket server");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_option_context_add_group (ctx, gst_init_get_option_group ());
  g_autoptr (GError) error = NULL;
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    g_printerr ("moshi-server: %s\n", error->message);
    return 2;
  }
  if (version) {
    moshi_tool_print_version ("moshi-server");
    return 0;
  }
  if (o->device != NULL && !g_str_equal (o->device, "auto") && !g_str_equal (o->device, "cpu")
      && !g_str_equal (o->device, "cuda")) {
    g_printerr ("moshi-server: --device=%s: expected auto, cpu or cuda\n", o->device);
    return 2;
  }
  if (o->kv_cache != NULL && !g_str_equal (o->kv_cache, "bf16") && !g_str_equal (o->kv_cache, "fp8")
      && !g_str_equal (o->kv_cache, "f32")) {
    g_printerr ("moshi-server: --kv-cache=%s: expected bf16, fp8 or f32\n", o->kv_cache);
    return 2;
  }
  if (o->weights != NULL && !g_str_equal (o->weights, "as-stored")
      && !g_str_equal (o->weights, "int8")) {
    g_printerr ("moshi-server: --weights=%s: expected as-stored or int8\n", o->weights);
    return 2;
  }
  if (o->host == NULL)
    o->host = g_strdup ("localhost");
  if (o->static_dir != NULL && g_str_equal (o->static_dir, "none"))
    g_clear_pointer (&o->static_dir, g_free);
  if (o->port < 0 || o->port > 65535 || o->max_conversations < 0 || o->idle_timeout < 1
      || o->stall_timeout < 1 || o->max_message < 1024 || o->threads < 0 || o->bitrate < 6000) {
    g_printerr ("moshi-server: an option is out of range (see --help)\n");
    return 2;
  }
  gst_init (&argc, &argv);
  ogg_crc_init ();

  int rc = 1;
  g_autoptr (GTlsCertificate) cert = NULL;
  if (o->ssl_dir != NULL) {
    g_autofree gchar *cert_file = g_build_filename (o->ssl_dir, "cert.pem", NULL);
    g_autofree gchar *key_file = g_build_filename (o->ssl_dir, "key.pem", NULL);
    cert = g_tls_certificate_new_from_files (cert_file, key_file, &error);
    if (cert == NULL) {
      g_printerr ("moshi-server: --ssl: %s\n", error->message);
      goto out;
    }
  }
  if (!load_model (&s))
    goto out;

  s.conversations = g_hash_table_new (NULL, NULL);
  s.soup = soup_server_new ("server-header", "moshi-server", NULL);
  /* No permessage-deflate: a few kB of compressed zeros would otherwise get past
   * --max-message, and nothing in the protocol needs it. */
  soup_server_remove_websocket_extension (s.soup, SOUP_TYPE_WEBSOCKET_EXTENSION_DEFLATE);
  if (cert != NULL)
    soup_server_set_tls_certificate (s.soup, cert);
  soup_server_add_handler (s.soup, "/health", on_health, &s, NULL);
  soup_server_add_handler (s.soup, NULL, on_static, &s, NULL);
  soup_server_add_websocket_handler (s.soup, "/api/chat", NULL, NULL, on_chat, &s, NULL);
  if (!server_listen (&s, &error)) {
    g_printerr ("moshi-server: cannot listen on %s:%d: %s\n", o->host, o->port, error->message);
    goto out;
  }
  /* Where we listen (soup_server_get_uris leaks an address in libsoup 3.2). */
  GSList *listeners = soup_server_get_listeners (s.soup);
  for (GSList *l = listeners; l != NULL; l = l->next) {
    g_autoptr (GSocketAddress) addr = g_socket_get_local_address (l->data, NULL);
    if (!G_IS_INET_SOCKET_ADDRESS (addr))
      continue;
    GInetSocketAddress *inet = G_INET_SOCKET_ADDRESS (addr);
    g_autofree gchar *ip = g_inet_address_to_string (g_inet_socket_address_get_address (inet));
    gboolean v6 = g_inet_address_get_family (g_inet_socket_address_get_address (inet))
        == G_SOCKET_FAMILY_IPV6;
    const char *scheme = o->ssl_dir != NULL ? "https" : "http";
    printf ("moshi-server: listening on %s://%s%s%s:%u/ (WebSocket: %s://%s%s%s:%u/api/chat)\n",
        scheme, v6 ? "[" : "", ip, v6 ? "]" : "", g_inet_socket_address_get_port (inet),
        o->ssl_dir != NULL ? "wss" : "ws", v6 ? "[" : "", ip, v6 ? "]" : "",
        g_inet_socket_address_get_port (inet));
  }
  g_slist_free (listeners);
  fflush (stdout);

  s.loop = g_main_loop_new (NULL, FALSE);
  g_unix_signal_add (SIGINT, on_signal, &s);
  g_unix_signal_add (SIGTERM, on_signal, &s);
  g_main_loop_run (s.loop);

  /* Shutting down: end what is left, let the close frames go out. */
  GList *left = g_hash_table_get_values (s.conversations);
  for (GList *l = left; l != NULL; l = l->next)
    conversation_end (l->data, "server shutting down", "server shutting down",
        SOUP_WEBSOCKET_CLOSE_GOING_AWAY);
  g_list_free (left);
  left = g_hash_table_get_values (s.conversations);
  for (GList *l = left; l != NULL; l = l->next)
    conversation_finish (l->data, "server shutting down");
  g_list_free (left);
  while (g_main_context_iteration (NULL, FALSE));
  soup_server_disconnect (s.soup);
  while (g_main_context_iteration (NULL, FALSE));
  server_log ("served %" G_GUINT64_FORMAT " conversations, refused %" G_GUINT64_FORMAT,
      s.served, s.refused);
  rc = 0;

out:
  g_clear_object (&s.soup);
  g_clear_pointer (&s.loop, g_main_loop_unref);
  g_clear_pointer (&s.conversations, g_hash_table_unref);
  if (s.holder != NULL) {
    gst_element_set_state (s.holder, GST_STATE_NULL);
    gst_object_unref (s.holder);
  }
  g_free (o->host);
  g_free (o->moshi_weight);
  g_free (o->mimi_weight);
  g_free (o->tokenizer);
  g_free (o->hf_repo);
  g_free (o->config_path);
  g_free (o->mimi_config);
  g_free (o->device);
  g_free (o->kv_cache);
  g_free (o->weights);
  g_free (o->static_dir);
  g_free (o->ssl_dir);
  gst_deinit ();
  return rc;
}
