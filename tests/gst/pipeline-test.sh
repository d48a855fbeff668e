#!/usr/bin/env bash
# gst-launch-1.0 tests of the moshi plugin, run by meson (suite gst-pipeline) with
# GST_PLUGIN_PATH_1_0 pointing at the built plugin and MOSHI_TEST_DATA at tests/data.
#
#  1. gst-inspect-1.0 loads the plugin and describes both elements (no GPU needed);
#  2. espeak-ng speech at 22050 Hz -> wavparse -> audioconvert -> audioresample -> mimienc ->
#     mimidec -> audioconvert -> wavenc: the output lasts as long as the input and is neither
#     silent nor NaN;
#  3. the same through examples/mimi-file-roundtrip.sh (gdppay to a file, gdpdepay back):
#     bit-identical audio and one token buffer per 80 ms frame;
#  4. 16 kHz input without audioresample fails to negotiate, and says why;
#  5. a missing model file is an error that names it;
#  6. moshidialog (small dialog LM + small Mimi + tiny tokenizer): the espeak-ng speech ->
#     wavparse -> audioconvert -> audioresample -> moshidialog -> audioconvert -> wavenc, with
#     text_src -> filesink: the model's answer lasts exactly as long as the input, is neither
#     silent nor NaN, and the text file holds the words the element also posted as
#     moshi-text messages; then the same with a live source; 16 moshidialog elements in one
#     pipeline (a tee) on the shared scheduler give the words of, and audio within 1e-5 of,
#     the same 16 each on its own, in fewer ticks than steps; eos-tail=800 adds 10 frames
#     after the input's end; and a missing LM or tokenizer is an error naming the file;
#  7. examples/mimi-rtp-split.sh: mimienc at the edge -> RTP (rtpmimipay/rtpmimidepay) ->
#     moshidialog in token mode -> RTP -> mimidec at the edge, three processes on loopback: the
#     answer lasts at least as long as the input (the server talks on until it is stopped)
#     and is not silent.
# Under `meson test --setup valgrind` (MOSHI_TEST_VALGRIND=1) the pipelines of 2 and 6 run once
# more under valgrind, and so do the failing runs of 4, 5 and 6.
set -euo pipefail

for tool in gst-launch-1.0 gst-inspect-1.0 espeak-ng python3; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed (tools/setup-deps.sh)"; exit 77; }
done

data=${MOSHI_TEST_DATA:?MOSHI_TEST_DATA must point at tests/data}
examples=${MOSHI_EXAMPLES_DIR:-$(dirname "$0")/../../examples}
model=$data/mimi/small/model.safetensors
config=$data/mimi/small/config.json
lm=$data/lm/dialog/model.safetensors
lm_config=$data/lm/dialog/config.json
tokenizer=$data/tokenizer/tiny.model
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail () { echo "FAIL: $*" >&2; exit 1; }
step () { echo "--- $*"; }

here=$(cd "$(dirname "$0")" && pwd)
run_gst () {
  if [[ -n ${MOSHI_TEST_VALGRIND:-} ]]; then
    G_SLICE=always-malloc valgrind -q --tool=memcheck --leak-check=full \
      --errors-for-leak-kinds=definite --show-leak-kinds=definite --error-exitcode=99 \
      --num-callers=30 --suppressions=/usr/share/glib-2.0/valgrind/glib.supp \
      --suppressions="$here/gst.supp" "$@"
  else
    "$@"
  fi
}

# gst-launch-1.0 must have failed cleanly: an error exit, not a signal or a valgrind error (99).
expect_clean_failure () {
  local rc=$1 log=$2
  (( rc != 0 )) || fail "the pipeline succeeded: $log"
  (( rc != 99 && (rc < 128 || rc == 255) )) || fail "gst-launch-1.0 crashed or leaked ($rc): $log"
}

# Prints "<samples> <rate> <rms> <non-finite count>" of a mono WAV file.
wav_stats () { python3 "$here/wavstats.py" "$1"; }

step "gst-inspect-1.0"
for element in mimienc mimidec moshidialog; do
  out=$(gst-inspect-1.0 "$element") || fail "gst-inspect-1.0 $element failed"
  grep -q "Long-name.*\(Mimi speech\|Moshi spoken dialogue\)" <<<"$out" ||
    fail "$element: no long name"
  grep -q "audio/x-mimi" <<<"$out" || fail "$element: no audio/x-mimi caps"
  grep -q "GstMoshiDevice" <<<"$out" || fail "$element: no device enum"
