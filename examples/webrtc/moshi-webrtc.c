/* moshi-webrtc: talk with Moshi from a browser over WebRTC.
 *
 * One HTTP port serves the page (index.html, moshi-webrtc.js) and the signalling WebSocket
 * (/ws, JSON messages). Each WebSocket is one browser and one pipeline:
 *
 *   webrtcbin (browser mic, RTP Opus) ! rtpopusdepay ! opusdec plc=true ! audioconvert !
 *     audioresample ! queue ! moshidialog ! queue ! audioconvert ! audioresample !
 *     opusenc ! rtpopuspay ! webrtcbin (to the browser)
 *   moshidialog.text_src ! queue ! appsink -> the browser's data channel "text"
 *
 * The browser makes the offer (audio sendrecv plus the data channel), so the answer can be
 * made before moshidialog has produced anything: webrtcbin only offers on its own once every
 * sink pad has caps, and ours get caps only after the browser's audio has arrived.
 * Every moshidialog names the same model files and joins the process's shared scheduler (its
 * default): all browsers are stepped in one batched LM step. See docs/webrtc.md. */
#include <gio/gio.h>
#include <glib-unix.h>
#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <gst/sdp/sdp.h>
#include <json-glib/json-glib.h>
#include <libsoup/soup.h>

#include "moshi-progress.h"
#include "serve-util.h"

#include <stdio.h>
#include <string.h>

/* GstWebRTCSessionDescription as gst/webrtc/rtcsessiondescription.h declares it (a public,
 * stable struct since 1.14). The header ships in libgstreamer-plugins-bad1.0-dev, which in
 * Debian 12 depends on libopencv-dev (some 230 MB); everything else of libgstwebrtc is reached
 * through GObject (signals, properties, enum types by name), so this struct is all we need. */
typedef struct {
  gint type;                    /* GstWebRTCSDPType */
  GstSDPMessage *sdp;
} SessionDescription;

/* GST_WEBRTC_SDP_TYPE_OFFER: the one value of GstWebRTCSDPType we need; that enum type is only
 * registered when something calls its get_type function, so it cannot be looked up by name. */
#define SDP_TYPE_OFFER 1

typedef struct {
  gchar *host;
  gint port;
  gchar *model, *lm_config, *mimi_model, *mimi_config, *tokenizer, *hf_repo;
  gchar *device;
  gchar *static_dir;
  gchar **ice_addresses;        /* host candidates only on these, NULL: every interface */
  gint max_peers;
  gint bitrate;
  gboolean progress;            /* download lines even when stderr is not a terminal */
} Options;

typedef struct {
  Options opt;
  SoupServer *soup;
  GMainLoop *loop;
  GstElement *holder;           /* a moshidialog in READY: keeps the shared model loaded */
  GHashTable *peers;            /* id -> Peer */
  guint next_id;
} Server;

typedef struct {
  Server *server;
  guint id;
  gchar *remote;
  SoupWebsocketConnection *ws;  /* NULL once the browser has gone */
  GstElement *pipeline, *webrtc, *depay, *dialog;
  guint bus_watch;
  GMutex lock;                  /* channel and the counters below, set from webrtcbin's threads */
  GObject *channel;             /* GstWebRTCDataChannel the browser opened, or NULL */
  guint texts_sent, texts_dropped;
  gboolean ended;
} Peer;

static void server_log (const char *format, ...) G_GNUC_PRINTF (1, 2);

/* stdout, line-buffered: the test and scripts read these lines as they come. */
static void
server_log (const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree gchar *line = g_strdup_vprintf (format, args);
  va_end (args);
  printf ("moshi-webrtc: %s\n", line);
  fflush (stdout);
}

static gint
enum_value (const char *type_name, const char *nick)
{
  GType type = g_type_from_name (type_name);
  g_return_val_if_fail (type != 0, -1);
  GEnumClass *klass = g_type_class_ref (type);
  GEnumValue *v = g_enum_get_value_by_nick (klass, nick);
  gint value = v != NULL ? v->value : -1;
  g_type_class_unref (klass);
  return value;
}

/* ---------------------------------------------------------------------------------------------
 * Peers. webrtcbin calls back on its own threads; the WebSocket is only touched on the main
 * context, so those callbacks hand their messages over with peer_send_later(). */

static Peer *
peer_ref (Peer *p)
{
  return g_atomic_rc_box_acquire (p);
}

