# Shared by the network tests (sourced): failing, waiting on conditions, WAV figures, ports.
# MOSHI_TEST_DATA must point at tests/data.

gst_tests=$(cd "$(dirname "${BASH_SOURCE[0]}")/../gst" && pwd)
data=${MOSHI_TEST_DATA:?MOSHI_TEST_DATA must point at tests/data}
examples=${MOSHI_EXAMPLES_DIR:-$(dirname "${BASH_SOURCE[0]}")/../../examples}

fail () { echo "FAIL: $*" >&2; exit 1; }
step () { echo "--- $*"; }
skip () { echo "SKIP: $*"; exit 77; }

require_tools () {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (tools/setup-deps.sh)"
  done
}

require_elements () {
  local element
  for element in "$@"; do
    gst-inspect-1.0 "$element" >/dev/null 2>&1 ||
      skip "GStreamer element $element is not installed (tools/setup-deps.sh)"
  done
}

wav_stats () { python3 "$gst_tests/wavstats.py" "$1"; }
free_udp_ports () { python3 "$gst_tests/free-udp-ports.py" "$1"; }

# Waits until COMMAND succeeds. The limit only keeps a broken run from hanging: it is far
# above what a loaded machine needs, and nothing is concluded from how long it took.
# Usage: wait_for DESCRIPTION COMMAND...
wait_for () {
  local what=$1 i
  shift
  for (( i = 0; i < 1200; i++ )); do
    "$@" && return 0
    sleep 0.1
  done
  fail "gave up waiting (120 s) for $what"
}

# True once a local UDP port is bound (by a udpsrc): the kernel's table, no packet sent.
udp_port_bound () {
  grep -qi "^ *[0-9]*: [0-9A-F]*:$(printf '%04X' "$1") " /proc/net/udp /proc/net/udp6 2>/dev/null
}

# True once FILE holds at least BYTES bytes.
file_has () { [[ -f $1 ]] && (( $(stat -c %s "$1") >= $2 )); }

# The test's scratch directory; at the end, the background processes of a failed test are
# killed (those in $pids) and the directory goes.
pids=()
stop_all () {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
work=$(mktemp -d)
trap 'stop_all; rm -rf "$work"' EXIT

# Speaks the user's question into FILE (espeak-ng, 22050 Hz) and sets question_ms to its
# length.
make_question () {
  local samples rate
  espeak-ng -w "$1" "Hello Moshi, can you hear me? What is the weather today?"
  read -r samples rate _ < <(wav_stats "$1")
  question_ms=$(( samples * 1000 / rate ))
}

# moshi-rtsp-server's options that load this tree's small test models (tests/data).
small_model_options=(--model "$data/lm/dialog/model.safetensors"
  --lm-config "$data/lm/dialog/config.json" --mimi-model "$data/mimi/small/model.safetensors"
  --mimi-config "$data/mimi/small/config.json" --tokenizer "$data/tokenizer/tiny.model")

# Runs $server_bin with ARGS, which must refuse them: exit 1 with a message holding WANT.
# Usage: expect_refusal WANT ARGS...
expect_refusal () {
  local want=$1 rc=0 out
  shift
  out=$("$server_bin" "$@" 2>&1) || rc=$?
  (( rc == 1 )) || fail "$(basename "$server_bin") $* ended with $rc: $out"
  grep -q -- "$want" <<<"$out" || fail "$(basename "$server_bin") $*: no '$want' in: $out"
}

# Checks what a client received: WAV is neither silent nor has non-finite samples, TEXT holds
# UTF-8 words. Sets answer_ms to WAV's length, for the caller's own check.
# Usage: check_answer LABEL WAV TEXT
check_answer () {
  local label=$1 wav=$2 text=$3 samples rate rms bad
  read -r samples rate rms bad < <(wav_stats "$wav")
  answer_ms=$(( samples * 1000 / rate ))
  echo "$label: $answer_ms ms of answer, rms $rms; words: $(head -c 120 "$text")"
  [[ $bad == 0 ]] || fail "$label: $bad non-finite samples"
  python3 -c "import sys; sys.exit(0 if float('$rms') > 1e-3 else 1)" ||
    fail "$label: the answer is silent (rms $rms)"
  [[ -s $text ]] || fail "$label: no words on the text stream"
  python3 -c "import sys; open(sys.argv[1], encoding='utf-8', errors='strict').read()" \
    "$text" || fail "$label: the text is not UTF-8"
}

# Sends SIGINT (gst-launch-1.0 -e: EOS through the pipeline) to PID and waits for it; fails
# with LOG's contents when it does not end cleanly.
stop_cleanly () {
  local pid=$1 log=$2 rc=0
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  (( rc == 0 )) || fail "process $pid ended with $rc: $(tail -n 30 "$log")"
}