done
out=$(gst-inspect-1.0 moshidialog)
grep -q "text/x-raw" <<<"$out" || fail "moshidialog: no text/x-raw caps"
grep -q "SRC template: 'text_src'" <<<"$out" || fail "moshidialog: no text_src template"
out=$(gst-inspect-1.0 moshi) || fail "gst-inspect-1.0 moshi failed"
grep -q "5 features" <<<"$out" || fail "plugin moshi does not list 5 features"
for element in rtpmimipay rtpmimidepay; do
  out=$(gst-inspect-1.0 "$element") || fail "gst-inspect-1.0 $element failed"
  grep -q "encoding-name: MIMI" <<<"$out" || fail "$element: no MIMI caps"
done

step "espeak-ng input at 22050 Hz"
espeak-ng -w "$work/speech.wav" \
  "The quick brown fox jumps over the lazy dog, twelve and a half times per second."
read -r in_samples in_rate in_rms _ < <(wav_stats "$work/speech.wav")
[[ $in_rate == 22050 ]] || fail "espeak-ng wrote $in_rate Hz, expected 22050"
echo "input: $in_samples samples at $in_rate Hz, rms $in_rms"

step "wavparse ! audioconvert ! audioresample ! mimienc ! mimidec ! audioconvert ! wavenc"
gst-launch-1.0 -q filesrc location="$work/speech.wav" ! wavparse ! audioconvert ! \
  audioresample ! mimienc model="$model" config="$config" ! \
  mimidec model="$model" config="$config" ! audioconvert ! wavenc ! \
  filesink location="$work/direct.wav"
read -r out_samples out_rate out_rms out_bad < <(wav_stats "$work/direct.wav")
echo "output: $out_samples samples at $out_rate Hz, rms $out_rms, $out_bad non-finite"
[[ $out_rate == 24000 ]] || fail "output rate $out_rate"
# The resampled input has round(n * 24000 / 22050) samples (give or take one); the encoder
# pads the last frame and the decoder cuts the padding again.
expected=$(( (in_samples * 24000 + 11025) / 22050 ))
(( out_samples >= expected - 1 && out_samples <= expected + 1 )) ||
  fail "output has $out_samples samples, expected $expected"
frames=$(( (expected + 1919) / 1920 ))
echo "duration ok: $out_samples samples = $frames frames of 80 ms (last one partial)"
[[ $out_bad == 0 ]] || fail "$out_bad non-finite samples in the output"
python3 -c "import sys; sys.exit(0 if float('$out_rms') > 1e-3 else 1)" ||
  fail "output is silent (rms $out_rms)"

if [[ -n ${MOSHI_TEST_VALGRIND:-} ]]; then
  step "the same under valgrind"
  # Not compared bit for bit: under valgrind the CPU reports other vector extensions, so
  # the library picks other kernels.
  run_gst gst-launch-1.0 -q filesrc location="$work/speech.wav" ! wavparse ! audioconvert ! \
    audioresample ! mimienc model="$model" config="$config" ! \
    mimidec model="$model" config="$config" ! audioconvert ! wavenc ! \
    filesink location="$work/valgrind.wav"
  read -r vg_samples _ _ vg_bad < <(wav_stats "$work/valgrind.wav")
  [[ $vg_samples == "$out_samples" && $vg_bad == 0 ]] ||
    fail "under valgrind: $vg_samples samples, $vg_bad non-finite"
fi

step "file -> tokens (gdppay) -> file (examples/mimi-file-roundtrip.sh)"
if gst-inspect-1.0 gdppay >/dev/null 2>&1 && gst-inspect-1.0 gdpdepay >/dev/null 2>&1; then
  # with no plugin path given: the example finds the uninstalled build by itself
  env -u GST_PLUGIN_PATH -u GST_PLUGIN_PATH_1_0 MODEL="$model" CONFIG="$config" \
    "$examples/mimi-file-roundtrip.sh" "$work/speech.wav" "$work/from-tokens.wav" "$work/tokens.gdp"
  cmp "$work/direct.wav" "$work/from-tokens.wav" ||
    fail "audio decoded from stored tokens differs from the direct pipeline"
  # One GDP buffer packet per frame (plus caps and event packets).
  n_buffers=$(gst-launch-1.0 filesrc location="$work/tokens.gdp" ! gdpdepay ! \
    fakesink silent=false -v 2>/dev/null | grep -c "chain" || true)
  [[ $n_buffers == "$frames" ]] || fail "$n_buffers token buffers stored, expected $frames"
  echo "stored $n_buffers token frames, decoded audio identical"
