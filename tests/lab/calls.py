#!/usr/bin/env python3
"""Open N concurrent PPTP calls to the lab server (run inside the lab netns, as root).

    calls.py SERVER N [HOLD_SECONDS]

Each call: Start-Control-Connection-Request, Outgoing-Call-Request, then wait
until the server's pppd sends its first LCP Configure-Request over enhanced GRE
(proof that pptpd launched a pppd for the call), then Call-Clear-Request and
Stop-Control-Connection-Request. Used by `lab.sh selftest` to prove pptpd's
`connections` limit allows N concurrent logins and that every call is torn
down on the server. Exit status 0 only if all N calls saw their LCP packet.
"""
import select
import socket
import struct
import sys
import time

MAGIC = 0x1A2B3C4D


def ctrl(kind, body):
    return struct.pack("!HHLHH", 12 + len(body), 1, MAGIC, kind, 0) + body


def recv_msg(s):
    data = b""
    while len(data) < 2:
        chunk = s.recv(2 - len(data))
        if not chunk:
            raise EOFError("control connection closed")
        data += chunk
    (n,) = struct.unpack("!H", data)
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError("control connection closed")
        data += chunk
    return data


def main():
    server, n = sys.argv[1], int(sys.argv[2])
    hold = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0  # seconds to keep the calls open
    gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    calls = {}  # our call id -> control socket
    for i in range(n):
        s = socket.create_connection((server, 1723), timeout=10)
        s.sendall(ctrl(1, struct.pack("!HHLLHH64s64s", 0x0100, 0, 3, 3, 0, 1, b"lab-calls", b"connexa")))
        r = recv_msg(s)
        kind, result = struct.unpack("!H", r[8:10])[0], r[14]
        if kind != 2 or result != 1:
            sys.exit(f"call {i}: bad SCCRP type={kind} result={result}")
        call_id = 0x4000 + i
        s.sendall(ctrl(7, struct.pack("!HHLLLLHHHH64s64s", call_id, i, 2400, 100_000_000, 3, 3, 64, 0, 0, 0, b"", b"")))
        r = recv_msg(s)
        kind, result = struct.unpack("!H", r[8:10])[0], r[16]
        if kind != 8 or result != 1:
            sys.exit(f"call {i}: bad OCRP type={kind} result={result}")
        calls[call_id] = s
    seen = set()
    deadline = time.time() + 60
    while len(seen) < n and time.time() < deadline:
        ready, _, _ = select.select([gre], [], [], 1)
        if not ready:
            continue
        pkt, addr = gre.recvfrom(4096)
        ihl = (pkt[0] & 0x0F) * 4
        g = pkt[ihl:]
        if addr[0] != server or len(g) < 8 or (g[1] & 7) != 1:
            continue
        proto, length, cid = struct.unpack("!HHH", g[2:8])
        off = 8 + (4 if g[0] & 0x10 else 0) + (4 if g[1] & 0x80 else 0)
        ppp = g[off : off + length]
        if ppp[:2] == b"\xff\x03":
            ppp = ppp[2:]
        if proto == 0x880B and cid in calls and ppp[:2] == b"\xc0\x21" and len(ppp) > 2 and ppp[2] == 1:
            seen.add(cid)
    print(f"calls={n} lcp_seen={len(seen)}", flush=True)
    time.sleep(hold)
    for cid, s in calls.items():
        try:
            s.sendall(ctrl(12, struct.pack("!HH", cid, 0)))  # Call-Clear-Request
            s.sendall(ctrl(3, struct.pack("!BBH", 1, 0, 0)))  # Stop-Control-Connection-Request
        except OSError:
            pass
    time.sleep(0.5)
    for s in calls.values():
        s.close()
    sys.exit(0 if len(seen) == n else 1)


main()
