/* gst-moshi: mimienc, raw audio to Mimi tokens. */
#pragma once

#include <gst/audio/audio.h>

G_BEGIN_DECLS

#define GST_TYPE_MIMI_ENC (gst_mimi_enc_get_type ())
G_DECLARE_FINAL_TYPE (GstMimiEnc, gst_mimi_enc, GST, MIMI_ENC, GstAudioEncoder)

G_END_DECLS
