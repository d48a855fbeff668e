#!/usr/bin/env python3
"""Loopback tests of moshi-server with a client that speaks the Moshi protocol as upstream's
clients do (moshi/client.py, the web UI): WebSocket /api/chat, binary messages, kind byte first,
Ogg/Opus audio both ways at 24 kHz.

Usage: test-server.py MOSHI_SERVER SCENARIO   (scenarios: protocol, concurrent, refusal, http, download,
upstream-client, valgrind)
Needs: python3-websockets, espeak-ng, gst-launch-1.0 with the opus/ogg plugins, MOSHI_TEST_DATA,
GST_PLUGIN_PATH naming the built moshi plugin."""
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import wave

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import hub_fixture  # noqa: E402  (tests/, beside hub-server.py)

try:
    import websockets
except ImportError:
    print("SKIP: python3-websockets is not installed (tools/setup-deps.sh)")
    sys.exit(77)

SERVER_EXE = sys.argv[1]
SCENARIO = sys.argv[2]
DATA = os.environ["MOSHI_TEST_DATA"]
TMP = tempfile.mkdtemp(prefix="moshi-server-test-")
RATE = 24000
FRAME = 1920
SPEECH_SECONDS = 10.0

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)
    return cond


# --- Ogg ----------------------------------------------------------------------------------------

def _crc_table():
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


CRC_TABLE = _crc_table()


def ogg_crc(data):
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ CRC_TABLE[((crc >> 24) & 0xFF) ^ b]
    return crc


def parse_pages(data, strict=True):
    """Splits data into pages: (flags, granule, serial, seq, crc_ok, lacing, body, raw).
    strict: data must be whole pages only."""
    pages = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 27 or data[pos:pos + 4] != b"OggS":
            if strict:
                raise ValueError(f"not a whole Ogg page at byte {pos}")
            break
        flags = data[pos + 5]
        granule, serial, seq, crc = struct.unpack_from("<QIII", data, pos + 6)
        nsegs = data[pos + 26]
        lacing = list(data[pos + 27:pos + 27 + nsegs])
        size = 27 + nsegs + sum(lacing)
        if pos + size > len(data):
            if strict:
                raise ValueError("partial Ogg page")
            break
        raw = bytearray(data[pos:pos + size])
        raw[22:26] = b"\0\0\0\0"
        pages.append((flags, granule, serial, seq, ogg_crc(raw) == crc, lacing,
                      bytes(data[pos + 27 + nsegs:pos + size]), bytes(data[pos:pos + size])))
        pos += size
    return pages, pos


def page_packets(lacing, body):
    packets, cur, off = [], b"", 0
    for lv in lacing:
        cur += body[off:off + lv]
        off += lv
        if lv < 255:
            packets.append(cur)
            cur = b""
    return packets


def write_page(packet, flags, granule, serial, seq):
    lacing = [255] * (len(packet) // 255) + [len(packet) % 255]
    header = b"OggS" + bytes([0, flags]) + struct.pack("<QIII", granule, serial, seq, 0) + \
        bytes([len(lacing)]) + bytes(lacing)
    page = bytearray(header + packet)
    page[22:26] = struct.pack("<I", ogg_crc(page))
    return bytes(page)


def opus_samples48(packet):
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:
        frame = [480, 960, 1920, 2880][config & 3]
    elif config < 16:
        frame = 960 if config & 1 else 480
    else:
        frame = [120, 240, 480, 960][config & 3]
    code = toc & 3
    count = 1 if code == 0 else 2 if code in (1, 2) else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return count * frame


# --- Test audio -----------------------------------------------------------------------------------

TEXT = ("Hello there. I would like to talk to you about the weather today, and about how a small "
        "model could answer questions in real time over a web socket connection without any "
        "trouble at all. Let us see whether the server keeps up with eight of us at once.")


def make_speech():
    """10 s of espeak-ng speech at 24 kHz as an Ogg/Opus stream (20 ms packets, one per page,
    as GStreamer's opusenc and oggmux make it). Returns (ogg bytes, samples)."""
    wav = os.path.join(TMP, "espeak.wav")
    raw = os.path.join(TMP, "speech.raw")
    subprocess.run(["espeak-ng", "-w", wav, TEXT], check=True)
    subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={wav}", "!", "wavparse", "!",
                    "audioconvert", "!", "audioresample", "!",
                    f"audio/x-raw,format=S16LE,rate={RATE},channels=1", "!", "filesink",
                    f"location={raw}"], check=True)
    pcm = open(raw, "rb").read()
    n = int(SPEECH_SECONDS * RATE)
    pcm = (pcm + b"\0" * (2 * n))[:2 * n]
    wav24 = os.path.join(TMP, "speech24.wav")
    with wave.open(wav24, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    ogg = os.path.join(TMP, "speech.ogg")
    subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={wav24}", "!", "wavparse", "!",
                    "audioconvert", "!", "opusenc", "frame-size=20", "audio-type=voice", "!",
                    "oggmux", "max-delay=0", "max-page-delay=0", "!", "filesink",
                    f"location={ogg}"], check=True)
    return open(ogg, "rb").read(), n


