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
 * The server prints the URL to play on stdout once it listens. See docs/deployments.md.
 */
#include <gst/gst.h>
#include <gst/rtsp-server/rtsp-server.h>
#include <glib-unix.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

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
  gint eos_tail;
} MoshiRtspOptions;

/* moshidialog's properties are set on the element rather than written into the launch line,
 * so that paths need no quoting for the pipeline parser. */
static void
on_media_configure (GstRTSPMediaFactory * factory, GstRTSPMedia * media,
    gpointer user_data)
{
  const MoshiRtspOptions *opts = user_data;
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
  if (opts.input == NULL)
    opts.input = g_strdup ("autoaudiosrc");
  if (opts.codec == NULL)
    opts.codec = g_strdup ("opus");
  if (mount == NULL)
    mount = g_strdup ("/moshi");
  launch = make_launch (&opts, &error);
  if (launch == NULL)
    goto failed;

  server = gst_rtsp_server_new ();
  if (address != NULL)
    gst_rtsp_server_set_address (server, address);
  service = g_strdup_printf ("%d", port);
  gst_rtsp_server_set_service (server, service);
  g_free (service);

  factory = gst_rtsp_media_factory_new ();
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
  return status;
}