static void
peer_clear (Peer *p)
{
  g_clear_object (&p->ws);
  g_clear_object (&p->channel);
  g_clear_object (&p->pipeline);
  g_free (p->remote);
  g_mutex_clear (&p->lock);
}

static void
peer_unref (Peer *p)
{
  g_atomic_rc_box_release_full (p, (GDestroyNotify) peer_clear);
}

static void
peer_end (Peer *p, const char *why)
{
  if (p->ended)
    return;
  p->ended = TRUE;
  g_mutex_lock (&p->lock);
  guint sent = p->texts_sent, dropped = p->texts_dropped;
  GObject *channel = g_steal_pointer (&p->channel);
  g_mutex_unlock (&p->lock);
  if (channel != NULL) {
    g_signal_handlers_disconnect_by_data (channel, p);
    g_object_unref (channel);
  }
  if (p->bus_watch != 0)
    g_source_remove (p->bus_watch);
  p->bus_watch = 0;
  if (p->pipeline != NULL) {
    g_signal_handlers_disconnect_by_data (p->webrtc, p);
    /* webrtcbin is both the source and the sink of this pipeline, a loop that GstBin cannot
     * order sinks-first: stopping the whole at once can leave a sink inside webrtcbin waiting
     * for preroll under a thread that the bin then waits for. webrtcbin first flushes
     * whatever is pushed into it, so the rest then stops cleanly. */
    gst_element_set_state (p->webrtc, GST_STATE_NULL);
    gst_element_set_state (p->pipeline, GST_STATE_NULL);
  }
  if (p->ws != NULL) {
    g_signal_handlers_disconnect_by_data (p->ws, p);
    if (soup_websocket_connection_get_state (p->ws) == SOUP_WEBSOCKET_STATE_OPEN)
      soup_websocket_connection_close (p->ws, SOUP_WEBSOCKET_CLOSE_NORMAL, NULL);
  }
  server_log ("peer %u from %s: ended: %s (%u text pieces sent, %u before the data channel "
      "opened)", p->id, p->remote, why, sent, dropped);
  g_hash_table_remove (p->server->peers, GUINT_TO_POINTER (p->id));
}

typedef struct {
  Peer *peer;
  gchar *text;
} Outgoing;

static gboolean
outgoing_send (gpointer data)
{
  Outgoing *o = data;
  Peer *p = o->peer;
  if (!p->ended && p->ws != NULL
      && soup_websocket_connection_get_state (p->ws) == SOUP_WEBSOCKET_STATE_OPEN)
    soup_websocket_connection_send_text (p->ws, o->text);
  return G_SOURCE_REMOVE;
}

static void
outgoing_free (gpointer data)
{
  Outgoing *o = data;
  peer_unref (o->peer);
  g_free (o->text);
  g_free (o);
}

/* Takes the builder's object and sends it as one JSON message from the main context. */
static void
peer_send_later (Peer *p, JsonBuilder *b)
{
  g_autoptr (JsonNode) root = json_builder_get_root (b);
  Outgoing *o = g_new0 (Outgoing, 1);
  o->peer = peer_ref (p);
  o->text = json_to_string (root, FALSE);
  g_main_context_invoke_full (NULL, G_PRIORITY_DEFAULT, outgoing_send, o, outgoing_free);
}

static JsonBuilder *
error_message (const char *message)
{
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "type");
  json_builder_add_string_value (b, "error");
  json_builder_set_member_name (b, "message");
  json_builder_add_string_value (b, message);
  json_builder_end_object (b);
  return b;
}

static void
on_answer_created (GstPromise *promise, gpointer user_data)
{
  Peer *p = user_data;
  const GstStructure *reply = gst_promise_get_reply (promise);
  SessionDescription *answer = NULL;
  g_autoptr (GError) error = NULL;
  if (reply != NULL) {
    gst_structure_get (reply, "answer", g_type_from_name ("GstWebRTCSessionDescription"),
        &answer, NULL);
    if (answer == NULL)
      gst_structure_get (reply, "error", G_TYPE_ERROR, &error, NULL);
  }
  gst_promise_unref (promise);
  if (answer == NULL) {
    server_log ("peer %u: webrtcbin made no answer to the offer: %s", p->id,
        error != NULL ? error->message : "no reason given");
    return;
  }
  g_signal_emit_by_name (p->webrtc, "set-local-description", answer, NULL);
  g_autofree gchar *sdp = gst_sdp_message_as_text (answer->sdp);
  g_boxed_free (g_type_from_name ("GstWebRTCSessionDescription"), answer);

  g_autoptr (JsonBuilder) b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "type");
  json_builder_add_string_value (b, "answer");
  json_builder_set_member_name (b, "sdp");
  json_builder_add_string_value (b, sdp);
  json_builder_end_object (b);
  peer_send_later (p, b);
}

