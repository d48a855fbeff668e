#!/usr/bin/env bash
# The SIP media leg (examples/sip/moshi-sip-leg.sh) on loopback, with a gst-launch-1.0 peer
# in the caller's place: it sends espeak-ng speech as RTP and records what comes back.
#
#  1. PCMU both ways, and a live stall: the caller sends a question, then stops sending in
#     the middle of the call, as with silence suppression. The leg must go on talking on its
#     pipeline clock (moshidialog fill-stalls): the caller receives two more seconds of
#     answer while it sends nothing at all. Then the caller speaks again, from a new RTP
#     stream (a new SSRC, sequence and timestamp base, as after a re-INVITE), and the answer
#     goes on. Then the call ends (SIGINT: EOS), and both ends stop cleanly.
#  2. Opus both ways (48 kHz RTP clock, dynamic payload type): a question and its answer.
# Each time: the answer is at least as long as what was waited for, not silent, not NaN, and
# the leg printed Moshi's words.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

require_tools gst-launch-1.0 gst-inspect-1.0 espeak-ng python3
require_elements udpsrc udpsink rtpjitterbuffer rtppcmupay rtppcmudepay mulawenc mulawdec \
  rtpopuspay rtpopusdepay opusenc opusdec wavparse wavenc


make_question "$work/question.wav"
q_ms=$question_ms
espeak-ng -w "$work/again.wav" "And what about tomorrow?"
read -r a_samples a_rate _ < <(wav_stats "$work/again.wav")
a_ms=$(( a_samples * 1000 / a_rate ))

# The peer records the answer as 8 kHz 16-bit mono whatever the codec: 16000 bytes a second
# after a 44-byte header. Unbuffered, so that its size tells what arrived so far.
bytes_for_ms () { echo $(( 44 + $1 * 16 )); }

run_call () {
  local codec=$1 stall=$2
  local caps pay depay enc dec leg_port peer_port
  case $codec in
    pcmu)
      caps="application/x-rtp,media=audio,clock-rate=8000,encoding-name=PCMU,payload=0"
      enc=(audio/x-raw,rate=8000 ! mulawenc ! rtppcmupay)
      dec=(rtppcmudepay ! mulawdec)
      ;;
    opus)
      caps="application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload=111"
      enc=(opusenc ! rtpopuspay pt=111)
      dec=(rtpopusdepay ! opusdec)
      ;;
  esac
  read -r leg_port peer_port < <(free_udp_ports 2)
  local answer=$work/answer-$codec.wav words=$work/words-$codec.txt
  local leg_log=$work/leg-$codec.log peer_log=$work/peer-$codec.log

  SMALL=1 CODEC=$codec LOCAL_HOST=127.0.0.1 LOCAL_PORT=$leg_port REMOTE_HOST=127.0.0.1 \
    REMOTE_PORT=$peer_port "$examples/sip/moshi-sip-leg.sh" >"$words" 2>"$leg_log" &
  local leg=$!
  pids+=("$leg")
  gst-launch-1.0 -e udpsrc address=127.0.0.1 port="$peer_port" caps="$caps" ! \
    rtpjitterbuffer latency=100 ! "${dec[@]}" ! audioconvert ! audioresample ! \
    audio/x-raw,format=S16LE,rate=8000,channels=1 ! wavenc ! \
    filesink location="$answer" buffer-mode=unbuffered >"$peer_log" 2>&1 &
  local peer=$!
  pids+=("$peer")
  # The leg binds its port once moshidialog has loaded its models (sources start last).
  wait_for "the leg to listen on $leg_port" udp_port_bound "$leg_port"
  wait_for "the peer to listen on $peer_port" udp_port_bound "$peer_port"

  send () {
    gst-launch-1.0 -q filesrc location="$1" ! wavparse ! audioconvert ! audioresample ! \
      "${enc[@]}" ! udpsink host=127.0.0.1 port="$leg_port" sync=true ||
      fail "the caller could not send $1"
  }

  step "$codec: the caller asks (${q_ms} ms)"
  send "$work/question.wav"
  local waited=$q_ms
  if [[ $stall == stall ]]; then
    # Nothing is sent from here on until the caller speaks again: whatever arrives now was
    # made by the leg on its own clock.
    step "$codec: the caller stops sending; the answer must go on for 2 s more"
    waited=$(( q_ms + 2000 ))
    wait_for "$waited ms of answer while the caller is silent (the leg stopped talking)" \
      file_has "$answer" "$(bytes_for_ms "$waited")"
    step "$codec: the caller speaks again on a new RTP stream (${a_ms} ms)"
    send "$work/again.wav"
    waited=$(( waited + a_ms + 1000 ))
    wait_for "$waited ms of answer after the caller came back" \
      file_has "$answer" "$(bytes_for_ms "$waited")"
  else
    wait_for "$waited ms of answer" file_has "$answer" "$(bytes_for_ms "$waited")"
  fi

  step "$codec: hang up"
  stop_cleanly "$leg" "$leg_log"
  stop_cleanly "$peer" "$peer_log"
  pids=()

  local samples rate rms bad
  read -r samples rate rms bad < <(wav_stats "$answer")
  echo "$codec: answer of $samples samples at $rate Hz, rms $rms; words: $(head -c 120 "$words")"
  (( samples * 1000 / 8000 >= waited )) || fail "$codec: $samples samples, waited for $waited ms"
  [[ $bad == 0 ]] || fail "$codec: $bad non-finite samples"
  python3 -c "import sys; sys.exit(0 if float('$rms') > 1e-3 else 1)" ||
    fail "$codec: the answer is silent (rms $rms)"
  [[ -s $words ]] || fail "$codec: the leg printed no words: $(tail -n 20 "$leg_log")"
}

run_call pcmu stall
run_call opus no-stall
echo "all SIP leg tests passed"
