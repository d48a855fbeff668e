# Sourced by the moshidialog examples: the models from the environment, with their defaults
# (the variables are described in examples/moshi-dialog-mic.sh), and the moshidialog
# properties that name them in $dialog_models, ready for gst-launch-1.0.
if [[ ${SMALL:-} == 1 ]]; then
  data="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../tests/data"
  MODEL=$data/lm/dialog/model.safetensors
  LM_CONFIG=$data/lm/dialog/config.json
  MIMI_MODEL=$data/mimi/small/model.safetensors
  MIMI_CONFIG=$data/mimi/small/config.json
  TOKENIZER=$data/tokenizer/tiny.model
fi
MODEL=${MODEL:-kyutai/moshiko-pytorch-bf16}
LM_CONFIG=${LM_CONFIG:-}
MIMI_MODEL=${MIMI_MODEL:-}
MIMI_CONFIG=${MIMI_CONFIG:-}
if [[ -z ${TOKENIZER+set} ]]; then
  # Kyutai's repositories hold the tokenizer next to the LM.
  if [[ -f $MODEL || $MODEL == *.safetensors ]]; then TOKENIZER=; else TOKENIZER=${MODEL%%:*}; fi
fi
DEVICE=${DEVICE:-auto}
dialog_models=(model="$MODEL" lm-config="$LM_CONFIG" mimi-model="$MIMI_MODEL"
  mimi-config="$MIMI_CONFIG" tokenizer="$TOKENIZER" device="$DEVICE")
