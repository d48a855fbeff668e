/* moshi-rtsp-server: an RTSP server whose media is a conversation with Moshi.
 *
 *   moshi-rtsp-server --input 'filesrc location=question.wav ! wavparse' \
 *       --model kyutai/moshiko-pytorch-bf16 --tokenizer kyutai/moshiko-pytorch-bf16
 *   gst-play-1.0 rtsp://127.0.0.1:8554/moshi
 *
 * Each client that PLAYs the mount gets a conversation of its own: the --input source (any
 * gst-launch fragment that makes audio: a recorded question, a microphone, a camera's RTSP
 * audio, an RTP leg) goes through moshidialog, and the client receives two streams:
 *
 *   pay0  Moshi's voice: Opus (RFC 7587, dynamic payload type 96) or PCMU (payload type 0)
 *   pay1  Moshi's words: text/x-raw, format=utf8 in rtpgstpay's payload (encoding name
 *         X-GST, payload type 97; the caps travel base64-encoded in the SDP fmtp), one RTP
 *         packet per word piece, timestamped like the voice. rtspsrc ! rtpgstdepay gives
 *         the timed text back. Players that do not know X-GST ignore that stream.
 *
 * With --backchannel CODEC the user's voice comes from the client instead of --input: the
 * mount is served by gst-rtsp-server's ONVIF classes, and a client that asks for the audio
 * backchannel (Require: www.onvif.org/ver20/backchannel; rtspsrc backchannel=onvif) gets a
 * third, sendonly stream on which it sends its microphone as RTP (PCMU payload type 0, or
 * Opus payload type 98). The server decodes it into that client's moshidialog:
 *
 *   moshi-rtsp-server --backchannel pcmu --model ... --tokenizer ...
 *
 * The server prints the URL to play on stdout once it listens, then a line per conversation
 * as it starts, as the client's voice first arrives and as it ends. See docs/deployments.md.
 */
#include <gst/gst.h>
#include <gst/rtsp-server/rtsp-server.h>
#include <gst/rtsp-server/rtsp-onvif-server.h>
#include <gst/rtsp-server/rtsp-onvif-media-factory.h>
#include <glib-unix.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

/* What moshidialog takes: the backchannel is decoded to it and mixed with the silence that
 * keeps the conversation going while the client says nothing. */
#define MOSHI_RAW_CAPS "audio/x-raw,format=F32LE,layout=interleaved,rate=24000,channels=1"
#define MOSHI_RATE 24000

typedef struct
{
  gchar *input;
  gchar *codec;
  gchar *model;
  gchar *lm_config;
  gchar *mimi_model;
  gchar *mimi_config;
  gchar *tokenizer;
  gchar *device;
  gchar *backchannel;
  gint eos_tail;
  /* the backchannel's jitterbuffer latency (ms): the mixer waits that long for the client */
  guint latency_ms;
} MoshiRtspOptions;

/* One conversation's figures, printed when it ends. Shared by the media and the pad probes of
 * its pipeline (streaming threads), hence the atomic reference count and the lock. */
typedef struct
{
  GMutex lock;
  guint number;
  gboolean has_backchannel;
  gchar *voice_caps;            /* the decoded backchannel's caps, once audio came */
  guint64 received_samples;     /* backchannel audio at the mixer, at 24 kHz */
  guint64 voiced_samples;       /* moshidialog's input in buffers that are not digital silence */
} Conversation;

static void
conversation_clear (Conversation * conv)
{
  g_mutex_clear (&conv->lock);
  g_free (conv->voice_caps);
}

static void
conversation_release (gpointer conv)
{
  g_atomic_rc_box_release_full (conv, (GDestroyNotify) conversation_clear);
}

static void
conversation_release_closure (gpointer conv, GClosure * closure)
{
  (void) closure;
  conversation_release (conv);
}

static gdouble
samples_to_ms (guint64 samples)
{
  return samples * 1000.0 / MOSHI_RATE;
}

/* The client's decoded voice as it reaches the mixer. */
static GstPadProbeReturn
on_backchannel_buffer (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  Conversation *conv = user_data;
  GstBuffer *buffer = GST_PAD_PROBE_INFO_BUFFER (info);
  gboolean first;

  g_mutex_lock (&conv->lock);
  first = conv->voice_caps == NULL;
  if (first) {
    g_autoptr (GstCaps) caps = gst_pad_get_current_caps (pad);
    conv->voice_caps = caps != NULL ? gst_caps_to_string (caps) : g_strdup ("(none)");
  }
  conv->received_samples += gst_buffer_get_size (buffer) / sizeof (gfloat);
  g_mutex_unlock (&conv->lock);
  if (first) {
    printf ("conversation %u: the client's voice arrives: %s\n", conv->number,
        conv->voice_caps);
    fflush (stdout);
  }
  return GST_PAD_PROBE_OK;
}

