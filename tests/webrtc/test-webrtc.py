#!/usr/bin/env python3
"""A browser talks with Moshi over WebRTC: examples/webrtc's server and page in headless
Chromium, on loopback only.

Chromium's fake microphone plays a spoken WAV (espeak-ng; a synthetic vowel if espeak-ng is
missing) in a loop; the page (examples/webrtc/moshi-webrtc.js with ?test=SECONDS) connects,
plays Moshi's voice and, SECONDS after the remote track appears, sends a report of what it
received. The report comes back through the server's log. Checked: the connection came up,
the audio that arrived lasts about as long as it ran (RTP samples actually decoded, not
concealed) and is not silent (WebAudio RMS and WebRTC's audio energy), text arrived over the
data channel, and the server counts the same text it sent, ends the peer when the browser
goes and exits cleanly on SIGTERM.

ICE runs on 127.0.0.1 only: the server with --ice-address 127.0.0.1, Chromium with
--allow-loopback-in-peer-connection, so no network interface other than lo is needed.

Usage: test-webrtc.py PATH/TO/moshi-webrtc   (env: GST_PLUGIN_PATH_1_0, GST_REGISTRY_1_0;
MOSHI_CHROMIUM names the browser binary). Exit 77 (skip) only when no Chromium is installed.
"""
import json
import math
import os
import queue
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave

SECONDS = 6.0           # how long the page listens to Moshi before it reports
TIMEOUT = 60.0          # for the report to come, from the browser's start


def fail(message):
    print("FAIL: " + message, flush=True)
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    print("ok: " + what, flush=True)


def find_chromium():
    for name in [os.environ.get("MOSHI_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome"]:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def make_speech(path):
    """What the fake microphone says: espeak-ng, else three seconds of a voiced vowel."""
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", path, "Hello Moshi. How are you today? Tell me "
                        "something about the weather in Paris."], check=True)
        return "espeak-ng"
    rate = 16000
    frames = bytearray()
    for i in range(3 * rate):
        t = i / rate
        f0 = 120 + 20 * math.sin(2 * math.pi * 0.5 * t)
        x = sum(math.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 12))
        frames += struct.pack("<h", int(6000 * x * (0.6 + 0.4 * math.sin(2 * math.pi * 3 * t))))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return "a synthetic vowel (espeak-ng not found)"


class Server:
    def __init__(self, binary):
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--ice-address", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.log = []
        self.stderr = []
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()

    def _read(self, stream, is_stdout):
        for line in stream:
            line = line.rstrip("\n")
            if is_stdout:
                print("server: " + line, flush=True)
                self.log.append(line)
                self.lines.put(line)
            else:
                self.stderr.append(line)

    def wait_line(self, what, timeout):
        """The first stdout line from now on that contains `what`, or None."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if what in line:
                return line


def main():
    if len(sys.argv) != 2:
        fail("usage: test-webrtc.py MOSHI_WEBRTC")
    chromium = find_chromium()
    if chromium is None:
        print("SKIP: Chromium is not installed (Debian: apt-get install chromium, which "
              "tools/setup-deps.sh does)", flush=True)
        sys.exit(77)

    tmp = tempfile.mkdtemp(prefix="moshi-webrtc-test-")
    started = time.monotonic()
    wav = os.path.join(tmp, "speech.wav")
    print("microphone: " + make_speech(wav), flush=True)

    server = Server(sys.argv[1])
    browser = None
    try:
        line = server.wait_line("listening on ", 30)
        if line is None:
            fail("the server did not start: " + "\n".join(server.stderr[-20:]))
        url = line.split("listening on ", 1)[1].strip()

        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--disable-extensions", "--mute-audio",
             "--user-data-dir=" + os.path.join(tmp, "profile"),
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--use-file-for-fake-audio-capture=" + wav,
             "--autoplay-policy=no-user-gesture-required",
             "--allow-loopback-in-peer-connection",
             "--disable-features=WebRtcHideLocalIpsWithMdns",
             "%s?test=%g" % (url, SECONDS)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "chromium.log"), "w"),
            start_new_session=True)

        line = server.wait_line("report ", TIMEOUT)
        if line is None:
            with open(os.path.join(tmp, "chromium.log")) as f:
                tail = f.read()[-3000:]
            fail("no report from the page within %d s; server log:\n%s\nchromium:\n%s" %
                 (TIMEOUT, "\n".join(server.log + server.stderr[-20:]), tail))
        report = json.loads(line.split("report ", 1)[1])
        rtp = report.get("rtp", {})

        check(report.get("connection") == "connected",
              "the browser's peer connection is connected (%s)" % report.get("connection"))
        # Opus is decoded at 48 kHz; concealed samples are the jitter buffer's guesses.
        decoded = (rtp.get("samples", 0) - rtp.get("concealed", 0)) / 48000.0
        duration = rtp.get("duration", 0.0)
        check(duration <= SECONDS + 0.5,
              "no more audio than the time it ran (%.2f s in %g s)" % (duration, SECONDS))
        check(decoded >= SECONDS - 2.5,
              "Moshi's voice arrives (%.2f s decoded of %.2f s played out, %d packets; "
              "at least %.1f s wanted)" % (decoded, duration, rtp.get("packets", 0),
                                           SECONDS - 2.5))
        check(report.get("rms", 0) > 0.01 and report.get("loud_seconds", 0) >= SECONDS / 3,
              "and is not silent: WebAudio RMS %.4f, %.2f s above -50 dBFS" %
              (report.get("rms", 0), report.get("loud_seconds", 0)))
        power = rtp.get("energy", 0.0) / duration if duration > 0 else 0.0
        check(power > 1e-4, "WebRTC's own audio energy agrees (mean power %.5f)" % power)
        check(report.get("texts", 0) >= 1 and report.get("chars", 0) >= 1,
              "text arrives over the data channel (%d messages, %d characters)" %
              (report.get("texts", 0), report.get("chars", 0)))

        # The browser goes: the server ends that peer and says how much text it sent.
        os.killpg(browser.pid, signal.SIGTERM)
        browser.wait(timeout=20)
        browser = None
        line = server.wait_line("ended: ", 15)
        check(line is not None, "the server ends the peer when the browser goes%s" %
              ("" if line else "; stderr:\n" + "\n".join(server.stderr[-30:])))
        sent = int(re.search(r"\((\d+) text pieces sent", line).group(1))
        check(sent >= report["texts"],
              "the server sent at least the text the page got (%d >= %d)" %
              (sent, report["texts"]))

        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=20)
        check(rc == 0, "the server exits 0 on SIGTERM (%d)" % rc)
        criticals = [l for l in server.stderr if "CRITICAL" in l or "ERROR" in l]
        check(not criticals, "no GLib critical or error on the server's stderr %s" % criticals)
        print("passed in %.1f s" % (time.monotonic() - started), flush=True)
    finally:
        if browser is not None:
            try:
                os.killpg(browser.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            browser.wait()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
