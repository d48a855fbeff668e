/* rtsp-backchannel-client: the client side of moshi-rtsp-server --backchannel, for the tests.
 *
 *   rtsp-backchannel-client [--protocols tcp|udp] [--voice pcmu|opus] [--tail MS]
 *       URL QUESTION.wav ANSWER.wav WORDS.txt
 *
 * Plays URL with rtspsrc backchannel=onvif: Moshi's voice goes to ANSWER.wav (8 kHz mono
 * S16), its words to WORDS.txt. Once the voice flows, QUESTION.wav is sent in real time on the
 * backchannel, coded as the server's SDP asks (PCMU or Opus RTP, through rtspsrc's
 * push-backchannel-buffer signal); TAIL ms after its end the client sends EOS, which tears the
 * session down, and exits 0. It prints what it did on stdout; errors name what failed and
 * exit 1.
 */
#include <gst/gst.h>

#include <stdio.h>
#include <stdlib.h>

typedef struct
{
  GMainLoop *loop;
  GstElement *pipeline;
  GstElement *rtspsrc;
  GstElement *question;         /* the backchannel sender, made once the SDP is known */
  const gchar *question_path;
  guint tail_ms;
  gint backchannel_id;          /* -1 until select-stream finds the sendonly stream */
  gint voice_started;           /* atomic */
  guint pushed;
  gboolean sent_eos;
  gchar *failure;
} Client;

static void
fail (Client * client, const gchar * format, ...) G_GNUC_PRINTF (2, 3);

static void
fail (Client * client, const gchar * format, ...)
{
  va_list args;

  if (client->failure == NULL) {
    va_start (args, format);
    client->failure = g_strdup_vprintf (format, args);
    va_end (args);
  }
  g_main_loop_quit (client->loop);
}

/* Keeps only the RTP fields of a stream's SDP caps (rtspsrc adds the SDP attributes as a-*
 * fields, which no payloader makes). */
static gboolean
keep_rtp_field (GQuark field, GValue * value, gpointer user_data)
{
  (void) value;
  (void) user_data;
  return !g_str_has_prefix (g_quark_to_string (field), "a-");
}

static GstFlowReturn
on_rtp_sample (GstElement * appsink, gpointer user_data)
{
  Client *client = user_data;
  GstSample *sample = NULL;
  GstFlowReturn ret;

  g_signal_emit_by_name (appsink, "pull-sample", &sample);
  if (sample == NULL)
    return GST_FLOW_EOS;
  /* push-backchannel-buffer takes the sample's reference, in every 1.22 release; the newer
   * push-backchannel-sample was routed to the same handler in 1.22.0 (unreffing it too) and
   * fixed in 1.22.1, so a caller of it cannot own the reference the same way on both. */
  g_signal_emit_by_name (client->rtspsrc, "push-backchannel-buffer",
      (guint) client->backchannel_id, sample, &ret);
  client->pushed++;
  return ret;
}

/* Called for each stream of the SDP before SETUP: the sendonly one is the backchannel. */
static gboolean
on_select_stream (GstElement * rtspsrc, guint id, GstCaps * caps, gpointer user_data)
{
  Client *client = user_data;
  GstStructure *s = gst_caps_get_structure (caps, 0);
  const gchar *encoding;
  const gchar *coder;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *launch = NULL;
  g_autofree gchar *caps_text = NULL;
  g_autoptr (GstCaps) rtp_caps = NULL;
  g_autoptr (GstElement) appsink = NULL;

  (void) rtspsrc;
  if (!gst_structure_has_field (s, "a-sendonly"))
    return TRUE;
  encoding = gst_structure_get_string (s, "encoding-name");
  if (g_strcmp0 (encoding, "PCMU") == 0) {
    coder = "audioresample ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! "
        "rtppcmupay min-ptime=20000000 max-ptime=20000000";
  } else if (g_strcmp0 (encoding, "OPUS") == 0) {
    coder = "audioresample ! audio/x-raw,rate=48000 ! opusenc ! rtpopuspay";
  } else {
    fail (client, "the server's backchannel takes %s, which this client does not send",
        encoding != NULL ? encoding : "(no encoding-name)");
    return TRUE;
  }
  rtp_caps = gst_caps_new_empty ();
  s = gst_structure_copy (s);
  gst_structure_set_name (s, "application/x-rtp");
  gst_structure_filter_and_map_in_place (s, keep_rtp_field, NULL);
  gst_caps_append_structure (rtp_caps, s);
  caps_text = gst_caps_to_string (rtp_caps);
  printf ("backchannel: stream %u, %s\n", id, caps_text);
  fflush (stdout);

  /* sync=true: the question goes out in real time, as a microphone's would */
  launch = g_strdup_printf ("filesrc name=file ! wavparse ! audioconvert ! %s ! "
      "appsink name=rtp sync=true emit-signals=true", coder);
  client->question = gst_parse_launch (launch, &error);
  if (client->question == NULL) {
    fail (client, "could not make the backchannel sender '%s': %s", launch, error->message);
    return TRUE;
  }
  g_autoptr (GstElement) file = gst_bin_get_by_name (GST_BIN (client->question), "file");
  g_object_set (file, "location", client->question_path, NULL);
  appsink = gst_bin_get_by_name (GST_BIN (client->question), "rtp");
  g_object_set (appsink, "caps", rtp_caps, NULL);
  g_signal_connect (appsink, "new-sample", G_CALLBACK (on_rtp_sample), client);
  client->backchannel_id = (gint) id;
  return TRUE;
}