/* What moshidialog takes in: the mixer's silence is exact zeros, so any other sample is the
 * client's voice that made it through the mixer in time. */
static GstPadProbeReturn
on_dialog_input (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  Conversation *conv = user_data;
  GstBuffer *buffer = GST_PAD_PROBE_INFO_BUFFER (info);
  GstMapInfo map;
  gboolean voiced = FALSE;

  (void) pad;
  if (!gst_buffer_map (buffer, &map, GST_MAP_READ))
    return GST_PAD_PROBE_OK;
  const gfloat *samples = (const gfloat *) map.data;
  gsize n = map.size / sizeof (gfloat);
  for (gsize i = 0; i < n && !voiced; i++)
    voiced = samples[i] != 0.0f;
  gst_buffer_unmap (buffer, &map);
  if (voiced) {
    g_mutex_lock (&conv->lock);
    conv->voiced_samples += n;
    g_mutex_unlock (&conv->lock);
  }
  return GST_PAD_PROBE_OK;
}

/* The media's pipeline is down (the client tore down or its connection broke): the
 * conversation is over. */
static void
on_media_unprepared (GstRTSPMedia * media, gpointer user_data)
{
  Conversation *conv = user_data;

  (void) media;
  g_mutex_lock (&conv->lock);
  if (conv->has_backchannel)
    printf ("conversation %u ended: %.0f ms of the client's voice received, "
        "%.0f ms of moshidialog's input carried it\n", conv->number,
        samples_to_ms (conv->received_samples), samples_to_ms (conv->voiced_samples));
  else
    printf ("conversation %u ended\n", conv->number);
  fflush (stdout);
  g_mutex_unlock (&conv->lock);
}

/* The last reference to the conversation's moshidialog is gone: the model's state for this
 * client is freed (the pipeline went with the media, once the session was removed). */
static void
on_dialog_freed (gpointer user_data, GObject * where_the_object_was)
{
  Conversation *conv = user_data;

  (void) where_the_object_was;
  printf ("conversation %u: moshidialog freed\n", conv->number);
  fflush (stdout);
  conversation_release (conv);
}

/* Adds the client's decoded voice to the mixer that feeds moshidialog, and counts it. The
 * backchannel bin is not linked to anything by gst-rtsp-server beyond its RTP input: its end,
 * "backchannel_out", sits inside the ONVIF latency bin, so the link needs ghost pads. */
static gboolean
link_backchannel (GstElement * bin, GstElement * dialog, Conversation * conv,
    guint latency_ms)
{
  g_autoptr (GstElement) out = gst_bin_get_by_name (GST_BIN (bin), "backchannel_out");
  g_autoptr (GstElement) mixer = gst_bin_get_by_name (GST_BIN (bin), "user");
  g_autoptr (GstPad) out_pad = NULL;
  g_autoptr (GstPad) mixer_pad = NULL;
  g_autoptr (GstPad) dialog_pad = NULL;

  /* no "backchannel_out": this client did not ask for a backchannel (a plain player) */
  if (out == NULL || mixer == NULL)
    return FALSE;
  out_pad = gst_element_get_static_pad (out, "src");
  mixer_pad = gst_element_request_pad_simple (mixer, "sink_%u");
  if (!gst_pad_link_maybe_ghosting (out_pad, mixer_pad)) {
    g_printerr ("conversation %u: could not link the backchannel to the mixer\n",
        conv->number);
    gst_element_release_request_pad (mixer, mixer_pad);
    return FALSE;
  }
  /* The backchannel links to the RTP session only once the client's first packet comes, and
   * the ONVIF latency bin keeps its latency out of the pipeline's: the mixer, live from the
   * start on the silence alone, would not wait for the jitterbuffer and would drop the
   * client's first packets as late (about 140 ms of them on loopback). */
  g_object_set (mixer, "min-upstream-latency",
      (guint64) (latency_ms + 100) * GST_MSECOND, NULL);
  gst_pad_add_probe (mixer_pad, GST_PAD_PROBE_TYPE_BUFFER, on_backchannel_buffer,
      g_atomic_rc_box_acquire (conv), conversation_release);
  dialog_pad = gst_element_get_static_pad (dialog, "sink");
  gst_pad_add_probe (dialog_pad, GST_PAD_PROBE_TYPE_BUFFER, on_dialog_input,
      g_atomic_rc_box_acquire (conv), conversation_release);
  return TRUE;
}