static void
on_offer_set (GstPromise *promise, gpointer user_data)
{
  Peer *p = user_data;
  const GstStructure *reply = gst_promise_get_reply (promise);
  g_autoptr (GError) error = NULL;
  if (reply != NULL)
    gst_structure_get (reply, "error", G_TYPE_ERROR, &error, NULL);
  gst_promise_unref (promise);
  if (error != NULL) {
    server_log ("peer %u: the browser's offer was refused: %s", p->id, error->message);
    g_autofree gchar *text = g_strdup_printf ("the offer was refused: %s", error->message);
    g_autoptr (JsonBuilder) b = error_message (text);
    peer_send_later (p, b);
    return;
  }
  GstPromise *answer = gst_promise_new_with_change_func (on_answer_created, peer_ref (p),
      (GDestroyNotify) peer_unref);
  g_signal_emit_by_name (p->webrtc, "create-answer", NULL, answer);
}

static void
on_ice_candidate (GstElement *webrtc, guint mline, const char *candidate, gpointer user_data)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "type");
  json_builder_add_string_value (b, "ice");
  json_builder_set_member_name (b, "candidate");
  json_builder_add_string_value (b, candidate);
  json_builder_set_member_name (b, "sdpMLineIndex");
  json_builder_add_int_value (b, mline);
  json_builder_end_object (b);
  peer_send_later (user_data, b);
}

static gboolean
log_connection_state (gpointer data)
{
  Peer *p = data;
  if (p->ended)
    return G_SOURCE_REMOVE;
  gint state = 0;
  g_object_get (p->webrtc, "connection-state", &state, NULL);
  GEnumClass *klass = g_type_class_ref (g_type_from_name ("GstWebRTCPeerConnectionState"));
  GEnumValue *v = g_enum_get_value (klass, state);
  server_log ("peer %u: connection %s", p->id, v != NULL ? v->value_nick : "?");
  g_type_class_unref (klass);
  if (state == enum_value ("GstWebRTCPeerConnectionState", "failed"))
    peer_end (p, "the WebRTC connection failed (no ICE candidate pair works)");
  return G_SOURCE_REMOVE;
}

static void
on_connection_state (GObject *webrtc, GParamSpec *pspec, gpointer user_data)
{
  g_main_context_invoke_full (NULL, G_PRIORITY_DEFAULT, log_connection_state,
      peer_ref (user_data), (GDestroyNotify) peer_unref);
}

static void
on_incoming_pad (GstElement *webrtc, GstPad *pad, gpointer user_data)
{
  Peer *p = user_data;
  if (GST_PAD_DIRECTION (pad) != GST_PAD_SRC)
    return;
  g_autoptr (GstPad) sink = gst_element_get_static_pad (p->depay, "sink");
  if (gst_pad_is_linked (sink)) {
    GST_WARNING ("peer %u: a second incoming stream, ignored", p->id);
    return;
  }
  if (GST_PAD_LINK_FAILED (gst_pad_link (pad, sink)))
    server_log ("peer %u: the browser's stream is not Opus audio", p->id);
}

static void
on_channel_state (GObject *channel, GParamSpec *pspec, gpointer user_data)
{
  Peer *p = user_data;
  gint state = 0;
  g_object_get (channel, "ready-state", &state, NULL);
  if (state == enum_value ("GstWebRTCDataChannelState", "open"))
    server_log ("peer %u: data channel open", p->id);
}

static void
on_data_channel (GstElement *webrtc, GObject *channel, gpointer user_data)
{
  Peer *p = user_data;
  g_autofree gchar *label = NULL;
  g_object_get (channel, "label", &label, NULL);
  if (g_strcmp0 (label, "text") != 0)
    return;
  g_mutex_lock (&p->lock);
  gboolean taken = p->channel == NULL && !p->ended;
  if (taken) {
    p->channel = g_object_ref (channel);
    g_signal_connect (channel, "notify::ready-state", G_CALLBACK (on_channel_state), p);
  }
  g_mutex_unlock (&p->lock);
  /* A channel the browser opened usually comes open already (its DCEP open was answered). */
  if (taken)
    on_channel_state (channel, NULL, p);
}

