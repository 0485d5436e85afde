"""Buses made and dropped through CUSE, counting the daemon's threads and descriptors.

   cuse-churn.py <kdbus-root> <daemon-pid> <buses at once> <rounds>

Each round makes that many buses (BUS_MAKE on the control node, with one connection on
each), holds them all, then closes everything and waits for the nodes to go. Prints one
JSON object: the daemon's threads and open descriptors before the first round, with every
bus of a round made, and after each round. Exits 1 with a line on stderr if a step fails.
"""
import json
import os
import struct
import sys
import time

from kdbus_raw import BUS_MAKE, HELLO, Struct, check, item

ROOT, PID, PER_ROUND, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def daemon_counts():
    with open(f'/proc/{PID}/status') as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith('Threads:'))
    return {'threads': threads, 'fds': len(os.listdir(f'/proc/{PID}/fd'))}


def make_bus(name):
    ctl = os.open(f'{ROOT}/control', os.O_RDWR | os.O_CLOEXEC)
    body = struct.pack('<3Q', 0, 0, 0) + item(7, struct.pack('<QQ', 64, 1)) + item(11, name.encode() + b'\0')
    body = struct.pack('<Q', len(body)) + body[8:]
    err = Struct(body).ioctl(ctl, BUS_MAKE)
    check(err == 0, f'BUS_MAKE {name}: errno {err}')
    conn = os.open(f'{ROOT}/{name}/bus', os.O_RDWR | os.O_CLOEXEC)
    err = Struct(struct.pack('<10Q', 96, 0, 0, 0, 0, 0, 0, 1 << 20, 0, 0) + b'\0' * 16).ioctl(conn, HELLO)
    check(err == 0, f'HELLO on {name}: errno {err}')
    return ctl, conn


def wait_gone(names):
    deadline = time.monotonic() + 60
    while any(os.path.exists(f'{ROOT}/{n}') for n in names):
        check(time.monotonic() <= deadline, 'bus nodes still there 60 s after their owners closed them')
        time.sleep(0.05)


report = {'before': daemon_counts(), 'rounds': []}
uid = os.getuid()
for r in range(ROUNDS):
    names = [f'{uid}-churn{r}-{i}' for i in range(PER_ROUND)]
    held = [make_bus(n) for n in names]
    made = daemon_counts()
    for ctl, conn in held:
        os.close(conn)
        os.close(ctl)
    wait_gone(names)
    report['rounds'].append({'made': made, 'after': daemon_counts()})
print(json.dumps(report))
