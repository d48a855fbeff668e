#!/usr/bin/env bash
# Broadcast: moshidialog's words as timed subtitles, with gst-launch-1.0 pipelines from
# docs/deployments.md.
#
#  1. Matroska: the voice as Opus and text_src as a subtitle track (S_TEXT/UTF8) in one file.
#     Demuxed again: the subtitle track holds exactly the words text_src sent (as Pango
#     markup, which is how matroskademux gives UTF-8 subtitles back), each at its
#     step's time (in order, within the answer), and the voice lasts the question
#     plus the eos-tail.
#  2. textoverlay (gstreamer1.0-x): the words burnt into a video, the text pad fed live from
#     moshidialog; the pipeline negotiates and runs to its end.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

require_tools gst-launch-1.0 gst-inspect-1.0 espeak-ng python3
require_elements matroskamux matroskademux opusenc opusdec wavparse wavenc tee


make_question "$work/question.wav"
tail_ms=800
expected_ms=$(( question_ms + tail_ms ))
dialog=(moshidialog name=m model="$data/lm/dialog/model.safetensors"
  lm-config="$data/lm/dialog/config.json" mimi-model="$data/mimi/small/model.safetensors"
  mimi-config="$data/mimi/small/config.json" tokenizer="$data/tokenizer/tiny.model"
  eos-tail="$tail_ms")

step "voice and subtitles into matroskamux"
timeout 120 gst-launch-1.0 -q filesrc location="$work/question.wav" ! wavparse ! \
  audioconvert ! audioresample ! "${dialog[@]}" \
  m.src ! queue ! audioconvert ! opusenc ! mux.audio_0 \
  m.text_src ! queue ! tee name=t \
    t. ! queue ! mux.subtitle_0 \
    t. ! queue ! filesink location="$work/words.txt" \
  matroskamux name=mux ! filesink location="$work/answer.mkv" ||
  fail "the muxing pipeline failed"

step "demuxed again"
timeout 120 gst-launch-1.0 -v filesrc location="$work/answer.mkv" ! matroskademux name=d \
  d.subtitle_0 ! queue ! tee name=t \
    t. ! queue ! filesink location="$work/subtitles.txt" \
    t. ! queue ! fakesink name=subs silent=false \
  d.audio_0 ! queue ! opusdec ! audioconvert ! wavenc ! filesink location="$work/voice.wav" \
  >"$work/demux.log" 2>&1 || fail "demuxing failed: $(tail -n 20 "$work/demux.log")"

# matroskademux gives S_TEXT/UTF8 back as Pango markup: the same text, with &, < and >
# escaped.
python3 - "$work/words.txt" "$work/subtitles.txt" <<'PY' || fail "the subtitle track differs from text_src"
import html, sys
words, subtitles = (open(p, encoding="utf-8").read() for p in sys.argv[1:])
if html.unescape(subtitles) != words:
    sys.exit("subtitles %r, text_src %r" % (subtitles[:100], words[:100]))
PY
[[ -s $work/words.txt ]] || fail "no words"
read -r v_samples v_rate v_rms _ < <(wav_stats "$work/voice.wav")
voice_ms=$(( v_samples * 1000 / v_rate ))
echo "voice: $voice_ms ms (question + tail = $expected_ms ms), rms $v_rms;" \
  "subtitles: $(head -c 100 "$work/subtitles.txt")"
# Opus adds its pre-skip and frame rounding at the edges.
(( voice_ms >= expected_ms - 100 && voice_ms <= expected_ms + 100 )) ||
  fail "the voice lasts $voice_ms ms, expected $expected_ms"
python3 - "$work/demux.log" "$voice_ms" <<'PY' || fail "subtitle timestamps are wrong"
import re, sys
log, voice_ms = open(sys.argv[1]).read(), int(sys.argv[2])
pts = [int(h) * 3600000 + int(m) * 60000 + float(s) * 1000
       for h, m, s in re.findall(r"subs:sink\) \(\d+ bytes, dts: [^,]*, pts: (\d+):(\d+):([\d.]+)",
                                 log)]
assert pts, "no subtitle buffers seen"
for p in pts:
    assert 0 <= p < voice_ms, "%.3f ms is outside the answer" % p
# One word piece per step at most; steps are 80 ms but for the input's cut last frame.
assert all(b > a for a, b in zip(pts, pts[1:])), "subtitles out of order"
print("%d subtitles, %.0f ms to %.0f ms" % (len(pts), pts[0], pts[-1]))
PY

step "words burnt into video with textoverlay"
if gst-inspect-1.0 textoverlay >/dev/null 2>&1; then
  frames=$(( (expected_ms + 39) / 40 ))
  timeout 120 gst-launch-1.0 -q filesrc location="$work/question.wav" ! wavparse ! \
    audioconvert ! audioresample ! "${dialog[@]}" \
    m.src ! queue ! audioconvert ! fakesink \
    m.text_src ! queue ! o.text_sink \
    videotestsrc num-buffers="$frames" ! video/x-raw,width=320,height=240,framerate=25/1 ! \
    textoverlay name=o ! videoconvert ! fakesink || fail "the textoverlay pipeline failed"
else
  echo "SKIP: textoverlay is not installed (gstreamer1.0-x)"
fi
echo "all broadcast tests passed"