/* moshidialog's properties are set on the element rather than written into the launch line,
 * so that paths need no quoting for the pipeline parser. */
static void
on_media_configure (GstRTSPMediaFactory * factory, GstRTSPMedia * media,
    gpointer user_data)
{
  const MoshiRtspOptions *opts = user_data;
  static gint conversations = 0;
  GstElement *bin = gst_rtsp_media_get_element (media);
  GstElement *dialog = gst_bin_get_by_name (GST_BIN (bin), "moshi");
  const struct
  {
    const char *property;
    const char *value;
  } strings[] = {
    {"model", opts->model},
    {"lm-config", opts->lm_config},
    {"mimi-model", opts->mimi_model},
    {"mimi-config", opts->mimi_config},
    {"tokenizer", opts->tokenizer},
    {"device", opts->device},
  };

  /* main() checked that the plugin is there, and the launch line names the element. */
  g_return_if_fail (dialog != NULL);
  for (gsize i = 0; i < G_N_ELEMENTS (strings); i++) {
    if (strings[i].value != NULL)
      gst_util_set_object_arg (G_OBJECT (dialog), strings[i].property,
          strings[i].value);
  }
  g_object_set (dialog, "eos-tail", (guint) opts->eos_tail, NULL);

  if (opts->backchannel != NULL) {
    Conversation *conv = g_atomic_rc_box_new0 (Conversation);

    g_mutex_init (&conv->lock);
    conv->number = (guint) g_atomic_int_add (&conversations, 1) + 1;
    conv->has_backchannel = link_backchannel (bin, dialog, conv, opts->latency_ms);
    printf ("conversation %u: started, %s\n", conv->number, conv->has_backchannel ?
        "the client's voice from the ONVIF backchannel" :
        "no backchannel asked for (Moshi hears silence)");
    fflush (stdout);
    g_object_weak_ref (G_OBJECT (dialog), on_dialog_freed, g_atomic_rc_box_acquire (conv));
    g_signal_connect_data (media, "unprepared", G_CALLBACK (on_media_unprepared), conv,
        conversation_release_closure, 0);
  }
  gst_object_unref (dialog);
  gst_object_unref (bin);
}

static gboolean
have_element (const char *name)
{
  GstElementFactory *found = gst_element_factory_find (name);

  if (found == NULL)
    return FALSE;
  gst_object_unref (found);
  return TRUE;
}

/* SIGINT/SIGTERM end the main loop, so that the server and its media shut down cleanly. */
static gboolean
on_signal (gpointer user_data)
{
  g_main_loop_quit (user_data);
  return G_SOURCE_REMOVE;
}

static gchar *
make_launch (const MoshiRtspOptions * opts, GError ** error)
{
  const char *voice;

  if (g_strcmp0 (opts->codec, "opus") == 0) {
    /* 24 kHz is Moshi's rate and one Opus codes natively: no resampling on either side. */
    voice = "audioconvert ! audioresample ! audio/x-raw,rate=24000 ! "
        "opusenc audio-type=voice ! rtpopuspay name=pay0 pt=96";
  } else if (g_strcmp0 (opts->codec, "pcmu") == 0) {
    voice = "audioconvert ! audioresample ! audio/x-raw,rate=8000 ! "
        "mulawenc ! rtppcmupay name=pay0 pt=0";
  } else {
    g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
        "--codec must be opus or pcmu, not '%s'", opts->codec);
    return NULL;
  }
  /* A queue after each of moshidialog's outputs: both are pushed from its one streaming
   * thread, and the payloaders' sinks must not hold each other back while prerolling. */
  return g_strdup_printf ("( %s ! audioconvert ! audioresample ! queue ! "
      "moshidialog name=moshi "
      "moshi.src ! queue ! %s "
      "moshi.text_src ! queue ! rtpgstpay name=pay1 pt=97 )", opts->input, voice);
}

/* The input of a backchannel conversation: live silence, mixed with the client's voice by
 * link_backchannel(). It runs from the first DESCRIBE on, so that the media prerolls (the
 * payloaders need moshidialog's output) before the client has sent anything, and it goes on
 * when the client stops sending: the model keeps its pace on a silent caller. */