else
  echo "SKIP: gdppay/gdpdepay not installed (gstreamer1.0-plugins-bad)"
fi

step "16 kHz without audioresample must not negotiate"
rc=0
log=$(run_gst gst-launch-1.0 audiotestsrc num-buffers=5 ! \
    audio/x-raw,format=F32LE,rate=16000,channels=1 ! \
    mimienc model="$model" config="$config" ! fakesink 2>&1) || rc=$?
expect_clean_failure "$rc" "$log"
# gst-launch refuses the link itself (caps query); elements that link before negotiating
# get not-negotiated, with mimienc's explanation in the debug log (see the harness suite).
grep -E -q "mimienc0 can't handle caps.*rate=\(int\)16000|not-negotiated" <<<"$log" ||
  fail "no negotiation error: $log"

step "a missing model is an error naming the file"
rc=0
log=$(run_gst gst-launch-1.0 audiotestsrc num-buffers=5 ! \
    mimienc model=/nonexistent/mimi.safetensors ! fakesink 2>&1) || rc=$?
expect_clean_failure "$rc" "$log"
grep -q "/nonexistent/mimi.safetensors" <<<"$log" || fail "error does not name the file: $log"

dialog_props=(model="$lm" lm-config="$lm_config" mimi-model="$model" mimi-config="$config"
  tokenizer="$tokenizer")

step "wavparse ! audioconvert ! audioresample ! moshidialog ! audioconvert ! wavenc (+ text_src)"
# A queue after each src pad: like a demuxer's, the two outputs come from one streaming
# thread, and each sink waits for data to preroll.
gst-launch-1.0 -m filesrc location="$work/speech.wav" ! wavparse ! audioconvert ! \
  audioresample ! moshidialog name=m "${dialog_props[@]}" \
  m.src ! queue ! audioconvert ! wavenc ! filesink location="$work/answer.wav" \
  m.text_src ! queue ! filesink location="$work/answer.txt" >"$work/dialog.log" 2>&1 ||
  fail "the moshidialog pipeline failed: $(cat "$work/dialog.log")"
read -r ans_samples ans_rate ans_rms ans_bad < <(wav_stats "$work/answer.wav")
echo "answer: $ans_samples samples at $ans_rate Hz, rms $ans_rms, $ans_bad non-finite"
[[ $ans_rate == 24000 ]] || fail "answer rate $ans_rate"
# One output frame per input frame, the last one cut to the input's length.
(( ans_samples >= expected - 1 && ans_samples <= expected + 1 )) ||
  fail "the answer has $ans_samples samples, the input $expected"
[[ $ans_bad == 0 ]] || fail "$ans_bad non-finite samples in the answer"
python3 -c "import sys; sys.exit(0 if float('$ans_rms') > 1e-3 else 1)" ||
  fail "the answer is silent (rms $ans_rms)"
words=$(grep -c "moshi-text, text=" "$work/dialog.log" || true)
text_bytes=$(stat -c %s "$work/answer.txt")
echo "text: $words words, $text_bytes bytes: $(head -c 200 "$work/answer.txt")"
(( words > 0 && text_bytes > 0 )) || fail "no words (messages: $words, text file: $text_bytes bytes)"
python3 -c "import sys; open(sys.argv[1], encoding='utf-8', errors='strict').read()" \
  "$work/answer.txt" || fail "the text is not UTF-8"
# Each message's text is one buffer of the text file, in order.
python3 - "$work/dialog.log" "$work/answer.txt" <<'PY' || fail "messages and text file differ"
import re, sys
log = open(sys.argv[1], encoding="utf-8").read()
words = []
for m in re.finditer(r'moshi-text, text=\(string\)("(?:[^"\\]|\\.)*"|[^,]*),', log):
    w = m.group(1)
    if w.startswith('"'):
        w = re.sub(r'\\(.)', r'\1', w[1:-1])
    else:
        w = re.sub(r'\\(.)', r'\1', w)
    words.append(w)
