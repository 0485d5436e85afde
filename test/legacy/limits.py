#!/usr/bin/python3
"""Raw dbus1 connections that press on a bus's limits, for test/integration/legacy-limits.

  limits.py ADDRESS_PATH held SHARE
      descriptors sent with the first bytes of messages that never finish: a connection
      holding SHARE of them, then another of the same user sending one more; prints
      "<what> closed|open" for each connection as the bus left it.
  limits.py SOCKET_PATH frames SHARE
      the same on the socket transport's socket, with frames that never finish: a session
      over the cap of one session, then one holding SHARE, then another of the same user
      sending one more.
  limits.py ADDRESS_PATH flood N
      N connections that authenticate and say Hello in one write each, without reading;
      prints "SENT N" and "OPEN k" (how many the bus kept), then holds them until a line
      comes on stdin, and closes them.
  limits.py ADDRESS_PATH hello 0
      one connection that says Hello; prints "registered" once the bus answered.
"""
import os
import socket
import sys

from gi.repository import Gio


def hello_blob():
    m = Gio.DBusMessage.new_method_call('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus', 'Hello')
    m.set_serial(1)
    return m.to_blob(Gio.DBusCapabilityFlags.NONE)


def auth_lines(unix_fds):
    uid = str(os.getuid()).encode().hex().encode()
    return b'\0AUTH EXTERNAL ' + uid + b'\r\n' + (b'NEGOTIATE_UNIX_FD\r\n' if unix_fds else b'') + b'BEGIN\r\n'


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def registered(path):
    """A connection that negotiated descriptors and said Hello; its replies are read."""
    s = connect(path)
    s.sendall(auth_lines(True) + hello_blob())
    got = b''
    s.settimeout(10)
    while b'NameAcquired' not in got:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit('the bus closed a connection during Hello')
        got += chunk
    return s


def start_message(s, n_fds):
    """The first 16 bytes of a call, with n_fds descriptors; the rest never comes."""
    head = b'l\x01\x00\x01' + (0).to_bytes(4, 'little') + (2).to_bytes(4, 'little') + (64).to_bytes(4, 'little')
    fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(n_fds)]
    socket.send_fds(s, [head], fds)
    for fd in fds:
        os.close(fd)


def state(s, seconds):
    s.settimeout(seconds)
    try:
        while True:
            if s.recv(4096) == b'':
                return 'closed'
    except socket.timeout:
        return 'open'
    except ConnectionResetError:
        return 'closed'


def held(path, share):
    holder = registered(path)
    start_message(holder, share)
    over = registered(path)
    start_message(over, 1)
    print('over-the-share', state(over, 3))
    print('holder', state(holder, 0.5))
    holder.close()
    later = registered(path)
    start_message(later, share)
    print('after-release', state(later, 1))
    sys.stdout.flush()


def partial_frame(s, n_bytes, n_fds):
    """Bytes of a frame header that never completes, with n_fds descriptors."""
    fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(n_fds)]
    socket.send_fds(s, [b'\0' * n_bytes], fds)
    for fd in fds:
        os.close(fd)


def frames(path, share):
    greedy = connect(path)
    partial_frame(greedy, 4, 64)
    partial_frame(greedy, 4, 64)
    partial_frame(greedy, 4, 1)
    print('over-the-session-cap', state(greedy, 3))
    holder = connect(path)
    for _ in range(share // 64):
        partial_frame(holder, 2, 64)
    over = connect(path)
    partial_frame(over, 2, 1)
    print('over-the-share', state(over, 3))
    print('holder', state(holder, 0.5))
    sys.stdout.flush()


def flood(path, n):
    conns = []
    for _ in range(n):
        s = connect(path)
        s.sendall(auth_lines(False) + hello_blob())
        conns.append(s)
    print('SENT', n, flush=True)
    print('OPEN', sum(state(s, 0.05) == 'open' for s in conns), flush=True)
    sys.stdin.readline()
    for s in conns:
        s.close()


if __name__ == '__main__':
    address, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == 'held':
        held(address, count)
    elif mode == 'frames':
        frames(address, count)
    elif mode == 'hello':
        registered(address)
        print('registered')
    else:
        flood(address, count)
