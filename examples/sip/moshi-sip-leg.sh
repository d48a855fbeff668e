#!/usr/bin/env bash
# The media leg of a phone call with Moshi: RTP audio from the caller in, Moshi's voice out,
# as a SIP media server (Asterisk ExternalMedia, baresip, a B2BUA) hands a call's RTP to an
# external process. Signalling stays with the SIP server; this only speaks RTP.
#
#   examples/sip/moshi-sip-leg.sh
#
#   udp :LOCAL_PORT -> rtpjitterbuffer -> depay -> decode -> audioresample -> moshidialog
#      -> audioresample -> encode -> pay -> udp REMOTE_HOST:REMOTE_PORT
#   Moshi's words go to stdout as it says them.
#
# The leg runs on the pipeline clock: when the caller stops sending (silence suppression,
# comfort noise not sent, a network gap), moshidialog goes on with silence (fill-stalls) and
# keeps talking; nothing in the leg waits for the caller's packets. Stop it (SIGINT) when the
# call ends; see docs/deployments.md for the hand-over from Asterisk and baresip.
#
# Environment:
#   CODEC        pcmu (G.711 mu-law, 8 kHz, payload type 0) or opus (48 kHz RTP clock,
#                dynamic payload type) (default pcmu)
#   PT           RTP payload type, both directions (default 0 for pcmu, 111 for opus)
#   LOCAL_HOST, LOCAL_PORT    where the caller's RTP arrives (default 0.0.0.0, 4000)
#   REMOTE_HOST, REMOTE_PORT  where Moshi's RTP goes (default 127.0.0.1, 4002)
#   JITTER       jitterbuffer latency in ms (default 60)
#   MODEL, LM_CONFIG, MIMI_MODEL, MIMI_CONFIG, TOKENIZER, DEVICE, SMALL=1
#                the models, as for examples/moshi-dialog-mic.sh (SMALL=1: the small untrained
#                test models of this tree)
#   GST_PLUGIN_PATH  where GStreamer finds libgstmoshi.so; default: this tree's build/gst
#                (or $MOSHI_BUILD_DIR/gst) when built there, else the installed plugin.
# Needs gstreamer1.0-plugins-good (udp, rtp, rtpmanager, mulaw) and -base (opus).
set -euo pipefail

source "$(dirname "$0")/../plugin-path.sh"
source "$(dirname "$0")/../dialog-models.sh"
CODEC=${CODEC:-pcmu}
LOCAL_HOST=${LOCAL_HOST:-0.0.0.0}
LOCAL_PORT=${LOCAL_PORT:-4000}
REMOTE_HOST=${REMOTE_HOST:-127.0.0.1}
REMOTE_PORT=${REMOTE_PORT:-4002}
JITTER=${JITTER:-60}

case $CODEC in
  pcmu)
    PT=${PT:-0}
    caps="application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=$PT"
    decode=(rtppcmudepay ! mulawdec)
    # 20 ms packets (160 bytes), what telephony peers expect.
    encode=(audio/x-raw,rate=8000 ! mulawenc ! rtppcmupay pt="$PT" min-ptime=20000000
      max-ptime=20000000)
    ;;
  opus)
    PT=${PT:-111}
    caps="application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload=$PT"
    decode=(rtpopusdepay ! opusdec plc=true)
    # 24 kHz is Moshi's own rate: no resampling, and Opus codes it natively (super-wideband).
    encode=(audio/x-raw,rate=24000 ! opusenc audio-type=voice frame-size=20 ! rtpopuspay pt="$PT")
    ;;
  *)
    echo "CODEC must be pcmu or opus, not '$CODEC'" >&2
    exit 2
    ;;
esac

# queue before moshidialog: the network thread only receives. queue after each output: both
# come from the model's thread, and the text sink must not hold back the voice.
# udpsink sync=true: the answer leaves at the pace of the pipeline clock, as a phone expects.
exec gst-launch-1.0 -q -e \
  udpsrc address="$LOCAL_HOST" port="$LOCAL_PORT" caps="$caps" ! \
  rtpjitterbuffer latency="$JITTER" ! "${decode[@]}" ! audioconvert ! audioresample ! queue ! \
  moshidialog name=m "${dialog_models[@]}" fill-stalls=true \
  m.src ! queue ! audioconvert ! audioresample ! "${encode[@]}" ! \
    udpsink host="$REMOTE_HOST" port="$REMOTE_PORT" sync=true \
  m.text_src ! queue ! fdsink fd=1 sync=true