text = open(sys.argv[2], encoding="utf-8").read()
if "".join(words) != text:
    print("messages: %r\nfile: %r" % ("".join(words), text))
    sys.exit(1)
PY

if [[ -n ${MOSHI_TEST_VALGRIND:-} ]]; then
  step "the same under valgrind"
  run_gst gst-launch-1.0 -q filesrc location="$work/speech.wav" ! wavparse ! audioconvert ! \
    audioresample ! moshidialog name=m "${dialog_props[@]}" \
    m.src ! queue ! audioconvert ! wavenc ! filesink location="$work/answer-vg.wav" \
    m.text_src ! queue ! filesink location="$work/answer-vg.txt"
  read -r vg_samples _ _ vg_bad < <(wav_stats "$work/answer-vg.wav")
  [[ $vg_samples == "$ans_samples" && $vg_bad == 0 ]] ||
    fail "under valgrind: $vg_samples samples, $vg_bad non-finite"
else
  step "live source: 2 s of audiotestsrc is-live=true into moshidialog, synchronised sinks"
  # The sinks add the latency moshidialog reports to the timestamps; with it no buffer
  # reaches them late (a late one would post a QoS message).
  gst-launch-1.0 -m audiotestsrc is-live=true num-buffers=100 samplesperbuffer=480 \
    wave=pink-noise ! audio/x-raw,rate=24000,channels=1 ! audioconvert ! \
    moshidialog name=m "${dialog_props[@]}" \
    m.src ! queue ! audioconvert ! fakesink sync=true qos=true \
    m.text_src ! queue ! fakesink sync=true qos=true >"$work/live.log" 2>&1 ||
    fail "the live pipeline failed: $(cat "$work/live.log")"
  grep -q "Got EOS" "$work/live.log" || fail "no EOS in the live run: $(cat "$work/live.log")"
  ! grep -q "(qos)" "$work/live.log" || fail "late buffers in the live run: $(grep -m3 "(qos)" \
    "$work/live.log")"
fi

if [[ -z ${MOSHI_TEST_VALGRIND:-} ]]; then
  step "16 moshidialog elements in one pipeline share the scheduler; each equals its run alone"
  # One tee, 16 conversations sampled with a seed each: first on the process's shared
  # scheduler, then each on its own (shared-scheduler=false). Equal words mean equal text
  # tokens; the audio may differ only by the batched Mimi's rounding (1e-5 relative L2), as
  # a different audio token would change whole frames.
  many_conversations () {
    local shared=$1 tag=$2 line=()
    for i in $(seq 0 15); do
      line+=(t. ! queue ! moshidialog name="m$i" "${dialog_props[@]}" seed=$((700 + 13 * i))
        shared-scheduler="$shared"
        "m$i.src" ! queue ! audioconvert ! wavenc ! filesink location="$work/$tag-$i.wav"
        "m$i.text_src" ! queue ! filesink location="$work/$tag-$i.txt")
    done
    gst-launch-1.0 -m filesrc location="$work/speech.wav" ! wavparse ! audioconvert ! \
      audioresample ! tee name=t "${line[@]}" >"$work/$tag.log" 2>&1 ||
      fail "16 conversations ($tag) failed: $(tail -20 "$work/$tag.log")"
  }
  many_conversations true shared
  many_conversations false alone
  for i in $(seq 0 15); do
    cmp -s "$work/shared-$i.txt" "$work/alone-$i.txt" ||
      fail "conversation $i: words differ on the shared scheduler: '$(cat "$work/shared-$i.txt")'" \
        "alone: '$(cat "$work/alone-$i.txt")'"
    rel=$(python3 "$here/wavstats.py" --rel-l2 "$work/shared-$i.wav" "$work/alone-$i.wav") ||
      fail "conversation $i: $rel"
    python3 -c "import sys; sys.exit(0 if float('$rel') <= 1e-5 else 1)" ||
      fail "conversation $i: audio $rel relative L2 from its run alone"
  done
  # The scheduler's last message: 16 conversations, fewer ticks than steps.
  python3 - "$work/shared.log" <<'PY' || fail "the conversations did not share ticks"
