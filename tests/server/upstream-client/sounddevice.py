"""A stand-in for the `sounddevice` module, for running upstream's `moshi.client` unmodified
without audio devices (tests/server/test-server.py, scenario upstream-client).

InputStream plays the WAV named by $SD_IN (24 kHz mono 16-bit) as the microphone, in real time,
block by block, then 2 s of silence, then stops. OutputStream pulls blocks in real time and
writes everything it was given to $SD_OUT (raw 16-bit samples)."""
import os
import threading
import time
import wave

import numpy as np


class _Stream:
    def __init__(self, samplerate, channels, blocksize, callback, **kwargs):
        self.rate = int(samplerate)
        self.channels = channels
        self.block = blocksize
        self.callback = callback
        self.stopped = False
        self.thread = None

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped = True

    def _wait_block(self, t0, i):
        delay = t0 + i * self.block / self.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class InputStream(_Stream):
    def _run(self):
        with wave.open(os.environ["SD_IN"]) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        pcm = np.concatenate([pcm, np.zeros(2 * self.rate, np.float32)])
        t0 = time.monotonic()
        for i in range(len(pcm) // self.block):
            if self.stopped:
                return
            self._wait_block(t0, i + 1)
            block = pcm[i * self.block:(i + 1) * self.block].reshape(-1, 1).copy()
            self.callback(block, self.block, None, None)


class OutputStream(_Stream):
    def _run(self):
        with open(os.environ["SD_OUT"], "wb") as f:
            t0 = time.monotonic()
            i = 0
            while not self.stopped:
                i += 1
                self._wait_block(t0, i)
                out = np.zeros((self.block, self.channels), np.float32)
                self.callback(out, self.block, None, None)
                pcm = np.clip(out[:, 0] * 32767, -32768, 32767).astype(np.int16)
                f.write(pcm.tobytes())
                f.flush()