/* moshidialog's words go out as they come: one data channel message per text buffer. */
static GstFlowReturn
on_text_sample (GstAppSink *sink, gpointer user_data)
{
  Peer *p = user_data;
  g_autoptr (GstSample) sample = gst_app_sink_pull_sample (sink);
  if (sample == NULL)
    return GST_FLOW_EOS;
  GstMapInfo map;
  GstBuffer *buf = gst_sample_get_buffer (sample);
  if (buf == NULL || !gst_buffer_map (buf, &map, GST_MAP_READ))
    return GST_FLOW_OK;
  g_autofree gchar *text = g_utf8_make_valid ((const gchar *) map.data, map.size);
  gst_buffer_unmap (buf, &map);

  g_mutex_lock (&p->lock);
  GObject *channel = p->channel != NULL ? g_object_ref (p->channel) : NULL;
  g_mutex_unlock (&p->lock);
  gint state = -1;
  if (channel != NULL)
    g_object_get (channel, "ready-state", &state, NULL);
  gboolean open = state == enum_value ("GstWebRTCDataChannelState", "open");
  if (open)
    g_signal_emit_by_name (channel, "send-string", text);
  g_clear_object (&channel);
  g_mutex_lock (&p->lock);
  if (open)
    p->texts_sent++;
  else
    p->texts_dropped++;
  g_mutex_unlock (&p->lock);
  return GST_FLOW_OK;
}

static gboolean
on_bus_message (GstBus *bus, GstMessage *msg, gpointer user_data)
{
  Peer *p = user_data;
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    g_autoptr (GError) err = NULL;
    g_autofree gchar *debug = NULL;
    gst_message_parse_error (msg, &err, &debug);
    g_autofree gchar *why = g_strdup_printf ("pipeline error from %s: %s",
        GST_OBJECT_NAME (GST_MESSAGE_SRC (msg)), err->message);
    GST_DEBUG ("%s", debug);
    p->bus_watch = 0;
    peer_end (p, why);
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

static void
configure_dialog (const Options *o, GstElement *dialog)
{
  g_object_set (dialog, "model", o->model, "mimi-model", o->mimi_model,
      "tokenizer", o->tokenizer, "lm-config", o->lm_config, "mimi-config", o->mimi_config,
      "max-conversations", (guint) o->max_peers, NULL);
  if (o->device != NULL)
    gst_util_set_object_arg (G_OBJECT (dialog), "device", o->device);
}

static gboolean
peer_start (Peer *p, GError **error)
{
  const Options *o = &p->server->opt;
  /* plc: a lost packet becomes concealment, so moshidialog keeps a continuous 12.5 Hz input;
   * it also goes on with silence when the browser stops sending (fill-stalls, its default). */
  g_autofree gchar *description = g_strdup_printf (
      "webrtcbin name=webrtc bundle-policy=max-bundle "
      "rtpopusdepay name=depay ! opusdec plc=true ! audioconvert ! audioresample ! "
      "audio/x-raw,format=F32LE,rate=24000,channels=1 ! queue ! moshidialog name=dialog "
      "dialog.src ! queue ! audioconvert ! audioresample ! "
      "opusenc audio-type=voice frame-size=20 bitrate=%d ! rtpopuspay pt=111 ! "
      "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! webrtc. "
      "dialog.text_src ! queue ! appsink name=text sync=false",
      o->bitrate);
  p->pipeline = gst_parse_launch_full (description, NULL, GST_PARSE_FLAG_FATAL_ERRORS, error);
  if (p->pipeline == NULL)
    return FALSE;
  gst_object_ref_sink (p->pipeline);
  GstBin *bin = GST_BIN (p->pipeline);
  /* The bin holds them; these pointers live as long as the pipeline. */
  p->webrtc = gst_bin_get_by_name (bin, "webrtc");
  p->depay = gst_bin_get_by_name (bin, "depay");
  gst_object_unref (p->webrtc);
  gst_object_unref (p->depay);
  p->dialog = gst_bin_get_by_name (bin, "dialog");
  gst_object_unref (p->dialog);
  configure_dialog (o, p->dialog);
  g_autoptr (GstElement) text = gst_bin_get_by_name (bin, "text");
  GstAppSinkCallbacks text_cb = { .new_sample = on_text_sample };
  gst_app_sink_set_callbacks (GST_APP_SINK (text), &text_cb, p, NULL);

  if (o->ice_addresses != NULL) {
    g_autoptr (GObject) ice = NULL;
    g_object_get (p->webrtc, "ice-agent", &ice, NULL);
    for (guint i = 0; o->ice_addresses[i] != NULL; i++) {
      gboolean added = FALSE;
      g_signal_emit_by_name (ice, "add-local-ip-address", o->ice_addresses[i], &added);
      if (!added) {
        g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
            "--ice-address %s: not an address ICE can use", o->ice_addresses[i]);
        return FALSE;
      }
    }
  }
  g_signal_connect (p->webrtc, "on-ice-candidate", G_CALLBACK (on_ice_candidate), p);
  g_signal_connect (p->webrtc, "pad-added", G_CALLBACK (on_incoming_pad), p);
  g_signal_connect (p->webrtc, "on-data-channel", G_CALLBACK (on_data_channel), p);
  g_signal_connect (p->webrtc, "notify::connection-state", G_CALLBACK (on_connection_state), p);

  g_autoptr (GstBus) bus = gst_element_get_bus (p->pipeline);
  p->bus_watch = gst_bus_add_watch (bus, on_bus_message, p);
  return serve_start_pipeline (p->pipeline, "could not start the pipeline", error);
}

