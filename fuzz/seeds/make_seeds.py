#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target (fuzz/seeds/<target>/), so the fuzzer starts
from meaningful inputs: real packet streams, admin lines, HTTP requests, and server scripts in which workers
and clients meet (a job's full cycle, coalescing, requeue, epoch, cancel, half-sent frames).

The server target's input is a `Script` decoded by the `arbitrary` crate; this file encodes
scripts the same way (enum variant: 4 bytes little-endian, chosen so that (x * n) >> 32 is
the variant's index; Vec: a 1 byte before each element and a 0 after the last; integers
little-endian). Keep the variant tables below in the order of fuzz_targets/server.rs.

Run: python3 fuzz/seeds/make_seeds.py
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def req(ty, *args):
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", ty, len(body)) + body


# ---- arbitrary's encoding ------------------------------------------------------------------


def variant(index, count):
    return struct.pack("<I", (index * (1 << 32) + count - 1) // count)


def u8(n):
    return bytes([n])


def u16(n):
    return struct.pack("<H", n)


def u64(n):
    return struct.pack("<Q", n)


def boolean(b):
    return u8(1 if b else 0)


def vec(items):
    return b"".join(b"\x01" + i for i in items) + b"\x00"


def byte_vec(data):
    return vec([bytes([b]) for b in data])


# ---- decode --------------------------------------------------------------------------------


def decode_input(data, max_body=1024, max_line=100, cuts=(), filler=0):
    return u16(max_body) + u16(max_line) + vec([u16(c) for c in cuts]) + u8(filler) + data


# ---- server script -------------------------------------------------------------------------

ACTIONS = ["Send", "Admin", "Raw", "Write", "Pause", "Sync", "Close"]
REQS = [
    "Submit", "Epoch", "Reduce", "CanDo", "CanDoTimeout", "CantDo", "ResetAbilities",
    "PreSleep", "Grab", "Work", "WorkStatus", "GetStatus", "GetStatusUnique", "Echo",
    "SetClientId", "Option", "Other",
]
KINDS = ["Fg", "Bg", "High", "HighBg", "Low", "LowBg"]
UNIQUES = ["Empty", "Dash", "Pool", "Bytes"]
HANDLES = ["Known", "Bytes"]
NUMBERS = ["Small", "Wide", "Bytes"]
WHENS = ["Past", "InSeconds", "Far", "Bytes"]
ADMINS = [
    "Status", "PriorityStatus", "Workers", "ShowJobs", "ShowUniqueJobs", "Cancel", "Create",
    "Drop", "MaxQueue", "Version", "GetPid", "Verbose", "Queue",
]
WORK = {"complete": 0, "fail": 1, "exception": 2, "data": 3, "warning": 4}


def v(table, name):
    return variant(table.index(name), len(table))


def unique(u):
    if u == "":
        return v(UNIQUES, "Empty")
    if u == "-":
        return v(UNIQUES, "Dash")
    if isinstance(u, int):
        return v(UNIQUES, "Pool") + u8(u)
    return v(UNIQUES, "Bytes") + byte_vec(u)


def handle(h):
    if isinstance(h, int):
        return v(HANDLES, "Known") + u8(h)
    return v(HANDLES, "Bytes") + byte_vec(h)


def number(n):
    if isinstance(n, bytes):
        return v(NUMBERS, "Bytes") + byte_vec(n)
    if n < 256:
        return v(NUMBERS, "Small") + u8(n)
    return v(NUMBERS, "Wide") + u64(n)


def send(peer, r):
    return v(ACTIONS, "Send") + u8(peer) + r


def submit(kind, f, u, data=b"x"):
    return v(REQS, "Submit") + v(KINDS, kind) + u8(f) + unique(u) + byte_vec(data)


def epoch(f, u, when, data=b"e"):
    w = v(WHENS, when[0]) + (u8(when[1]) if when[0] == "InSeconds" else b"")
    if when[0] == "Bytes":
        w += byte_vec(when[1])
    return v(REQS, "Epoch") + u8(f) + unique(u) + w + byte_vec(data)


def reduce(bg, f, u, reducer, data=b"r"):
    return v(REQS, "Reduce") + boolean(bg) + u8(f) + unique(u) + u8(reducer) + byte_vec(data)


def can_do(f):
    return v(REQS, "CanDo") + u8(f)


def can_do_timeout(f, ms):
    return v(REQS, "CanDoTimeout") + u8(f) + number(ms)


def cant_do(f):
    return v(REQS, "CantDo") + u8(f)


def plain(name):
    return v(REQS, name)


def grab(which=0):
    return v(REQS, "Grab") + u8(which)


def work(which, h, data=b"w"):
    return v(REQS, "Work") + u8(WORK[which]) + handle(h) + byte_vec(data)


def work_status(h, num, den):
    return v(REQS, "WorkStatus") + handle(h) + number(num) + number(den)


def get_status(h):
    return v(REQS, "GetStatus") + handle(h)


def get_status_unique(u):
    return v(REQS, "GetStatusUnique") + unique(u)


def echo(data):
    return v(REQS, "Echo") + byte_vec(data)


def client_id(data):
    return v(REQS, "SetClientId") + byte_vec(data)


def option(exceptions):
    return v(REQS, "Option") + boolean(exceptions)


def other(ty, response, body):
    return v(REQS, "Other") + u8(ty) + boolean(response) + byte_vec(body)


def admin(peer, name, *args):
    a = v(ACTIONS, "Admin") + u8(peer) + v(ADMINS, name)
    if name == "Cancel":
        a += handle(args[0])
    elif name in ("Create", "Drop"):
        a += u8(args[0])
    elif name == "MaxQueue":
        a += u8(args[0]) + byte_vec(args[1])
    return a


def raw(peer, data):
    return v(ACTIONS, "Raw") + u8(peer) + byte_vec(data)


def write_upto(peer, n):
    return v(ACTIONS, "Write") + u8(peer) + u16(n)


def pause():
    return v(ACTIONS, "Pause")


def sync(peer):
    return v(ACTIONS, "Sync") + u8(peer)


def close(peer, flush=True):
    return v(ACTIONS, "Close") + u8(peer) + boolean(flush)


def script(actions, second_server=False):
    return boolean(second_server) + vec(actions)


SCRIPTS = {
    # A worker sleeps, a client submits, the worker is woken, grabs and completes.
    "job-cycle": [
        send(1, can_do(0)), send(1, plain("PreSleep")), sync(1),
        send(0, submit("Fg", 0, 0, b"hello")), sync(0),
        send(1, grab()), sync(1),
        send(1, work("data", 0, b"part")), send(1, work_status(0, 1, 2)),
        send(1, work("complete", 0, b"olleh")), sync(1), sync(0),
    ],
    # A background and a foreground submit share a unique; the foreground client leaves;
    # a worker takes the job and disconnects holding it (requeue).
    "coalesce-requeue": [
        send(0, submit("Bg", 1, 1)), sync(0),
        send(2, submit("Fg", 1, 1)), sync(2), close(2),
        send(3, can_do(1)), send(3, grab(1)), sync(3), close(3),
        admin(4, "ShowJobs"), admin(4, "Status"), sync(4),
    ],
    # maxqueue, a far epoch job, a full queue, cancel, GET_STATUS.
    "epoch-maxqueue-cancel": [
        admin(0, "Create", 2), admin(0, "MaxQueue", 2, b"\x01"), sync(0),
        send(1, epoch(2, 2, ("Far",))), send(1, submit("LowBg", 2, 3)), sync(1),
        send(1, get_status(0)), admin(1, "Cancel", 0), sync(1),
        send(1, epoch(3, "", ("InSeconds", 1))), send(1, epoch(3, 5, ("Bytes", b"99999999999999999999"))),
        sync(1),
    ],
    # Frames cut at odd places with pauses between the writes, on two connections at once.
    "half-frames": [
        send(0, submit("High", 0, "", b"a" * 40)), send(1, can_do(0)),
        write_upto(0, 5), write_upto(1, 3), pause(), write_upto(0, 13), pause(),
        send(1, grab(2)), write_upto(1, 30), pause(), sync(0), sync(1),
        send(1, work("exception", 0, b"boom")), send(0, option(True)), sync(1), sync(0),
    ],
    # Garbage: an unknown type, a response magic, a text line, a line in a packet stream.
    "garbage": [
        send(0, other(44, False, b"zz")), sync(0),
        raw(1, b"status\r\nworkers\r\n"), send(1, echo(b"hi")), sync(1),
        send(2, other(7, True, b"f0\0u\0d")), sync(2),
        raw(3, b"\0REQ\0\0\0\x07\0\0\0\x02f0"), sync(3),
        raw(4, b"a b c d e f g\n"), sync(4),
    ],
    # Six connections interleaved: workers of several functions, clients of each kind,
    # status numbers past 32 bits, GET_STATUS_UNIQUE, reduce jobs, CAN_DO_TIMEOUT.
    "six-peers": [
        send(0, can_do(0)), send(0, can_do(1)), send(1, can_do(2)), send(1, can_do_timeout(3, 1)),
        send(2, client_id(b"w2")), send(2, can_do(3)), send(2, plain("PreSleep")),
        sync(0), sync(1), sync(2),
        send(3, submit("Fg", 0, 4)), send(4, submit("HighBg", 2, 5)), send(5, reduce(False, 3, 6, 1)),
        send(3, submit("Low", 1, "-", b"same")), send(4, submit("LowBg", 1, "-", b"same")),
        sync(3), sync(4), sync(5),
        send(0, grab()), send(1, grab(1)), send(2, grab(2)), sync(0), sync(1), sync(2),
        send(0, work_status(0, b"99999999999999999999", 4294967297)),
        send(2, work("warning", 2)), send(1, work("fail", 1)), sync(0), sync(1), sync(2),
        send(5, get_status_unique(6)), send(5, get_status(2)), sync(5),
        admin(3, "Workers"), admin(3, "PriorityStatus"), admin(3, "ShowUniqueJobs"), sync(3),
        close(0, False), close(4), send(1, plain("ResetAbilities")), send(2, cant_do(3)), sync(1),
    ],
    # The first bug found: a client that resets (unread answers make close send a reset)
    # right after submitting, before the owners answer, left foreground jobs queued for
    # nobody. Runs on the 3-shard server without hand-off (see main).
    "reset-after-submits": [
        admin(0, "Version"), write_upto(0, 100), pause(),
        send(0, submit("Fg", 0, "")), send(0, submit("Fg", 1, "")),
        send(0, submit("Fg", 2, "")), send(0, submit("Fg", 3, "")), close(0),
    ],
}


def main():
    for name, actions in SCRIPTS.items():
        write("server", name, script(actions))
    write("server", "six-peers-second-server", script(SCRIPTS["six-peers"], second_server=True))
    write("server", "reset-after-submits", script(SCRIPTS["reset-after-submits"], second_server=True))

    decode = {
        "submit": req(7, b"f0", b"u1", b"payload") + req(16, b"echo"),
        "lines": b"status\r\nshow unique jobs\nmaxqueue f 1 2 3\r\n",
        "mixed": req(1, b"f0") + b"workers\n" + req(9) + req(13, b"H:x:1", b"done"),
        "epoch-sched": req(36, b"f", b"u", b"1700000000", b"d") + req(35, b"f", b"u", b"1", b"2", b"3", b"4", b"5", b"d"),
        "too-large": b"\0REQ\0\0\0\x07\x00\x10\x00\x00",
        "bad-magic": b"\0RAQ\0\0\0\x10\0\0\0\0",
        "few-args": req(7, b"f"),
        "response": b"\0RES" + struct.pack(">II", 11, 9) + b"H:1\0f\0abc",
    }
    for name, data in decode.items():
        write("decode", name, decode_input(data, cuts=(3, 12, 20)))
    write("decode", "long-line", decode_input(b"x" * 120 + b"\n", max_line=100))

    admin_lines = {
        "status": b"status",
        "show-unique": b"show unique jobs",
        "maxqueue": b"maxqueue f -1 x 99999999999",
        "cancel": b"cancel job H:x:1",
        "create": b"create function f",
        "drop": b"DROP function F",
        "too-many": b"a b c d e f",
        "leading-space": b" status",
        "shutdown": b"shutdown graceful",
    }
    for name, data in admin_lines.items():
        write("admin_line", name, data)

    # http: (body limit: u16 little-endian, request bytes).
    requests = {
        "post": b"POST /reverse HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        "background": b"POST /f HTTP/1.0\r\nContent-Length: 2\r\nX-Gearman-Background: true\r\n"
        b"X-Gearman-Unique: u\r\nX-Gearman-Priority: high\r\n\r\nhi",
        "get-lf": b"\r\nGET ///f?x=1 HTTP/1.0\nX-Gearman-Priority: low\n\n",
        "head": b"HEAD / HTTP/1.0\r\n\r\n",
        "trace": b"TRACE / HTTP/1.1\r\nA: b\r\n\r\n",
        "chunked": b"POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        "bad-length": b"POST /f HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "pipelined": b"POST /f HTTP/1.1\r\nContent-Length: 1\r\n\r\naPOST /g HTTP/1.1\r\n\r\n",
    }
    for name, data in requests.items():
        write("http", name, struct.pack("<H", 64) + data)


if __name__ == "__main__":
    main()
