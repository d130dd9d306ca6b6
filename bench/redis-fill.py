#!/usr/bin/env python3
"""Fill a Redis server with KEYS keys of mixed types, for the Redis benchmarks.

    bench/redis-fill.py PORT KEYS [SEED]     (the password, if any, from REDISCLI_AUTH)

The mix, by key: 70 % strings (JSON-like text around random base64, 150-750 bytes), 14 %
hashes (8 fields), 7 % lists (12 elements), 4 % sets (12 members), 4 % sorted sets (12
members), 1 % streams (6 entries, a consumer group with pending entries). One key in ten has
an expiry a day or more ahead. About 2 million keys make an RDB of about 1 GiB.

Commands are pipelined with CLIENT REPLY OFF, so the load is bound by the server.
"""
import base64
import os
import random
import socket
import sys

port, keys = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
sock = socket.create_connection(("127.0.0.1", port))


def cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def reply_line():
    buf = b""
    while not buf.endswith(b"\r\n"):
        buf += sock.recv(1)
    return buf


password = os.environ.get("REDISCLI_AUTH")
if password:
    sock.sendall(cmd("AUTH", password))
    line = reply_line()
    if not line.startswith(b"+"):
        sys.exit("AUTH failed: %r" % line)
sock.sendall(cmd("CLIENT", "REPLY", "OFF"))


def text(n):
    raw = base64.b64encode(rng.randbytes(n * 3 // 4 + 1))[:n]
    return b'{"user":"user_%d","kind":"%s","payload":"%s"}' % (
        rng.randrange(50000),
        rng.choice([b"click", b"view", b"purchase", b"signup"]),
        raw,
    )


batch = []
for i in range(keys):
    r = rng.random()
    if r < 0.70:
        key = b"session:%d" % i
        batch.append(cmd("SET", key, text(rng.randrange(100, 700))))
    elif r < 0.84:
        key = b"user:%d" % i
        fields = []
        for f in range(8):
            fields += [b"field%d" % f, text(rng.randrange(5, 60))]
        batch.append(cmd("HSET", key, *fields))
    elif r < 0.91:
        key = b"queue:%d" % i
        batch.append(cmd("RPUSH", key, *[text(rng.randrange(10, 50)) for _ in range(12)]))
    elif r < 0.95:
        key = b"tags:%d" % i
        batch.append(cmd("SADD", key, *[b"tag-%d" % rng.randrange(10**6) for _ in range(12)]))
    elif r < 0.99:
        key = b"rank:%d" % i
        members = []
        for m in range(12):
            members += [b"%.3f" % (rng.random() * 1000), b"player-%d" % rng.randrange(10**6)]
        batch.append(cmd("ZADD", key, *members))
    else:
        key = b"events:%d" % i
        for e in range(6):
            batch.append(cmd("XADD", key, "*", "n", e, "body", text(40)))
        batch.append(cmd("XGROUP", "CREATE", key, "workers", "0"))
        batch.append(cmd("XREADGROUP", "GROUP", "workers", "w1", "COUNT", "2", "STREAMS", key, ">"))
    if rng.random() < 0.10:
        batch.append(cmd("EXPIRE", key, 86400 + rng.randrange(86400)))
    if len(batch) >= 2000:
        sock.sendall(b"".join(batch))
        batch = []
sock.sendall(b"".join(batch) + cmd("CLIENT", "REPLY", "ON") + cmd("DBSIZE"))
# The first reply after REPLY ON is +OK, then DBSIZE's.
line = reply_line()
line = reply_line()
print(int(line[1:]), "keys", file=sys.stderr)