def decode_ogg(data, name):
    """Decodes an Ogg/Opus stream with GStreamer; returns the number of 24 kHz samples."""
    path = os.path.join(TMP, name + ".ogg")
    out = os.path.join(TMP, name + ".raw")
    open(path, "wb").write(data)
    subprocess.run(["gst-launch-1.0", "-q", "filesrc", f"location={path}", "!", "oggdemux", "!",
                    "opusdec", "!", "audioconvert", "!", "audioresample", "!",
                    f"audio/x-raw,format=S16LE,rate={RATE},channels=1", "!", "filesink",
                    f"location={out}"], check=True)
    return os.path.getsize(out) // 2


# --- The server -----------------------------------------------------------------------------------

class Server:
    def __init__(self, *extra, valgrind=None, env=None):
        self.log_path = os.path.join(TMP, f"server-{SCENARIO}.log")
        args = [SERVER_EXE, "--host", "127.0.0.1", "--port", "0",
                "--moshi-weight", os.path.join(DATA, "lm", "dialog", "model.safetensors"),
                "--config-path", os.path.join(DATA, "lm", "dialog", "config.json"),
                "--mimi-weight", os.path.join(DATA, "mimi", "small", "model.safetensors"),
                "--mimi-config", os.path.join(DATA, "mimi", "small", "config.json"),
                "--tokenizer", os.path.join(DATA, "tokenizer", "tiny.model"),
                "--device", "cpu", "--threads", "1", *extra]
        if valgrind:
            args = valgrind + args
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on https?://127\.0\.0\.1:(\d+)/", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"server did not start: {line!r}\n" + open(self.log_path).read())
        self.port = int(m.group(1))
        self.url = f"ws://127.0.0.1:{self.port}/api/chat"

    def health(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = -9
        self.log.close()
        return rc

    def log_text(self):
        return open(self.log_path).read()

    def end_line(self, port):
        """The server's log line for the conversation from this client port."""
        for line in self.log_text().splitlines():
            if f"from 127.0.0.1:{port}:" in line and "ended:" in line:
                return line
        return None


# --- Clients --------------------------------------------------------------------------------------

class Received:
    def __init__(self):
        self.kinds = []
        self.audio = bytearray()
        self.audio_times = []
        self.texts = []
        self.errors = []
        self.close_code = None


async def receiver(ws, rec, name, handshake=True):
    """Reads everything, checking each message as the strictest client (the web UI) needs."""
    try:
        async for msg in ws:
            if not check(isinstance(msg, bytes), f"{name}: binary messages only"):
                continue
            if not check(len(msg) > 0, f"{name}: no empty message"):
                continue
            kind = msg[0]
            check(kind < 8, f"{name}: message kind {kind} < 8")
            if not rec.kinds and handshake:
                check(kind == 0, f"{name}: the handshake comes first (got kind {kind})")
            rec.kinds.append(kind)
            if kind == 1:
                try:
                    parse_pages(msg[1:], strict=True)
                except ValueError as e:
                    check(False, f"{name}: audio message holds whole pages only: {e}")
                rec.audio += msg[1:]
                rec.audio_times.append(time.monotonic())
            elif kind == 2:
                try:
                    rec.texts.append(msg[1:].decode("utf-8"))
                except UnicodeDecodeError:
                    check(False, f"{name}: text is UTF-8")
            elif kind == 5:
                rec.errors.append(msg[1:].decode("utf-8", "replace"))
    except websockets.ConnectionClosed:
        pass
    rec.close_code = ws.close_code


def received_seconds(rec):
    """Audio received so far, from the Opus packets' durations."""
    pages, _ = parse_pages(bytes(rec.audio), strict=False)
    return sum(opus_samples48(p[6]) for p in pages[2:]) / 48000


def check_output_stream(rec, name):
    """The server's Ogg stream: OpusHead (BOS, seq 0, one lacing value), OpusTags (seq 1), audio
    pages from seq 2, one packet each, valid CRCs."""
    pages, _ = parse_pages(bytes(rec.audio))
    if not check(len(pages) > 2, f"{name}: audio pages arrived ({len(pages)})"):
        return
    f0 = pages[0]
    check(f0[0] & 0x02 and f0[3] == 0 and len(f0[5]) == 1 and f0[6].startswith(b"OpusHead"),
          f"{name}: first page is the OpusHead BOS page, seq 0, one lacing value")
    check(pages[1][3] == 1 and pages[1][6].startswith(b"OpusTags"), f"{name}: then OpusTags, seq 1")
    serial = f0[2]
    for i, p in enumerate(pages):
        check(p[3] == i and p[2] == serial, f"{name}: page {i} sequence and serial")
        check(p[4], f"{name}: page {i} CRC")
        if i >= 2:
            check(len(page_packets(p[5], p[6])) == 1, f"{name}: page {i} holds one packet")
        if failures:
            break


def pace_chunks(ogg, framing, rng):
    """The client's audio as (send time offset, bytes) messages.
    'pages': the header pages, then one message per 80 ms of audio pages (upstream's Python
    client); 'split': the same bytes cut at random offsets (an ffmpeg pipe); 'webui': one page
    per message, OpusHead claiming a 44100 Hz input and granules in 24 kHz units (what the web
    UI in Chromium and the Rust clients send, which trip GStreamer's oggdemux)."""
    pages, _ = parse_pages(ogg)
    if framing == "webui":
        serial = rng.randrange(1 << 32)
        out = []
        for i, p in enumerate(pages):
            packet = page_packets(p[5], p[6])[0]
            if packet.startswith(b"OpusHead"):
                packet = packet[:12] + struct.pack("<I", 44100) + packet[16:]
            out.append((p[1] / 48000, write_page(packet, p[0], p[1] // 2, serial, i)))
        return out
    msgs, cur, t, t_sent = [], b"", 0.0, 0.0
    for p in pages:
        packets = page_packets(p[5], p[6])
        dur = sum(opus_samples48(pk) for pk in packets if not pk.startswith(b"Opus")) / 48000
        cur += p[7]
        t += dur
        if dur == 0 or t - t_sent >= 0.08 - 1e-9:
            msgs.append((t, cur))
            cur, t_sent = b"", t
    if cur:
        msgs.append((t, cur))
    if framing == "split":
        data = b"".join(m for _, m in msgs)
        total = msgs[-1][0]
        out, pos = [], 0
        while pos < len(data):
            n = rng.randint(1, 900)
            out.append((total * min(pos + n, len(data)) / len(data), data[pos:pos + n]))
            pos += n
        msgs = out
    return msgs


async def send_audio(ws, msgs, fast=False):
    t0 = time.monotonic()
    for t, m in msgs:
        if not fast:
            delay = t0 + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(b"\x01" + m)


async def good_client(url, ogg, samples, name, framing="pages", fast=False, query="",
                      return_text=False):
    """A well-behaved client: sends the speech, reads everything, then closes normally."""
    rng = random.Random(name)
    rec = Received()
    async with websockets.connect(url + query, max_size=None, compression=None) as ws:
        port = ws.local_address[1]
        recv_task = asyncio.create_task(receiver(ws, rec, name))
        t_first = time.monotonic()
        await send_audio(ws, pace_chunks(ogg, framing, rng), fast=fast)
        # What is still in flight: the model's delay, the encoder and the pacing. Wait for it
        # (as long as audio keeps coming: a loaded machine may lag), at most 15 s.
        t_end = time.monotonic() + 15
        while time.monotonic() < t_end and received_seconds(rec) < samples / RATE - 0.15:
            if rec.audio_times and time.monotonic() - rec.audio_times[-1] > 3:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)
        await ws.close()
        await recv_task
    check(rec.kinds and rec.kinds[0] == 0, f"{name}: handshake first")
    check(not rec.errors, f"{name}: no error message ({rec.errors})")
    check_output_stream(rec, name)
    out = decode_ogg(bytes(rec.audio), name)
    check(abs(out - samples) <= 0.4 * RATE,
          f"{name}: decoded {out / RATE:.2f} s of audio for {samples / RATE:.2f} s sent")
    check(len(rec.texts) > 0, f"{name}: text messages arrived ({len(rec.texts)})")
    if rec.audio_times:
        # The first page leaves with the first 80 ms frame + the model's delay + Opus.
        latency = rec.audio_times[0] - t_first
        print(f"{name}: first audio {latency * 1000:.0f} ms after the first sent", flush=True)
        check(latency < 1.5, f"{name}: first audio within 1.5 s ({latency:.2f} s)")
        span = rec.audio_times[-1] - rec.audio_times[0]
        check(span >= 0.8 * SPEECH_SECONDS,
              f"{name}: output paced in real time (arrived over {span:.1f} s)")
    print(f"{name}: {out / RATE:.2f} s of audio back, {len(rec.texts)} text pieces: "
          f"{''.join(rec.texts)[:60]!r}", flush=True)
    return "".join(rec.texts) if return_text else port


async def expect_closed(ws, rec, name, timeout, handshake=True):
    try:
        await asyncio.wait_for(receiver(ws, rec, name, handshake), timeout)
    except asyncio.TimeoutError:
        check(False, f"{name}: the server ended the conversation within {timeout} s")


async def bad_not_ogg(url, ogg):
    rec = Received()
    async with websockets.connect(url, max_size=None) as ws:
        port = ws.local_address[1]
        await ws.send(b"\x01" + b"this is certainly not an Ogg stream, " * 20)
        await expect_closed(ws, rec, "not-ogg", 10)
    check(rec.errors, "not-ogg: an 0x05 error message came")
    check(rec.close_code == 1007, f"not-ogg: close code 1007 ({rec.close_code})")
    return port


async def bad_garbage_opus(url, ogg):
    """Valid Ogg pages with the real headers, then random packets."""
    rec = Received()
    rng = random.Random(7)
    pages, _ = parse_pages(ogg)
    async with websockets.connect(url, max_size=None) as ws:
        port = ws.local_address[1]
        task = asyncio.create_task(receiver(ws, rec, "garbage-opus"))
        try:
            await ws.send(b"\x01" + pages[0][7] + pages[1][7])
            for i in range(100):
                pkt = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
                await ws.send(b"\x01" + write_page(pkt, 0, 960 * (i + 1), pages[0][2], i + 2))
                await asyncio.sleep(0.02)
                if task.done():
                    break
        except websockets.ConnectionClosed:
            pass
        await asyncio.sleep(1)
        await ws.close()
        await task
    # The server decodes what libopus takes (noise) and ends the conversation on a packet that
    # cannot be Opus or repeated decode errors, with an error message first.
    if rec.close_code != 1000:
        check(rec.errors, f"garbage-opus: an error message before close {rec.close_code}")
    return port


async def bad_kinds_and_text(url, ogg):
    """Unknown kinds, control/metadata kinds, empty messages and text frames are ignored: the
    conversation goes on."""
    rec = Received()
    msgs = pace_chunks(ogg, "pages", random.Random(1))[:40]   # 3.2 s of speech
    async with websockets.connect(url, max_size=None) as ws:
        port = ws.local_address[1]
        task = asyncio.create_task(receiver(ws, rec, "odd-kinds"))
        for m in [b"\x03\x00", b"\x04{}", b"\x06", b"\x07\x01hi", b"\x42junk", b"\xff" * 100, b"",
                  b"\x01"]:
            await ws.send(m)
        await ws.send("a text frame")
        await send_audio(ws, msgs)
        await ws.send("another text frame")
        await asyncio.sleep(1.0)
        await ws.close()
        await task
    check(rec.close_code == 1000 and not rec.errors, f"odd-kinds: conversation went on "
          f"(close {rec.close_code}, errors {rec.errors})")
    out = decode_ogg(bytes(rec.audio), "odd-kinds") if rec.audio else 0
    check(out >= 2.5 * RATE, f"odd-kinds: audio came back ({out / RATE:.2f} s)")
    return port


async def bad_huge(url, ogg):
    rec = Received()
    async with websockets.connect(url, max_size=None, write_limit=2 ** 24) as ws:
        port = ws.local_address[1]
        try:
            await ws.send(b"\x01" + b"OggS" + bytes(8 * 1024 * 1024))
        except websockets.ConnectionClosed:
            pass
        await expect_closed(ws, rec, "huge", 15)
    # 1009 (message too big), or 1006 when the server's close lands while the client still sends.
    check(rec.close_code in (1009, 1006), f"huge: closed as too big ({rec.close_code})")
    return port


async def bad_no_read(url, ogg):
    """Sends audio in real time but never reads: the server must drop it, not queue forever."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    port = sock.getsockname()[1]
    msgs = pace_chunks(ogg, "pages", random.Random(2))
    t0 = time.monotonic()
    closed = False
    async with websockets.connect(url, sock=sock, max_size=None, max_queue=1,
                                  read_limit=1024) as ws:
        try:
            for _ in range(6):      # up to 60 s of speech, on a loop
                await send_audio(ws, msgs)
        except websockets.ConnectionClosed:
            closed = True
        ws.transport.abort()
    check(closed, "no-read: the server dropped a client that does not read")
    print(f"no-read: dropped after {time.monotonic() - t0:.1f} s", flush=True)
    return port


async def bad_abrupt(url, ogg):
    msgs = pace_chunks(ogg, "pages", random.Random(3))[:25]
    ws = await websockets.connect(url, max_size=None)
    port = ws.local_address[1]
    await send_audio(ws, msgs)
    ws.transport.abort()        # no close frame, mid-stream
    return port


async def bad_idle(url, ogg, idle):
    rec = Received()
    async with websockets.connect(url, max_size=None) as ws:
        port = ws.local_address[1]
        await expect_closed(ws, rec, "idle", idle + 5)
    check(rec.kinds[:1] == [0], "idle: handshake first")
    check(rec.errors, "idle: an error message says why")
    return port


# --- Scenarios ------------------------------------------------------------------------------------

async def wait_idle(server, timeout=20):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if server.health()["conversations"] == 0:
            return True
        await asyncio.sleep(0.25)
    return False


async def scenario_protocol(ogg, samples):
    idle = 3
    server = Server("--idle-timeout", str(idle), "--stall-timeout", "3", "--max-conversations", "16")
    try:
        h = server.health()
        check(h["status"] == "ok" and h["conversations"] == 0, f"/health answers ({h})")
        webui = ("?text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250"
                 "&pad_mult=0&text_seed=762776&audio_seed=684971"
                 "&repetition_penalty_context=64&repetition_penalty=1")
        results = await asyncio.gather(
            good_client(server.url, ogg, samples, "good-paced", query=webui),
            good_client(server.url, ogg, samples, "good-fast-split", framing="split", fast=True,
                        query="?=text_temperature=bad&seed=12"),
            bad_not_ogg(server.url, ogg),
            bad_garbage_opus(server.url, ogg),
            bad_kinds_and_text(server.url, ogg),
            bad_huge(server.url, ogg),
            bad_no_read(server.url, ogg),
            bad_abrupt(server.url, ogg),
            bad_idle(server.url, ogg, idle))
        names = ["good-paced", "good-fast-split", "not-ogg", "garbage-opus", "odd-kinds", "huge",
                 "no-read", "abrupt", "idle"]
        check(await wait_idle(server), "every conversation ended (/health: 0 active)")
        expect = {"good-paced": "client closed (code 1000)",
                  "good-fast-split": "client closed (code 1000)",
                  "not-ogg": "not an Ogg stream", "odd-kinds": "client closed (code 1000)",
                  "huge": "larger than configured max-incoming-payload-size", "no-read": "client stopped reading",
                  "abrupt": "", "idle": "no audio from the client"}
        for name, port in zip(names, results):
            line = server.end_line(port)
            if check(line is not None, f"{name}: the server logged the conversation's end"):
                check(expect.get(name, "") in line, f"{name}: log line says why: {line}")
                check(re.search(r"start \S+, end \S+, duration [0-9.]+ s", line),
                      f"{name}: log line has start, end and duration")
    finally:
        rc = server.stop()
    check(rc == 0, f"server exits cleanly on SIGTERM ({rc})")


async def scenario_concurrent(ogg, samples):
    server = Server("--max-conversations", "8")
    try:
        texts = await asyncio.gather(*[good_client(server.url, ogg, samples, f"client-{i}",
                                                   framing=["pages", "split", "webui"][i % 3],
                                                   query="?seed=7" if i == 7 else
                                                   "?seed=4242&text_seed=1",
                                                   return_text=True)
                                       for i in range(8)])
        # One model, eight independent conversations: the same speech and seed give the same
        # words whatever the framing and the neighbours; another seed other words. (`seed`
        # wins over text_seed.)
        check(all(t == texts[0] for t in texts[:7]), "same input and seed, same text")
        check(texts[7] != texts[0], "the seed query parameter is used")
        check(await wait_idle(server), "every conversation ended")
        check(server.health()["served"] == 8, "8 conversations served")
    finally:
        rc = server.stop()
    check(rc == 0, f"server exits cleanly ({rc})")


async def scenario_refusal(ogg, samples):
    server = Server("--max-conversations", "2", "--idle-timeout", "30")
    try:
        a = await websockets.connect(server.url)
        b = await websockets.connect(server.url)
        check((await a.recv())[0] == 0 and (await b.recv())[0] == 0, "two conversations start")
        rec = Received()
        async with websockets.connect(server.url) as c:
            await expect_closed(c, rec, "refused", 10, handshake=False)
        check(rec.kinds == [5] and "busy" in rec.errors[0], f"refused: one 0x05 message "
              f"saying the server is busy ({rec.kinds}, {rec.errors})")
        check(rec.close_code == 4013, f"refused: close code 4013 ({rec.close_code})")
        check(server.health()["refused"] == 1, "/health counts the refusal")
        await a.close()
        t_end = time.monotonic() + 10
        while server.health()["conversations"] != 1 and time.monotonic() < t_end:
            await asyncio.sleep(0.1)
        check(server.health()["conversations"] == 1, "a slot frees when a client leaves")
        async with websockets.connect(server.url) as d:
            check((await d.recv())[0] == 0, "a new client is served once a slot is free")
        await b.close()
        check(await wait_idle(server), "every conversation ended")
        check("refused" in server.log_text(), "the refusal is logged")
    finally:
        rc = server.stop()
    check(rc == 0, f"server exits cleanly ({rc})")


def http_get(url, context=None):
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, None, b""


async def scenario_http(ogg, samples):
    """/health, --static and --ssl."""
    import ssl
    web = os.path.join(TMP, "web")
    os.makedirs(os.path.join(web, "assets"))
    open(os.path.join(web, "index.html"), "w").write("<html>moshi</html>")
    open(os.path.join(web, "assets", "app.js"), "w").write("console.log(1)")
    open(os.path.join(web, "assets", "decoderWorker.min.wasm"), "wb").write(b"\0asm")
    open(os.path.join(TMP, "secret.txt"), "w").write("secret")
    certs = os.path.join(TMP, "certs")
    os.makedirs(certs)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", os.path.join(certs, "key.pem"),
                    "-out", os.path.join(certs, "cert.pem")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server("--static", web, "--ssl", certs)
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        base = f"https://127.0.0.1:{server.port}"
        status, ctype, body = http_get(base + "/", ctx)
        check(status == 200 and b"moshi" in body and ctype.startswith("text/html"),
              f"GET / serves index.html ({status} {ctype})")
        status, ctype, _ = http_get(base + "/assets/app.js", ctx)
        check(status == 200 and ctype == "text/javascript", f"JavaScript MIME type ({ctype})")
        status, ctype, _ = http_get(base + "/assets/decoderWorker.min.wasm", ctx)
        check(status == 200 and ctype == "application/wasm", f"wasm MIME type ({ctype})")
        check(http_get(base + "/missing.js", ctx)[0] == 404, "404 for a missing file")
        check(http_get(base + "/%2e%2e/secret.txt", ctx)[0] in (403, 404), "no way out of --static")
        status, _, body = http_get(base + "/health", ctx)
        check(status == 200 and json.loads(body)["status"] == "ok", "/health over HTTPS")
        rec = Received()
        async with websockets.connect(f"wss://127.0.0.1:{server.port}/api/chat", ssl=ctx,
                                      max_size=None) as ws:
            task = asyncio.create_task(receiver(ws, rec, "wss"))
            await send_audio(ws, pace_chunks(ogg, "pages", random.Random(5))[:20])
            t_end = time.monotonic() + 10
            while received_seconds(rec) < 1.0 and time.monotonic() < t_end:
                await asyncio.sleep(0.1)
            await ws.close()
            await task
        check(rec.kinds[:1] == [0] and received_seconds(rec) >= 1.0, "a conversation over wss")
    finally:
        rc = server.stop()
    check(rc == 0, f"server exits cleanly ({rc})")


async def scenario_upstream_client(ogg, samples):
    """Upstream's `python -m moshi.client`, unmodified, with substituted audio I/O
    (upstream-client/sounddevice.py). Needs what Debian does not have, so it runs only when
    MOSHI_UPSTREAM_CLIENT_DIR names a folder holding moshi/client.py and moshi/client_utils.py
    (from the moshi wheel) and MOSHI_UPSTREAM_CLIENT_PYTHON a Python with sphn >= 0.2, aiohttp
    and numpy (docs/server.md)."""
    src = os.environ.get("MOSHI_UPSTREAM_CLIENT_DIR")
    python = os.environ.get("MOSHI_UPSTREAM_CLIENT_PYTHON")
    if not src or not python:
        print("SKIP: set MOSHI_UPSTREAM_CLIENT_DIR and MOSHI_UPSTREAM_CLIENT_PYTHON")
        sys.exit(77)
    pkg = os.path.join(TMP, "client", "moshi")
    os.makedirs(pkg)
    for name in ("client.py", "client_utils.py"):
        shutil.copy(os.path.join(src, "moshi", name), pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()   # not upstream's: it imports torch
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "upstream-client", "sounddevice.py"),
                os.path.join(TMP, "client"))
    out = os.path.join(TMP, "client-out.raw")
    server = Server("--idle-timeout", "2")
    try:
        env = dict(os.environ, SD_IN=os.path.join(TMP, "speech24.wav"), SD_OUT=out,
                   PYTHONPATH=os.path.join(TMP, "client"))
        proc = await asyncio.create_subprocess_exec(
            python, "-m", "moshi.client", "--host", "127.0.0.1", "--port", str(server.port),
            env=env, cwd=os.path.join(TMP, "client"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            text, _ = await asyncio.wait_for(proc.communicate(), 40)
        except asyncio.TimeoutError:
            proc.kill()
            text, _ = await proc.communicate()
        text = text.decode("utf-8", "replace")
        print("moshi.client said:", text[-400:], flush=True)
        check("All done!" in text, "moshi.client ran to its end")
        check("Lost connection" not in text, "moshi.client did not lose the connection")
        pcm = open(out, "rb").read()
        played = [abs(v) > 3 for v in struct.unpack(f"<{len(pcm) // 2}h", pcm)]
        first = played.index(True) if True in played else 0
        last = len(played) - played[::-1].index(True) if True in played else 0
        span = (last - first) / RATE
        print(f"moshi.client played {len(pcm) / 2 / RATE:.1f} s, {span:.1f} s of it not silent")
        check(span >= SPEECH_SECONDS, f"moshi.client played the answer ({span:.1f} s)")
        line = [l for l in server.log_text().splitlines() if "ended:" in l]
        check(line and "no audio from the client" in line[0] and "text pieces" in line[0],
              f"the server served it to the end: {line}")
    finally:
        rc = server.stop()
    check(rc == 0, f"server exits cleanly ({rc})")


async def scenario_valgrind(ogg, samples):
    vg = ["valgrind", "--tool=memcheck", "--leak-check=full", "--errors-for-leak-kinds=definite",
          "--show-leak-kinds=definite", "--error-exitcode=99", "--num-callers=40",
          "--suppressions=/usr/share/glib-2.0/valgrind/glib.supp"]
    for supp in filter(None, os.environ.get("MOSHI_VALGRIND_SUPP", "").split(":")):
        vg.append("--suppressions=" + supp)
    # The plugin registry is built outside valgrind (scanning every plugin under it is slow).
    subprocess.run(["gst-inspect-1.0", "moshidialog"], stdout=subprocess.DEVNULL, check=True)
    os.environ.update({"G_SLICE": "always-malloc", "GST_REGISTRY_FORK": "no",
                       "G_DEBUG": "gc-friendly", "GST_REGISTRY_UPDATE": "no"})
    server = Server("--idle-timeout", "60", "--max-conversations", "1", valgrind=vg)
    try:
        pages, _ = parse_pages(ogg)
        short = b"".join(p[7] for p in pages[:2 + 50])     # headers + 1 s of speech
        rec = Received()
        async with websockets.connect(server.url, max_size=None, open_timeout=60) as ws:
            task = asyncio.create_task(receiver(ws, rec, "valgrind"))
            await ws.send(b"\x01" + short)
            t_end = time.monotonic() + 90
            while len(parse_pages(bytes(rec.audio), strict=False)[0]) < 12 and \
                    time.monotonic() < t_end:
                await asyncio.sleep(0.5)
            refused = Received()
            async with websockets.connect(server.url, open_timeout=60) as ws2:
                await expect_closed(ws2, refused, "valgrind-refused", 60, handshake=False)
            check(refused.close_code == 4013, "valgrind: a second client is refused")
            await ws.close()
            await task
        check(rec.kinds[:1] == [0] and len(rec.audio) > 0, "valgrind: handshake and audio")
        check(await wait_idle(server, 60), "the first conversation ended")
        rec2 = Received()
        async with websockets.connect(server.url, max_size=None, open_timeout=60) as ws:
            await ws.send(b"\x01not ogg at all")
            await expect_closed(ws, rec2, "valgrind-bad", 60)
        check(rec2.errors, "valgrind: the bad client got an error message")
        check(await wait_idle(server, 60), "the bad conversation ended")
        # Gone mid-stream without a close frame.
        ws = await websockets.connect(server.url, max_size=None, open_timeout=60)
        await ws.send(b"\x01" + short)
        await asyncio.sleep(1.0)
        ws.transport.abort()
        check(await wait_idle(server, 60), "every conversation ended")
    finally:
        rc = server.stop()
    log = server.log_text()
    m = re.findall(r"ERROR SUMMARY: (\d+) errors", log)
    print("\n".join(line for line in log.splitlines() if "definitely lost" in line
                    or "ERROR SUMMARY" in line), flush=True)
    check(rc == 0, f"valgrind: clean exit ({rc}); see {server.log_path}")
    check(m and m[-1] == "0", f"valgrind: no errors ({m})")


async def scenario_download(ogg, samples):
    """--version; the models of --hf-repo downloaded from a stand-in hub (tests/hub-server.py),
    the progress on stderr with --progress only, as stderr is a file here."""
    out = subprocess.run([SERVER_EXE, "--version"], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    check(out.returncode == 0 and len(lines) == 2 and lines[0].startswith("moshi-server ")
          and lines[1].startswith("libmoshi "), f"--version: {out.stdout!r} {out.stderr!r}")
    hub = hub_fixture.Hub(os.path.join(TMP, "hub"), DATA, os.environ["MOSHI_HUB_SERVER"])
    try:
        for progress in (False, True):
            # the repo rather than the files Server names
            server = Server("--moshi-weight", hub_fixture.REPO, "--mimi-weight", hub_fixture.REPO,
                            "--tokenizer", hub_fixture.REPO,
                            *(["--progress"] if progress else []),
                            env=hub.env(f"cache-{progress}"))
            try:
                check(server.health()["status"] == "ok", "the server runs on downloaded models")
            finally:
                rc = server.stop()
            check(rc == 0, f"server exits cleanly ({rc})")
            log = server.log_text()
            for line in hub_fixture.DOWNLOADED:
                check((line in log) == progress,
                      f"--progress {progress}: '{line}' {'not ' if progress else ''}in the log: "
                      f"{log!r}")
    finally:
        hub.stop()


def main():
    ogg, samples = make_speech()
    t0 = time.monotonic()
    asyncio.run({"protocol": scenario_protocol, "concurrent": scenario_concurrent,
                 "refusal": scenario_refusal, "http": scenario_http,
                 "download": scenario_download,
                 "upstream-client": scenario_upstream_client,
                 "valgrind": scenario_valgrind}[SCENARIO](ogg, samples))
    print(f"{SCENARIO}: {time.monotonic() - t0:.1f} s, {len(failures)} failures", flush=True)
    if failures:
        for line in open(os.path.join(TMP, f"server-{SCENARIO}.log")).read().splitlines()[-40:]:
            print("server:", line)
        sys.exit(1)
    shutil.rmtree(TMP, ignore_errors=True)


main()
