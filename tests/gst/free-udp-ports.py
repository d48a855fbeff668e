#!/usr/bin/env python3
"""Prints N UDP ports that are free on 127.0.0.1 now (default 2), so that tests running in
parallel do not collide. The kernel picks them; they are released again before printing."""
import socket
import sys

socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
         for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
