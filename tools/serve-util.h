/* Helpers shared by the programs that serve conversations over the network (tools/moshi-server,
 * examples/webrtc/moshi-webrtc): starting a pipeline, keeping a model loaded, naming a peer. */
#pragma once

#include <gst/gst.h>
#include <libsoup/soup.h>

G_BEGIN_DECLS

/* Sets @pipeline to PLAYING; on failure, @error says "@what: " and the first error its bus
 * posted. */
gboolean serve_start_pipeline (GstElement *pipeline, const char *what, GError **error);

/* Puts @element (floating, configured) into a pipeline of its own in READY, which loads its
 * model and keeps it loaded (and shared) as long as the returned pipeline lives; NULL and
 * @error when the element fails to get there. Set the pipeline to NULL and unref it to free.
 * @on_message (may be NULL) sees the messages posted while the model loads (its download
 * progress), as they come. */
GstElement *serve_hold_in_ready (GstElement *element, GstBusSyncHandler on_message,
    gpointer user_data, GError **error);

/* An on_message for serve_hold_in_ready, user_data a MoshiProgress (moshi-progress.h): the
 * element's model download messages become the progress lines moshi-tool prints. */
GstBusSyncReply serve_download_progress (GstBus *bus, GstMessage *msg, gpointer meter);

/* "ip:port" of the client of @msg, "?" when it has no IP address. */
gchar *serve_peer_name (SoupServerMessage *msg);

G_END_DECLS
