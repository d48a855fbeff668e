/* gst-moshi: moshidialog, a spoken conversation with Moshi. */
#pragma once

#include <gst/gst.h>

G_BEGIN_DECLS

#define GST_TYPE_MOSHI_DIALOG (gst_moshi_dialog_get_type ())
G_DECLARE_FINAL_TYPE (GstMoshiDialog, gst_moshi_dialog, GST, MOSHI_DIALOG, GstElement)

G_END_DECLS
