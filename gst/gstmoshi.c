/* gst-moshi: the "moshi" plugin, Kyutai's Mimi codec (and later the Moshi model) as
 * GStreamer elements. */
#include "gstmoshielements.h"

static gboolean
plugin_init (GstPlugin * plugin)
{
  gboolean ret = FALSE;

  ret |= GST_ELEMENT_REGISTER (mimienc, plugin);
  ret |= GST_ELEMENT_REGISTER (mimidec, plugin);

  return ret;
}

GST_PLUGIN_DEFINE (GST_VERSION_MAJOR,
    GST_VERSION_MINOR,
    moshi,
    "Kyutai Mimi neural speech codec (and Moshi) elements",
    plugin_init, VERSION, "MIT/X11", GST_PACKAGE_NAME, GST_PACKAGE_ORIGIN)