static gboolean
send_eos (gpointer user_data)
{
  Client *client = user_data;

  printf ("ending the session\n");
  fflush (stdout);
  client->sent_eos = TRUE;
  gst_element_send_event (client->pipeline, gst_event_new_eos ());
  return G_SOURCE_REMOVE;
}

static gboolean
on_question_message (GstBus * bus, GstMessage * message, gpointer user_data)
{
  Client *client = user_data;
  g_autoptr (GError) error = NULL;

  (void) bus;
  switch (GST_MESSAGE_TYPE (message)) {
    case GST_MESSAGE_EOS:{
      gint64 position = 0;
      gst_element_query_position (client->question, GST_FORMAT_TIME, &position);
      printf ("question sent: %" G_GINT64_FORMAT " ms in %u RTP packets\n",
          position / GST_MSECOND, client->pushed);
      fflush (stdout);
      g_timeout_add (client->tail_ms, send_eos, client);
      return G_SOURCE_REMOVE;
    }
    case GST_MESSAGE_ERROR:
      gst_message_parse_error (message, &error, NULL);
      fail (client, "the backchannel sender failed: %s", error->message);
      return G_SOURCE_REMOVE;
    default:
      return G_SOURCE_CONTINUE;
  }
}

static gboolean
start_question (gpointer user_data)
{
  Client *client = user_data;
  g_autoptr (GstBus) bus = NULL;

  if (client->question == NULL) {
    fail (client, "the server's SDP has no sendonly (backchannel) stream: was the server "
        "started with --backchannel?");
    return G_SOURCE_REMOVE;
  }
  printf ("sending the question\n");
  fflush (stdout);
  bus = gst_element_get_bus (client->question);
  gst_bus_add_watch (bus, on_question_message, client);
  if (gst_element_set_state (client->question, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE)
    fail (client, "could not start the backchannel sender");
  return G_SOURCE_REMOVE;
}

/* rtspsrc drops what is pushed on the backchannel until its PLAY request is answered; Moshi's
 * first voice packet says the session plays, and a short wait covers the reply being
 * processed after the first UDP packets came in. */
static GstPadProbeReturn
on_voice (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  Client *client = user_data;

  (void) pad;
  (void) info;
  if (g_atomic_int_compare_and_exchange (&client->voice_started, 0, 1)) {
    printf ("the voice flows\n");
    fflush (stdout);
    g_timeout_add (200, start_question, client);
  }
  return GST_PAD_PROBE_REMOVE;
}

static gboolean
on_message (GstBus * bus, GstMessage * message, gpointer user_data)
{
  Client *client = user_data;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *debug = NULL;

  (void) bus;
  switch (GST_MESSAGE_TYPE (message)) {
    case GST_MESSAGE_EOS:
      if (!client->sent_eos)
        fail (client, "the server ended the stream before the question was answered");
      else
        g_main_loop_quit (client->loop);
      break;
    case GST_MESSAGE_ERROR:
      gst_message_parse_error (message, &error, &debug);
      fail (client, "%s: %s (%s)", GST_OBJECT_NAME (GST_MESSAGE_SRC (message)),
          error->message, debug != NULL ? debug : "");
      break;
    default:
      break;
  }
  return G_SOURCE_CONTINUE;
}

static gboolean
on_timeout (gpointer user_data)
{
  fail (user_data, "gave up after 60 s");
  return G_SOURCE_REMOVE;
}

int
main (int argc, char *argv[])
{
  g_autofree gchar *protocols = NULL;
  g_autofree gchar *voice = NULL;
  gint tail_ms = 2000;
  GOptionEntry entries[] = {
    {"protocols", 0, 0, G_OPTION_ARG_STRING, &protocols,
        "RTP transport: tcp (interleaved) or udp (default tcp)", "PROTO"},
    {"voice", 0, 0, G_OPTION_ARG_STRING, &voice,
        "Codec of the server's voice: pcmu or opus (default opus)", "CODEC"},
    {"tail", 0, 0, G_OPTION_ARG_INT, &tail_ms,
        "After the question, listen this long before ending (ms, default 2000)", "MS"},
    {NULL}
  };
  g_autoptr (GOptionContext) context =
      g_option_context_new ("URL QUESTION.wav ANSWER.wav WORDS.txt");
  g_autoptr (GError) error = NULL;
  g_autofree gchar *launch = NULL;
  Client client = {.backchannel_id = -1 };
  const gchar *depay;

  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_add_group (context, gst_init_get_option_group ());
  if (!g_option_context_parse (context, &argc, &argv, &error)) {
    g_printerr ("rtsp-backchannel-client: %s\n", error->message);
    return EXIT_FAILURE;
  }
  if (argc != 5 || tail_ms < 0) {
    g_printerr ("rtsp-backchannel-client: usage: %s [OPTION...] URL QUESTION.wav "
        "ANSWER.wav WORDS.txt\n", argv[0]);
    return EXIT_FAILURE;
  }
  if (voice == NULL || g_strcmp0 (voice, "opus") == 0) {
    depay = "rtpopusdepay ! opusdec";
  } else if (g_strcmp0 (voice, "pcmu") == 0) {
    depay = "rtppcmudepay ! mulawdec";
  } else {
    g_printerr ("rtsp-backchannel-client: --voice must be pcmu or opus, not '%s'\n", voice);
    return EXIT_FAILURE;
  }

  launch = g_strdup_printf ("rtspsrc name=s backchannel=onvif "
      "s. ! queue ! %s ! identity name=voice ! audioconvert ! audioresample ! "
      "audio/x-raw,format=S16LE,rate=8000,channels=1 ! wavenc ! filesink name=answer "
      "s. ! queue ! rtpgstdepay ! text/x-raw,format=utf8 ! filesink name=words", depay);
  client.pipeline = gst_parse_launch (launch, &error);
  if (client.pipeline == NULL) {
    g_printerr ("rtsp-backchannel-client: could not make '%s': %s\n", launch,
        error->message);
    return EXIT_FAILURE;
  }
  client.loop = g_main_loop_new (NULL, FALSE);
  client.question_path = argv[2];
  client.tail_ms = (guint) tail_ms;
  client.rtspsrc = gst_bin_get_by_name (GST_BIN (client.pipeline), "s");
  /* set here rather than in the launch line: paths and URLs need no quoting */
  gst_util_set_object_arg (G_OBJECT (client.rtspsrc), "protocols",
      protocols != NULL ? protocols : "tcp");
  g_object_set (client.rtspsrc, "location", argv[1], NULL);
  g_signal_connect (client.rtspsrc, "select-stream", G_CALLBACK (on_select_stream), &client);
  {
    g_autoptr (GstElement) answer = gst_bin_get_by_name (GST_BIN (client.pipeline), "answer");
    g_autoptr (GstElement) words = gst_bin_get_by_name (GST_BIN (client.pipeline), "words");
    g_autoptr (GstElement) identity = gst_bin_get_by_name (GST_BIN (client.pipeline), "voice");
    g_autoptr (GstPad) pad = gst_element_get_static_pad (identity, "src");

    g_object_set (answer, "location", argv[3], NULL);
    g_object_set (words, "location", argv[4], NULL);
    gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, on_voice, &client, NULL);
  }
  {
    g_autoptr (GstBus) bus = gst_element_get_bus (client.pipeline);
    gst_bus_add_watch (bus, on_message, &client);
  }
  g_timeout_add_seconds (60, on_timeout, &client);

  if (gst_element_set_state (client.pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE)
    fail (&client, "could not start playing %s", argv[1]);
  else
    g_main_loop_run (client.loop);

  /* NULL from PLAYING: rtspsrc sends TEARDOWN */
  gst_element_set_state (client.pipeline, GST_STATE_NULL);
  if (client.question != NULL) {
    gst_element_set_state (client.question, GST_STATE_NULL);
    gst_object_unref (client.question);
  }
  gst_object_unref (client.rtspsrc);
  gst_object_unref (client.pipeline);
  g_main_loop_unref (client.loop);
  if (client.failure != NULL) {
    g_printerr ("rtsp-backchannel-client: %s\n", client.failure);
    g_free (client.failure);
    return EXIT_FAILURE;
  }
  printf ("session ended\n");
  return EXIT_SUCCESS;
}
