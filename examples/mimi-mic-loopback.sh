#!/usr/bin/env bash
# Microphone -> Mimi encoder -> Mimi decoder -> speaker, to hear the codec live.
#
#   examples/mimi-mic-loopback.sh
#
# Use headphones (the speaker would feed back into the microphone). Stop with Ctrl-C.
# The codec adds 80 ms (one frame) on top of the audio devices' own latency.
#
# Environment:
#   MODEL   Mimi weights: a .safetensors file or a Hugging Face repo id in the local cache
#           (e.g. kyutai/moshiko-pytorch-bf16). Default: the small test model of this tree,
#           which is untrained and sounds nothing like the input.
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

# queue: the microphone thread only captures; encoding and decoding run in their own
# streaming thread, so a slow frame never makes the source drop samples.
exec gst-launch-1.0 -e \
  autoaudiosrc ! queue ! audioconvert ! audioresample ! \
  mimienc model="$MODEL" config="$CONFIG" num-codebooks="$CODEBOOKS" ! \
  mimidec model="$MODEL" config="$CONFIG" ! \
  audioconvert ! audioresample ! autoaudiosink
