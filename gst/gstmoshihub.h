/* gst-moshi: what the elements show of model downloads. */
#pragma once

#include <gst/gst.h>

#include <moshi/moshi-hub-download.h>

G_BEGIN_DECLS

/* Hub options that post each download's progress on element's bus: GST_MESSAGE_PROGRESS
 * with code "download" (START, CONTINUE about every 200 ms, COMPLETE), a text such as
 * "Downloading model.safetensors from kyutai/moshiko-pytorch-bf16: 42% (3210.5 of 7643.2 MB)"
 * and the fields repo, file (strings), downloaded, total (guint64 bytes, total 0 when
 * unknown) and percent (gint, -1 when unknown). */
G_GNUC_INTERNAL MoshiHubOptions gst_moshi_hub_options (GstElement * element);

G_END_DECLS
