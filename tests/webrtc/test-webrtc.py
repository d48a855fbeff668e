#!/usr/bin/env python3
"""Browsers talk with Moshi over WebRTC: examples/webrtc's server and page in headless
Chromium, on loopback only.

Two Chromium processes, each with a fake microphone that plays a spoken WAV (espeak-ng; a
synthetic vowel if espeak-ng is missing) in a loop, open the page (examples/webrtc/
moshi-webrtc.js with ?test=SECONDS) at once: each connects, plays Moshi's voice and, SECONDS
after the remote track appears, sends a report of what it received, which comes back through
the server's log with the shared scheduler's figures. Checked for each: the connection came up,
the audio that arrived lasts about as long as it ran (RTP samples actually decoded, not
concealed) and is not silent (WebAudio RMS and WebRTC's audio energy), text arrived over the
data channel. Then: both conversations were on one shared scheduler that stepped them
together (more steps than ticks); a third signalling client is refused (--max-peers 2); when
the browsers go, the server ends each peer, having sent at least the text its page got; what is
not signalling gets error messages; only the page and its script are served; on SIGTERM it
exits 0 with no GLib critical.

ICE runs on 127.0.0.1 only: the server with --ice-address 127.0.0.1, Chromium with
--allow-loopback-in-peer-connection, so no network interface other than lo is needed.

Usage: test-webrtc.py PATH/TO/moshi-webrtc   (env: GST_PLUGIN_PATH_1_0, GST_REGISTRY_1_0;
MOSHI_CHROMIUM names the browser binary). Exit 77 (skip) only when no Chromium is installed.
"""
import asyncio
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
import urllib.error
import urllib.request
import wave

import websockets

SECONDS = 6.0           # how long the page listens to Moshi before it reports
BROWSERS = 2            # tabs talking at once, each its own peer and pipeline
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


def check_report(who, report):
    rtp = report.get("rtp", {})
    check(report.get("connection") == "connected",
          who + "the peer connection is connected (%s)" % report.get("connection"))
    # Opus is decoded at 48 kHz; concealed samples are the jitter buffer's guesses.
    decoded = (rtp.get("samples", 0) - rtp.get("concealed", 0)) / 48000.0
    duration = rtp.get("duration", 0.0)
    check(duration <= SECONDS + 0.5,
          who + "no more audio than the time it ran (%.2f s in %g s)" % (duration, SECONDS))
    check(decoded >= SECONDS - 2.5,
          who + "Moshi's voice arrives (%.2f s decoded of %.2f s played out, %d packets; "
          "at least %.1f s wanted)" % (decoded, duration, rtp.get("packets", 0), SECONDS - 2.5))
    check(report.get("rms", 0) > 0.01 and report.get("loud_seconds", 0) >= SECONDS / 3,
          who + "and is not silent: WebAudio RMS %.4f, %.2f s above -50 dBFS" %
          (report.get("rms", 0), report.get("loud_seconds", 0)))
    power = rtp.get("energy", 0.0) / duration if duration > 0 else 0.0
    check(power > 1e-4, who + "WebRTC's own audio energy agrees (mean power %.5f)" % power)
    check(report.get("texts", 0) >= 1 and report.get("chars", 0) >= 1,
          who + "text arrives over the data channel (%d messages, %d characters)" %
          (report.get("texts", 0), report.get("chars", 0)))


