#!/usr/bin/env bash
# Audio file -> Mimi tokens (stored with gdppay) -> audio file, with gst-launch-1.0.
#
#   examples/mimi-file-roundtrip.sh INPUT OUTPUT.wav [TOKENS.gdp]
#
# INPUT is anything decodebin can read (WAV, FLAC, Ogg, MP3, ...). The tokens are kept in
# TOKENS.gdp (default: OUTPUT with .mimi.gdp) and can be decoded again later with the
# second pipeline alone. Needs gdppay/gdpdepay (gstreamer1.0-plugins-bad).
#
# Environment:
#   MODEL   Mimi weights: a .safetensors file or a Hugging Face repo id in the local cache
#           (e.g. kyutai/moshiko-pytorch-bf16). Default: the small test model of this tree.
#   CONFIG  Mimi config JSON for non-released models (default: the small model's; set it to
#           an empty string for the released Mimi).
#   CODEBOOKS  codebooks per frame (default 8).
#   GST_PLUGIN_PATH  where GStreamer finds libgstmoshi.so; default: this tree's build/gst
#           (or $MOSHI_BUILD_DIR/gst) when built there, else the installed plugin.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/plugin-path.sh"
small="$here/../tests/data/mimi/small"
MODEL=${MODEL-$small/model.safetensors}
CONFIG=${CONFIG-$small/config.json}
CODEBOOKS=${CODEBOOKS:-8}

if [[ $# -lt 2 ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
input=$1
output=$2
tokens=${3:-${output%.wav}.mimi.gdp}

# Encode: any audio -> 24 kHz mono -> tokens, one 80 ms frame per buffer, caps and
# timestamps kept by the GDP framing.
gst-launch-1.0 -q filesrc location="$input" ! decodebin ! audioconvert ! audioresample ! \
  mimienc model="$MODEL" config="$CONFIG" num-codebooks="$CODEBOOKS" ! \
  gdppay ! filesink location="$tokens"

# Decode: tokens -> 24 kHz mono float WAV.
gst-launch-1.0 -q filesrc location="$tokens" ! gdpdepay ! \
  mimidec model="$MODEL" config="$CONFIG" ! audioconvert ! wavenc ! \
  filesink location="$output"

echo "tokens: $tokens ($(stat -c %s "$tokens") bytes), audio: $output"