/* ---------------------------------------------------------------------------------------------
 * Signalling: JSON text messages on /ws.
 *   browser -> server  {"type":"offer","sdp":...}  {"type":"ice","candidate":...,
 *                      "sdpMLineIndex":N}  {"type":"report",...} (logged as it is)
 *   server -> browser  {"type":"answer","sdp":...}  {"type":"ice",...}  {"type":"error",
 *                      "message":...} */

static void
send_error (Peer *p, const char *message)
{
  g_autoptr (JsonBuilder) b = error_message (message);
  g_autoptr (JsonNode) root = json_builder_get_root (b);
  g_autofree gchar *text = json_to_string (root, FALSE);
  soup_websocket_connection_send_text (p->ws, text);
}

static void
handle_offer (Peer *p, const char *sdp_text)
{
  GstSDPMessage *sdp = NULL;
  if (sdp_text == NULL || gst_sdp_message_new_from_text (sdp_text, &sdp) != GST_SDP_OK) {
    send_error (p, "the offer is not SDP");
    return;
  }
  /* webrtcbin answers an offer without media with an empty answer; say why nothing comes. */
  gboolean audio = FALSE;
  for (guint i = 0; i < gst_sdp_message_medias_len (sdp); i++)
    audio |= g_strcmp0 (gst_sdp_media_get_media (gst_sdp_message_get_media (sdp, i)), "audio") == 0;
  if (!audio) {
    gst_sdp_message_free (sdp);
    send_error (p, "the offer has no audio stream (was the microphone given?)");
    return;
  }
  SessionDescription offer = { SDP_TYPE_OFFER, sdp };
  GstPromise *promise = gst_promise_new_with_change_func (on_offer_set, peer_ref (p),
      (GDestroyNotify) peer_unref);
  /* The signal copies the description (a boxed argument). */
  g_signal_emit_by_name (p->webrtc, "set-remote-description", &offer, promise);
  gst_sdp_message_free (sdp);
}

static void
on_ws_message (SoupWebsocketConnection *ws, gint type, GBytes *message, gpointer user_data)
{
  Peer *p = user_data;
  if (p->ended || type != SOUP_WEBSOCKET_DATA_TEXT)
    return;
  gsize len = 0;
  const gchar *data = g_bytes_get_data (message, &len);
  g_autoptr (JsonParser) parser = json_parser_new ();
  JsonNode *root = NULL;
  if (!json_parser_load_from_data (parser, data, len, NULL)
      || (root = json_parser_get_root (parser)) == NULL || !JSON_NODE_HOLDS_OBJECT (root)) {
    send_error (p, "messages must be JSON objects");
    return;
  }
  JsonObject *obj = json_node_get_object (root);
  const char *kind = json_object_get_string_member_with_default (obj, "type", "");
  if (g_str_equal (kind, "offer")) {
    handle_offer (p, json_object_get_string_member_with_default (obj, "sdp", NULL));
  } else if (g_str_equal (kind, "ice")) {
    const char *candidate = json_object_get_string_member_with_default (obj, "candidate", "");
    gint64 mline = json_object_get_int_member_with_default (obj, "sdpMLineIndex", 0);
    /* An empty candidate only says the browser's gathering is complete. */
    if (candidate[0] != '\0' && mline >= 0)
      g_signal_emit_by_name (p->webrtc, "add-ice-candidate", (guint) mline, candidate);
  } else if (g_str_equal (kind, "report")) {
    g_autofree gchar *line = json_to_string (root, FALSE);
    server_log ("peer %u: report %s", p->id, line);
    /* With it, how the conversations of all browsers are being stepped together. */
    g_autoptr (GstStructure) stats = NULL;
    g_object_get (p->dialog, "scheduler-stats", &stats, NULL);
    gint conversations = 0;
    guint64 ticks = 0, steps = 0;
    if (stats != NULL)
      gst_structure_get (stats, "conversations", G_TYPE_INT, &conversations,
          "ticks", G_TYPE_UINT64, &ticks, "steps", G_TYPE_UINT64, &steps, NULL);
    server_log ("peer %u: shared scheduler: %d conversations, %" G_GUINT64_FORMAT " ticks, %"
        G_GUINT64_FORMAT " steps", p->id, conversations, ticks, steps);
  } else {
    send_error (p, "unknown message type");
  }
}