async def signalling_errors(ws_url, busy):
    """What a signalling client that is not a browser gets: with all peers taken, a refusal;
    otherwise an error message for each message that is not one, and the socket stays open."""
    async with websockets.connect(ws_url) as ws:
        if busy:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await asyncio.wait_for(ws.wait_closed(), 10)
            return [msg["message"]]
        answers = []
        for text in ["not json", json.dumps({"type": "offer", "sdp": "v=garbage"}),
                     json.dumps({"type": "bogus"})]:
            await ws.send(text)
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["message"])
        return answers


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, ""


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
            [binary, "--port", "0", "--ice-address", "127.0.0.1", "--max-peers", str(BROWSERS)],
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
    browsers = []
    try:
        line = server.wait_line("listening on ", 30)
        if line is None:
            fail("the server did not start: " + "\n".join(server.stderr[-20:]))
        url = line.split("listening on ", 1)[1].strip()

        # One browser process per peer: headless Chromium opens only one page per start.
        browsers = [subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--disable-extensions", "--mute-audio",
             "--user-data-dir=" + os.path.join(tmp, "profile-%d" % i),
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             "--use-file-for-fake-audio-capture=" + wav,
             "--autoplay-policy=no-user-gesture-required",
             "--allow-loopback-in-peer-connection",
             "--disable-features=WebRtcHideLocalIpsWithMdns",
             "%s?test=%g" % (url, SECONDS)],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "chromium-%d.log" % i), "w"),
            start_new_session=True) for i in range(BROWSERS)]

        reports, schedulers = {}, {}
        deadline = time.monotonic() + TIMEOUT
        while len(reports) < BROWSERS or len(schedulers) < BROWSERS:
            line = server.wait_line("peer ", deadline - time.monotonic())
            if line is None:
                with open(os.path.join(tmp, "chromium-0.log")) as f:
                    tail = f.read()[-3000:]
                fail("%d of %d reports from the pages within %d s; server log:\n%s\n"
                     "chromium:\n%s" % (len(reports), BROWSERS, TIMEOUT,
                                         "\n".join(server.log + server.stderr[-20:]), tail))
            m = re.search(r"peer (\d+): report (.*)$", line)
            if m:
                reports[m.group(1)] = json.loads(m.group(2))
            m = re.search(r"peer (\d+): shared scheduler: (\d+) conversations, (\d+) ticks, "
                          r"(\d+) steps", line)
            if m:
                schedulers[m.group(1)] = [int(x) for x in m.group(2, 3, 4)]

        for peer, report in sorted(reports.items()):
            check_report("peer %s: " % peer, report)
        check(any(c == BROWSERS for c, _, _ in schedulers.values()),
              "the %d conversations run on one shared scheduler (%s)" %
              (BROWSERS, ", ".join("%d conversations" % c for c, _, _ in schedulers.values())))
        check(any(steps > ticks for _, ticks, steps in schedulers.values()),
              "which steps them together: more steps than ticks (%s)" %
              ", ".join("%d steps in %d ticks" % (st, t) for _, t, st in schedulers.values()))

        ws_url = url.replace("http://", "ws://") + "ws"
        refusal = asyncio.run(signalling_errors(ws_url, busy=True))
        check(refusal == ["server busy, try again later"],
              "with --max-peers %d taken, another peer is refused (%s)" % (BROWSERS, refusal))

        # The browsers go: the server ends each peer and says how much text it sent.
        for browser in browsers:
            os.killpg(browser.pid, signal.SIGTERM)
        for browser in browsers:
            browser.wait(timeout=20)
        browsers = []
        ended = {}
        while len(ended) < BROWSERS:
            line = server.wait_line("ended: ", 15)
            check(line is not None, "the server ends a peer when its browser goes%s" %
                  ("" if line else "; stderr:\n" + "\n".join(server.stderr[-30:])))
            peer = re.search(r"peer (\d+) from", line).group(1)
            if peer in reports:
                ended[peer] = int(re.search(r"\((\d+) text pieces sent", line).group(1))
        for peer, sent in sorted(ended.items()):
            check(sent >= reports[peer]["texts"],
                  "peer %s: the server sent at least the text the page got (%d >= %d)" %
                  (peer, sent, reports[peer]["texts"]))

        answers = asyncio.run(signalling_errors(ws_url, busy=False))
        check(answers == ["messages must be JSON objects",
                          "the offer has no audio stream (was the microphone given?)",
                          "unknown message type"],
              "what is not signalling gets an error message (%s)" % answers)
        check(server.wait_line("ended: the browser closed the signalling socket (code 1000)", 10)
              is not None, "and the peer ends when its socket closes")
        check(http_status(url)[0] == 200 and http_status(url)[1].startswith("text/html")
              and http_status(url + "moshi-webrtc.js")[1].startswith("text/javascript"),
              "the page and its script are served")
        check(http_status(url + "meson.build")[0] == 404 and http_status(url + "../x")[0] == 404,
              "nothing else of the directory is")

        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=20)
        check(rc == 0, "the server exits 0 on SIGTERM (%d)" % rc)
        criticals = [l for l in server.stderr if "CRITICAL" in l or "ERROR" in l]
        check(not criticals, "no GLib critical or error on the server's stderr %s" % criticals)
        print("passed in %.1f s" % (time.monotonic() - started), flush=True)
    finally:
        for browser in browsers:
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
