#!/usr/bin/env bash
# Split deployment on loopback: Mimi at the edge, Moshi on the server, tokens over RTP between
# them (payload format MIMI, docs/rtp-mimi.md).
#
#   examples/mimi-rtp-split.sh INPUT.wav ANSWER.wav
#
#   edge (sender):   INPUT -> mimienc -> rtpmimipay -> udp :SERVER_PORT
#   server:          udp -> rtpjitterbuffer -> rtpmimidepay -> moshidialog (tokens in, tokens
#                    out) -> rtpmimipay -> udp :EDGE_PORT
#   edge (receiver): udp -> rtpjitterbuffer -> rtpmimidepay -> mimidec plc=true -> ANSWER.wav
#
# Three gst-launch-1.0 processes, as they would run on two machines (set SERVER_HOST and
# EDGE_HOST for that). Only tokens cross the network: about 1 kbit/s each way for the released
# Mimi. The input is played in real time (udpsink sync=true), as a microphone would be.
#
# Environment (defaults: the small test models of this tree, which run on a CPU):
#   LM, LM_CONFIG        Moshi LM (.safetensors or repo id) and its config
#   MIMI, MIMI_CONFIG    Mimi weights and config, the same at the edge and on the server
#   TOKENIZER            the LM's text tokenizer (its words are printed by the server)
#   CODEBOOKS            codebooks the edge sends (default 8: what the LM reads)
#   MODEL_ID             model identity sent in the SDP fmtp and checked by the receivers
#   SERVER_PORT, EDGE_PORT  UDP ports (default 5004, 5006)
#   GST_PLUGIN_PATH  where GStreamer finds libgstmoshi.so; default: this tree's build/gst
#           (or $MOSHI_BUILD_DIR/gst) when built there, else the installed plugin.
# Needs rtpjitterbuffer and udpsrc/udpsink (gstreamer1.0-plugins-good).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/plugin-path.sh"
data="$here/../tests/data"
LM=${LM-$data/lm/dialog/model.safetensors}
LM_CONFIG=${LM_CONFIG-$data/lm/dialog/config.json}
MIMI=${MIMI-$data/mimi/small/model.safetensors}
MIMI_CONFIG=${MIMI_CONFIG-$data/mimi/small/config.json}
TOKENIZER=${TOKENIZER-$data/tokenizer/tiny.model}
CODEBOOKS=${CODEBOOKS:-8}
MODEL_ID=${MODEL_ID:-small-test-mimi}
SERVER_HOST=${SERVER_HOST:-127.0.0.1}
EDGE_HOST=${EDGE_HOST:-127.0.0.1}
SERVER_PORT=${SERVER_PORT:-5004}
EDGE_PORT=${EDGE_PORT:-5006}

if [[ $# -lt 2 ]]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
input=$1
output=$2
log=${output%.wav}

# The caps an SDP would give: only the codebook count differs between the two directions
# (the LM may answer with another number of codebooks than it reads; the small one does not).
rtp_caps () {
  echo "application/x-rtp,media=audio,clock-rate=24000,encoding-name=MIMI,payload=96,codebooks=(string)$1,codebook-size=(string)$2,model-id=(string)$MODEL_ID"
}
# codebook-size comes from the Mimi config (2048 for the released model).
size=2048
if [[ -n $MIMI_CONFIG ]]; then
  size=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c.get("quantizer", {}).get("bins", 2048))' "$MIMI_CONFIG" 2>/dev/null || echo 2048)
fi

pids=()
cleanup () { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Server: tokens in, tokens out (moshidialog outputs tokens because rtpmimipay only takes
# them). -e: at SIGINT it sends EOS through, so the last answer frames still go out.
gst-launch-1.0 -e -m \
  udpsrc address="$SERVER_HOST" port="$SERVER_PORT" caps="$(rtp_caps "$CODEBOOKS" "$size")" ! \
  rtpjitterbuffer latency=200 do-lost=true ! rtpmimidepay model-id="$MODEL_ID" ! \
  moshidialog model="$LM" lm-config="$LM_CONFIG" mimi-model="$MIMI" mimi-config="$MIMI_CONFIG" \
    tokenizer="$TOKENIZER" ! \
  rtpmimipay model-id="$MODEL_ID" ! udpsink host="$EDGE_HOST" port="$EDGE_PORT" \
  >"$log.server.log" 2>&1 &
server=$!
pids+=("$server")

# Edge receiver: the answer, concealing lost packets.
gst-launch-1.0 -e \
  udpsrc address="$EDGE_HOST" port="$EDGE_PORT" caps="$(rtp_caps 8 "$size")" ! \
  rtpjitterbuffer latency=200 do-lost=true mode=none ! rtpmimidepay model-id="$MODEL_ID" ! \
  mimidec model="$MIMI" config="$MIMI_CONFIG" plc=true ! audioconvert ! wavenc ! \
  filesink location="$output" >"$log.edge.log" 2>&1 &
receiver=$!
pids+=("$receiver")

# Give both time to load their models and bind their ports.
sleep 2

# Edge sender: the input in real time.
gst-launch-1.0 -q filesrc location="$input" ! decodebin ! audioconvert ! audioresample ! \
  mimienc model="$MIMI" config="$MIMI_CONFIG" num-codebooks="$CODEBOOKS" ! \
  rtpmimipay model-id="$MODEL_ID" ! udpsink host="$SERVER_HOST" port="$SERVER_PORT" sync=true

# Let the last packets through the jitterbuffers, then end the server and the receiver.
sleep 1
kill -INT "$server"
wait "$server" || { echo "server failed:" >&2; cat "$log.server.log" >&2; exit 1; }
sleep 1
kill -INT "$receiver"
wait "$receiver" || { echo "edge receiver failed:" >&2; cat "$log.edge.log" >&2; exit 1; }
pids=()

words=$(grep -o 'moshi-text, text=(string)[^,]*' "$log.server.log" | sed 's/.*(string)//' |
  tr -d '"\\' | tr -d '\n' || true)
echo "answer: $output ($(stat -c %s "$output") bytes); the server said: $words"
