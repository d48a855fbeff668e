/* gst-moshi: mimidec, Mimi tokens to raw audio. */
#pragma once

#include <gst/audio/audio.h>

G_BEGIN_DECLS

#define GST_TYPE_MIMI_DEC (gst_mimi_dec_get_type ())
G_DECLARE_FINAL_TYPE (GstMimiDec, gst_mimi_dec, GST, MIMI_DEC, GstAudioDecoder)

G_END_DECLS
