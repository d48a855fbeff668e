#!/usr/bin/env bash
# examples/rtsp/moshi-rtsp-server --backchannel on loopback: the user talks from the RTSP
# client, over the ONVIF audio backchannel (tests/network/rtsp-backchannel-client.c).
#
#  1. --backchannel pcmu, voice in Opus: a client plays the mount with rtspsrc
#     backchannel=onvif (RTP interleaved in the RTSP connection), sends an espeak-ng question
#     as PCMU on the backchannel in real time, listens 2 s more and tears down. The server
#     received the whole question and fed it to that client's moshidialog; the client got
#     Moshi's voice, not silent, and UTF-8 words; the server says the conversation ended and
#     its moshidialog was freed.
#  2. The server still serves: a second client (RTP over UDP) gets its own conversation, and
#     is killed mid-question: its conversation ends and is freed all the same (the broken
#     connection drops the session). SIGTERM stops the server cleanly.
#  3. --backchannel opus, voice in PCMU, RTP over UDP: as 1.
# Before all that: --input with --backchannel and an unknown backchannel codec are refused
# with messages that say so.
# Usage: rtsp-backchannel-test.sh PATH-TO-moshi-rtsp-server PATH-TO-rtsp-backchannel-client
# (skipped when they were not built)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

server_bin=${1:-}
client_bin=${2:-}
[[ -n $server_bin && -x $server_bin && -n $client_bin && -x $client_bin ]] ||
  skip "moshi-rtsp-server was not built (libgstrtspserver-1.0-dev, tools/setup-deps.sh)"
require_tools gst-inspect-1.0 espeak-ng python3
require_elements rtspsrc rtpgstdepay rtpopusdepay opusdec rtppcmudepay mulawdec wavparse \
  wavenc opusenc rtpopuspay mulawenc rtppcmupay rtpgstpay audiomixer audiotestsrc appsink

make_question "$work/question.wav"

step "bad arguments are errors that say what is wrong"
expect_refusal "--input and --backchannel exclude each other" --model x --port 0 \
  --backchannel pcmu --input audiotestsrc
expect_refusal "--backchannel must be pcmu or opus, not 'g722'" --model x --port 0 \
  --backchannel g722

server_says () { grep -q -- "$1" "$out"; }

# Starts the server on a free port, with the user's voice from the backchannel in BACKCHANNEL
# and Moshi's voice in VOICE; sets server, url and its output files out and log (new ones:
# the URL is awaited in out). Usage: start_server BACKCHANNEL VOICE
start_server () {
  out=$work/server-$1.out log=$work/server-$1.log
  "$server_bin" --address 127.0.0.1 --port 0 --codec "$2" --backchannel "$1" \
    "${small_model_options[@]}" >"$out" 2>"$log" &
  server=$!
  pids+=("$server")
  wait_for "the server's URL" test -s "$out"
  url=$(head -n 1 "$out")
  [[ $url == rtsp://127.0.0.1:*/moshi ]] || fail "the server printed '$url'"
}

stop_server () {
  kill -TERM "$server"
  wait "$server" || fail "the server did not stop cleanly: $(tail -n 30 "$log")"
  pids=()
}

# A client talks over the backchannel and listens; the server's first conversation is
# checked. Usage: talk PROTOCOLS VOICE ENCODING-NAME
talk () {
  local protocols=$1 voice=$2 encoding=$3
  local answer=$work/answer-$voice.wav text=$work/text-$voice.txt client_log=$work/client.log
  local received='' voiced=''

  timeout 60 "$client_bin" --protocols "$protocols" --voice "$voice" --tail 2000 \
    "$url" "$work/question.wav" "$answer" "$text" >"$client_log" 2>&1 ||
    fail "the client failed: $(cat "$client_log")"
  cat "$client_log"
  grep -q "backchannel: stream .*encoding-name=(string)$encoding" "$client_log" ||
    fail "the client saw no $encoding backchannel in the SDP: $(cat "$client_log")"
  wait_for "the end of conversation 1" server_says "conversation 1 ended"
  wait_for "conversation 1's moshidialog to be freed" \
    server_says "conversation 1: moshidialog freed"
  cat "$out"
  server_says "conversation 1: started, the client's voice from the ONVIF backchannel" ||
    fail "conversation 1 had no backchannel: $(cat "$out")"
  server_says "conversation 1: the client's voice arrives: audio/x-raw" ||
    fail "the server got no audio from the client: $(cat "$out")"
  read -r received voiced < <(sed -n \
    's/^conversation 1 ended: \([0-9]*\) ms .* received, \([0-9]*\) ms .*/\1 \2/p' "$out") ||
    true
  [[ -n $received && -n $voiced ]] || fail "no figures in the server's end of conversation 1"
  echo "question $question_ms ms; the server received $received ms of the client's voice," \
    "$voiced ms of moshidialog's input carried it"
  # The client sends the question whole, in real time; the server counts all the decoded
  # audio until the teardown (give or take a 20 ms packet at each edge).
  (( received >= question_ms - 40 )) ||
    fail "the server received $received ms of the client's voice, the question lasts $question_ms"
  # espeak-ng's pauses are digital silence, which the mixer's output cannot tell from its
  # own: those frames do not count, the words do.
  (( voiced >= question_ms / 2 )) ||
    fail "only $voiced ms of the $question_ms ms question reached moshidialog"

  check_answer "$voice voice" "$answer" "$text"
  # The client listened through the question and 2 s after it.
  (( answer_ms >= question_ms )) ||
    fail "the answer lasts $answer_ms ms, less than the $question_ms ms question"
}

step "PCMU backchannel over TCP, Opus voice"
start_server pcmu opus
talk tcp opus PCMU

step "the server serves another client (UDP); killed mid-question, it ends its conversation"
client2_log=$work/client2.log
"$client_bin" --protocols udp --voice opus --tail 2000 \
  "$url" "$work/question.wav" "$work/answer2.wav" "$work/text2.txt" >"$client2_log" 2>&1 &
client2=$!
pids+=("$client2")
wait_for "the second client's voice at the server" \
  server_says "conversation 2: the client's voice arrives"
kill -KILL "$client2"
wait "$client2" 2>/dev/null || true
wait_for "the end of conversation 2" server_says "conversation 2 ended"
wait_for "conversation 2's moshidialog to be freed" server_says "conversation 2: moshidialog freed"
grep "^conversation 2" "$out"
stop_server

step "Opus backchannel over UDP, PCMU voice"
start_server opus pcmu
talk udp pcmu OPUS
stop_server
echo "all RTSP backchannel tests passed"
