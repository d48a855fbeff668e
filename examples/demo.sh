#!/usr/bin/env bash
# The main job, end to end on a fresh machine: installs what is missing, builds, makes a spoken
# sentence with espeak-ng, and sends it through Mimi: audio -> tokens -> audio.
#
# With no arguments it uses the small Mimi bundled for the tests (random weights with the
# upstream architecture at reduced width: the output is not meant to sound like the input).
# With real weights:  MIMI_MODEL=/path/to/tokenizer-e351c8d8-checkpoint125.safetensors MIMI_CONFIG= examples/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup-deps.sh
if [[ ! -d build ]]; then
  meson setup build
fi
ninja -C build

model="${MIMI_MODEL-tests/data/mimi/small/model.safetensors}"
config="${MIMI_CONFIG-tests/data/mimi/small/config.json}"
out="${DEMO_OUT:-build/demo}"
mkdir -p "$out"

text="${DEMO_TEXT:-Hello from gst moshi. This sentence goes through the Mimi codec and back.}"
espeak-ng -w "$out/speech-22k.wav" "$text"

config_args=()
[[ -n "$config" ]] && config_args=(--config "$config")

build/tools/moshi-tool info --summary "$model"

export GST_PLUGIN_PATH_1_0="$PWD/build/gst"
export GST_REGISTRY_1_0="$PWD/build/gst/registry.bin"
config_prop=()
[[ -n "$config" ]] && config_prop=(config="$config")

echo "== GStreamer: spoken WAV -> mimienc -> mimidec -> WAV"
gst-launch-1.0 -q filesrc location="$out/speech-22k.wav" ! wavparse ! audioconvert ! audioresample \
  ! mimienc model="$model" "${config_prop[@]}" ! mimidec model="$model" "${config_prop[@]}" \
  ! audioconvert ! wavenc ! filesink location="$out/decoded.wav"

echo "== moshi-tool: the same speech to a token file and back"
gst-launch-1.0 -q filesrc location="$out/speech-22k.wav" ! wavparse ! audioconvert ! audioresample \
  ! audio/x-raw,format=F32LE,rate=24000,channels=1 ! wavenc ! filesink location="$out/speech-24k.wav"
build/tools/moshi-tool encode --model "$model" "${config_args[@]}" "$out/speech-24k.wav" "$out/codes.safetensors"
build/tools/moshi-tool decode --model "$model" "${config_args[@]}" "$out/codes.safetensors" "$out/decoded-tool.wav"
echo "demo: wrote $out/decoded.wav and $out/decoded-tool.wav"
