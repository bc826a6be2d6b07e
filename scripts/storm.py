#!/usr/bin/env python3
"""Connection storm: opens N connections to a Gearman server back to back (blocking connects,
one after another, as fast as the kernel completes them), then proves each one was accepted
and is served with an ECHO_REQ round trip. Reports how many connected within the time limit,
how many connects were slow (over 0.5 s: a SYN dropped by a full listen queue is sent again
after a second or more), and how many answered.

    python3 scripts/storm.py PORT [N=15000] [LIMIT_SECONDS=120]

The open-files limit of this process is raised to its hard limit first (N must fit under it).
"""
import resource
import socket
import struct
import sys
import time


def main():
    port = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 15000
    limit = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.time()
    socks, slow = [], 0
    for _ in range(n):
        s = socket.socket()
        before = time.time()
        s.connect(("127.0.0.1", port))
        if time.time() - before > 0.5:
            slow += 1
        socks.append(s)
        if time.time() - started > limit:
            break
    connected = time.time()
    echo = b"\0REQ" + struct.pack(">II", 16, 1) + b"e"
    for s in socks:
        s.sendall(echo)
    answered = 0
    for s in socks:
        s.settimeout(5)
        try:
            if len(s.recv(13)) >= 12:
                answered += 1
        except OSError:
            pass
    done = time.time()
    print(
        f"connected {len(socks)} in {connected - started:.2f}s ({slow} slow), "
        f"answered {answered}, all done {done - started:.2f}s"
    )


if __name__ == "__main__":
    main()
