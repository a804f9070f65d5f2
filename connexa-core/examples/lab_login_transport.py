# Transport of the lab interop check (see lab_login.rs): PPTP control (SCCRQ/OCRQ) over TCP,
# raw GRE both ways; PPP/GRE logic is in the Rust driver (stdin/stdout frames).
import socket, struct, sys, subprocess, select, os
srv, user, pw, driver = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
MAGIC = 0x1a2b3c4d
def ctrl(t, body): return struct.pack('!HHLHH', 12 + len(body), 1, MAGIC, t, 0) + body
def recv_msg(s):
    hdr = b''
    while len(hdr) < 2:
        c = s.recv(2 - len(hdr))
        if not c: raise ConnectionError("control connection closed")
        hdr += c
    n = struct.unpack('!H', hdr)[0]; body = hdr
    while len(body) < n:
        c = s.recv(n - len(body))
        if not c: raise ConnectionError("control connection closed")
        body += c
    return body
g = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
s = socket.create_connection((srv, 1723), timeout=5)
s.sendall(ctrl(1, struct.pack('!HHLLHH64s64s', 0x0100, 0, 1, 1, 0, 1, b'connexa', b'connexa')))
r = recv_msg(s); print("SCCRP result", r[14], file=sys.stderr)
CALL = 0x1234 + os.getpid() % 1000
s.sendall(ctrl(7, struct.pack('!HHLLLLHHHH64s64s', CALL, 1, 2400, 100000000, 3, 3, 64, 0, 0, 0, b'', b'')))
while True:
    r = recv_msg(s)
    if struct.unpack('!H', r[8:10])[0] == 8: break
peer_call, _, res = struct.unpack('!HHB', r[12:17]); print("OCRP result", res, "peer call", peer_call, file=sys.stderr)
p = subprocess.Popen([driver, str(CALL), str(peer_call), user, pw, srv], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
buf = b''
done = False
while not done:
    rd, _, _ = select.select([g, p.stdout, s], [], [], 1)
    if g in rd:
        pkt, addr = g.recvfrom(65535)
        p.stdin.write(struct.pack('!H', len(pkt)) + pkt); p.stdin.flush()
    if s in rd:
        m = s.recv(4096)
        if m: print("control msg type", struct.unpack('!H', m[8:10])[0] if len(m) >= 10 else m, file=sys.stderr)
    if p.stdout in rd:
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk: break
        buf += chunk
        while len(buf) >= 2:
            n = struct.unpack('!H', buf[:2])[0]
            if n == 0: done = True; break
            if len(buf) < 2 + n: break
            g.sendto(buf[2:2 + n], (srv, 0)); buf = buf[2 + n:]
s.sendall(ctrl(12, struct.pack('!HH', CALL, 0)))
try:
    s.settimeout(3)
    while True:
        r = recv_msg(s); t = struct.unpack('!H', r[8:10])[0]; print("control reply type", t, file=sys.stderr)
        if t == 13: break
except Exception as e: print("no CDN:", e, file=sys.stderr)
s.sendall(ctrl(3, struct.pack('!BBH', 1, 0, 0)))
try: recv_msg(s)
except Exception: pass
s.close(); p.wait()