static void
on_ws_closed (SoupWebsocketConnection *ws, gpointer user_data)
{
  Peer *p = user_data;
  g_autofree gchar *why = g_strdup_printf ("the browser closed the signalling socket (code %u)",
      soup_websocket_connection_get_close_code (ws));
  peer_end (p, why);
}

static void
on_ws (SoupServer *soup, SoupServerMessage *msg, const char *path,
    SoupWebsocketConnection *ws, gpointer user_data)
{
  Server *s = user_data;
  Peer *p = g_atomic_rc_box_new0 (Peer);
  g_mutex_init (&p->lock);
  p->server = s;
  p->id = ++s->next_id;
  p->remote = serve_peer_name (msg);
  p->ws = g_object_ref (ws);
  g_hash_table_insert (s->peers, GUINT_TO_POINTER (p->id), p);
  g_signal_connect (ws, "message", G_CALLBACK (on_ws_message), p);
  g_signal_connect (ws, "closed", G_CALLBACK (on_ws_closed), p);

  if (g_hash_table_size (s->peers) > (guint) s->opt.max_peers) {
    send_error (p, "server busy, try again later");
    peer_end (p, "refused: too many browsers");
    return;
  }
  g_autoptr (GError) error = NULL;
  if (!peer_start (p, &error)) {
    send_error (p, error->message);
    peer_end (p, error->message);
    return;
  }
  server_log ("peer %u from %s: connected", p->id, p->remote);
}

/* ---------------------------------------------------------------------------------------------
 * The page */

