/* gst-moshi: rtpmimidepay, Mimi tokens out of RTP packets (docs/rtp-mimi.md). */
#pragma once

#include <gst/rtp/rtp.h>

G_BEGIN_DECLS

#define GST_TYPE_RTP_MIMI_DEPAY (gst_rtp_mimi_depay_get_type ())
G_DECLARE_FINAL_TYPE (GstRtpMimiDepay, gst_rtp_mimi_depay, GST, RTP_MIMI_DEPAY,
    GstRTPBaseDepayload)

G_END_DECLS