import re, sys
last = re.findall(r"moshi-scheduler, conversations=\(int\)(\d+).*?ticks=\(guint64\)(\d+), "
                  r"steps=\(guint64\)(\d+)", open(sys.argv[1]).read())
assert last, "no moshi-scheduler message"
conversations, ticks, steps = map(int, last[-1])
print("scheduler: %d conversations, %d steps in %d ticks" % (conversations, steps, ticks))
sys.exit(0 if conversations == 16 and steps > ticks else 1)
PY
  ! grep -q "moshi-scheduler" "$work/alone.log" || fail "a scheduler message from the unshared run"
fi

step "a recorded question -> the answer: moshidialog eos-tail=800 goes on 10 frames past EOS"
gst-launch-1.0 -q filesrc location="$work/speech.wav" ! wavparse ! audioconvert ! \
  audioresample ! moshidialog "${dialog_props[@]}" eos-tail=800 ! audioconvert ! wavenc ! \
  filesink location="$work/answer-tail.wav" >"$work/tail.log" 2>&1 ||
  fail "the eos-tail pipeline failed: $(cat "$work/tail.log")"
read -r tail_samples _ tail_rms tail_bad < <(wav_stats "$work/answer-tail.wav")
echo "answer with its tail: $tail_samples samples, rms $tail_rms"
(( tail_samples >= expected + 19200 - 1 && tail_samples <= expected + 19200 + 1 )) ||
  fail "the answer with a tail has $tail_samples samples, the input $expected (+ 19200 expected)"
[[ $tail_bad == 0 ]] || fail "$tail_bad non-finite samples in the tail"

step "moshidialog: a missing LM and a broken tokenizer are errors naming the file"
rc=0
log=$(run_gst gst-launch-1.0 audiotestsrc num-buffers=5 ! audioconvert ! audioresample ! \
    moshidialog "${dialog_props[@]}" model=/nonexistent/lm.safetensors ! fakesink 2>&1) || rc=$?
expect_clean_failure "$rc" "$log"
grep -q "/nonexistent/lm.safetensors" <<<"$log" || fail "error does not name the LM: $log"
printf 'not a sentencepiece model' >"$work/bad.model"
rc=0
log=$(run_gst gst-launch-1.0 audiotestsrc num-buffers=5 ! audioconvert ! audioresample ! \
    moshidialog "${dialog_props[@]}" tokenizer="$work/bad.model" ! fakesink 2>&1) || rc=$?
expect_clean_failure "$rc" "$log"
grep -q "$work/bad.model" <<<"$log" || fail "error does not name the tokenizer: $log"

step "split deployment over RTP (examples/mimi-rtp-split.sh)"
if gst-inspect-1.0 rtpjitterbuffer >/dev/null 2>&1 && gst-inspect-1.0 udpsrc >/dev/null 2>&1; then
  # Two free UDP ports, so that parallel runs do not collide.
  read -r p1 p2 < <(python3 "$here/free-udp-ports.py" 2)
  SERVER_PORT=$p1 EDGE_PORT=$p2 "$examples/mimi-rtp-split.sh" "$work/speech.wav" \
    "$work/split.wav" || fail "examples/mimi-rtp-split.sh failed"
  read -r split_samples split_rate split_rms split_bad < <(wav_stats "$work/split.wav")
  echo "answer over RTP: $split_samples samples at $split_rate Hz, rms $split_rms"
  [[ $split_rate == 24000 && $split_bad == 0 ]] || fail "split answer: rate $split_rate, $split_bad non-finite"
  # Whole frames (RTP carries no clipping); the last one may still be in flight at the end.
  # UDP carries no EOS: once the edge has sent everything, the server's moshidialog (live
  # input) goes on talking on silence (fill-stalls) until the script stops it a second later.
  (( split_samples >= (frames - 2) * 1920 && split_samples <= (frames + 40) * 1920 )) ||
    fail "the answer over RTP has $split_samples samples, the input $frames frames"
  python3 -c "import sys; sys.exit(0 if float('$split_rms') > 1e-3 else 1)" ||
    fail "the answer over RTP is silent (rms $split_rms)"
else
  echo "SKIP: rtpjitterbuffer/udpsrc not installed (gstreamer1.0-plugins-good)"
fi

echo "all pipeline tests passed"
