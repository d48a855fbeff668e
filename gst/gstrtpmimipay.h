/* gst-moshi: rtpmimipay, Mimi tokens into RTP packets (docs/rtp-mimi.md). */
#pragma once

#include <gst/rtp/rtp.h>

G_BEGIN_DECLS

#define GST_TYPE_RTP_MIMI_PAY (gst_rtp_mimi_pay_get_type ())
G_DECLARE_FINAL_TYPE (GstRtpMimiPay, gst_rtp_mimi_pay, GST, RTP_MIMI_PAY, GstRTPBasePayload)

/* Samples per Mimi frame at the 24 kHz RTP clock: the RTP timestamp step of one frame. */
#define GST_RTP_MIMI_CLOCK_RATE 24000
#define GST_RTP_MIMI_FRAME_SAMPLES 1920

G_END_DECLS