static void
on_static (SoupServer *soup, SoupServerMessage *msg, const char *path, GHashTable *query,
    gpointer user_data)
{
  static const struct { const char *path, *file, *type; } files[] = {
    { "/", "index.html", "text/html; charset=utf-8" },
    { "/index.html", "index.html", "text/html; charset=utf-8" },
    { "/moshi-webrtc.js", "moshi-webrtc.js", "text/javascript; charset=utf-8" },
  };
  Server *s = user_data;
  /* libsoup 3.2 keeps a keep-alive connection that the browser closes while idle forever
   * (fixed in 3.3); the page is three requests, so each answer closes its connection. */
  soup_message_headers_replace (soup_server_message_get_response_headers (msg), "Connection",
      "close");
  /* Only the page's own files: nothing else of the directory is reachable. */
  for (gsize i = 0; i < G_N_ELEMENTS (files); i++) {
    if (!g_str_equal (path, files[i].path))
      continue;
    g_autofree gchar *file = g_build_filename (s->opt.static_dir, files[i].file, NULL);
    gchar *contents = NULL;
    gsize len = 0;
    if (!g_file_get_contents (file, &contents, &len, NULL))
      break;
    soup_server_message_set_status (msg, SOUP_STATUS_OK, NULL);
    soup_server_message_set_response (msg, files[i].type, SOUP_MEMORY_TAKE, contents, len);
    return;
  }
  soup_server_message_set_status (msg, SOUP_STATUS_NOT_FOUND, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Start-up */

static gboolean
load_model (Server *s)
{
  GstElement *dialog = gst_element_factory_make ("moshidialog", NULL);
  GstElement *webrtc = gst_element_factory_make ("webrtcbin", NULL);
  if (dialog == NULL || webrtc == NULL) {
    g_printerr ("moshi-webrtc: %s is not available (%s)\n",
        dialog == NULL ? "moshidialog" : "webrtcbin",
        dialog == NULL ? "is the moshi plugin on GST_PLUGIN_PATH?"
        : "install gstreamer1.0-plugins-bad and gstreamer1.0-nice");
    g_clear_object (&dialog);
    g_clear_object (&webrtc);
    return FALSE;
  }
  /* Creating one webrtcbin registers the libgstwebrtc types looked up by name here. */
  gst_object_unref (gst_object_ref_sink (webrtc));
  configure_dialog (&s->opt, dialog);
  g_autoptr (GError) error = NULL;
  MoshiProgress meter;
  moshi_progress_init (&meter, s->opt.progress, "download", 0);
  s->holder = serve_hold_in_ready (dialog, serve_download_progress, &meter, &error);
  if (s->holder == NULL) {
    g_printerr ("moshi-webrtc: %s\n", error->message);
    return FALSE;
  }
  return TRUE;
}

/* Without weights given, the small models bundled for the tests (untrained: the voice and the
 * words are noise, but every part of the path runs); a --hf-repo fills in what is not given. */
static void
default_models (Options *o)
{
  if (o->hf_repo != NULL) {
    if (o->model == NULL)
      o->model = g_strdup (o->hf_repo);
    if (o->mimi_model == NULL)
      o->mimi_model = g_strdup (o->hf_repo);
    if (o->tokenizer == NULL)
      o->tokenizer = g_strdup (o->hf_repo);
    return;
  }
  if (o->model != NULL)
    return;
  const char *data = MOSHI_WEBRTC_TEST_DATA;
  o->model = g_build_filename (data, "lm", "dialog", "model.safetensors", NULL);
  o->lm_config = g_build_filename (data, "lm", "dialog", "config.json", NULL);
  if (o->mimi_model == NULL) {
    o->mimi_model = g_build_filename (data, "mimi", "small", "model.safetensors", NULL);
    g_free (o->mimi_config);
    o->mimi_config = g_build_filename (data, "mimi", "small", "config.json", NULL);
  }
  if (o->tokenizer == NULL)
    o->tokenizer = g_build_filename (data, "tokenizer", "tiny.model", NULL);
  server_log ("no weights given: the small untrained models of %s (noise, not speech)", data);
}

/* Listens on --host:--port and says where (the port the system chose for --port 0). */
static gboolean
server_listen (Server *s, GError **error)
{
  const Options *o = &s->opt;
  g_autoptr (GInetAddress) ip = g_inet_address_new_from_string (o->host);
  if (ip == NULL) {
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
        "--host %s: expected an IP address", o->host);
    return FALSE;
  }
  g_autoptr (GSocketAddress) addr = g_inet_socket_address_new (ip, o->port);
  if (!soup_server_listen (s->soup, addr, 0, error))
    return FALSE;
  GSList *listeners = soup_server_get_listeners (s->soup);
  GSocketAddress *local = listeners != NULL
      ? g_socket_get_local_address (listeners->data, NULL) : NULL;
  guint port = local != NULL
      ? g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (local)) : (guint) o->port;
  g_clear_object (&local);
  g_slist_free (listeners);
  gboolean v6 = g_inet_address_get_family (ip) == G_SOCKET_FAMILY_IPV6;
  server_log ("listening on http://%s%s%s:%u/", v6 ? "[" : "", o->host, v6 ? "]" : "", port);
  return TRUE;
}

static gboolean
on_signal (gpointer user_data)
{
  Server *s = user_data;
  g_main_loop_quit (s->loop);
  return G_SOURCE_REMOVE;
}

