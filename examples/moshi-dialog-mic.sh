#!/usr/bin/env bash
# Talk with Moshi: microphone -> moshidialog -> speaker, Moshi's words printed as it says them.
#
#   examples/moshi-dialog-mic.sh
#
# Use headphones: Moshi hears the loudspeaker and would answer itself. Stop with Ctrl-C.
# Latency: 160 ms in the model (one 80 ms frame + Moshi's 80 ms acoustic delay) plus the audio
# devices'. Real time needs each 80 ms step to run in less than 80 ms: a GPU for the 7B model.
#
# Environment (Hugging Face repo ids are looked up in the local cache, nothing is downloaded;
# fetch the files first with
#   huggingface-cli download kyutai/moshiko-pytorch-bf16 model.safetensors \
#       tokenizer-e351c8d8-checkpoint125.safetensors tokenizer_spm_32k_3.model):
#   MODEL       Moshi LM weights: a .safetensors file, a directory or a repo id
#               (default kyutai/moshiko-pytorch-bf16)
#   LM_CONFIG   LM config.json for models other than Moshi 7B (default: none)
#   MIMI_MODEL  Mimi weights (default: empty = the repository or directory of MODEL)
#   MIMI_CONFIG Mimi config.json for models other than the released Mimi (default: none)
#   TOKENIZER   SentencePiece model of the text (default: the repository of MODEL, or empty
#               when MODEL is a file; empty = no text)
#   DEVICE      auto, cpu or cuda (default auto)
#   SMALL=1     use the small untrained test models of this tree instead (no download, runs
#               on any CPU; the voice and the words are noise)
#   GST_PLUGIN_PATH  where GStreamer finds libgstmoshi.so; default: this tree's build/gst
#           (or $MOSHI_BUILD_DIR/gst) when built there, else the installed plugin.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/plugin-path.sh"
. "$here/dialog-models.sh"

# queue in front: the microphone thread only captures. queue after each output: both come
# from the model's thread, and each sink must be able to wait without blocking the other.
# The words go to stdout as they come (fdsink), gst-launch's own messages are silenced (-q).
exec gst-launch-1.0 -q -e \
  autoaudiosrc ! queue ! audioconvert ! audioresample ! \
  moshidialog name=m "${dialog_models[@]}" \
  m.src ! queue ! audioconvert ! audioresample ! autoaudiosink \
  m.text_src ! queue ! fdsink fd=1 sync=true
