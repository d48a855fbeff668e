#!/usr/bin/env bash
# examples/rtsp/moshi-rtsp-server on loopback, with rtspsrc clients.
#
# The server's input is a recorded question (espeak-ng); Moshi answers it and goes on for an
# eos-tail of 2 s. A client plays rtsp://127.0.0.1:<port>/moshi and gets two streams, the
# voice and the words (rtpgstpay, text/x-raw), and EOS at the end:
#  1. Opus, RTP interleaved in the RTSP connection (TCP);
#  2. PCMU, RTP over UDP.
# Each time: the answer lasts the question plus the tail (give or take the codec's edges),
# is not silent nor NaN, and the text stream carried UTF-8 words. Then the server stops
# cleanly on SIGTERM. Before that: a missing --model, an unknown codec and a missing plugin
# are refused with messages that say so.
# Usage: rtsp-test.sh PATH-TO-moshi-rtsp-server (skipped when it was not built)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

server_bin=${1:-}
[[ -n $server_bin && -x $server_bin ]] ||
  skip "moshi-rtsp-server was not built (libgstrtspserver-1.0-dev, tools/setup-deps.sh)"
require_tools gst-launch-1.0 gst-inspect-1.0 espeak-ng python3
require_elements rtspsrc rtpgstdepay rtpopusdepay opusdec rtppcmudepay mulawdec wavparse \
  wavenc opusenc rtpopuspay mulawenc rtppcmupay rtpgstpay


make_question "$work/question.wav"
tail_ms=2000
expected_ms=$(( question_ms + tail_ms ))

# Whether the client's log shows EOS before its first error. Once EOS has reached the sinks the
# answer is whole; what fails after it is rtspsrc's TEARDOWN on the way out (seen once in about
# twenty runs on a loaded machine: the connection was already closed), which is not what this
# test checks, so it is reported and let pass.
client_failed_after_eos () {
  local eos error
  eos=$(grep -n -m1 "Got EOS" "$1" | cut -d: -f1)
  error=$(grep -n -m1 "^ERROR" "$1" | cut -d: -f1)
  [[ -n $eos && ( -z $error || $error -gt $eos ) ]] || return 1
  echo "note: the client failed after EOS: $(grep -A2 -m1 '^ERROR' "$1" || tail -n 3 "$1")"
}

serve_and_play () {
  local codec=$1 protocols=$2
  local out=$work/server-$codec.out log=$work/server-$codec.log
  local answer=$work/answer-$codec.wav text=$work/text-$codec.txt client_log=$work/client-$codec.log
  local depay

  step "$codec over $protocols"
  # The input is decoded and read in each client's own media, so the path needs no quoting
  # beyond the launch syntax's.
  "$server_bin" --address 127.0.0.1 --port 0 --codec "$codec" \
    --input "filesrc location=\"$work/question.wav\" ! wavparse" --eos-tail "$tail_ms" \
    "${small_model_options[@]}" >"$out" 2>"$log" &
  local server=$!
  pids+=("$server")
  wait_for "the server's URL" test -s "$out"
  local url
  url=$(head -n 1 "$out")
  [[ $url == rtsp://127.0.0.1:*/moshi ]] || fail "the server printed '$url'"

  case $codec in
    opus) depay=(rtpopusdepay ! opusdec) ;;
    pcmu) depay=(rtppcmudepay ! mulawdec) ;;
  esac
  # The client ends by itself: the server sends EOS (RTCP BYE) after the answer's tail.
  timeout 120 gst-launch-1.0 -e rtspsrc location="$url" protocols="$protocols" name=s \
    s. ! queue ! "${depay[@]}" ! audioconvert ! audioresample ! \
      audio/x-raw,format=S16LE,rate=8000,channels=1 ! wavenc ! filesink location="$answer" \
    s. ! queue ! rtpgstdepay ! text/x-raw,format=utf8 ! filesink location="$text" \
    >"$client_log" 2>&1 || client_failed_after_eos "$client_log" ||
    fail "the $codec client failed: $(tail -n 30 "$client_log")"
  grep -q "Got EOS" "$client_log" || fail "the client got no EOS: $(tail -n 30 "$client_log")"

  kill -TERM "$server"
  wait "$server" || fail "the server did not stop cleanly: $(tail -n 30 "$log")"
  pids=()

  check_answer "$codec" "$answer" "$text"
  # Opus adds its pre-skip and frame rounding at the edges; nothing else may be missing.
  (( answer_ms >= expected_ms - 250 && answer_ms <= expected_ms + 250 )) ||
    fail "$codec: the answer lasts $answer_ms ms, expected question + tail = $expected_ms"
}

step "bad arguments are errors that say what is wrong"
expect_refusal "--model is required" --port 0
expect_refusal "--codec must be opus or pcmu, not 'g729'" --model x --codec g729 --port 0
GST_PLUGIN_PATH_1_0=/nonexistent GST_PLUGIN_SYSTEM_PATH_1_0=/nonexistent \
  GST_REGISTRY_1_0=$work/empty-registry.bin \
  expect_refusal "moshidialog element is not installed" --model x --port 0

serve_and_play opus tcp
serve_and_play pcmu udp
echo "all RTSP tests passed"
