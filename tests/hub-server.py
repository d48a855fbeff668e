#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub on 127.0.0.1, for tests/test-hub-download.c.

Usage: hub-server.py ROOT
Prints the port it listens on, then serves until killed.

ROOT/repos/<owner>/<name>/commit   the repository's commit hash (its only revision, "main")
ROOT/repos/<owner>/<name>/files/…  the repository's files

Like the hub, GET/HEAD /<owner>/<name>/resolve/<revision>/<file> answers with X-Repo-Commit;
LFS files (*.safetensors) get a 302 to /cdn/<sha256> with X-Linked-Etag (the sha256) and
X-Linked-Size, the others a 200 with their git blob hash as ETag. /cdn/ honours Range.

ROOT/faults.json, read at each request, makes it misbehave:
  {"drop_after": N}   /cdn/ sends N bytes of the body, then closes the connection
  {"corrupt": true}   /cdn/ flips a byte of the content (the ETag stays the true sha256)
  {"renamed": {"old-owner/old-name": "owner/name"}}   a relative 307 to the new name
Every request is appended to ROOT/requests.log: METHOD PATH RANGE AUTHORIZATION.
"""
import hashlib
import http.server
import json
import os
import re
import sys
import urllib.parse

ROOT = sys.argv[1]
RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def faults():
    try:
        with open(os.path.join(ROOT, "faults.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def lfs_index():
    """sha256 -> path of every LFS file, so that /cdn/ can find its content."""
    index = {}
    for dirpath, _, names in os.walk(os.path.join(ROOT, "repos")):
        for n in names:
            if n.endswith(".safetensors"):
                p = os.path.join(dirpath, n)
                with open(p, "rb") as f:
                    index[hashlib.sha256(f.read()).hexdigest()] = p
    return index


class Hub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        with open(os.path.join(ROOT, "requests.log"), "a") as f:
            f.write("%s %s %s %s\n" % (self.command, self.path,
                                       self.headers.get("Range", "-"),
                                       self.headers.get("Authorization", "-")))

    def reply(self, status, headers, body=b""):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET" and body:
            self.wfile.write(body)

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        self.record()
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path.startswith("/cdn/"):
            return self.cdn(path[5:])
        m = RESOLVE.match(path)
        if not m:
            return self.reply(404, {})
        repo, revision, name = m.groups()
        renamed = faults().get("renamed", {})
        if repo in renamed:
            return self.reply(307, {"Location": "/%s/resolve/%s/%s" % (
                renamed[repo], revision, urllib.parse.quote(name))})
        repo_dir = os.path.join(ROOT, "repos", repo)
        try:
            with open(os.path.join(repo_dir, "commit")) as f:
                commit = f.read().strip()
        except FileNotFoundError:
            return self.reply(404, {"X-Error-Code": "RepositoryNotFound"})
        if revision not in ("main", commit):
            return self.reply(404, {"X-Error-Code": "RevisionNotFound"})
        try:
            with open(os.path.join(repo_dir, "files", name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return self.reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        if name.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            return self.reply(302, {"Location": "/cdn/" + sha + "?signed=1",
                                    "X-Repo-Commit": commit,
                                    "X-Linked-Etag": '"%s"' % sha,
                                    "X-Linked-Size": str(len(data)),
                                    "ETag": '"redirect-etag"'})
        git_hash = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        self.reply(200, {"X-Repo-Commit": commit, "ETag": '"%s"' % git_hash}, data)

    def cdn(self, sha):
        p = lfs_index().get(sha)
        if p is None:
            return self.reply(404, {})
        with open(p, "rb") as f:
            data = bytearray(f.read())
        fault = faults()
        if fault.get("corrupt"):
            data[len(data) // 2] ^= 0xFF
        start, status, headers = 0, 200, {"ETag": '"cdn-%s"' % hashlib.md5(data).hexdigest()}
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d+)-$", rng)
            start = int(m.group(1))
            if start >= len(data):
                return self.reply(416, {"Content-Range": "bytes */%d" % len(data)})
            status = 206
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, len(data) - 1, len(data))
        body = bytes(data[start:])
        headers["Content-Length"] = str(len(body))
        drop = fault.get("drop_after")
        if drop is not None and self.command == "GET":
            # Promise the whole body, send part of it and hang up: an interrupted transfer.
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.reply(status, headers, body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
print(server.server_address[1], flush=True)
server.serve_forever()