int
main (int argc, char **argv)
{
  Server s = { 0 };
  Options *o = &s.opt;
  o->port = 8080;
  o->max_peers = 8;
  o->bitrate = 32000;
  GOptionEntry entries[] = {
    { "host", 0, 0, G_OPTION_ARG_STRING, &o->host, "Address to listen on (default 127.0.0.1; "
          "browsers give the microphone only to https pages or to localhost)", "HOST" },
    { "port", 0, 0, G_OPTION_ARG_INT, &o->port, "Port (default 8080; 0: any free port)", "PORT" },
    { "model", 0, 0, G_OPTION_ARG_FILENAME, &o->model,
          "Moshi LM weights (moshidialog's model); default: the small test model", "FILE" },
    { "lm-config", 0, 0, G_OPTION_ARG_FILENAME, &o->lm_config,
          "LM config.json, for models other than Moshi 7B", "FILE" },
    { "mimi-model", 0, 0, G_OPTION_ARG_FILENAME, &o->mimi_model, "Mimi weights", "FILE" },
    { "mimi-config", 0, 0, G_OPTION_ARG_FILENAME, &o->mimi_config,
          "Mimi config, for models other than the released Mimi", "FILE" },
    { "tokenizer", 0, 0, G_OPTION_ARG_FILENAME, &o->tokenizer, "SentencePiece model", "FILE" },
    { "hf-repo", 0, 0, G_OPTION_ARG_STRING, &o->hf_repo, "Hugging Face repository, e.g. "
          "kyutai/moshiko-pytorch-bf16, for what is not given (downloaded when not in the "
          "local cache)", "REPO" },
    { "device", 0, 0, G_OPTION_ARG_STRING, &o->device, "auto (default), cpu or cuda", "DEV" },
    { "static", 0, 0, G_OPTION_ARG_FILENAME, &o->static_dir,
          "Directory of the page (default: examples/webrtc of the source tree)", "DIR" },
    { "ice-address", 0, 0, G_OPTION_ARG_STRING_ARRAY, &o->ice_addresses,
          "Offer host candidates on this address only (repeatable; default: every interface "
          "but loopback). 127.0.0.1 lets a browser on a machine without a network connect",
          "IP" },
    { "max-peers", 0, 0, G_OPTION_ARG_INT, &o->max_peers,
          "Browsers at once; later ones are refused (default 8)", "N" },
    { "bitrate", 0, 0, G_OPTION_ARG_INT, &o->bitrate,
          "Opus bitrate of Moshi's voice in bit/s (default 32000)", "BPS" },
    { "progress", 'p', 0, G_OPTION_ARG_NONE, &o->progress,
          "Model download progress on stderr even when it is not a terminal", NULL },
    { NULL }
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- talk with Moshi from a browser");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_option_context_add_group (ctx, gst_init_get_option_group ());
  g_autoptr (GError) error = NULL;
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    g_printerr ("moshi-webrtc: %s\n", error->message);
    return 2;
  }
  if (o->port < 0 || o->port > 65535 || o->max_peers < 1 || o->max_peers > 1024
      || o->bitrate < 6000 || o->bitrate > 510000) {
    g_printerr ("moshi-webrtc: an option is out of range (see --help)\n");
    return 2;
  }
  if (o->host == NULL)
    o->host = g_strdup ("127.0.0.1");
  if (o->static_dir == NULL)
    o->static_dir = g_strdup (MOSHI_WEBRTC_STATIC_DIR);
  default_models (o);

  int rc = 1;
  if (!load_model (&s))
    goto out;
  s.peers = g_hash_table_new_full (NULL, NULL, NULL, (GDestroyNotify) peer_unref);
  s.loop = g_main_loop_new (NULL, FALSE);
  s.soup = soup_server_new ("server-header", "moshi-webrtc", NULL);
  soup_server_add_handler (s.soup, NULL, on_static, &s, NULL);
  soup_server_add_websocket_handler (s.soup, "/ws", NULL, NULL, on_ws, &s, NULL);

  if (!server_listen (&s, &error)) {
    g_printerr ("moshi-webrtc: %s\n", error->message);
    goto out;
  }

  g_unix_signal_add (SIGINT, on_signal, &s);
  g_unix_signal_add (SIGTERM, on_signal, &s);
  g_main_loop_run (s.loop);

  GList *peers = g_hash_table_get_values (s.peers);
  for (GList *l = peers; l != NULL; l = l->next)
    peer_ref (l->data);
  for (GList *l = peers; l != NULL; l = l->next) {
    peer_end (l->data, "server shutting down");
    peer_unref (l->data);
  }
  g_list_free (peers);
  rc = 0;

out:
  if (s.soup != NULL) {
    soup_server_disconnect (s.soup);
    g_object_unref (s.soup);
  }
  g_clear_pointer (&s.peers, g_hash_table_unref);
  g_clear_pointer (&s.loop, g_main_loop_unref);
  if (s.holder != NULL) {
    gst_element_set_state (s.holder, GST_STATE_NULL);
    gst_object_unref (s.holder);
  }
  g_free (o->host);
  g_free (o->model);
  g_free (o->lm_config);
  g_free (o->mimi_model);
  g_free (o->mimi_config);
  g_free (o->tokenizer);
  g_free (o->hf_repo);
  g_free (o->device);
  g_free (o->static_dir);
  g_strfreev (o->ice_addresses);
  return rc;
}
