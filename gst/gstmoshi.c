/* gst-moshi: the "moshi" plugin, Kyutai's Mimi codec (mimienc, mimidec) and the Moshi
 * spoken dialogue model (moshidialog) as GStreamer elements, and the RTP payload format of
 * the tokens (rtpmimipay, rtpmimidepay). */
#include "gstmoshielements.h"

static gboolean
plugin_init (GstPlugin * plugin)
{
  gboolean ret = FALSE;

  ret |= GST_ELEMENT_REGISTER (mimienc, plugin);
  ret |= GST_ELEMENT_REGISTER (mimidec, plugin);
  ret |= GST_ELEMENT_REGISTER (moshidialog, plugin);
  ret |= GST_ELEMENT_REGISTER (rtpmimipay, plugin);
  ret |= GST_ELEMENT_REGISTER (rtpmimidepay, plugin);

  return ret;
}

GST_PLUGIN_DEFINE (GST_VERSION_MAJOR,
    GST_VERSION_MINOR,
    moshi,
    "Kyutai Mimi neural speech codec (and Moshi) elements",
    plugin_init, VERSION, "MIT/X11", GST_PACKAGE_NAME, GST_PACKAGE_ORIGIN)