static const char backchannel_input[] =
    "audiotestsrc is-live=true wave=silence ! " MOSHI_RAW_CAPS " ! "
    "audiomixer name=user ! " MOSHI_RAW_CAPS;

/* The bin the ONVIF factory adds for a client that asks for the backchannel: its first
 * element, depay_backchannel, gives the sendonly stream's caps (complete RTP caps, hence a
 * capsfilter rather than the depayloader's own template); backchannel_out is linked to the
 * mixer in media-configure. */
static gchar *
make_backchannel_launch (const char *codec, GError ** error)
{
  const char *rtp;

  if (g_strcmp0 (codec, "pcmu") == 0) {
    rtp = "application/x-rtp,media=audio,payload=0,clock-rate=8000,encoding-name=PCMU\" "
        "! rtppcmudepay ! mulawdec";
  } else if (g_strcmp0 (codec, "opus") == 0) {
    rtp = "application/x-rtp,media=audio,payload=98,clock-rate=48000,encoding-name=OPUS,"
        "encoding-params=(string)2\" ! rtpopusdepay ! opusdec";
  } else {
    g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
        "--backchannel must be pcmu or opus, not '%s'", codec);
    return NULL;
  }
  return g_strdup_printf ("( capsfilter name=depay_backchannel caps=\"%s ! audioconvert ! "
      "audioresample ! capsfilter name=backchannel_out caps=\"" MOSHI_RAW_CAPS "\" )", rtp);
}

