#!/usr/bin/env python3
"""moshi-webrtc on models named by repo id: they are downloaded from a stand-in hub
(tests/hub-server.py) before the server listens, and the download is shown on stderr with
--progress only (stderr is a pipe here, not a terminal). No browser: only the start-up.

Usage: test-webrtc-download.py MOSHI_WEBRTC   (MOSHI_HUB_SERVER: tests/hub-server.py)
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import hub_fixture  # noqa: E402  (tests/, beside hub-server.py)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")


def start_and_stop(binary, env, progress):
    """Runs the server until it listens, then SIGTERM; returns (its stderr, exit status)."""
    proc = subprocess.Popen(
        [binary, "--port", "0", "--ice-address", "127.0.0.1", "--model", hub_fixture.REPO,
         "--mimi-model", hub_fixture.REPO, "--tokenizer", hub_fixture.REPO,
         # the small models' own shapes: the repo has no config.json
         "--lm-config", os.path.join(DATA, "lm", "dialog", "config.json"),
         "--mimi-config", os.path.join(DATA, "mimi", "small", "config.json"),
         *(["--progress"] if progress else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    listening = False
    try:
        for line in proc.stdout:
            if "listening on " in line:
                listening = True
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    if not listening:
        print(f"FAIL: the server did not start (exit {proc.returncode}): {err}", flush=True)
        sys.exit(1)
    return err, proc.returncode


def main():
    if len(sys.argv) != 2:
        print("usage: test-webrtc-download.py MOSHI_WEBRTC")
        sys.exit(2)
    tmp = tempfile.mkdtemp(prefix="moshi-webrtc-download-")
    hub = hub_fixture.Hub(os.path.join(tmp, "hub"), DATA, os.environ["MOSHI_HUB_SERVER"])
    failures = []
    try:
        for progress in (False, True):
            err, rc = start_and_stop(sys.argv[1], hub.env(f"cache-{progress}"), progress)
            if rc != 0:
                failures.append(f"--progress {progress}: exit status {rc}: {err}")
            for line in hub_fixture.DOWNLOADED:
                if (line in err) != progress:
                    failures.append(f"--progress {progress}: '{line}' "
                                    f"{'not ' if progress else ''}on stderr: {err!r}")
    finally:
        hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for f in failures:
        print("FAIL: " + f, flush=True)
    print(f"{len(failures)} failures", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
