/* gst-moshi: model downloads as GStreamer progress messages (see gstmoshihub.h). */
#include "gstmoshihub.h"

#define MB (1000.0 * 1000.0)

static void
post_progress (const MoshiHubProgress * p, gpointer user_data)
{
  GstElement *element = user_data;
  GstProgressType type = p->done ? GST_PROGRESS_TYPE_COMPLETE :
      p->started ? GST_PROGRESS_TYPE_START : GST_PROGRESS_TYPE_CONTINUE;
  gint percent = p->total > 0 ? (gint) (p->downloaded * 100 / p->total) : -1;
  g_autofree gchar *text = NULL;

  if (p->done)
    text = g_strdup_printf ("Downloaded %s from %s (%.1f MB)", p->filename,
        p->repo_id, p->downloaded / MB);
  else if (percent >= 0)
    text = g_strdup_printf ("Downloading %s from %s: %d%% (%.1f of %.1f MB)",
        p->filename, p->repo_id, percent, p->downloaded / MB, p->total / MB);
  else
    text = g_strdup_printf ("Downloading %s from %s: %.1f MB", p->filename,
        p->repo_id, p->downloaded / MB);

  GstMessage *msg = gst_message_new_progress (GST_OBJECT (element), type,
      "download", text);
  gst_structure_set (gst_message_writable_structure (msg),
      "repo", G_TYPE_STRING, p->repo_id, "file", G_TYPE_STRING, p->filename,
      "downloaded", G_TYPE_UINT64, (guint64) p->downloaded,
      "total", G_TYPE_UINT64, (guint64) p->total,
      "percent", G_TYPE_INT, percent, NULL);
  gst_element_post_message (element, msg);
}

MoshiHubOptions
gst_moshi_hub_options (GstElement * element)
{
  MoshiHubOptions options = {.progress = post_progress,.user_data = element };
  return options;
}