int
main (int argc, char *argv[])
{
  MoshiRtspOptions opts = {
    .input = NULL,
    .codec = NULL,
    .device = NULL,
    .eos_tail = 0,
  };
  gchar *address = NULL;
  gchar *mount = NULL;
  gint port = 8554;
  GOptionEntry entries[] = {
    {"input", 'i', 0, G_OPTION_ARG_STRING, &opts.input,
        "gst-launch fragment making the user's audio (default autoaudiosrc)", "PIPELINE"},
    {"codec", 'c', 0, G_OPTION_ARG_STRING, &opts.codec,
        "Codec of Moshi's voice: opus or pcmu (default opus)", "CODEC"},
    {"model", 'm', 0, G_OPTION_ARG_STRING, &opts.model,
        "Moshi LM: .safetensors, directory or Hugging Face repo id", "MODEL"},
    {"lm-config", 0, 0, G_OPTION_ARG_FILENAME, &opts.lm_config,
        "LM config.json for models other than Moshi 7B", "FILE"},
    {"mimi-model", 0, 0, G_OPTION_ARG_STRING, &opts.mimi_model,
        "Mimi weights (default: next to MODEL)", "MODEL"},
    {"mimi-config", 0, 0, G_OPTION_ARG_FILENAME, &opts.mimi_config,
        "Mimi config.json for models other than the released Mimi", "FILE"},
    {"tokenizer", 't', 0, G_OPTION_ARG_STRING, &opts.tokenizer,
        "SentencePiece model of the text (none: no words)", "MODEL"},
    {"device", 'd', 0, G_OPTION_ARG_STRING, &opts.device,
        "auto, cpu or cuda (default auto)", "DEVICE"},
    {"backchannel", 'b', 0, G_OPTION_ARG_STRING, &opts.backchannel,
        "Take the user's voice from the client's ONVIF audio backchannel, coded as "
          "pcmu or opus (instead of --input)", "CODEC"},
    {"eos-tail", 0, 0, G_OPTION_ARG_INT, &opts.eos_tail,
        "After the input ends, let Moshi talk on for this long (ms)", "MS"},
    {"address", 'a', 0, G_OPTION_ARG_STRING, &address,
        "Address to listen on (default 0.0.0.0)", "ADDRESS"},
    {"port", 'p', 0, G_OPTION_ARG_INT, &port,
        "RTSP port; 0 = any free one (default 8554)", "PORT"},
    {"mount", 0, 0, G_OPTION_ARG_STRING, &mount,
        "Mount point (default /moshi)", "PATH"},
    {NULL}
  };
  GOptionContext *context;
  GError *error = NULL;
  GstRTSPServer *server;
  GstRTSPMountPoints *mounts;
  GstRTSPMediaFactory *factory;
  GMainLoop *loop;
  gchar *launch;
  gchar *backchannel_launch = NULL;
  gchar *service;
  int status = EXIT_FAILURE;

  context = g_option_context_new ("- serve a conversation with Moshi over RTSP");
  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_add_group (context, gst_init_get_option_group ());
  if (!g_option_context_parse (context, &argc, &argv, &error))
    goto failed;
  if (opts.model == NULL) {
    g_set_error_literal (&error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
        "--model is required");
    goto failed;
  }
  if (opts.eos_tail < 0 || port < 0 || port > 65535) {
    g_set_error_literal (&error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
        "--eos-tail and --port take non-negative numbers (a port up to 65535)");
    goto failed;
  }
  /* Checked here: the media factory would only log a missing element when a client comes. */
  if (!have_element ("moshidialog")) {
    g_set_error_literal (&error, GST_CORE_ERROR, GST_CORE_ERROR_MISSING_PLUGIN,
        "The moshidialog element is not installed (or set GST_PLUGIN_PATH to the "
        "directory holding libgstmoshi.so)");
    goto failed;
  }
  if (opts.backchannel != NULL) {
    if (opts.input != NULL) {
      g_set_error_literal (&error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
          "--input and --backchannel exclude each other: with --backchannel the user's "
          "voice comes from the client");
      goto failed;
    }
    backchannel_launch = make_backchannel_launch (opts.backchannel, &error);
    if (backchannel_launch == NULL)
      goto failed;
    opts.input = g_strdup (backchannel_input);
  }
  if (opts.input == NULL)
    opts.input = g_strdup ("autoaudiosrc");
  if (opts.codec == NULL)
    opts.codec = g_strdup ("opus");
  if (mount == NULL)
    mount = g_strdup ("/moshi");
  launch = make_launch (&opts, &error);
  if (launch == NULL)
    goto failed;

  /* The ONVIF server's clients accept the backchannel's Require header; a plain server
   * answers it with 551 Option not supported. */
  server = backchannel_launch != NULL ? gst_rtsp_onvif_server_new () : gst_rtsp_server_new ();
  if (address != NULL)
    gst_rtsp_server_set_address (server, address);
  service = g_strdup_printf ("%d", port);
  gst_rtsp_server_set_service (server, service);
  g_free (service);

  if (backchannel_launch != NULL) {
    factory = gst_rtsp_onvif_media_factory_new ();
    gst_rtsp_onvif_media_factory_set_backchannel_launch (GST_RTSP_ONVIF_MEDIA_FACTORY
        (factory), backchannel_launch);
    gst_rtsp_media_factory_set_media_gtype (factory, GST_TYPE_RTSP_ONVIF_MEDIA);
    opts.latency_ms = gst_rtsp_media_factory_get_latency (factory);
  } else {
    factory = gst_rtsp_media_factory_new ();
  }
  gst_rtsp_media_factory_set_launch (factory, launch);
  /* A conversation per client: the model's state is one person's dialogue. */
  gst_rtsp_media_factory_set_shared (factory, FALSE);
  g_signal_connect (factory, "media-configure", G_CALLBACK (on_media_configure),
      &opts);
  mounts = gst_rtsp_server_get_mount_points (server);
  gst_rtsp_mount_points_add_factory (mounts, mount, factory);
  g_object_unref (mounts);

  if (gst_rtsp_server_attach (server, NULL) == 0) {
    g_set_error (&error, G_IO_ERROR, G_IO_ERROR_FAILED,
        "Could not listen on port %d", port);
    g_object_unref (server);
    g_free (launch);
    goto failed;
  }
  /* With --port 0 the kernel chose the port: this line is how a caller learns it. */
  printf ("rtsp://%s:%d%s\n", address != NULL ? address : "127.0.0.1",
      gst_rtsp_server_get_bound_port (server), mount);
  fflush (stdout);

  loop = g_main_loop_new (NULL, FALSE);
  g_unix_signal_add (SIGINT, on_signal, loop);
  g_unix_signal_add (SIGTERM, on_signal, loop);
  g_main_loop_run (loop);
  g_main_loop_unref (loop);
  g_object_unref (server);
  g_free (launch);
  status = EXIT_SUCCESS;
  goto done;

failed:
  g_printerr ("moshi-rtsp-server: %s\n", error->message);
  g_clear_error (&error);
done:
  g_option_context_free (context);
  g_free (address);
  g_free (mount);
  g_free (opts.input);
  g_free (opts.codec);
  g_free (opts.model);
  g_free (opts.lm_config);
  g_free (opts.mimi_model);
  g_free (opts.mimi_config);
  g_free (opts.tokenizer);
  g_free (opts.device);
  g_free (opts.backchannel);
  g_free (backchannel_launch);
  return status;
}
