#include "serve-util.h"

#include "moshi-progress.h"

#include <gio/gio.h>

static void
error_from_bus (GstElement *pipeline, const char *what, GError **error)
{
  g_autoptr (GstBus) bus = gst_element_get_bus (pipeline);
  g_autoptr (GstMessage) msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  g_autoptr (GError) err = NULL;
  if (msg != NULL)
    gst_message_parse_error (msg, &err, NULL);
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s: %s", what,
      err != NULL ? err->message : "state change failed");
}

gboolean
serve_start_pipeline (GstElement *pipeline, const char *what, GError **error)
{
  if (gst_element_set_state (pipeline, GST_STATE_PLAYING) != GST_STATE_CHANGE_FAILURE)
    return TRUE;
  error_from_bus (pipeline, what, error);
  return FALSE;
}

GstElement *
serve_hold_in_ready (GstElement *element, GstBusSyncHandler on_message, gpointer user_data,
    GError **error)
{
  GstElement *pipeline = gst_pipeline_new ("holder");
  gst_bin_add (GST_BIN (pipeline), element);
  g_autoptr (GstBus) bus = gst_element_get_bus (pipeline);
  /* A sync handler: nothing dispatches this pipeline's bus, and the lines are wanted while the
   * load runs, not after it. */
  if (on_message != NULL)
    gst_bus_set_sync_handler (bus, on_message, user_data, NULL);
  GstStateChangeReturn ret = gst_element_set_state (pipeline, GST_STATE_READY);
  if (on_message != NULL)
    gst_bus_set_sync_handler (bus, NULL, NULL, NULL);
  if (ret == GST_STATE_CHANGE_FAILURE) {
    error_from_bus (pipeline, "could not load the model", error);
    gst_element_set_state (pipeline, GST_STATE_NULL);
    gst_object_unref (pipeline);
    return NULL;
  }
  return pipeline;
}

gchar *
serve_peer_name (SoupServerMessage *msg)
{
  GSocketAddress *addr = soup_server_message_get_remote_address (msg);
  if (!G_IS_INET_SOCKET_ADDRESS (addr))
    return g_strdup ("?");
  GInetSocketAddress *inet = G_INET_SOCKET_ADDRESS (addr);
  g_autofree gchar *ip = g_inet_address_to_string (g_inet_socket_address_get_address (inet));
  return g_strdup_printf ("%s:%u", ip, g_inet_socket_address_get_port (inet));
}

/* The element's download messages (gstmoshihub.h) back into the library's reports. */
GstBusSyncReply
serve_download_progress (GstBus *bus, GstMessage *msg, gpointer meter)
{
  if (GST_MESSAGE_TYPE (msg) != GST_MESSAGE_PROGRESS)
    return GST_BUS_PASS;
  GstProgressType type;
  g_autofree gchar *code = NULL, *text = NULL;
  gst_message_parse_progress (msg, &type, &code, &text);
  const GstStructure *st = gst_message_get_structure (msg);
  MoshiHubProgress p = {
    .repo_id = gst_structure_get_string (st, "repo"),
    .filename = gst_structure_get_string (st, "file"),
    .started = type == GST_PROGRESS_TYPE_START,
    .done = type == GST_PROGRESS_TYPE_COMPLETE,
  };
  if (g_strcmp0 (code, "download") != 0 || p.repo_id == NULL || p.filename == NULL
      || !gst_structure_get_uint64 (st, "downloaded", &p.downloaded)
      || !gst_structure_get_uint64 (st, "total", &p.total))
    return GST_BUS_PASS;
  moshi_progress_download (&p, meter);
  return GST_BUS_DROP;
}
